"""The local PostgreSQL server of a recovered folder: run its programs as its owner, find it, stop it.

As root the server's programs run as the ``postgres`` OS user (PostgreSQL refuses root); otherwise
as ourselves.  A server is recognised by its pid file and by the process really working in that
folder, so a stale pid file never gets a stranger signalled.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import re
import signal
import subprocess
import time
from pathlib import Path

from coldcopy.config import Settings
from coldcopy.postgres.tools import tool_path

log = logging.getLogger(__name__)
OWNER = "postgres"


def as_owner(args: list[str]) -> list[str]:
    return ["runuser", "-u", OWNER, "--", *args] if os.geteuid() == 0 else args


def chown_tree(path: Path) -> None:
    if os.geteuid() != 0:
        return
    owner = pwd.getpwnam(OWNER)
    os.lchown(path, owner.pw_uid, owner.pw_gid)
    for folder, dirs, files in os.walk(path):
        os.lchown(folder, owner.pw_uid, owner.pw_gid)
        for name in dirs + files:
            os.lchown(os.path.join(folder, name), owner.pw_uid, owner.pw_gid)


def server_tool(name: str, settings: Settings, major: int = 0) -> str:
    """A server program of the backup's major version when installed (PG_BIN_DIR always wins)."""
    candidate = Path(f"/usr/lib/postgresql/{major}/bin/{name}")
    if major and not settings.pg_bin_dir and candidate.exists():
        return str(candidate)
    return tool_path(name, settings)


def postmaster_pid(target_dir: Path) -> int | None:
    """The pid of the server running in ``target_dir``, or None."""
    try:
        pid = int((target_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        os.kill(pid, 0)
    except PermissionError:
        pass  # another user's process (we are not root): it exists
    except (OSError, ValueError):
        return None
    # A crashed server leaves its pid file and the pid may be reused: only a process working in
    # this data folder is its postmaster (never signal a stranger).
    return pid if _works_in(pid, target_dir) else None


def _works_in(pid: int, target_dir: Path) -> bool:
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd")).resolve() == target_dir.resolve()
    except PermissionError:
        pass  # another user's process, and no CAP_SYS_PTRACE (containers): its command line is public
    except OSError:
        return False
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    if b"-D" in args[:-1]:
        return Path(os.fsdecode(args[args.index(b"-D") + 1])).resolve() == target_dir.resolve()
    return bool(args) and os.path.basename(os.fsdecode(args[0])) in ("postgres", "postmaster")


def control_state(target_dir: Path, settings: Settings, major: int = 0) -> str:
    proc = subprocess.run(
        as_owner([server_tool("pg_controldata", settings, major), "-D", str(target_dir)]),
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "LC_ALL": "C"},
    )
    m = re.search(r"^Database cluster state:\s*(.+)$", proc.stdout, re.M)
    return m[1].strip() if m else ""


def stop_server(settings: Settings, target_dir: Path, major: int = 0, timeout: float = 60) -> bool:
    """Stop the server in ``target_dir`` at once (``immediate``: the copy is thrown away).

    Killed if pg_ctl cannot stop it.  True when no server runs there any more.
    """
    if postmaster_pid(target_dir) is None:
        return True
    pg_ctl = server_tool("pg_ctl", settings, major)
    stop = [pg_ctl, "-D", str(target_dir), "-m", "immediate", "-w", "-t", str(int(timeout)), "stop"]
    subprocess.run(as_owner(stop), capture_output=True, text=True, cwd="/", check=False)
    pid = postmaster_pid(target_dir)
    if pid is not None:
        log.error("pg_ctl could not stop the server in %s: killing process %d", target_dir, pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)  # its backends exit when they see the postmaster gone
        deadline = time.monotonic() + timeout
        while postmaster_pid(target_dir) is not None and time.monotonic() < deadline:
            time.sleep(0.1)
    return postmaster_pid(target_dir) is None
