"""``coldcopy wal-pushd --socket PATH``: a warm WAL pusher that ``coldcopy.walclient`` talks to.

Long-lived: it loads the settings, the storage client and the master key once, then serves push
requests over a unix socket, several at once (PostgreSQL's archiver sends one at a time, but a
backlog after an outage or several clusters can overlap).  Each request runs
:func:`coldcopy.wal.archive.push` - compress, encrypt, create-only PUT, identical re-push fine,
different content refused - and the answer is sent only after it returned, so "ok" means stored.

Started by the operator (a systemd unit next to PostgreSQL's, running as the postgres user), not
by the client: an auto-start would need the heavy interpreter and the secrets in archive_command's
environment, and would hide a daemon that keeps crashing behind one slow start per segment.  While
it is down, the client fails and PostgreSQL retries; ``pg_stat_archiver.failed_count`` shows it.

Access: the socket is created with mode 0600 inside a folder the daemon creates 0700 if absent,
and every connection's peer credentials (SO_PEERCRED) must be the daemon's own uid or root.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import socket
import socketserver
import stat
import struct
import sys
import threading
import time
from pathlib import Path
from typing import Any

from coldcopy import walclient
from coldcopy.context import Context
from coldcopy.errors import ColdCopyError
from coldcopy.wal.archive import push

log = logging.getLogger(__name__)
MAX_REQUEST = 8192


def _peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


class _Handler(socketserver.StreamRequestHandler):
    server: WalPushServer

    def handle(self) -> None:
        conn: socket.socket = self.request
        uid = _peer_uid(conn)
        if uid not in (0, os.getuid()):
            log.warning("refused a push request from uid %d", uid)
            self._answer(f"err\t5\tuid {uid} may not push WAL through this daemon")
            return
        line = self.rfile.readline(MAX_REQUEST).decode("utf-8", "replace").rstrip("\n")
        cmd, _, arg = line.partition("\t")
        if cmd != "push" or not arg.startswith("/"):
            self._answer("err\t2\texpected 'push<TAB>/absolute/path'")
            return
        self._answer(self.server.push_one(Path(arg)))

    def _answer(self, text: str) -> None:
        with contextlib.suppress(OSError):  # the client gave up; PostgreSQL will ask again
            self.wfile.write(text.replace("\n", " ").encode() + b"\n")


class WalPushServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, sock_path: Path, ctx: Context) -> None:
        self.ctx = ctx
        self.sock_path = sock_path
        self.pushed = 0
        self.failed = 0
        self._lock = threading.Lock()
        _prepare_socket_path(sock_path)
        old = os.umask(0o177)  # the socket is born 0600: no window where others could connect
        try:
            super().__init__(str(sock_path), _Handler)
        finally:
            os.umask(old)
        os.chmod(sock_path, 0o600)

    def push_one(self, path: Path) -> str:
        t0 = time.monotonic()
        try:
            r = push(self.ctx, path)
        except ColdCopyError as exc:
            with self._lock:
                self.failed += 1
            log.error("push of %s failed: %s", path.name, exc.message)
            return f"err\t{exc.exit_code}\t{exc.message}"
        except Exception as exc:  # noqa: BLE001 - the daemon must outlive one bad request
            with self._lock:
                self.failed += 1
            log.exception("push of %s failed", path.name)
            return f"err\t1\t{type(exc).__name__}: {exc}"
        with self._lock:
            self.pushed += 1
        log.info(
            "%s %s (%d → %d bytes) in %.1f ms (%s)", r.name,
            "already stored" if r.already_archived else "stored", r.raw_size, r.stored_size,
            (time.monotonic() - t0) * 1000, r.timing_text() or "compared with the stored copy",
        )  # fmt: skip
        return f"ok\t{r.name} {'already stored' if r.already_archived else 'stored'} as {r.key}"

    def server_close(self) -> None:
        super().server_close()
        with contextlib.suppress(FileNotFoundError):
            self.sock_path.unlink()


def _prepare_socket_path(sock_path: Path) -> None:
    """Create the socket's folder 0700 if absent; remove a stale socket, refuse a live one."""
    parent = sock_path.parent
    if not parent.exists():
        parent.mkdir(mode=0o700, parents=True)
    st = parent.stat()
    if st.st_mode & stat.S_IWOTH and not st.st_mode & stat.S_ISVTX:
        raise ColdCopyError(
            f"{parent} is writable by everyone", "put the socket in a folder only the postgres user can write"
        )
    if sock_path.exists() or sock_path.is_symlink():
        if not stat.S_ISSOCK(sock_path.lstat().st_mode):
            raise ColdCopyError(f"{sock_path} exists and is not a socket", "choose another --socket path")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(sock_path))
            except OSError:
                sock_path.unlink()  # left by a daemon that died
            else:
                raise ColdCopyError(
                    f"another coldcopy wal-pushd is already listening on {sock_path}",
                    "stop it first, or use another --socket",
                )


def archive_command(sock_path: Path) -> str:
    """The archive_command for this daemon: the client run as a file, isolated and without ``site``.

    ``-I -S`` and a file path rather than ``-m coldcopy.walclient``: no PYTHONPATH is needed (with
    ``-S`` an installed package is not importable by name), and neither ``site`` nor ``runpy``
    is imported, so the client costs what a bare interpreter start costs (``-m`` adds ~5 ms).
    """
    client = str(Path(walclient.__file__).resolve())
    return f"{shlex.join([sys.executable, '-I', '-S', client, '--socket', str(sock_path)])} %p"


def run_pushd(ctx: Context, sock_path: Path, ready: Any = None) -> WalPushServer:
    """Run until SIGTERM/SIGINT (in the main thread) or ``server.shutdown()``; returns the server."""
    server = WalPushServer(sock_path, ctx)
    if threading.current_thread() is threading.main_thread():

        def stop(signum: int, _frame: object) -> None:
            threading.Thread(target=server.shutdown, daemon=True).start()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
    log.info("coldcopy wal-pushd listening on %s", sock_path)
    log.info("archive_command = '%s'", archive_command(sock_path).replace("'", "''"))
    if ready is not None:
        ready(server)
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        server.server_close()
    log.info("coldcopy wal-pushd stopped: %d pushed, %d failed", server.pushed, server.failed)
    return server
