"""Which process is the server of a data folder, also where /proc/<pid>/cwd cannot be read.

In a container root lacks CAP_SYS_PTRACE and cannot read the cwd (or exe) link of the postgres OS
user's processes.  A running cluster must still be seen running, be stopped, and never have its
folder deleted under it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from coldcopy.postgres import cluster as cluster_module
from coldcopy.postgres import server
from coldcopy.postgres.cluster import PgCluster

_PROC_LINK = re.compile(r"/proc/\d+/(cwd|exe)")


@pytest.fixture
def no_ptrace(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every /proc/<pid>/cwd and /proc/<pid>/exe is unreadable, as without CAP_SYS_PTRACE."""
    real = os.readlink

    def readlink(path: Any, *args: Any, **kwargs: Any) -> Any:
        if _PROC_LINK.fullmatch(os.fsdecode(path)):
            raise PermissionError(errno.EACCES, "Permission denied", os.fsdecode(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "readlink", readlink)


def _pid_in_file(data_dir: Path) -> int:
    return int((data_dir / "postmaster.pid").read_text().split("\n", 1)[0])


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie (checked directly, not with the code under test)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@contextlib.contextmanager
def _killed_afterwards(pids: list[int]) -> Iterator[None]:
    """Whatever the test leaves running (the old code left live servers behind) is killed."""
    try:
        yield
    finally:
        for pid in pids:
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def test_a_running_cluster_is_seen_and_stopped_without_ptrace(no_ptrace: None) -> None:
    cluster = PgCluster()
    pids: list[int] = []
    with _killed_afterwards(pids):
        try:
            cluster.start()
            pids.append(_pid_in_file(cluster.data_dir))
            assert cluster.is_running()
            cluster.start()  # already running: nothing to do (not a second pg_ctl start)
            cluster.stop()
            assert not _alive(pids[0])
            assert not cluster.is_running()
        finally:
            cluster.destroy()


def test_destroy_never_deletes_the_folder_of_a_live_server_without_ptrace(no_ptrace: None) -> None:
    cluster = PgCluster()
    pids: list[int] = []
    with _killed_afterwards(pids):
        try:
            cluster.start()
            pids.append(_pid_in_file(cluster.data_dir))
        finally:
            cluster.destroy()
        assert not _alive(pids[0]), "destroy() left the server running"
        assert not cluster.base_dir.exists()


_WITHOUT_PTRACE = """
import json, os, sys
from pathlib import Path
from coldcopy.postgres import cluster as cluster_module
from coldcopy.postgres import server
from coldcopy.postgres.cluster import PgCluster

def pid_of(c):
    return int((c.data_dir / "postmaster.pid").read_text().split()[0])

seen = {}
c = PgCluster().start()
try:
    seen["pids"] = [pid_of(c)]
    seen["running"] = c.is_running()
    c.stop()
    seen["running_after_stop"] = c.is_running()
    c.start()
    seen["pids"].append(pid_of(c))
finally:
    print(json.dumps(seen), flush=True)
    c.destroy()
print(json.dumps({"base_dir_left": c.base_dir.exists()}))
"""


def test_a_cluster_run_by_root_without_cap_sys_ptrace_is_seen_stopped_and_destroyed() -> None:
    """The real case: root in a container, the server run by the postgres OS user."""
    if os.geteuid() != 0 or not Path("/usr/bin/setpriv").exists():
        pytest.skip("needs root and setpriv to drop CAP_SYS_PTRACE")
    proc = subprocess.run(
        ["setpriv", "--bounding-set", "-sys_ptrace", sys.executable, "-c", _WITHOUT_PTRACE],
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    lines = proc.stdout.splitlines()
    seen = json.loads(lines[0]) if lines else {}
    with _killed_afterwards(seen.get("pids", [])):
        assert seen.get("running") is True, proc.stderr
        assert proc.returncode == 0, proc.stderr
        assert seen["running_after_stop"] is False and not _alive(seen["pids"][0])
        assert not _alive(seen["pids"][1]), "destroy() left the server running"
        assert json.loads(lines[1]) == {"base_dir_left": False}


# -- the rule itself ---------------------------------------------------------------------------


@pytest.fixture(params=["readable", "no_ptrace"])
def proc_access(request: pytest.FixtureRequest) -> str:
    """Each rule test twice: with /proc/<pid>/cwd readable, and without (the command line only)."""
    if request.param == "no_ptrace":
        request.getfixturevalue("no_ptrace")
    return str(request.param)


def test_the_postmaster_is_found_and_backends_only_where_cwd_is_readable(
    pg: PgCluster, proc_access: str
) -> None:
    postmaster = _pid_in_file(pg.data_dir)
    assert server.postmaster_pid(pg.data_dir) == postmaster
    found = server.server_processes(pg.data_dir)
    assert postmaster in found
    # Backends name no folder in their command line: without cwd they are nobody we may signal.
    assert (len(found) > 1) is (proc_access == "readable")


def test_a_stranger_is_never_taken_for_the_server(tmp_path: Path, proc_access: str) -> None:
    """A process named by a stale pid file, working in the folder, even with ``-D <folder>`` in its
    command line, is not a server unless it is postgres: it is neither found nor signalled."""
    data = tmp_path / "data"
    data.mkdir()
    sleeper = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", "-D", str(data)], cwd=data
    )
    try:
        (data / "postmaster.pid").write_text(f"{sleeper.pid}\n{data}\n")
        assert not server.is_server_process(sleeper.pid, data, in_pid_file=True)
        assert server.postmaster_pid(data) is None
        assert sleeper.pid not in server.server_processes(data)
        assert server.kill_server(data, grace=0, timeout=0)
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()


def test_destroy_leaves_the_files_of_a_server_that_will_not_die(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    cluster = PgCluster().start()
    postmaster = _pid_in_file(cluster.data_dir)
    try:
        real_kill, real_kill_server = os.kill, server.kill_server

        def kill(pid: int, sig: int) -> None:
            if sig != 0 and pid in (postmaster, *server.server_processes(cluster.data_dir)):
                return  # a server stuck in the kernel: signals do not end it
            real_kill(pid, sig)

        def quick_kill_server(data_dir: Path, **_: float) -> bool:
            return real_kill_server(data_dir, grace=0.2, timeout=0.2)

        monkeypatch.setattr(os, "kill", kill)
        monkeypatch.setattr(cluster_module, "kill_server", quick_kill_server)
        cluster.destroy()
        assert cluster.is_running() and (cluster.data_dir / "PG_VERSION").exists()
        assert "could not be stopped" in caplog.text
    finally:
        monkeypatch.undo()
        cluster.run_as_owner([str(cluster.bin_dir / "pg_ctl"), "-D", str(cluster.data_dir), "stop"])
        shutil.rmtree(cluster.base_dir, ignore_errors=True)
    assert not _alive(postmaster)
