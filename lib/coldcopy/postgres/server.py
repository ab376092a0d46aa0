"""The local PostgreSQL server of a data folder: run its programs as its owner, find it, stop it.

As root the server's programs run as the ``postgres`` OS user (PostgreSQL refuses root); otherwise
as ourselves.  Every module that runs a server (pitr, the drills, the throwaway cluster) uses the
rules here, in particular one rule for "this process is the server of that folder"
(:func:`is_server_process`), so that a stale pid file never gets a stranger signalled and a server
is never taken for gone because /proc could not tell.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import re
import signal
import subprocess
from pathlib import Path

from coldcopy.config import Settings
from coldcopy.loopback import wait_until
from coldcopy.postgres.tools import tool_path

log = logging.getLogger(__name__)
OWNER = "postgres"
SOCKET_PATH_MAX = 100  # sun_path holds 108 bytes
_SERVER_NAMES = ("postgres", "postmaster")
_DELETED = " (deleted)"  # readlink of a binary replaced since (a package upgrade)


def as_owner(args: list[str]) -> list[str]:
    return ["runuser", "-u", OWNER, "--", *args] if os.geteuid() == 0 else args


def chown_to_owner(path: Path) -> None:
    """Give ``path`` (not what is inside) to the server's OS owner; nothing to do unless root."""
    if os.geteuid() == 0:
        owner = pwd.getpwnam(OWNER)
        os.chown(path, owner.pw_uid, owner.pw_gid)


def chown_tree(path: Path) -> None:
    """Give ``path`` and everything below it to the server's OS owner (symlinks themselves, not
    their targets); entries it already owns are left alone.  Nothing to do unless root."""
    if os.geteuid() != 0:
        return
    owner = pwd.getpwnam(OWNER)
    paths = [str(path)]
    for folder, dirs, files in os.walk(path):
        paths += (os.path.join(folder, name) for name in dirs + files)
    for entry in paths:
        st = os.lstat(entry)
        if (st.st_uid, st.st_gid) != (owner.pw_uid, owner.pw_gid):
            os.lchown(entry, owner.pw_uid, owner.pw_gid)


def conf_quote(value: str) -> str:
    """A value for postgresql.conf: every setting accepts a quoted one, with backslash and quote escaped."""
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def server_tool(name: str, settings: Settings, major: int = 0) -> str:
    """A server program of the backup's major version when installed (PG_BIN_DIR always wins)."""
    candidate = Path(f"/usr/lib/postgresql/{major}/bin/{name}")
    if major and not settings.pg_bin_dir and candidate.exists():
        return str(candidate)
    return tool_path(name, settings)


def postmaster_pid(data_dir: Path) -> int | None:
    """The pid of the postmaster running in ``data_dir``, or None."""
    try:
        pid = int((data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        os.kill(pid, 0)
    except PermissionError:
        pass  # another user's process (we are not root): it exists
    except (OSError, ValueError):
        return None
    # A crashed server leaves its pid file and the pid may be reused: only a server process of
    # this data folder is its postmaster (never signal a stranger).
    return pid if is_server_process(pid, data_dir, in_pid_file=True) else None


def server_processes(data_dir: Path) -> set[int]:
    """Every process identified as a server process of ``data_dir`` (:func:`is_server_process`).

    Where /proc/<pid>/cwd cannot be read, backends are not recognised (their command line names
    no folder), only a postmaster started with ``-D``: they are left alone, as any stranger.
    """
    pids = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit() and is_server_process(int(entry), data_dir):
            pids.add(int(entry))
    return pids


def is_server_process(pid: int, data_dir: Path, *, in_pid_file: bool = False) -> bool:
    """Whether ``pid`` is a PostgreSQL server process of ``data_dir``.

    Every server process works in its data folder: when /proc/<pid>/cwd and exe can be read, a
    ``postgres`` program working there.  Root cannot read them for another user's process without
    CAP_SYS_PTRACE (containers), nor can anyone else: then the public command line must be
    postgres's with ``-D`` naming the folder, as pg_ctl starts it; or, for the pid that the
    folder's postmaster.pid names (``in_pid_file``), postgres's without ``-D`` (started with PGDATA).
    Anything that cannot be read or does not match is not a server: a stranger is never signalled.
    """
    try:
        cwd = os.readlink(f"/proc/{pid}/cwd")
        exe = os.readlink(f"/proc/{pid}/exe").removesuffix(_DELETED)
    except PermissionError:
        pass  # see the command line below
    except OSError:
        return False  # gone (or a zombie)
    else:
        return os.path.basename(exe) == "postgres" and _same_folder(cwd, data_dir)
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    if os.path.basename(os.fsdecode(args[0])) not in _SERVER_NAMES:
        return False  # includes every backend: its command line is "postgres: <what it does>"
    folder = os.fsdecode(args[args.index(b"-D", 1) + 1]) if b"-D" in args[1:-1] else ""
    if os.path.isabs(folder):
        return _same_folder(folder, data_dir)
    return in_pid_file  # a relative -D is relative to a folder we do not know


def _same_folder(path: str, data_dir: Path) -> bool:
    return Path(path).resolve() == data_dir.resolve()


def kill_server(data_dir: Path, *, grace: float = 10, timeout: float = 10) -> bool:
    """End the server in ``data_dir`` by signals: SIGQUIT (immediate shutdown) to its postmaster,
    SIGKILL after ``grace`` seconds, then SIGKILL to any server process still there (backends of a
    crashed postmaster).  True when no server process is left after ``timeout`` more seconds."""
    pid = postmaster_pid(data_dir)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGQUIT)
        if not wait_until(lambda: postmaster_pid(data_dir) is None, timeout=grace):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    wait_until(lambda: postmaster_pid(data_dir) is None, timeout=timeout)
    for leftover in server_processes(data_dir):
        with contextlib.suppress(ProcessLookupError):
            os.kill(leftover, signal.SIGKILL)
    return wait_until(
        lambda: postmaster_pid(data_dir) is None and not server_processes(data_dir), timeout=timeout
    )


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

    Killed if pg_ctl cannot stop it.  True when no server process runs there any more.
    """
    if postmaster_pid(target_dir) is not None:
        pg_ctl = server_tool("pg_ctl", settings, major)
        stop = [pg_ctl, "-D", str(target_dir), "-m", "immediate", "-w", "-t", str(int(timeout)), "stop"]
        subprocess.run(as_owner(stop), capture_output=True, text=True, cwd="/", check=False)
        pid = postmaster_pid(target_dir)
        if pid is not None:
            log.error("pg_ctl could not stop the server in %s: killing process %d", target_dir, pid)
    return kill_server(target_dir, grace=0, timeout=timeout)
