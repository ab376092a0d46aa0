"""Restore drills of base backups (`verify --level restore` of kind ``base``), end to end and pure.

A real cluster archives through ``wal-push`` into the S3 server (``test_pitr.archiving``); a base
backup is taken and marker rows written after it.  The drill restores the backup into a throwaway
folder, recovers it to a random time between the backup's end and the newest archived commit,
checks the promoted server, records the measurement and removes everything.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from cli_helpers import spawn_cli
from coldcopy.config import load_settings
from coldcopy.context import open_context
from coldcopy.core.catalog import Catalog
from coldcopy.core.drill import choose_target, parse_waldump
from coldcopy.core.lsn import Segment, parse_lsn, wal_key
from coldcopy.core.manifest import CatalogEntry
from coldcopy.core.recovery_plan import reachable_segments
from coldcopy.core.recovery_time import (
    ASSUMED_REPLAY_RATE,
    base_throughput,
    replay_rate,
    throughput,
)
from coldcopy.core.times import iso, parse_iso
from coldcopy.core.verification import schedule_selection
from coldcopy.localstack.s3server import S3Server
from coldcopy.loopback import wait_until
from coldcopy.wal.monitor import refresh
from test_http_api import TOKEN, Api, start_host
from test_pitr import Archiving, _fake_base, base_backup, cli
from test_pitr import archiving as archiving  # noqa: F401 - the fixture, used through `arch`

MB = 1_000_000
CLEANUP = "scratch server stopped and folder removed"


# -- pure ------------------------------------------------------------------------------------------
def test_the_target_is_a_random_time_inside_the_window_or_immediate_without_commits() -> None:
    start = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
    end = start + timedelta(seconds=3)
    rng = random.Random(7)
    times = [choose_target(start, end, rng).time for _ in range(200)]
    assert all(t is not None and start <= t < end for t in times)
    assert len(set(times)) > 150, "spread over the window, not one fixed point"
    assert max(t for t in times if t) - min(t for t in times if t) > timedelta(seconds=2)
    one = start + timedelta(microseconds=1)
    assert choose_target(start, one, rng).time == start  # a commit 1 µs after the end: the only choice
    assert choose_target(start, None, rng).kind == "immediate"
    assert choose_target(start, start, rng).kind == "immediate"  # no commit AFTER the backup's end
    assert choose_target(start, start - timedelta(seconds=1), rng).kind == "immediate"


def test_commit_and_abort_records_are_read_from_pg_waldump_output() -> None:
    text = (
        "rmgr: Standby     len (rec/tot):     50/    50, tx:          0, lsn: 0/02000028, prev 0/01516660, "
        "desc: RUNNING_XACTS nextXid 725\n"
        "rmgr: Transaction len (rec/tot):    405/   405, tx:        725, lsn: 0/03016408, prev 0/030163C0, "
        "desc: COMMIT 2026-11-24 23:21:01.289828 UTC; inval msgs: catcache 80 snapshot 2608\n"
        "rmgr: Transaction len (rec/tot):     34/    34, tx:        727, lsn: 0/03016648, prev 0/03016608, "
        "desc: ABORT 2026-11-24 23:21:02.345979 UTC\n"
        "pg_waldump: error: error in WAL record at 0/30166A8: invalid record length\n"
    )
    commits = parse_waldump(text)
    assert [(c.lsn, iso(c.at)) for c in commits] == [
        (parse_lsn("0/03016408"), "2026-11-24T23:21:01.289828Z"),
        (parse_lsn("0/03016648"), "2026-11-24T23:21:02.345979Z"),
    ]
    assert parse_waldump("desc: COMMIT 2026-11-24 23:21:01.289828 CET") == []  # only UTC is trusted


def test_reachable_segments_stop_at_the_first_gap_and_need_the_backups_own_wal() -> None:
    base = _fake_base(
        "base_backup_db_20261124_120000", Segment(1, 2).name(), Segment(1, 3).name(), "2026-11-24T12:00:10Z"
    )
    names = [(Segment(1, n).name(), 0.0) for n in (1, 2, 3, 4, 6, 7)]
    assert reachable_segments(base, names) == [Segment(1, n).name() for n in (2, 3, 4)]
    assert reachable_segments(base, [x for x in names if x[0] != Segment(1, 3).name()]) == []
    assert reachable_segments(base, []) == []


def test_the_weekly_selection_drills_base_backups_too() -> None:
    t = datetime(2026, 11, 24, 2, 0, tzinfo=UTC)
    entries = [
        _entry("full_backup_app_20261124_020000", "full", t),
        _entry("base_backup_app_20261124_030000", "base", t + timedelta(hours=1)),
        _entry("base_backup_app_20261117_030000", "base", t - timedelta(days=7)),
    ]
    proven = {"restore_proof": {"restore_level_at": iso(t)}}
    new, sampled = schedule_selection(entries, {entries[2].name: proven}, 1, "2026-W48")
    assert new == [entries[1].name, entries[0].name]
    assert sampled == [entries[2].name]


def _entry(name: str, kind: str, when: datetime, raw: int = 100 * MB) -> CatalogEntry:
    return CatalogEntry(name, kind, "app", iso(when), iso(when), 5.0, raw // 4, raw, True, "k", "15.18")


def _proof(at: datetime, m: dict[str, Any], ok: bool = True) -> dict[str, Any]:
    return {"level": "restore", "ok": ok, "restore_proof": {"at": iso(at), "level": "restore", "ok": ok,
            "measurement": m, "restore_level_at": iso(at)}}  # fmt: skip


def test_replay_rate_comes_from_drills_and_base_restores_do_not_skew_the_dump_rate() -> None:
    now = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
    full = _entry("full_backup_app_20261123_020000", "full", now - timedelta(days=1))
    b1 = _entry("base_backup_app_20261122_030000", "base", now - timedelta(days=2))
    b2 = _entry("base_backup_app_20261123_030000", "base", now - timedelta(days=1))
    bad = _entry("base_backup_app_20261124_030000", "base", now - timedelta(hours=9))
    dump = {"raw_bytes": 100 * MB, "restore_seconds": 10.0}  # 10 MB/s of dump
    drill1 = {"kind": "base", "raw_bytes": 400 * MB, "restore_seconds": 2.0, "promoted": True,
              "replay_bytes": 150 * MB, "replay_seconds": 3.0}  # fmt: skip
    drill2 = {**drill1, "replay_bytes": 450 * MB, "replay_seconds": 3.0}
    failed = {**drill1, "replay_bytes": 1, "replay_seconds": 100.0}
    tiny = {**drill1, "replay_bytes": 5 * MB, "replay_seconds": 2.0}  # mostly start-up: not a rate
    small = _entry("base_backup_app_20261124_040000", "base", now - timedelta(hours=8))
    cat = Catalog(
        backups={e.name: e for e in (full, b1, b2, bad, small)},
        verifications={
            full.name: _proof(now - timedelta(hours=20), dump),
            b1.name: _proof(now - timedelta(hours=30), drill1),
            b2.name: _proof(now - timedelta(hours=6), drill2),
            bad.name: _proof(now - timedelta(hours=5), failed, ok=False),  # a failed drill measures nothing
            small.name: _proof(now - timedelta(hours=4), tiny),
        },
    )
    assert throughput(cat, now).bytes_per_second == 10 * MB, "base drills stay out of the dump rate"
    assert base_throughput(cat, now).bytes_per_second == 200 * MB and base_throughput(cat, now).measured
    r = replay_rate(cat, now)
    assert r.measured and r.bytes_per_second == 600 * MB / 6.0, "total bytes over total seconds"
    assert r.newest_at == iso(now - timedelta(hours=6)) and r.age_seconds == 6 * 3600
    assert "2 newest base-backup drill(s)" in r.basis and "6.0 h old" in r.basis
    without = Catalog(backups={full.name: full}, verifications={full.name: _proof(now, dump)})
    assert replay_rate(without, now).bytes_per_second == ASSUMED_REPLAY_RATE
    assert not replay_rate(without, now).measured and "ASSUMED" in replay_rate(without, now).basis
    assert "the dump rate stands in" in base_throughput(without, now).basis
    only_tiny = Catalog(backups={small.name: small}, verifications={small.name: _proof(now, tiny)})
    r = replay_rate(only_tiny, now)
    assert not r.measured and r.bytes_per_second == ASSUMED_REPLAY_RATE
    assert "replayed under 64 MB each" in r.basis


# -- end to end ------------------------------------------------------------------------------------
@pytest.fixture
def arch(request: pytest.FixtureRequest) -> Archiving:
    """An archiving cluster whose settings tell the drill how the postgres OS user runs coldcopy."""
    a: Archiving = request.getfixturevalue("archiving")
    a.env = {**a.env, "COLDCOPY_SERVER_COMMAND": a.command, "COLDCOPY_ENV_FILE": os.devnull}
    return a


def verify_restore(arch: Archiving, name: str) -> tuple[int, dict[str, Any]]:
    r = cli(arch, "--json", "verify", name, "--level", "restore")  # cli() sets COLDCOPY_ENV_FILE
    assert r.out, r.err
    return r.rc, json.loads(r.out)


def check(out: dict[str, Any], name: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [c for c in out["checks"] if c["name"] == name]
    assert len(found) == 1, (name, out["checks"])
    return found[0]


def assert_nothing_left(out: dict[str, Any]) -> None:
    cleanup = check(out, CLEANUP)
    assert cleanup["ok"] is True, cleanup
    folder = cleanup["detail"].split(":")[0]
    assert folder.startswith("/") and "coldcopy-drill-" in folder
    assert not Path(folder).exists()
    assert server_processes_in(folder) == []


def server_processes_in(folder: str) -> list[int]:
    """postgres processes whose working directory is (or was) inside ``folder``."""
    pids = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            cwd, exe = os.readlink(entry / "cwd"), os.readlink(entry / "exe")
        except OSError:
            continue
        if cwd.startswith(folder) and exe.endswith("postgres"):
            pids.append(int(entry.name))
    return pids


def recovery_time(arch: Archiving) -> dict[str, Any]:
    r = cli(arch, "--json", "recovery-time")
    assert r.rc == 0, r.err
    est: dict[str, Any] = json.loads(r.out)
    return est


def pitr_now(est: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = next(s for s in est["scenarios"] if s["scenario"] == "pitr-now")
    return found


def test_drill_recovers_to_a_random_time_records_the_replay_and_feeds_recovery_time(arch: Archiving) -> None:
    arch.marker("before-backup")
    m = base_backup(arch)
    first = arch.marker("after-backup-1")
    arch.marker("after-backup-2")
    last = arch.marker("after-backup-3")
    newest_segment = arch.switch_and_wait()
    storage = open_context(load_settings(arch.env)).storage
    refresh(storage)  # what the tick does: the WAL window recovery-time reads

    before = recovery_time(arch)
    assert before["replay"]["measured"] is False
    assert pitr_now(before)["available"] is True and pitr_now(before)["replay_measured"] is False
    assumed = f"ASSUMED {ASSUMED_REPLAY_RATE / 1e6:.0f} MB/s of WAL replay; not measured"
    assert assumed in pitr_now(before)["how"]

    rc, out = verify_restore(arch, m.name)
    assert rc == 0, json.dumps(out, indent=1)
    assert out["ok"] is True and out["level"] == "restore"
    meas = out["measurement"]
    assert meas["kind"] == "base" and meas["promoted"] is True
    assert meas["raw_bytes"] == m.data.raw_size and meas["restore_seconds"] > 0
    assert meas["throughput_bytes_per_second"] == pytest.approx(
        m.data.raw_size / meas["restore_seconds"], 1e-2
    )
    # The window: from the backup's end to the newest archived commit (the last marker's).
    start, end = parse_iso(meas["window_start"]), parse_iso(meas["window_end"])
    assert start == parse_iso(m.extra["stop_time"]) and start < first
    assert last < end < last + timedelta(seconds=5)  # now() is the transaction's start, before its commit
    target = parse_iso(meas["recovery_target_time"])
    assert start <= target < end
    if meas["reached_time"] is not None:
        assert parse_iso(meas["reached_time"]) <= target
    # WAL replayed from the backup's start to at least its end.
    reached, start_lsn = parse_lsn(meas["reached_lsn"]), parse_lsn(m.extra["start_lsn"])
    assert reached >= parse_lsn(m.extra["stop_lsn"]) and meas["replay_bytes"] == reached - start_lsn > 0
    assert meas["replay_seconds"] > 0
    assert check(out, "every file matches backup_manifest (pg_verifybackup)")["ok"] is True
    assert check(out, "the recovered server answers queries and takes writes")["ok"] is True
    assert_nothing_left(out)

    # The record: list-backups shows it, the catalog keeps the proof with the measurement.
    listed = json.loads(cli(arch, "--json", "list-backups", "--kind", "base").out)
    row = next(r for r in listed if r["name"] == m.name)
    assert row["verification_ok"] is True and row["verification_level"] == "restore"
    proof = open_context(load_settings(arch.env)).catalog.read().verifications[m.name]["restore_proof"]
    assert proof["ok"] is True and proof["measurement"]["replay_bytes"] == meas["replay_bytes"]

    # recovery-time sees the drill; it replayed a few MB (mostly the server's start-up), too little to
    # stand for a replay rate, so the rate stays the labelled assumption and says why.
    after = recovery_time(arch)
    assert meas["replay_bytes"] < 64 << 20
    assert after["replay"]["measured"] is False and "replayed under 64 MB each" in after["replay"]["basis"]
    p = pitr_now(after)
    assert p["replay_measured"] is False and "1 drill(s) so far replayed under 64 MB" in p["how"]
    # The archive spans minutes, not the hour a WAL rate needs: the volume stays a labelled assumption.
    assert "ASSUMED" in p["how"] and p["wal_rate_measured"] is False

    # POST /verify/<base> and POST /restore-test with a base backup: queued, run by the worker, drilled.
    running = start_host(load_settings({**arch.env, "MONITOR_TOKEN": TOKEN, "COLDCOPY_LAUNCHER": "none"}))
    try:
        api = Api(running.server.url)
        runs = [
            api.json("POST", f"/verify/{m.name}", status=202)["run_id"],
            api.json("POST", "/restore-test", status=202, json_body={"name": m.name})["run_id"],
        ]
        w = cli(arch, "--json", "worker")
        assert w.rc == 0, w.err
        for run_id in runs:
            run = api.json("GET", f"/runs/{run_id}")
            assert run["state"] == "succeeded", run
            assert run["result"]["level"] == "restore" and run["result"]["measurement"]["promoted"] is True
            assert_nothing_left(run["result"])
        rows = api.json("GET", "/backups?kind=base")["backups"]
        assert rows[0]["name"] == m.name and rows[0]["verification_ok"] is True
    finally:
        running.stop()

    # No WAL after the backup reachable (the newest segment is gone): the end of the backup, said so.
    storage.delete([wal_key(newest_segment)])
    rc, out = verify_restore(arch, m.name)
    assert rc == 0, json.dumps(out, indent=1)
    meas = out["measurement"]
    assert meas["recovery_target"].endswith("(immediate)") and meas["recovery_target_time"] is None
    assert "--target immediate" in check(out, "recovery target")["detail"]
    assert meas["promoted"] is True and meas["window_end"] is None
    assert parse_lsn(meas["reached_lsn"]) >= parse_lsn(m.extra["stop_lsn"])
    assert_nothing_left(out)


def test_failed_drills_are_recorded_and_leave_no_server_and_no_folder(arch: Archiving) -> None:
    arch.marker("before-backup")
    m = base_backup(arch)
    arch.marker("after-backup")
    arch.switch_and_wait()
    storage = open_context(load_settings(arch.env)).storage
    catalog = open_context(load_settings(arch.env)).catalog
    first = wal_key(m.extra["start_wal_segment"])
    original = storage.get_bytes(first)

    # The segment the recovery starts with is damaged: the server starts, cannot read it, and stops.
    damaged = bytearray(original)
    damaged[len(damaged) // 2] ^= 1
    storage.put_bytes(first, bytes(damaged))
    rc, out = verify_restore(arch, m.name)
    assert rc == 4 and out["ok"] is False
    promoted = check(out, "recovered and promoted")
    assert promoted["ok"] is False and "stopped before it was promoted" in promoted["detail"]
    assert out["measurement"]["promoted"] is False and out["measurement"]["raw_bytes"] == m.data.raw_size
    assert_nothing_left(out)
    record = catalog.read().verifications[m.name]
    assert record["ok"] is False and record["restore_proof"]["ok"] is False

    # The segment is missing: refused before anything is restored.
    storage.delete([first])
    rc, out = verify_restore(arch, m.name)
    assert rc == 4 and "is not all archived" in check(out, "restore drill")["detail"]
    assert out["measurement"] is None
    assert_nothing_left(out)

    # The base backup itself is damaged: its chunk fails to authenticate while it is extracted.
    storage.put_bytes(first, original)
    key = m.data.pieces()[0][0]  # the first volume
    blob = bytearray(storage.get_bytes(key))
    blob[len(blob) // 2] ^= 1
    storage.put_bytes(key, bytes(blob))
    rc, out = verify_restore(arch, m.name)
    assert rc == 4 and check(out, "restore drill")["ok"] is False
    assert out["measurement"]["promoted"] is False and "restore_seconds" not in out["measurement"]
    assert_nothing_left(out)
    listed = json.loads(cli(arch, "--json", "list-backups", "--kind", "base").out)
    assert next(r for r in listed if r["name"] == m.name)["verification_ok"] is False


def test_a_backup_of_a_standby_is_drilled_from_the_archive_alone(arch: Archiving) -> None:
    """A standby's base backup carries standby.signal and primary_conninfo.  Kept, they would make the
    drill a standby: a damaged archive would be papered over by streaming from the live primary (a
    false success) and the drill would use the real server's slot.  The drill recovers from the
    archive alone, so the damage fails it."""
    c = arch.cluster
    conninfo = f"host={c.host} port={c.port} user={c.user} password={c.password}"
    arch.sql(f"ALTER SYSTEM SET primary_conninfo = '{conninfo}'")
    signal_file = c.write_data_file("standby.signal", "")  # read only at start-up: the primary stays one
    try:
        arch.marker("before-backup")
        m = base_backup(arch)
    finally:
        signal_file.unlink()
        arch.sql("ALTER SYSTEM RESET primary_conninfo")
    arch.marker("after-backup")
    arch.switch_and_wait()
    storage = open_context(load_settings(arch.env)).storage
    first = wal_key(m.extra["start_wal_segment"])
    damaged = bytearray(storage.get_bytes(first))
    damaged[len(damaged) // 2] ^= 1
    storage.put_bytes(first, bytes(damaged))
    rc, out = verify_restore(arch, m.name)
    assert rc == 4 and out["ok"] is False, out["checks"]
    assert check(out, "recovered and promoted")["ok"] is False
    assert_nothing_left(out)


def test_a_sigterm_during_a_drill_still_removes_the_server_and_the_folder(arch: Archiving) -> None:
    """A stopped worker (SIGTERM) unwinds like Ctrl-C: the server stops, the copy of the data and the
    storage secrets go.  The restore_command here blocks (and says so), holding the drill in recovery."""
    arch.marker("before-backup")
    m = base_backup(arch)
    arch.marker("after-backup")
    arch.switch_and_wait()
    hold = Path(tempfile.mkdtemp(prefix="coldcopy-hold-"))
    hold.chmod(0o777)  # the script runs as the server's OS user and writes its pid here
    blocked = hold / "blocked"
    script = hold / "restore.sh"
    script.write_text(f"#!/bin/sh\necho $$ > {blocked}.tmp && mv {blocked}.tmp {blocked}\nexec sleep 300\n")
    script.chmod(0o755)
    env = {**arch.env, "COLDCOPY_SERVER_COMMAND": str(script)}
    earlier = set(Path(tempfile.gettempdir()).glob("coldcopy-drill-*"))
    proc = spawn_cli(env, "--json", "verify", m.name, "--level", "restore")
    try:
        # the server is up and recovery waits on restore_command (or the drill ended early)
        wait_until(lambda: blocked.exists() or proc.poll() is not None, timeout=120)
        if not blocked.exists():
            proc.kill()
            raise AssertionError(f"recovery never asked for WAL: {proc.communicate(timeout=30)[1][-2000:]}")
        drills = set(Path(tempfile.gettempdir()).glob("coldcopy-drill-*")) - earlier
        folders = [f for f in drills if server_processes_in(str(f))]
        assert len(folders) == 1
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 143 and "terminated" in err, err[-2000:]
        assert not folders[0].exists() and server_processes_in(str(folders[0])) == []
    finally:
        if proc.poll() is None:
            proc.kill()
        if blocked.exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(blocked.read_text()), signal.SIGKILL)
        shutil.rmtree(hold, ignore_errors=True)


def test_a_drill_of_a_missing_backup_fails_before_anything_is_made(s3_server: S3Server, bucket: str) -> None:
    from coldcopy.verify.base_drill import run_base_drill

    env = {
        "COLDCOPY_CLUSTER": "drilltest",
        **s3_server.spaces_env(bucket),
    }
    r = run_base_drill(load_settings(env, env_file=Path(os.devnull)), "base_backup_postgres_20260101_000000")
    assert r.ok is False and r.measurement is None
    assert [c.name for c in r.checks] == ["manifest readable"] and "no backup named" in r.checks[0].detail
