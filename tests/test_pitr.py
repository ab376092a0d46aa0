"""Physical backups end to end: wal-push as archive_command, basebackup, verify, wal-fetch, pitr.

One archiving cluster per test (the shared ``pg`` does not archive).  Its archive_command runs
``python -m coldcopy wal-push %p`` as the postgres OS user, with the settings in an env file that
user can read.  A marker table gets one row per phase (pgBackRest's pattern); each recovery target
type must bring back exactly the expected markers.
"""

from __future__ import annotations

import json
import os
import pwd
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pg8000.native
import pytest

from cli_helpers import Result, run_cli, stored_run
from coldcopy.config import load_settings
from coldcopy.context import open_context
from coldcopy.core.lsn import wal_key
from coldcopy.core.manifest import Manifest, manifest_key
from coldcopy.localstack.s3server import S3Server
from coldcopy.loopback import free_port
from coldcopy.postgres.cluster import PgCluster

OWNER = "postgres"


def coldcopy_command() -> str:
    """How the postgres OS user runs coldcopy.

    Our interpreter may live where that user cannot go (a pyenv build under /root); then the
    system Python 3 of the same minor version runs the same package and site-packages.
    """
    me = [sys.executable, "-m", "coldcopy"]
    if os.geteuid() != 0 or _owner_can(["test", "-x", sys.executable]):
        return shlex.join(me)
    lib = Path(__file__).resolve().parents[1] / "lib"
    site = [p for p in sys.path if p.endswith("site-packages")]
    system = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
    if not site or not Path(system).exists():
        pytest.skip("the postgres OS user cannot run this Python interpreter")
    path = os.pathsep.join([str(lib), *site])
    return shlex.join(["env", f"PYTHONPATH={path}", system, "-m", "coldcopy"])


def _owner_can(args: list[str]) -> bool:
    return subprocess.run(["runuser", "-u", OWNER, "--", *args], check=False).returncode == 0


@dataclass
class Archiving:
    cluster: PgCluster
    env: dict[str, str]
    env_file: Path
    command: str

    def sql(self, query: str, **params: Any) -> list[Any]:
        conn = self.cluster.connect()
        try:
            conn.run("SET synchronous_commit = on")
            return list(conn.run(query, **params) or [])
        finally:
            conn.close()

    def marker(self, phase: str) -> datetime:
        """Insert one marker row; returns its commit time (the server's clock)."""
        row = self.sql("INSERT INTO marker(phase) VALUES (:p) RETURNING now()", p=phase)
        when: datetime = row[0][0]
        return when.astimezone(UTC)

    def switch_and_wait(self, timeout: float = 30) -> str:
        """Close the current segment and wait until the archiver has stored it."""
        seg = self.sql("SELECT pg_walfile_name(pg_switch_wal())")[0][0]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            last, failed = self.sql("SELECT last_archived_wal, last_failed_wal FROM pg_stat_archiver")[0]
            if last is not None and last >= seg:
                return str(seg)
            time.sleep(0.1)
        raise AssertionError(f"segment {seg} was not archived in {timeout} s (last failure: {failed})")


@pytest.fixture
def archiving(s3_server: S3Server, bucket: str, tmp_path: Path) -> Iterator[Archiving]:
    base = Path(f"/tmp/coldcopy-pitr-{os.getpid()}-{time.monotonic_ns()}")
    base.mkdir(mode=0o755)
    env_file = base / "coldcopy.env"
    command = coldcopy_command()
    cluster = PgCluster(
        base_dir=base / "src",
        settings={
            "archive_mode": "on",
            "archive_command": f"COLDCOPY_ENV_FILE={env_file} {command} wal-push %p",
            "wal_level": "replica",
        },
    )
    env = {
        "DB_HOST": cluster.host,
        "DB_PORT": str(cluster.port),
        "DB_NAME": "postgres",
        "DB_USER": cluster.user,
        "DB_PASSWORD": cluster.password,
        "DB_SSLMODE": "disable",
        "COLDCOPY_CLUSTER": "pitrtest",
        **s3_server.spaces_env(bucket),
        "BACKUP_ENCRYPTION_KEY": "pitr-test-key-" + bucket,
        "HOME": os.environ.get("HOME", "/root"),
        "PATH": os.environ.get("PATH", os.defpath),
    }
    env_file.write_text(
        "".join(f"{k}='{v}'\n" for k, v in env.items() if k.startswith(("DO_", "COLD", "BACK")))
    )
    env_file.chmod(0o600)
    if os.geteuid() == 0:
        owner = pwd.getpwnam(OWNER)
        os.chown(env_file, owner.pw_uid, owner.pw_gid)
    try:
        cluster.start()
        arch = Archiving(cluster, env, env_file, command)
        arch.sql(
            "CREATE TABLE marker(id serial PRIMARY KEY, phase text NOT NULL, at timestamptz DEFAULT now())"
        )
        yield arch
    finally:
        cluster.destroy()
        subprocess.run(["rm", "-rf", str(base)], check=False)


def cli(arch: Archiving, *args: str) -> Result:
    return run_cli({**arch.env, "COLDCOPY_ENV_FILE": os.devnull}, *args)


def base_backup(arch: Archiving) -> Manifest:
    r = cli(arch, "--json", "basebackup")
    assert r.rc == 0, r.err
    s = load_settings(arch.env, env_file=Path(os.devnull))
    name = json.loads(r.out)["name"]
    return Manifest.from_dict(open_context(s).storage.get_json(manifest_key(name)))


def test_basebackup_records_wal_positions_and_verifies(archiving: Archiving) -> None:
    archiving.marker("before")
    m = base_backup(archiving)
    e = m.extra
    assert m.kind == "base" and m.name.startswith("base_backup_postgres_")
    assert len(e["start_wal_segment"]) == 24 and e["timeline"] == 1
    assert e["start_wal_segment"] <= e["stop_wal_segment"]
    assert e["system_identifier"].isdigit() and e["wal_segment_size"] == 16 << 20
    # The backup's WAL is archived (pg_basebackup waited for it), so the archive has the start segment.
    s = load_settings(archiving.env, env_file=Path(os.devnull))
    storage = open_context(s).storage
    assert storage.exists(wal_key(e["stop_wal_segment"]))
    listed = cli(archiving, "--json", "list-backups", "--kind", "base")
    assert listed.rc == 0 and m.name in listed.out
    v = cli(archiving, "verify", m.name)
    assert v.rc == 0, v.out + v.err
    assert "every file matches backup_manifest" in v.out
    status = cli(archiving, "--json", "wal-status")
    assert status.rc == 0, status.out + status.err
    st = json.loads(status.out)
    assert st["ok"] and st["timelines"][0]["gaps"] == [] and st["backups"][0]["name"] == m.name
    # A flipped byte in the stored tar: the chunk fails to authenticate, the verification fails.
    key = m.data.pieces()[0][0]  # the first volume
    blob = bytearray(storage.get_bytes(key))
    blob[len(blob) // 2] ^= 1
    storage.put_bytes(key, bytes(blob))
    bad = cli(archiving, "verify", m.name)
    assert bad.rc == 4 and "FAIL" in bad.out, bad.out + bad.err


# -- point-in-time recovery ------------------------------------------------------------------------
@pytest.fixture
def recovered(archiving: Archiving) -> Iterator[tuple[Path, int]]:
    """A folder for a recovered cluster and a port; whatever server runs there is stopped afterwards."""
    base = Path(f"/tmp/coldcopy-rec-{os.getpid()}-{time.monotonic_ns()}")
    base.mkdir(mode=0o755)
    port = free_port()
    teardown = PgCluster(base_dir=base, port=port)  # only for its teardown of base/data
    try:
        yield base / "data", port
    finally:
        teardown.destroy()
        subprocess.run(["rm", "-rf", str(base)], check=False)


def pitr(arch: Archiving, target_dir: Path, port: int, *target: str) -> Result:
    # restore_command's default (this interpreter) whenever the postgres OS user can run it
    default = arch.command == shlex.join([sys.executable, "-m", "coldcopy"])
    command = [] if default else ["--coldcopy-command", arch.command]
    return cli(
        arch, "--json", "pitr", *target, "--target-dir", str(target_dir), "--port", str(port),
        "--start", *command, "--timeout", "120",
    )  # fmt: skip


def markers_at(arch: Archiving, port: int) -> list[str]:
    conn = pg8000.native.Connection(
        arch.cluster.user, host="127.0.0.1", port=port, password=arch.cluster.password, database="postgres"
    )
    try:
        assert conn.run("SELECT pg_is_in_recovery()")[0][0] is False
        return [r[0] for r in conn.run("SELECT phase FROM marker ORDER BY id")]
    finally:
        conn.close()


def server_now(arch: Archiving) -> datetime:
    when: datetime = arch.sql("SELECT clock_timestamp()")[0][0]
    return when.astimezone(UTC)


def test_pitr_to_a_time_between_markers(archiving: Archiving, recovered: tuple[Path, int]) -> None:
    target_dir, port = recovered
    archiving.marker("before-backup")
    base_backup(archiving)
    archiving.marker("after-backup")
    time.sleep(1.1)  # data separation: the target must fall strictly between two commit times
    target = server_now(archiving)
    time.sleep(1.1)
    archiving.marker("after-target")
    archiving.switch_and_wait()
    r = pitr(archiving, target_dir, port, "--target-time", target.isoformat())
    assert r.rc == 0, r.err
    out = json.loads(r.out)
    assert out["promoted"] is True, Path(out["log_file"]).read_text()
    assert out["reached"].startswith(target.strftime("%Y-%m-%d "))  # the last replayed commit's time
    assert markers_at(archiving, port) == ["before-backup", "after-backup"]
    assert (target_dir / "recovery.signal").exists() is False  # removed by PostgreSQL on promotion
    assert oct(target_dir.stat().st_mode & 0o777) == "0o700"
    assert not (target_dir.parent / "data.coldcopy-walspool").exists()  # removed once promoted
    # What PostgreSQL ran: under scripts/test.sh's second run, .venv-system's /usr/bin/python3
    assert f"{archiving.command} wal-fetch " in (target_dir / "postgresql.auto.conf").read_text()


def test_pitr_and_a_drill_re_apply_the_erasure_ledger(
    archiving: Archiving, recovered: tuple[Path, int], tmp_path: Path
) -> None:
    """A person erased after the base backup: recovered to the backup's end (before the erasure),
    the server is promoted, the ledger applied, and only then reported; a drill applies it too."""
    target_dir, port = recovered
    archiving.sql("CREATE TABLE lead(id int PRIMARY KEY, email text NOT NULL)")
    archiving.sql("INSERT INTO lead VALUES (1, 'gone@example.com'), (2, 'kept@example.com')")
    m = base_backup(archiving)
    config = tmp_path / "erasures.json"
    lead = {
        "statements": ["DELETE FROM lead WHERE email = :subject"],
        "check": "SELECT count(*) FROM lead WHERE email = :subject",
    }
    config.write_text(json.dumps({"kinds": {"lead": lead}}))
    archiving.env["GDPR_ERASURE_CONFIG"] = str(config)
    e = cli(archiving, "gdpr", "erase", "--subject", "gone@example.com")
    assert e.rc == 0, e.err
    assert archiving.sql("SELECT email FROM lead") == [["kept@example.com"]]
    archiving.switch_and_wait()
    unstarted = ["pitr", "--target", "immediate", "--target-dir", str(target_dir), "--port", str(port)]
    refused = cli(archiving, *unstarted)
    assert refused.rc == 8 and "pass --start" in refused.err and not target_dir.exists()
    r = pitr(archiving, target_dir, port, "--target", "immediate")
    assert r.rc == 0, r.err
    out = json.loads(r.out)
    assert out["promoted"] is True and "gone@" not in r.out + r.err
    assert out["erased"]["erasures_applied"] == 1 and out["erased"]["erased_rows_removed"] == 1
    conn = pg8000.native.Connection(
        archiving.cluster.user, host="127.0.0.1", port=port, password=archiving.cluster.password,
        database="postgres",
    )  # fmt: skip
    try:
        assert conn.run("SELECT email FROM lead") == [["kept@example.com"]]
    finally:
        conn.close()
    archiving.env["COLDCOPY_SERVER_COMMAND"] = archiving.command
    v = cli(archiving, "--json", "verify", m.name, "--level", "restore")
    checks = {c["name"]: c for c in json.loads(v.out)["checks"]}
    assert v.rc == 0, v.out
    erased = checks["the erasure ledger applied"]
    assert erased["ok"] and erased["detail"].startswith("1 erasure(s) applied")


def test_pitr_immediate_and_restore_point(archiving: Archiving, tmp_path: Path) -> None:
    archiving.marker("before-backup")
    base_backup(archiving)
    archiving.marker("one")
    rp = cli(archiving, "--json", "restore-point", "rp1")
    assert rp.rc == 0, rp.err
    xid = archiving.sql("INSERT INTO marker(phase) VALUES ('two') RETURNING txid_current()::text")[0][0]
    archiving.marker("three")
    archiving.switch_and_wait()
    base = Path(f"/tmp/coldcopy-rec2-{os.getpid()}-{time.monotonic_ns()}")
    base.mkdir(mode=0o755)
    ports = [free_port(), free_port(), free_port()]
    clusters = [PgCluster(base_dir=base / f"c{i}", port=p) for i, p in enumerate(ports)]
    try:
        for c in clusters:
            c.base_dir.mkdir(mode=0o755, exist_ok=True)
        r = pitr(archiving, clusters[0].data_dir, ports[0], "--target", "immediate")
        assert r.rc == 0, r.err
        assert markers_at(archiving, ports[0]) == ["before-backup"]
        r = pitr(archiving, clusters[1].data_dir, ports[1], "--target-name", "rp1")
        assert r.rc == 0, r.err
        assert markers_at(archiving, ports[1]) == ["before-backup", "one"]
        r = pitr(archiving, clusters[2].data_dir, ports[2], "--target-xid", xid)
        assert r.rc == 0, r.err
        assert markers_at(archiving, ports[2]) == ["before-backup", "one", "two"]
    finally:
        for c in clusters:
            c.destroy()
        subprocess.run(["rm", "-rf", str(base)], check=False)


def test_target_before_the_oldest_backup_is_refused_before_writing(
    archiving: Archiving, recovered: tuple[Path, int]
) -> None:
    target_dir, port = recovered
    archiving.marker("early")
    early = server_now(archiving)
    time.sleep(1.1)  # data separation: the backup must start after the target
    base_backup(archiving)
    archiving.switch_and_wait()
    r = pitr(archiving, target_dir, port, "--target-time", early.isoformat())
    assert r.rc == 8, r.out + r.err
    assert "before the end of the oldest usable base backup" in r.err
    assert not target_dir.exists()
    assert not list(target_dir.parent.glob("*.env"))
    lsn_before = cli(archiving, "pitr", "--target-lsn", "0/1", "--target-dir", str(target_dir))
    assert lsn_before.rc == 8 and not target_dir.exists()
    # Without --start: the folder is prepared and the steps are printed; nothing runs.
    cmd = ["pitr", "--target", "immediate", "--target-dir", str(target_dir), "--port", str(port)]
    prepared = cli(archiving, *cmd, "--coldcopy-command", archiving.command)
    assert prepared.rc == 0, prepared.err
    assert "to run the recovery" in prepared.out and "pg_ctl" in prepared.out
    assert (target_dir / "recovery.signal").exists() and (target_dir / "PG_VERSION").exists()
    auto = (target_dir / "postgresql.auto.conf").read_text()
    assert (
        "wal-fetch --spool " in auto
        and "%f %p" in auto
        and "recovery_target = 'immediate'" in auto
        and f"port = '{port}'" in auto
    )
    env_file = target_dir.parent / "data.coldcopy-restore.env"
    assert oct(env_file.stat().st_mode & 0o777) == "0o600"
    spool = target_dir.parent / "data.coldcopy-walspool"
    assert spool.is_dir() and oct(spool.stat().st_mode & 0o777) == "0o700"
    assert not (target_dir / "postmaster.pid").exists()
    again = cli(archiving, *cmd)
    assert again.rc == 8 and "not empty" in again.err


# -- wal-push / wal-fetch without a server -------------------------------------------------------
@pytest.fixture
def storage_env(s3_server: S3Server, bucket: str) -> dict[str, str]:
    return {
        "COLDCOPY_CLUSTER": "waltest",
        **s3_server.spaces_env(bucket),
        "BACKUP_ENCRYPTION_KEY": "wal-test-key",
        "COLDCOPY_ENV_FILE": os.devnull,
    }


def test_wal_push_is_create_only_and_refuses_different_content(
    storage_env: dict[str, str], tmp_path: Path
) -> None:
    seg = tmp_path / "pg_wal" / "000000010000000000000007"
    seg.parent.mkdir()
    seg.write_bytes(os.urandom(1000) + bytes(64 * 1024))
    assert run_cli(storage_env, "wal-push", str(seg)).rc == 0
    assert run_cli(storage_env, "wal-push", str(seg)).rc == 0  # the same bytes again: fine
    original = seg.read_bytes()
    seg.write_bytes(b"x" + original[1:])
    r = run_cli(storage_env, "wal-push", str(seg))
    assert r.rc == 7 and "DIFFERENT content" in r.err and "Nothing was overwritten" in r.err
    dest = tmp_path / "restored"
    assert run_cli(storage_env, "wal-fetch", seg.name, str(dest)).rc == 0
    assert dest.read_bytes() == original  # the first copy is still the stored one
    stored = open_context(load_settings(storage_env)).storage.get_bytes(wal_key(seg.name))
    assert original[:1000] not in stored  # compressed and encrypted at rest


def test_wal_fetch_absent_and_history_files(storage_env: dict[str, str], tmp_path: Path) -> None:
    r = run_cli(storage_env, "wal-fetch", "00000002.history", str(tmp_path / "h"))
    assert r.rc == 1 and not (tmp_path / "h").exists()
    hist = tmp_path / "00000002.history"
    hist.write_text("1\t0/3000000\tno recovery target specified\n")
    assert run_cli(storage_env, "wal-push", str(hist)).rc == 0
    assert wal_key(hist.name) == "wal/00000002/00000002.history"
    assert run_cli(storage_env, "wal-fetch", hist.name, str(tmp_path / "h")).rc == 0
    assert (tmp_path / "h").read_text() == hist.read_text()
    assert not list(tmp_path.glob(".*.tmp"))
    bad = run_cli(storage_env, "wal-fetch", "../../catalog.json", str(tmp_path / "x"))
    assert bad.rc == 2 and not (tmp_path / "x").exists()
    wrong_key = run_cli(
        {**storage_env, "BACKUP_ENCRYPTION_KEY": "another"}, "wal-fetch", hist.name, str(tmp_path / "y")
    )
    assert wrong_key.rc == 4 and not (tmp_path / "y").exists()


# -- planning, pure ---------------------------------------------------------------------------------
def _fake_base(name: str, start: str, stop: str, stop_time: str) -> Manifest:
    from coldcopy.core.manifest import StoredObject

    return Manifest(
        name=name, kind="base", database="db", cluster="c", started_at=stop_time, finished_at=stop_time,
        duration_seconds=1, server_version="15", server_version_num=150000, tool="pg_basebackup 15",
        data=StoredObject(f"backups/{name}/data", 1, "0", 1, "0"), compression={}, encryption={},
        extra={"start_wal_segment": start, "stop_wal_segment": stop, "stop_time": stop_time, "timeline": 1,
               "start_lsn": "0/2000028", "stop_lsn": "0/2000100", "wal_segment_size": 16 << 20},
    )  # fmt: skip


def test_plan_refuses_gaps_and_targets_beyond_the_archive() -> None:
    from coldcopy.core.lsn import Segment
    from coldcopy.core.recovery_plan import RecoveryRefused, Target, plan_recovery

    t0 = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
    base = _fake_base(
        "base_backup_db_20261124_120000", Segment(1, 2).name(), Segment(1, 2).name(), "2026-11-24T12:00:10Z"
    )
    archive = [(Segment(1, n).name(), t0.timestamp() + 60 * n) for n in (2, 3, 5, 6)]
    ok = plan_recovery([base], archive, Target("time", time=t0.replace(minute=2, second=30)))
    assert (ok.first_segment, ok.last_segment) == (Segment(1, 2).name(), Segment(1, 3).name())
    with pytest.raises(RecoveryRefused, match="gaps .*000000010000000000000004"):
        plan_recovery([base], archive, Target("time", time=t0.replace(minute=4, second=30)))
    with pytest.raises(RecoveryRefused, match="does not reach"):
        plan_recovery([base], archive, Target("time", time=t0.replace(minute=9)))
    with pytest.raises(RecoveryRefused, match="does not reach"):
        plan_recovery([base], archive, Target("lsn", lsn=8 << 24))
    with pytest.raises(RecoveryRefused, match="no base backup"):
        plan_recovery([], archive, Target("immediate"))
    assert plan_recovery([base], archive, Target("immediate")).last_segment == Segment(1, 2).name()


def test_wal_status_summary_is_pure_and_finds_unrecoverable_backups() -> None:
    from coldcopy.core.archive_report import summarize
    from coldcopy.core.lsn import Segment

    t0 = datetime(2026, 11, 24, 12, 0, tzinfo=UTC).timestamp()
    good = _fake_base(
        "base_backup_db_20261124_120000", Segment(1, 2).name(), Segment(1, 3).name(), "2026-11-24T12:00:10Z"
    )
    lost = _fake_base(
        "base_backup_db_20261124_130000", Segment(1, 8).name(), Segment(1, 8).name(), "2026-11-24T13:00:10Z"
    )
    archive = [(Segment(1, n).name(), t0 + 60 * n) for n in (2, 3, 4, 6)] + [("00000002.history", t0)]
    st = summarize(archive, [good, lost])
    assert not st.ok and st.history_files == ["00000002.history"]
    (tl,) = st.timelines
    assert (tl.count, tl.gaps) == (4, [(Segment(1, 5).name(), Segment(1, 5).name())])
    assert st.backups[0].ok and st.backups[0].recoverable_to_segment == Segment(1, 4).name()
    assert not st.backups[1].ok and st.backups[1].recoverable_to_segment == ""


def test_archiving_survives_storage_outage(archiving: Archiving) -> None:
    """S3 unreachable: wal-push fails (the segment stays in pg_wal); once it is back, it is archived."""
    good = archiving.env_file.read_text()
    dead = "".join(
        "DO_SPACES_ENDPOINT='http://127.0.0.1:9'\n" if line.startswith("DO_SPACES_ENDPOINT") else line + "\n"
        for line in good.splitlines()
    )
    archiving.env_file.write_text(dead)
    failed_before = archiving.sql("SELECT failed_count FROM pg_stat_archiver")[0][0]
    archiving.marker("during-outage")
    seg = archiving.sql("SELECT pg_walfile_name(pg_switch_wal())")[0][0]
    deadline = time.monotonic() + 60
    while archiving.sql("SELECT failed_count FROM pg_stat_archiver")[0][0] == failed_before:
        assert time.monotonic() < deadline, "the archiver never reported a failure"
        time.sleep(0.2)
    ready = archiving.cluster.data_dir / "pg_wal" / "archive_status" / f"{seg}.ready"
    assert ready.exists()  # PostgreSQL keeps the segment until the push succeeds
    archiving.env_file.write_text(good)
    archiving.marker("after-outage")  # new WAL, so the next switch wakes the archiver at once
    last = archiving.switch_and_wait(timeout=90)
    assert last > seg
    s = load_settings(archiving.env, env_file=Path(os.devnull))
    assert open_context(s).storage.exists(wal_key(seg))


# -- fast archiving: wal-pushd + the stdlib client ------------------------------------------------
def walclient_command(arch: Archiving, sock: Path) -> str:
    """archive_command through the client: the same interpreter as ``arch.command``, ``-S``, no site."""
    words = shlex.split(arch.command)
    python = words[-3] if words[-2:] == ["-m", "coldcopy"] else sys.executable
    lib = str(Path(__file__).resolve().parents[1] / "lib")
    return (
        shlex.join(
            ["env", f"PYTHONPATH={lib}", python, "-S", "-m", "coldcopy.walclient", "--socket", str(sock)]
        )
        + " %p"
    )


class PushDaemon:
    """``coldcopy wal-pushd`` as the postgres OS user, in its own process group (so it can be killed)."""

    def __init__(self, arch: Archiving, sock: Path, log: Path) -> None:
        self.arch, self.sock, self.log = arch, sock, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = ["env", f"COLDCOPY_ENV_FILE={self.arch.env_file}", *shlex.split(self.arch.command)]
        argv += ["wal-pushd", "--socket", str(self.sock)]
        if os.geteuid() == 0:
            argv = ["runuser", "-u", OWNER, "--", *argv]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=out, start_new_session=True)
        deadline = time.monotonic() + 30
        while not self.log.read_text().count("listening on"):
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, "wal-pushd did not start"
            time.sleep(0.05)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, 9)
            self.proc.wait(timeout=30)


def test_walclient_and_daemon_archive_and_survive_a_daemon_crash(archiving: Archiving) -> None:
    run = archiving.env_file.parent / "run"
    run.mkdir(mode=0o700)
    if os.geteuid() == 0:
        owner = pwd.getpwnam(OWNER)
        os.chown(run, owner.pw_uid, owner.pw_gid)
    sock, log = run / "walpushd.sock", archiving.env_file.parent / "walpushd.log"
    daemon = PushDaemon(archiving, sock, log)
    storage = open_context(load_settings(archiving.env, env_file=Path(os.devnull))).storage
    try:
        daemon.start()
        assert oct(sock.stat().st_mode & 0o777) == "0o600"
        archiving.sql(
            f"ALTER SYSTEM SET archive_command = {_sql_literal(walclient_command(archiving, sock))}"
        )
        archiving.sql("SELECT pg_reload_conf()")
        # The archiver re-reads its settings asynchronously: switch until a segment went through the daemon.
        first = ""
        for _ in range(5):
            archiving.marker("through-daemon")
            seg = archiving.switch_and_wait()
            if f"{seg} stored" in log.read_text():
                first = seg
                break
        assert first, log.read_text()
        assert storage.exists(wal_key(first))
        # The daemon dies (SIGKILL: a stale socket stays): archiving fails, PostgreSQL keeps the segment.
        daemon.kill()
        failed_before = archiving.sql("SELECT failed_count FROM pg_stat_archiver")[0][0]
        archiving.marker("daemon-down")
        lost = archiving.sql("SELECT pg_walfile_name(pg_switch_wal())")[0][0]
        deadline = time.monotonic() + 60
        while archiving.sql("SELECT failed_count FROM pg_stat_archiver")[0][0] == failed_before:
            assert time.monotonic() < deadline, "the archiver never reported a failure"
            time.sleep(0.1)
        assert (archiving.cluster.data_dir / "pg_wal" / "archive_status" / f"{lost}.ready").exists()
        assert not storage.exists(wal_key(lost))
        # Restarted (the stale socket is replaced): the backlog drains, nothing is missing.
        daemon.start()
        archiving.marker("daemon-back")
        last = archiving.switch_and_wait(timeout=90)
        assert last > lost and f"{lost} stored" in log.read_text()
        from coldcopy.wal.archive import archived_names

        names = [
            n
            for n, _ in archived_names(open_context(load_settings(archiving.env, env_file=Path(os.devnull))))
        ]
        from coldcopy.core.lsn import gaps

        assert gaps(names, 16 << 20, timeline=1, first=first, last=last) == []
    finally:
        daemon.kill()


def _sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def test_walclient_fails_without_daemon_and_refuses_foreign_users(tmp_path: Path) -> None:
    from coldcopy import walclient

    seg = tmp_path / "000000010000000000000009"
    seg.write_bytes(b"x")
    rc, msg = walclient.request(str(tmp_path / "absent.sock"), str(seg), timeout=5)
    assert rc == walclient.UNREACHABLE and "not reachable" in msg
    assert walclient.main(["--socket", str(tmp_path / "absent.sock"), str(seg)]) == walclient.UNREACHABLE
    assert walclient.main([str(seg)]) == 2  # no socket given


def test_wal_pushd_stores_and_refuses_conflicts_and_a_second_daemon(
    storage_env: dict[str, str], tmp_path: Path
) -> None:
    import threading

    from coldcopy import walclient
    from coldcopy.errors import ColdCopyError
    from coldcopy.wal.pushd import WalPushServer, run_pushd

    ctx = open_context(load_settings(storage_env))
    sock = tmp_path / "run" / "d.sock"
    servers: list[WalPushServer] = []
    t = threading.Thread(target=run_pushd, args=(ctx, sock), kwargs={"ready": servers.append}, daemon=True)
    t.start()
    deadline = time.monotonic() + 10
    while not servers:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    try:
        assert (
            oct(sock.stat().st_mode & 0o777) == "0o600" and oct(sock.parent.stat().st_mode & 0o777) == "0o700"
        )
        with pytest.raises(ColdCopyError, match="already listening"):
            WalPushServer(sock, ctx)
        seg = tmp_path / "00000001000000000000000A"
        seg.write_bytes(os.urandom(100) + bytes(8192))
        rc, msg = walclient.request(str(sock), str(seg))
        assert (rc, msg) == (0, f"{seg.name} stored as {wal_key(seg.name)}")
        rc, msg = walclient.request(str(sock), str(seg))
        assert rc == 0 and "already stored" in msg
        original = seg.read_bytes()
        seg.write_bytes(b"y" + original[1:])
        rc, msg = walclient.request(str(sock), str(seg))
        assert rc == 7 and "DIFFERENT content" in msg
        rc, msg = walclient.request(str(sock), str(tmp_path / "not-a-wal-name"))
        assert rc == 2
        assert walclient.request(str(sock), "relative/path") == (2, "expected 'push<TAB>/absolute/path'")
        assert unpack_stored(ctx, seg.name) == original
    finally:
        servers[0].shutdown()
        t.join(10)
    assert not sock.exists()


def unpack_stored(ctx: Any, name: str) -> bytes:
    from coldcopy.wal.archive import unpack

    return unpack(ctx, ctx.storage.get_bytes(wal_key(name)), wal_key(name))


def test_wal_fetch_prefetches_ahead_and_serves_from_the_spool(
    storage_env: dict[str, str], tmp_path: Path
) -> None:
    from coldcopy.core.lsn import Segment
    from coldcopy.wal import spool as walspool
    from coldcopy.wal.archive import push

    ctx = open_context(load_settings(storage_env))
    wal = tmp_path / "pg_wal"
    wal.mkdir()
    names = [Segment(1, n).name() for n in range(1, 8)]
    content = {}
    for name in names:
        content[name] = os.urandom(64) + bytes(4096)
        (wal / name).write_bytes(content[name])
        push(ctx, wal / name)
    spool = tmp_path / "spool"
    spool.mkdir()
    (spool / walspool.MANAGED).touch()  # as `pitr` makes it: takes hard-link

    def spooled() -> list[str]:
        return sorted(p.name for p in spool.iterdir() if not p.name.startswith("."))

    dest = tmp_path / "RECOVERYXLOG"
    fetch = ["wal-fetch", "--spool", str(spool), "--prefetch", "4"]
    assert run_cli(storage_env, *fetch, names[0], str(dest)).rc == 0
    assert dest.read_bytes() == content[names[0]]
    assert spooled() == names[1:5]
    # Gone from the archive: the next fetches can only be served from the spool.
    ctx.storage.delete([wal_key(n) for n in names[1:5]])
    for name in names[1:5]:
        assert run_cli(storage_env, *fetch, name, str(dest)).rc == 0
        assert dest.read_bytes() == content[name]
    # Each taken (hard-linked); the last two stay: the end of recovery may ask for them again.
    assert spooled() == names[3:5]
    assert run_cli(storage_env, *fetch, names[4], str(dest)).rc == 0  # asked again: still a hit
    assert run_cli(storage_env, *fetch, names[5], str(dest)).rc == 0  # a miss: from the archive again
    assert dest.read_bytes() == content[names[5]]
    assert spooled() == [names[4], names[6]]
    # Not archived, neither in the spool: the end of WAL.
    missing = Segment(1, 20).name()
    assert run_cli(storage_env, *fetch, missing, str(dest)).rc == 1
    # Without prefetch nothing is spooled.
    spool2 = tmp_path / "spool2"
    spool2.mkdir()
    no = run_cli(storage_env, "wal-fetch", "--spool", str(spool2), "--prefetch", "0", names[6], str(dest))
    assert no.rc == 0 and list(spool2.iterdir()) == []


def test_plan_follows_the_history_to_the_latest_timeline() -> None:
    from coldcopy.core.lsn import Segment
    from coldcopy.core.recovery_plan import RecoveryRefused, Target, parse_history, plan_recovery

    t0 = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
    base = _fake_base(
        "base_backup_db_20261124_120000", Segment(1, 2).name(), Segment(1, 2).name(), "2026-11-24T12:00:10Z"
    )
    hist = {2: parse_history("# comment\n1\t0/4800000\tbefore 2026-11-24 12:04:00+00\n")}
    assert hist[2] == [(1, 0x4800000)]
    tl1 = [(Segment(1, n).name(), t0.timestamp() + 60 * n) for n in (2, 3, 4)]
    tl2 = [(Segment(2, n).name(), t0.timestamp() + 60 * (n + 5)) for n in (4, 5, 6)]
    archive = [*tl1, *tl2, ("00000002.history", t0.timestamp() + 60 * 9)]
    target = Target("time", time=t0.replace(minute=10, second=30))
    p = plan_recovery([base], archive, target, histories=hist)
    assert (p.timeline, p.first_segment, p.last_segment) == (2, Segment(1, 2).name(), Segment(2, 6).name())
    assert "follows timelines 1 → 2" in p.notes
    # Without the history file only timeline 1 is known, and it does not reach the target.
    with pytest.raises(RecoveryRefused, match="does not reach"):
        plan_recovery([base], archive, target)
    # A hole on timeline 2 is a gap along the path; TL1's segment 4 is not needed (read from TL2).
    holed = [x for x in archive if x[0] not in (Segment(2, 4).name(), Segment(1, 4).name())]
    with pytest.raises(RecoveryRefused, match="gaps .*000000020000000000000004"):
        plan_recovery([base], holed, target, histories=hist)
    no_tl1_4 = [x for x in archive if x[0] != Segment(1, 4).name()]
    assert plan_recovery([base], no_tl1_4, target, histories=hist).last_segment == Segment(2, 6).name()
    # A timeline forked before the backup ended does not descend from it: stay on timeline 1.
    early = {2: [(1, 0x1000000)]}
    assert plan_recovery([base], archive, Target("immediate"), histories=early).timeline == 1


def test_pitr_promotes_to_timeline_2_archives_it_and_recovers_onto_it(archiving: Archiving) -> None:
    archiving.marker("before-backup")
    base_backup(archiving)
    archiving.marker("tl1")
    time.sleep(1.1)  # data separation around the target
    t1 = server_now(archiving)
    time.sleep(1.1)
    archiving.marker("tl1-after-target")
    archiving.switch_and_wait()
    base = Path(f"/tmp/coldcopy-tl2-{os.getpid()}-{time.monotonic_ns()}")
    base.mkdir(mode=0o755)
    ports = [free_port(), free_port()]
    copies = [PgCluster(base_dir=base / f"c{i}", port=p) for i, p in enumerate(ports)]
    try:
        for c in copies:
            c.base_dir.mkdir(mode=0o755, exist_ok=True)
        # First PITR, prepared only; the promoted copy archives (timeline 2) into the same archive.
        data = copies[0].data_dir
        r = cli(
            archiving, "pitr", "--target-time", t1.isoformat(), "--target-dir", str(data), "--port",
            str(ports[0]), "--coldcopy-command", archiving.command,
        )  # fmt: skip
        assert r.rc == 0, r.err
        archive_cmd = f"COLDCOPY_ENV_FILE={archiving.env_file} {archiving.command} wal-push %p"
        with (data / "postgresql.auto.conf").open("a") as f:
            f.write(f"archive_mode = 'on'\narchive_command = {_sql_literal(archive_cmd)}\n")
        log = base / "c0" / "pg.log"
        start = [str(archiving.cluster.bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "start"]
        if os.geteuid() == 0:
            subprocess.run(["chown", "postgres:postgres", str(base / "c0")], check=True)
            start = ["runuser", "-u", OWNER, "--", *start]
        assert subprocess.run(start, cwd="/", check=False).returncode == 0, log.read_text()
        copy = Archiving(copies[0], archiving.env, archiving.env_file, archiving.command)
        copy.cluster.port = ports[0]
        copy.cluster.host = "127.0.0.1"
        deadline = time.monotonic() + 60
        while True:
            try:
                if copy.sql("SELECT pg_is_in_recovery()")[0][0] is False:
                    break
            except Exception:  # noqa: BLE001 - not accepting connections yet
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        assert copy.sql("SELECT timeline_id FROM pg_control_checkpoint()")[0][0] == 2
        copy.marker("tl2")
        time.sleep(1.1)
        t2 = server_now(copy)
        time.sleep(1.1)
        copy.marker("tl2-after-target")
        seg = copy.switch_and_wait()
        assert seg.startswith("00000002")
        storage = open_context(load_settings(archiving.env, env_file=Path(os.devnull))).storage
        assert storage.exists(wal_key("00000002.history"))
        # Second PITR, onto timeline 2, from the timeline-1 base backup.
        r = pitr(archiving, copies[1].data_dir, ports[1], "--target-time", t2.isoformat())
        assert r.rc == 0, r.err
        out = json.loads(r.out)
        assert out["last_segment"].startswith("00000002"), out
        assert markers_at(archiving, ports[1]) == ["before-backup", "tl1", "tl2"]
    finally:
        for c in copies:
            c.destroy()
        subprocess.run(["rm", "-rf", str(base)], check=False)


def test_wal_sweep_streams_from_a_slot_and_archives_complete_segments(
    archiving: Archiving, tmp_path: Path
) -> None:
    env = {**archiving.env, "COLDCOPY_CLUSTER": "sweeptest", "COLDCOPY_ENV_FILE": os.devnull}
    folder = tmp_path / "recv"
    first = run_cli(env, "--json", "wal-sweep", "--dir", str(folder))
    assert first.rc == 0, first.err
    out = json.loads(first.out)
    assert out["slot"] == "coldcopy_sweeptest" and out["partial"].endswith(".partial")
    slots = archiving.sql("SELECT slot_name FROM pg_replication_slots")
    assert ["coldcopy_sweeptest"] in slots
    archiving.marker("swept")
    closed = archiving.sql("SELECT pg_walfile_name(pg_switch_wal())")[0][0]
    # The second sweep as a worker job (what the scheduler enqueues).
    from coldcopy.ops import queue as jobs
    from coldcopy.ops.worker import run_worker

    s = load_settings(env)
    storage = open_context(s).storage
    run_id = str(jobs.enqueue(storage, "wal-sweep", {"dir": str(folder)}))
    report = run_worker(s, heartbeat_seconds=0.05, storage=storage)
    assert [r["state"] for r in report.runs] == ["succeeded"], report.runs
    out2 = (stored_run(storage, run_id) or {}).get("result") or {}
    assert closed in out2["pushed"] and out2["partial"] > closed
    assert not (folder / closed).exists()  # pushed, then removed locally
    assert storage.exists(wal_key(closed))
    from coldcopy.wal.archive import unpack

    stored = unpack(open_context(s), storage.get_bytes(wal_key(closed)), wal_key(closed))
    assert len(stored) == 16 << 20
    archiving.sql("SELECT pg_drop_replication_slot('coldcopy_sweeptest')")


# -- the WAL feeder of `pitr --start` ---------------------------------------------------------------
MISS_LINE = "not in the spool: fetching it from the archive"  # wal-fetch's stderr line, in the server log


def feeder_threads() -> list[str]:
    import threading

    return [t.name for t in threading.enumerate() if t.name.startswith("coldcopy-walfeeder")]


def several_segments(arch: Archiving) -> datetime:
    """A base backup, then markers over a few segments; returns a target time before the last marker."""
    arch.marker("before-backup")
    base_backup(arch)
    for i in range(4):
        arch.marker(f"seg{i}")
        arch.switch_and_wait()
    time.sleep(1.1)  # data separation around the target
    target = server_now(arch)
    time.sleep(1.1)
    arch.marker("after-target")
    arch.switch_and_wait()
    return target


def test_pitr_start_serves_recovery_from_the_feeder(
    archiving: Archiving, recovered: tuple[Path, int]
) -> None:
    from coldcopy.core.recovery_plan import Target
    from coldcopy.restore.pitr import run_pitr

    target_dir, port = recovered
    target = several_segments(archiving)
    settings = load_settings(archiving.env, env_file=Path(os.devnull))
    r = run_pitr(
        settings, Target("time", time=target), target_dir, port=port, start=True,
        command=archiving.command, timeout=120,
    )  # fmt: skip
    text = Path(r.log_file).read_text()
    assert r.promoted, text
    assert markers_at(archiving, port) == ["before-backup", "seg0", "seg1", "seg2", "seg3"]
    # Without the feeder: the first segment, every fifth, and each history probe (00000002.history
    # at the start and the end, 00000001.history at the end) are misses.  With it, at most the
    # segment after the archive that read-ahead asks for.
    assert r.plan is not None and len(r.plan.segments) >= 5
    assert text.count(MISS_LINE) <= 1, text
    assert feeder_threads() == []  # stopped once promoted
    assert not (target_dir.parent / "data.coldcopy-walspool").exists()


def test_feeder_falls_back_to_wal_fetch_when_storage_fails(
    archiving: Archiving, recovered: tuple[Path, int]
) -> None:
    from coldcopy.core.recovery_plan import Target, plan_recovery
    from coldcopy.restore.pitr import base_manifests, load_archive, prepare_recovery, start_recovery

    target_dir, port = recovered
    target = several_segments(archiving)
    settings = load_settings(archiving.env, env_file=Path(os.devnull))
    ctx = open_context(settings)
    archive = load_archive(ctx)
    goal = Target("time", time=target)
    plan = plan_recovery(base_manifests(ctx), archive.names, goal, None, archive.histories)
    r = prepare_recovery(ctx, plan, goal, target_dir, port=port, command=archiving.command, timeout=120)
    # The feeder's storage is unreachable (nothing listens there); wal-fetch's own is fine.
    broken = open_context(
        load_settings({**archiving.env, "DO_SPACES_ENDPOINT": f"http://127.0.0.1:{free_port()}"},
                      env_file=Path(os.devnull))
    )  # fmt: skip
    start_recovery(settings, r, 120, ctx=broken)
    text = Path(r.log_file).read_text()
    assert r.promoted, text
    assert markers_at(archiving, port) == ["before-backup", "seg0", "seg1", "seg2", "seg3"]
    assert text.count(MISS_LINE) >= len(plan.segments)  # every segment through the fallback
    assert feeder_threads() == []
    assert not (target_dir.parent / "data.coldcopy-walspool").exists()


def test_feeder_fills_the_spool_in_order_owned_bounded_and_atomic(
    storage_env: dict[str, str], tmp_path: Path
) -> None:
    from coldcopy.core.lsn import Segment
    from coldcopy.wal import spool as walspool
    from coldcopy.wal.archive import push
    from coldcopy.wal.feeder import WalFeeder

    ctx = open_context(load_settings(storage_env))
    wal = tmp_path / "pg_wal"
    wal.mkdir()
    names = [Segment(2, n).name() for n in range(1, 7)]
    for name in [*names, "00000002.history"]:
        (wal / name).write_bytes(name.encode() * 100)
        push(ctx, wal / name)
    spool = tmp_path / "spool"
    spool.mkdir(mode=0o700)
    owner = pwd.getpwnam(OWNER) if os.geteuid() == 0 else pwd.getpwuid(os.geteuid())
    uid_gid = (owner.pw_uid, owner.pw_gid)
    feeder = WalFeeder(
        ctx, spool, histories=["00000002.history"], absent=["00000003.history"], segments=names,
        owner=uid_gid, window=3,
    ).start()  # fmt: skip
    try:
        assert feeder.wait_first(30)
        # The window: three segments, and no more until recovery takes one.
        deadline = time.monotonic() + 30
        while walspool.segments_in(spool) < 3 and time.monotonic() < deadline:
            feeder.wait_done(0.05)
        assert sorted(p.name for p in spool.iterdir() if walspool.is_segment(p.name)) == names[:3]
        assert feeder.alive and feeder.fed[:2] == ["00000002.history", "00000003.history.absent"]
        for p in spool.iterdir():
            st = p.stat()
            assert (st.st_uid, st.st_gid) == uid_gid and st.st_mode & 0o777 == 0o600, p
        dest = tmp_path / "RECOVERYXLOG"
        # History files are served again and again; an absent one answers "not archived".
        for _ in range(2):
            assert walspool.serve_file(spool, "00000002.history", dest) == 0
            assert dest.read_bytes() == b"00000002.history" * 100
        assert walspool.serve_file(spool, "00000003.history", dest) == 1
        assert walspool.serve_file(spool, "00000004.history", dest) is None
        for name in names:
            deadline = time.monotonic() + 30
            while not walspool.has(spool, name) and feeder.alive and time.monotonic() < deadline:
                feeder.wait_done(0.05)
            assert walspool.serve_file(spool, name, dest) == 0, name
            assert dest.read_bytes() == name.encode() * 100
        assert feeder.wait_done(30)  # ends by itself after the last planned segment
        # fetched two at a time, so completion order may differ; the window above shows the order asked
        assert sorted(feeder.fed[2:]) == names and feeder.failed == []
        assert not [p for p in spool.iterdir() if p.name.endswith(".tmp")]
    finally:
        feeder.stop()
    assert not feeder.alive


def test_the_postmaster_is_found_without_ptrace_and_a_stranger_never_is(
    pg: PgCluster, tmp_path: Path
) -> None:
    """In a container root lacks CAP_SYS_PTRACE and cannot read another user's /proc/<pid>/cwd: the
    postmaster is still recognised (from its public command line).  A pid file naming some other
    process (a crashed server whose pid was reused) is never taken for a server."""
    from coldcopy.postgres.server import postmaster_pid

    expected = int((pg.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
    assert postmaster_pid(pg.data_dir) == expected
    if os.geteuid() == 0 and Path("/usr/bin/setpriv").exists():
        code = (
            "import sys; from pathlib import Path; from coldcopy.postgres.server import postmaster_pid as p; "
        )
        code += "print(p(Path(sys.argv[1])))"
        proc = subprocess.run(
            ["setpriv", "--bounding-set", "-sys_ptrace", sys.executable, "-c", code, str(pg.data_dir)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == str(expected)
    stranger = tmp_path / "data"
    stranger.mkdir()
    (stranger / "postmaster.pid").write_text(f"{os.getpid()}\n{stranger}\n")
    assert postmaster_pid(stranger) is None


def test_a_history_file_archived_while_feeding_is_no_longer_answered_absent(
    storage_env: dict[str, str], tmp_path: Path
) -> None:
    """At its end recovery probes the next timelines' history again to pick a new timeline: one
    archived since the feeder started must not be answered "absent" (the copy would reuse its number)."""
    from coldcopy.wal import spool as walspool
    from coldcopy.wal.archive import push
    from coldcopy.wal.feeder import WalFeeder

    ctx = open_context(load_settings(storage_env))
    spool = tmp_path / "spool"
    spool.mkdir(mode=0o700)
    late = tmp_path / "00000003.history"
    late.write_bytes(b"2\t0/3000000\tno recovery target specified\n")
    feeder = WalFeeder(ctx, spool, histories=[], absent=["00000003.history"], segments=[], owner=None)

    def archive_meanwhile() -> None:  # another server promotes while this recovery replays
        assert (spool / ("00000003.history" + walspool.ABSENT_SUFFIX)).exists()
        push(ctx, late)

    feeder._feed_segments = archive_meanwhile  # type: ignore[method-assign]
    feeder.start()
    try:
        assert feeder.wait_done(30)
    finally:
        feeder.stop()
    assert not (spool / ("00000003.history" + walspool.ABSENT_SUFFIX)).exists()
    assert (
        walspool.serve_file(spool, "00000003.history", tmp_path / "RECOVERYHISTORY") is None
    )  # ask the archive
