"""The logical PITR drill (the weekly verification and POST /restore-test): the change archive
recovered to a random time in its window into a scratch database, checked against the archive
(heartbeat, row counts, shape), measured and recorded; failing with a clear reason, with nothing
touched but the scratch, when a batch is damaged.  Plain PostgreSQL with wal_level=logical (the
scratch on the same server, so the test sees that nothing else changes) and a real S3 server."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pg8000.native
import pytest

import test_changes
from cli_helpers import run_cli
from coldcopy.config import Settings, load_settings
from coldcopy.context import open_context
from coldcopy.core.changes import Batch, SnapshotVisibility
from coldcopy.core.manifest import StoredObject
from coldcopy.core.pitr_drill import (
    Tally,
    aim_drill,
    choose_time,
    count_differences,
    expected_counts,
    replay_figures,
    run_ends,
)
from coldcopy.core.recovery_plan import Target
from coldcopy.core.replay import Dump
from coldcopy.core.verification import drill_proof
from coldcopy.ops.worker import HANDLERS
from coldcopy.postgres.cluster import PgCluster
from coldcopy.restore.replay import batch_records, logical_dumps
from coldcopy.verify.pitr_drill import run_pitr_drill
from coldcopy.verify.scheduled import run_scheduled

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
lpg, env = test_changes.lpg, test_changes.env  # the logical cluster and a database in it


class Fraction(random.Random):
    """A random source that always draws ``fraction`` (the drill's target, chosen by the test)."""

    def __init__(self, fraction: float) -> None:
        super().__init__(0)
        self.fraction = fraction

    def random(self) -> float:
        return self.fraction


# -- pure ------------------------------------------------------------------------------------------
def _line(**row: Any) -> str:
    return json.dumps(row, separators=(",", ":"))


def test_the_tally_follows_the_recovery_and_moves_the_dump_counts_on() -> None:
    vis = SnapshotVisibility.parse("100:102:", "0/10")
    target = Target("time", time=T0 + timedelta(seconds=3))
    tally = Tally(vis, target)

    def txn(xid: int, sec: int, *rows: dict[str, Any]) -> None:
        at = f"2026-12-01 12:00:0{sec}.5+00"
        tally.feed(_line(action="B", xid=xid, timestamp=at, lsn=f"0/{xid:X}", nextlsn="0/0"))
        for r in rows:
            tally.feed(_line(**r))
        tally.feed(_line(action="C", xid=xid, timestamp=at, lsn=f"0/{xid:X}", nextlsn="0/0"))

    ins = {"action": "I", "schema": "public", "table": "t", "columns": []}
    beat = {"action": "U", "schema": "coldcopy", "table": "heartbeat"}
    txn(99, 0, ins, ins)  # in the dump
    txn(102, 1, ins, ins, ins, {"action": "D", "schema": "public", "table": "t"})
    txn(103, 2, {"action": "T", "schema": "public", "table": "gone"}, {**ins, "table": "gone"},
        {**beat, "columns": [{"name": "at", "value": "2026-12-01 12:00:02.25+00"}]})  # fmt: skip
    txn(104, 4, ins, {**beat, "columns": [{"name": "at", "value": "2026-12-01 12:00:04+00"}]})  # after
    assert tally.done and tally.transactions == 2
    assert tally.heartbeat == T0 + timedelta(seconds=2.25)
    assert tally.heartbeat_commit == T0 + timedelta(seconds=2.5)
    expected = expected_counts({"public.t": 10, "public.gone": 7, "public.other": 3}, tally)
    assert expected == {"public.t": 12, "public.gone": 1, "public.other": 3}
    assert count_differences(expected, {**expected, "public.t": 11}, ddl=False) == [
        "public.t: expected 12, found 11"
    ]
    assert count_differences(expected, {"public.t": 12}, ddl=True) == []
    assert count_differences(expected, {"public.t": 12}, ddl=False)  # a table missing without DDL
    assert replay_figures(50, 2.0, 3600.0) == {
        "replay_transactions_per_second": 25.0,
        "history_seconds": 3600.0,
        "history_per_replay_second": 1800.0,
    }


def test_the_drill_target_is_random_in_the_window_and_never_while_a_dump_ran() -> None:
    vis = SnapshotVisibility(1, 1, ())
    dump = Dump("full_backup_x_1", T0 + timedelta(minutes=10), T0 + timedelta(minutes=12), vis)
    end = T0 + timedelta(hours=1)
    assert choose_time(T0, end, [dump], Fraction(0.5)) == T0 + timedelta(minutes=30)
    assert choose_time(T0, end, [dump], Fraction(10.5 / 60)) == dump.finished_at
    late = Dump("full_backup_x_2", end - timedelta(minutes=1), end + timedelta(minutes=5), vis)
    assert choose_time(T0, end, [late], Fraction(0.999)) == end
    seen = {choose_time(T0, end, [], random.Random(s)) for s in range(20)}
    assert len(seen) == 20 and all(T0 <= t <= end for t in seen)


def test_the_drill_aims_at_the_newest_window_and_says_when_the_newest_commit_is_out_of_reach() -> None:
    def batch(start: str, end: str, minute: int) -> Batch:
        first, last = f"2026-12-01 12:{minute:02d}:00+00", f"2026-12-01 12:{minute + 1:02d}:00+00"
        return Batch(f"k{start}", start, end, 1, first, last, 1)

    dump = Dump("full_backup_db_1", T0, T0 + timedelta(seconds=30), SnapshotVisibility(5, 6, (), "0/150"))
    whole = [batch("0/100", "0/200", 5), batch("0/200", "0/300", 10)]
    gapped = [*whole, batch("0/400", "0/500", 20)]  # the slot moved on without a batch: a gap
    assert run_ends(gapped) == [T0 + timedelta(minutes=21), T0 + timedelta(minutes=11)]
    aimed = aim_drill(whole, [dump], Fraction(1.0))
    assert aimed is not None and aimed[2] is None and aimed[1].window_end == T0 + timedelta(minutes=11)
    aimed = aim_drill(gapped, [dump], Fraction(1.0))
    assert aimed is not None  # drilled where it can be, and the newest commit's refusal said
    plan, window, unreachable = aimed
    assert window.window_end == T0 + timedelta(minutes=11) and plan.target.time == window.window_end
    assert unreachable and "gap" in unreachable
    assert aim_drill(gapped, [], Fraction(0.5)) is None  # no dump the stream extends: nothing to prove


def test_a_drill_record_is_carried_forward_until_the_next_drill() -> None:
    drill = {"level": "pitr", "ok": True, "measurement": {"replay_transactions_per_second": 5.0}}
    proof = drill_proof(drill, "2026-12-01T12:00:00Z", None)
    assert proof == {"at": "2026-12-01T12:00:00Z", "measurement": drill["measurement"]}
    later = {"level": "restore", "ok": True, "measurement": {"restore_seconds": 1}}
    assert drill_proof(later, "2026-12-02T12:00:00Z", {"pitr_drill": proof}) == proof
    failed = {**drill, "ok": False}
    assert drill_proof(failed, "2026-12-03T12:00:00Z", {"pitr_drill": proof}) == proof
    assert drill_proof(later, "2026-12-02T12:00:00Z", None) is None


# -- on a real cluster -------------------------------------------------------------------------------
def _settings(env: dict[str, str], lpg: PgCluster) -> Settings:
    """The scratch target is the source's own server: the test sees every database on it."""
    return load_settings(
        {
            **env,
            "VERIFY_DB_HOST": lpg.host,
            "VERIFY_DB_PORT": str(lpg.port),
            "VERIFY_DB_USER": lpg.user,
            "VERIFY_DB_PASSWORD": lpg.password,
            "VERIFY_DB_SSLMODE": "disable",
        }
    )


def _databases(lpg: PgCluster) -> list[str]:
    conn = lpg.connect()
    try:
        return sorted(str(r[0]) for r in conn.run("SELECT datname FROM pg_database"))
    finally:
        conn.close()


def _source(conn: pg8000.native.Connection) -> list[Any]:
    return [
        conn.run("SELECT phase FROM status"),
        conn.run("SELECT count(*), max(id) FROM t"),
        conn.run("SELECT a, b FROM nokey ORDER BY a, b"),
        conn.run("SELECT at FROM coldcopy.heartbeat"),
    ]


def _drain(env: dict[str, str], conn: pg8000.native.Connection) -> datetime:
    r = run_cli(env, "--json", "changes", "drain")
    assert r.rc == 0, r.err
    at: datetime = conn.run("SELECT at FROM coldcopy.heartbeat")[0][0]
    return at


@pytest.mark.timeout(240)
def test_the_drill_passes_on_a_good_archive_and_fails_on_a_damaged_batch(
    lpg: PgCluster, env: dict[str, str], tmp_path: Any
) -> None:
    conn = lpg.connect(env["DB_NAME"])
    conn.run("SET synchronous_commit = on")
    conn.run("CREATE TABLE status (id int PRIMARY KEY, phase text)")
    conn.run("INSERT INTO status VALUES (1, 'backup')")
    conn.run("CREATE TABLE t (id serial PRIMARY KEY, v text)")
    conn.run("CREATE TABLE nokey (a int, b text)")
    conn.run("ALTER TABLE nokey REPLICA IDENTITY FULL")
    conn.run("INSERT INTO t (v) SELECT 'seed' FROM generate_series(1, 20)")
    owner = f"owner_{env['DB_NAME']}"  # a role only the source's server has
    conn.run(f"CREATE ROLE {owner}")
    conn.run(f"ALTER TABLE nokey OWNER TO {owner}")
    conn.run(f"GRANT SELECT ON status TO {owner}")
    assert run_cli(env, "changes", "setup").rc == 0
    assert run_cli(env, "backup").rc == 0
    conn.run("UPDATE status SET phase = 'one'")
    conn.run("INSERT INTO t (v) SELECT 'one' FROM generate_series(1, 30)")
    conn.run("INSERT INTO nokey VALUES (1, 'a'), (1, 'a'), (2, 'b')")
    first = _drain(env, conn)
    conn.run("UPDATE status SET phase = 'two'")
    conn.run("DELETE FROM t WHERE id <= 5")
    conn.run("DELETE FROM nokey WHERE a = 2")
    second = _drain(env, conn)
    # The drill's target falls here: after the second drain, before anything later.
    mid = conn.run("SELECT clock_timestamp()")[0][0]
    conn.run("UPDATE status SET phase = 'three'")
    conn.run("INSERT INTO t (v) SELECT 'three' FROM generate_series(1, 7)")
    # A person erased after the target: the drill's replay brings their 30 rows back and its
    # erasure ledger removes them again; the counts are checked as replayed, before the ledger.
    config = tmp_path / "erasures.json"
    lead = {
        "statements": ["DELETE FROM t WHERE v = :subject"],
        "check": "SELECT count(*) FROM t WHERE v = :subject",
    }
    config.write_text(json.dumps({"kinds": {"lead": lead}}))
    gdpr = {**env, "GDPR_ERASURE_CONFIG": str(config)}
    erased = run_cli(gdpr, "gdpr", "erase", "--subject", "one", "--kind", "lead")
    assert erased.rc == 0, erased.err
    _drain(env, conn)
    assert first < second

    settings = _settings(env, lpg)
    ctx = open_context(settings)
    records = batch_records(ctx)
    dump = logical_dumps(ctx)[0]
    newest = max(_at(r["last_commit_at"]) for _, r in records)
    fraction = (mid - dump.started_at) / (newest - dump.started_at)
    before, source = _databases(lpg), _source(conn)

    report = run_scheduled(settings, ctx=ctx, rng=Fraction(fraction))
    drill = report["pitr_drill"]
    assert report["ok"] and drill["ok"], drill
    m = drill["measurement"]
    assert drill["name"] == dump.name and m["backup"] == dump.name
    assert abs(datetime.fromisoformat(m["recovery_target_time"].replace("Z", "+00:00")) - mid) < timedelta(
        milliseconds=1
    )
    assert datetime.fromisoformat(m["heartbeat_at"]) == second  # the last drain before the target
    assert m["replay_transactions"] >= 6 and m["replay_transactions_per_second"] > 0
    assert m["history_per_replay_second"] > 0 and m["restore_seconds"] > 0
    assert _databases(lpg) == before and _source(conn) == source
    verification = ctx.catalog.read().verifications[dump.name]
    assert verification["level"] == "pitr" and verification["ok"]
    checks = {c["name"]: c for c in verification["checks"]}
    assert checks["every table's row count equals the count at the target"]["ok"]
    assert not checks["every table's row count equals the count at the target"].get("skipped")
    assert checks["the shape the dump recorded holds"]["ok"]
    assert verification["pitr_drill"]["measurement"]["replay_transactions"] == m["replay_transactions"]

    # Without VERIFY_DB_*: a throwaway local cluster, which has none of the source's roles.
    local = run_pitr_drill(load_settings(env), rng=Fraction(fraction))
    assert local is not None and local.ok, [c for c in local.checks if not c.ok]
    assert "throwaway local cluster" in next(
        c.detail for c in local.checks if c.name == "scratch database named"
    )
    assert local.measurement and local.measurement["replay_transactions"] == m["replay_transactions"]

    # recovery-time and the plans use the measured rate and the archive's state.
    r = run_cli(env, "--json", "recovery-time")
    assert r.rc == 0, r.err
    est = json.loads(r.out)
    latest = open_context(settings).catalog.read().verifications[dump.name]["pitr_drill"]["measurement"]
    assert latest["replay_seconds"] == local.measurement["replay_seconds"]  # the newest drill's
    rate = round(latest["replay_transactions"] / latest["replay_seconds"], 1)
    assert est["logical_replay"]["measured"] and est["logical_replay"]["transactions_per_second"] == rate
    sc = next(x for x in est["scenarios"] if x["scenario"] == "pitr-logical-now")
    assert sc["available"] and sc["replay_measured"] and sc["backup"] == dump.name
    r = run_cli(env, "--json", "plan", "disaster")
    hint = [x for x in json.loads(r.out)["first"] if "from the change archive to its newest" in x]
    assert hint and f"coldcopy pitr --target-time {newest.isoformat().replace('+00:00', 'Z')}`" in hint[0]

    # POST /restore-test's job: the test restore of the newest backup, then a drill (any target).
    out = HANDLERS["restore-test"](open_context(settings), {})
    assert out["name"] == dump.name and out["ok"] and out["pitr_drill"]["ok"], out["pitr_drill"]
    assert out["pitr_drill"]["measurement"]["kind"] == "logical-pitr"
    assert _databases(lpg) == before and _source(conn) == source

    # A damaged batch (one the target needs): the drill fails and says why; the scratch is dropped
    # and nothing else on the server changed.
    target_batch = [r for _, r in records if r["first_commit_at"] and _at(r["first_commit_at"]) <= mid][-1]
    key = StoredObject.from_dict(target_batch["data"]).pieces()[0][0]
    data = bytearray(ctx.storage.get_bytes(key))
    data[len(data) // 2] ^= 0xFF
    ctx.storage.put_bytes(key, bytes(data))
    bad = run_pitr_drill(settings, rng=Fraction(fraction), ctx=ctx)
    assert bad is not None and not bad.ok
    failed = {c.name: c.detail for c in bad.checks if not c.ok}
    assert list(failed) == ["restored and replayed into the scratch database"], failed
    assert "authenticat" in failed["restored and replayed into the scratch database"]
    assert next(c for c in bad.checks if c.name == "scratch database dropped").ok
    assert _databases(lpg) == before and _source(conn) == source
    # The failed drill is recorded; the last good one stays the measurement estimates read.
    verification = open_context(settings).catalog.read().verifications[dump.name]
    assert verification["ok"] is False
    good = out["pitr_drill"]["measurement"]  # the restore-test's drill, the last that passed
    assert verification["pitr_drill"]["measurement"]["replay_seconds"] == good["replay_seconds"]
    conn.close()


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace(" ", "T", 1))
