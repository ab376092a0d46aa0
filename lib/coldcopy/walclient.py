"""The archive_command half of fast WAL archiving: hand one file to ``coldcopy wal-pushd``.

    archive_command = '/usr/bin/python3 -I -S /…/coldcopy/walclient.py --socket /run/coldcopy/wal.sock %p'

(``coldcopy wal-pushd`` logs the exact line for its socket.  Run as a file, the client needs no
PYTHONPATH; ``PYTHONPATH=/…/site-packages python3 -S -m coldcopy.walclient …`` works too, ~5 ms
slower: runpy.)

Standard library only and nothing heavy (no boto3, no crypto, not even ``site``, and the C
``_socket`` module rather than ``socket``, whose enum and selectors imports cost ~7 ms, as much
as the interpreter start itself), so one call is one small interpreter start plus one
round trip over a unix socket; the daemon that holds the storage client and the key does the
compress-encrypt-PUT.  Exit status 0 means the daemon answered that the file is stored (or was
already stored with the same bytes).  Anything else (daemon not running, refused, timed out, a
conflict) exits non-zero: PostgreSQL keeps the segment in pg_wal and retries, so nothing is
ever acknowledged that is not stored.  There is deliberately no in-process fallback: it would
need the heavy imports and the secrets here.

Protocol (one line each way, UTF-8): ``push\\t<absolute path>\\n`` → ``ok\\t<detail>\\n`` or
``err\\t<exit code>\\t<message>\\n``.
"""

from __future__ import annotations

import _socket
import os
import sys

SOCKET_ENV = "COLDCOPY_WALPUSHD_SOCKET"
UNREACHABLE = 3  # the daemon is not there: PostgreSQL retries, the operator starts it
DEFAULT_TIMEOUT = 600.0


def request(sock_path: str, path: str, timeout: float = DEFAULT_TIMEOUT) -> tuple[int, str]:
    """(exit status, message) for pushing ``path`` through the daemon at ``sock_path``."""
    chunks: list[bytes] = []
    try:
        s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            s.settimeout(timeout)
            s.connect(sock_path)
            s.sendall(f"push\t{path}\n".encode())
            s.shutdown(_socket.SHUT_WR)
            while data := s.recv(65536):
                chunks.append(data)
        finally:
            s.close()
    except OSError as exc:
        return UNREACHABLE, f"coldcopy wal-pushd at {sock_path} is not reachable: {exc}"
    reply = b"".join(chunks).decode("utf-8", "replace").rstrip("\n")
    if reply.startswith("ok\t"):
        return 0, reply[3:]
    parts = reply.split("\t", 2)
    if len(parts) == 3 and parts[0] == "err" and parts[1].isdigit():
        return int(parts[1]) or 1, parts[2]
    return 1, f"unexpected answer from coldcopy wal-pushd: {reply[:200]!r}"


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    sock_path = os.environ.get(SOCKET_ENV, "")
    timeout = DEFAULT_TIMEOUT
    while args and args[0].startswith("--"):
        opt = args.pop(0)
        if opt in ("--socket", "--timeout") and args:
            value = args.pop(0)
            if opt == "--socket":
                sock_path = value
            else:
                timeout = float(value)
        else:
            args = []
            break
    if len(args) != 1 or not sock_path:
        print(f"usage: walclient [--socket PATH (or ${SOCKET_ENV})] [--timeout S] WALFILE", file=sys.stderr)
        return 2
    rc, message = request(sock_path, os.path.abspath(args[0]), timeout)
    if rc != 0:
        print(f"coldcopy walclient: {message}", file=sys.stderr)
    return rc


if __name__ == "__main__":
    sys.exit(main())
