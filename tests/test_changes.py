"""The change archive (`coldcopy changes`): setup/teardown, drains that lose and repeat nothing,
bounded memory, exactness against the dump's snapshot, alerts.  Plain PostgreSQL with
wal_level=logical and a real S3 server; the Supabase stand-in is in test_changes_supabase.py."""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import socket
import threading
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pg8000.native
import pytest

from cli_helpers import killed_at_point, run_cli
from coldcopy.alerting.notify import active_alerts, gather
from coldcopy.backup.logical import run_backup
from coldcopy.changes.drain import drain
from coldcopy.changes.health import load_health
from coldcopy.changes.monitor import archive_in_use, archive_slot, drain_and_record, drain_loop
from coldcopy.changes.retention import apply_changes_plan, plan_changes
from coldcopy.changes.slot import setup, slot_state
from coldcopy.config import Settings, load_settings
from coldcopy.context import Context, open_context
from coldcopy.core.alerts import changes_alerts
from coldcopy.core.catalog import Catalog
from coldcopy.core.changes import (
    BATCHES_PREFIX,
    DATA_PREFIX,
    Batch,
    ChangesHealth,
    SnapshotVisibility,
    batch_key,
    batch_start,
    continuity_gaps,
    lsn16,
    needless_prefix,
    prunable_batches,
    restart_backup_at,
    torn_down,
    widen_xid,
    xid_ranges,
)
from coldcopy.core.lsn import parse_lsn
from coldcopy.core.monitor_state import build, parse
from coldcopy.core.recovery_plan import Target
from coldcopy.core.thresholds import Thresholds
from coldcopy.core.times import parse_iso
from coldcopy.core.views import status_view
from coldcopy.errors import DatabaseError
from coldcopy.functions import changes as changes_function
from coldcopy.functions.tick import tick
from coldcopy.localstack.s3server import S3Server
from coldcopy.postgres.cluster import PgCluster
from coldcopy.restore.logical import run_restore
from coldcopy.restore.replay import plan_for
from coldcopy.stream.pipeline import Unpacker

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


# -- pure ------------------------------------------------------------------------------------------
def test_snapshot_visibility_decides_per_transaction() -> None:
    vis = SnapshotVisibility.parse("100:110:103,107", "0/10")
    assert vis.visible(99) and vis.visible(102) and vis.visible(109)
    assert not vis.visible(103) and not vis.visible(107) and not vis.visible(110) and not vis.visible(500)
    assert SnapshotVisibility.from_dict(vis.to_dict()) == vis
    # A 32-bit xid from the stream, against a snapshot in epoch 1.
    wide = SnapshotVisibility.parse(f"{(1 << 32) + 5}:{(1 << 32) + 9}:{(1 << 32) + 6}")
    assert wide.widen(6) == (1 << 32) + 6 and not wide.visible(6) and wide.visible(7) and not wide.visible(9)
    # Just after wraparound: xid 0xFFFFFFF0 belongs to the previous epoch, so it is old.
    assert wide.widen(0xFFFFFFF0) == 0xFFFFFFF0 and wide.visible(0xFFFFFFF0)
    with pytest.raises(ValueError):
        SnapshotVisibility.parse("nonsense")


def test_batch_keys_sort_in_stream_order_and_retention_keeps_what_a_dump_needs() -> None:
    keys = [batch_key(lsn) for lsn in ("0/FF", "0/1000", "1/0", "0/2")]
    assert sorted(keys) == [batch_key(x) for x in ("0/2", "0/FF", "0/1000", "1/0")]
    assert batch_start(batch_key("A/1B")) == "A/1B" and batch_start("changes/other") is None
    b = [Batch("k1", "0/10", "0/20", 1, None, None, 1), Batch("k2", "0/20", "0/30", 1, None, None, 1)]
    assert [x.key for x in prunable_batches(b, "0/20")] == ["k1"]
    assert [x.key for x in prunable_batches(b, "0/30")] == ["k1", "k2"]
    assert prunable_batches(b, None) == [] and prunable_batches(b, "0/1F") == []
    assert continuity_gaps(b) == [] and continuity_gaps(
        [b[0], Batch("k3", "0/40", "0/50", 1, None, None, 1)]
    ) == [("0/20", "0/40")]


def test_batches_list_their_xids_and_retention_deletes_exactly_what_no_dump_needs() -> None:
    assert xid_ranges([7, 5, 6, 9, 12, 11, 5]) == [[5, 7], [9, 9], [11, 12]]
    assert widen_xid(6, (1 << 32) + 9) == (1 << 32) + 6 and widen_xid(0xFFFFFFF0, (1 << 32) + 9) == 0xFFFFFFF0
    vis = SnapshotVisibility.parse("100:110:103,107", "0/100")
    assert vis.sees_all([[90, 102], [104, 106], [108, 109]])
    assert not vis.sees_all([[104, 107]]) and not vis.sees_all(
        [[108, 110]]
    )  # in progress; after the snapshot
    b = [Batch(f"k{i}", f"0/{i}0", f"0/{i + 1}0", 1, None, None, 1) for i in range(1, 5)]
    xids: dict[str, Any] = {"k1": [[90, 95]], "k2": [[96, 99]], "k3": [[100, 102]], "k4": [[104, 105]]}
    # Every candidate's transactions are visible: all go (no margin kept).
    assert needless_prefix(b, xids, [vis]) == b
    # A transaction whose commit record came before the snapshot's LSN but still in progress in it
    # (xip): its batch is needed, and deletion stops there (the archive stays one continuous stream).
    assert needless_prefix(b, {**xids, "k3": [[101, 103]]}, [vis]) == b[:2]
    # Each retained dump must see them (an older one in the list stops earlier).
    older = SnapshotVisibility.parse("97:99:", "0/20")
    assert needless_prefix(b, xids, [vis, older]) == b[:1]
    # Records from before batches listed their xids: the newest candidate stays, as before.
    assert needless_prefix(b[:2], {"k1": None, "k2": None}, [vis]) == b[:1]
    assert needless_prefix(b, {}, []) == b[:3]


def test_change_alert_rules() -> None:
    th = Thresholds()
    ok = ChangesHealth("s", "", last_drain_at="2026-12-01T11:58:00Z", max_keep_bytes=1000, lag_bytes=10)
    assert changes_alerts(ok, th, T0) == []
    stale = ChangesHealth("s", "", last_drain_at="2026-12-01T11:00:00Z")
    assert [a.rule for a in changes_alerts(stale, th, T0)] == ["changes-stale"]
    lag = ChangesHealth("s", "", last_drain_at="2026-12-01T11:59:00Z", max_keep_bytes=1000, lag_bytes=600)
    assert [a.rule for a in changes_alerts(lag, th, T0)] == ["changes-slot-lag"]
    lost = ChangesHealth("s", "", last_drain_at="2026-12-01T11:59:00Z", slot_invalidated=True, gap_since="x")
    alerts = changes_alerts(lost, th, T0)
    assert (
        alerts[0].rule == "changes-slot-lost" and "restarts at the next logical backup" in alerts[0].message
    )
    failing = ChangesHealth(
        "s", "", last_drain_at="2026-12-01T11:59:00Z", last_error="boom", failing_since="t"
    )
    assert [a.rule for a in changes_alerts(failing, th, T0)] == ["changes-drain-failing"]
    gone = torn_down("s", "2026-12-01T11:00:00Z")  # `changes teardown`: no slot, on purpose
    assert not gone.slot_exists and changes_alerts(gone, th, T0) == []
    untracked = ChangesHealth(
        "s", "", last_drain_at="2026-12-01T11:59:00Z", untracked_ddl=["x"], large_objects=2
    )
    assert sorted(a.id for a in changes_alerts(untracked, th, T0)) == [
        "changes-untracked:ddl",
        "changes-untracked:large-objects",
    ]


def test_status_shows_the_slot_lag_and_the_newest_changes_age() -> None:
    h = ChangesHealth(
        "coldcopy_changes_app",
        "2026-12-01T12:00:00Z",
        lag_bytes=5 << 20,
        last_drain_at="2026-12-01T12:00:00Z",
        newest_commit_at="2026-12-01T11:59:30Z",
    )
    th = Thresholds()

    v = status_view(Catalog(), T0 + timedelta(minutes=2), encrypted=True, wal=None, thresholds=th, changes=h)

    ch = v["changes"]
    assert ch["slot"] == "coldcopy_changes_app" and ch["slot_lag_bytes"] == 5 << 20
    assert ch["newest_change_age_seconds"] == 120 and ch["newest_commit_age_seconds"] == 150
    assert ch["problems"] == [] and ch["warnings"] == []
    late = T0 + timedelta(minutes=th.changes_max_age_minutes + 1)
    stale = status_view(Catalog(), late, encrypted=True, wal=None, thresholds=th, changes=h)
    found = stale["changes"]["problems"] + stale["changes"]["warnings"]
    assert any("no change batch archived since 2026-12-01T12:00:00Z" in m for m in found)
    assert set(stale["changes"]["problems"]) <= set(stale["problems"])  # critical ones fail the status
    none = status_view(Catalog(), late, encrypted=True, wal=None, thresholds=th)
    assert none["changes"] is None  # an archive never drained: nothing shown, nothing wrong


# -- a logical cluster ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lpg() -> Iterator[PgCluster]:
    with PgCluster(settings={"wal_level": "logical", "max_replication_slots": "20"}) as cluster:
        yield cluster


@pytest.fixture
def env(lpg: PgCluster, s3_server: S3Server, bucket: str) -> Iterator[dict[str, str]]:
    db = "cc" + secrets.token_hex(4)
    lpg.create_database(db)
    e = {
        "DB_HOST": lpg.host,
        "DB_PORT": str(lpg.port),
        "DB_NAME": db,
        "DB_USER": lpg.user,
        "DB_PASSWORD": lpg.password,
        "DB_SSLMODE": "disable",
        "COLDCOPY_CLUSTER": db,
        "COLDCOPY_CHANGES_BATCH_ROWS": "1000",
        **s3_server.spaces_env(bucket),
        "BACKUP_ENCRYPTION_KEY": secrets.token_urlsafe(32),
    }
    yield e
    conn = lpg.connect()
    try:
        conn.run(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = :d", d=db
        )
    finally:
        conn.close()
    lpg.drop_database(db)


def _ctx(env: dict[str, str]) -> Context:
    return open_context(load_settings(env))


def _connect(lpg: PgCluster, env: dict[str, str]) -> pg8000.native.Connection:
    return lpg.connect(env["DB_NAME"])


def set_up(
    lpg: PgCluster, env: dict[str, str], table_sql: str, **overrides: str
) -> tuple[Settings, Context, pg8000.native.Connection]:
    """Settings, context and a connection to a database with ``table_sql`` run and the archive set up."""
    settings = load_settings({**env, **overrides})
    conn = _connect(lpg, env)
    conn.run(table_sql)
    setup(conn, archive_slot(settings))
    return settings, open_context(settings), conn


def archived(ctx: Context) -> list[dict[str, Any]]:
    """Every transaction in the archive, in stream order: xid, commit LSN and its rows."""
    txns: list[dict[str, Any]] = []
    for info in ctx.storage.list(BATCHES_PREFIX):
        rec = ctx.storage.get_json(info.key)
        unpacker = Unpacker(ctx.key)
        raw = b"".join(
            unpacker.feed(ctx.storage.get_bytes(f"{rec['data']['key']}.{i:06d}"))
            for i in range(len(rec["data"]["volumes"]))
        )
        unpacker.finish(None)
        for line in raw.decode().splitlines():
            row = json.loads(line)
            if row["action"] == "B":
                txns.append({"xid": row["xid"], "rows": [], "batch": info.key})
            elif row["action"] == "C":
                txns[-1]["commit_lsn"] = row["nextlsn"]
            else:
                txns[-1]["rows"].append(row)
    return txns


def ids_of(txns: list[dict[str, Any]], table: str = "t") -> list[int]:
    return [
        next(c["value"] for c in r["columns"] if c["name"] == "id")
        for t in txns
        for r in t["rows"]
        if r["table"] == table and r["action"] == "I"
    ]


def catalog_objects(conn: pg8000.native.Connection) -> list[Any]:
    return [
        conn.run("SELECT nspname FROM pg_namespace ORDER BY 1"),
        conn.run("SELECT evtname FROM pg_event_trigger ORDER BY 1"),
        conn.run("SELECT slot_name FROM pg_replication_slots ORDER BY 1"),
        conn.run("SELECT count(*) FROM pg_proc"),
        conn.run("SELECT count(*) FROM pg_class"),
    ]


def test_setup_reports_tables_without_identity_and_teardown_leaves_nothing(
    lpg: PgCluster, env: dict[str, str]
) -> None:
    conn = _connect(lpg, env)
    conn.run("CREATE TABLE keyed (id int PRIMARY KEY)")
    conn.run("CREATE TABLE loose (a int)")
    conn.run("CREATE TABLE loose_full (a int)")
    conn.run("ALTER TABLE loose_full REPLICA IDENTITY FULL")
    before = catalog_objects(conn)
    r = run_cli(env, "--json", "changes", "setup")
    assert r.rc == 0, r.err
    out = json.loads(r.out)
    assert out["left_out"] == ["public.loose"]
    assert out["fixes"] == ['ALTER TABLE "public"."loose" REPLICA IDENTITY FULL;']
    assert any(c.startswith("slot coldcopy_changes_") for c in out["created"])
    # From setup on the slot is watched: if no drain ever reads it, the stale alert fires.
    h = load_health(_ctx(env).storage)
    assert h is not None and h.in_use and h.last_drain_at is None
    at, th = parse_iso(h.checked_at), Thresholds()
    assert changes_alerts(h, th, at + timedelta(minutes=th.changes_max_age_minutes - 1)) == []
    stale = changes_alerts(h, th, at + timedelta(minutes=th.changes_max_age_minutes + 1))
    assert [a.rule for a in stale] == ["changes-stale"] and f"since it was set up at {h.checked_at}" in stale[
        0
    ].message
    again = json.loads(run_cli(env, "--json", "changes", "setup").out)  # idempotent
    assert again["created"] == [] and len(again["existing"]) == 4  # slot, schema, two event triggers
    assert catalog_objects(conn) != before
    assert load_health(_ctx(env).storage) == h  # set up again: the watch goes on as it was
    r = run_cli(env, "changes", "teardown")
    assert r.rc == 0 and "slot coldcopy_changes_" in r.out
    assert catalog_objects(conn) == before
    conn.close()


def test_setup_needs_wal_level_logical(pg: PgCluster, env: dict[str, str]) -> None:
    bad = {**env, "DB_HOST": pg.host, "DB_PORT": str(pg.port), "DB_NAME": "postgres"}
    r = run_cli(bad, "changes", "setup")
    assert r.rc != 0 and "wal_level" in r.err and "restart" in r.err


def test_drains_killed_at_any_point_lose_and_repeat_nothing(lpg: PgCluster, env: dict[str, str]) -> None:
    rng = random.Random(14)
    settings, ctx, conn = set_up(lpg, env, "CREATE TABLE t (id int PRIMARY KEY, v text)")
    conn.run("CREATE SEQUENCE s")
    committed: list[int] = []
    next_id = 0
    kills = {"peeked": 0, "stored-volumes": 0, "stored-record": 0}
    for _ in range(14):
        for _ in range(rng.randint(1, 6)):  # transactions of 1..400 rows (batches cut at 1000 rows)
            n = rng.randint(1, 400)
            conn.run(
                "INSERT INTO t SELECT g, 'x' FROM generate_series(:a::int, :b::int) g",
                a=next_id,
                b=next_id + n - 1,
            )
            conn.run("SELECT nextval('s')")
            committed += range(next_id, next_id + n)
            next_id += n
        point = rng.choice([*kills, None])

        def fault(step: str, point: str | None = point) -> None:
            if step == point and rng.random() < 0.7:
                kills[step] += 1
                raise KeyboardInterrupt(f"killed at {step}")

        with contextlib.suppress(KeyboardInterrupt):
            drain(ctx, conn, archive_slot(settings), fault=fault)
    result = drain(ctx, conn, archive_slot(settings))
    assert result.batches == [] or all(b.transactions for b in result.batches)
    assert all(kills.values()), kills  # every kill point was exercised
    txns = archived(ctx)
    ids = ids_of(txns)
    assert sorted(ids) == committed  # nothing lost, nothing twice
    xids = [t["xid"] for t in txns]
    assert len(xids) == len(set(xids))
    recs = [ctx.storage.get_json(i.key) for i in ctx.storage.list(BATCHES_PREFIX)]
    assert continuity_gaps([Batch.from_record("", r) for r in recs]) == []
    assert recs[-1]["sequences"]["public.s"] == int(conn.run("SELECT last_value FROM s")[0][0])
    conn.close()


KILL_POINTS = ["changes:peeked", "changes:stored-volumes", "changes:stored-record"]


def test_drains_sigkilled_at_each_point_lose_and_repeat_nothing(
    lpg: PgCluster, env: dict[str, str], tmp_path: Path
) -> None:
    """Real kills: `coldcopy changes drain` subprocesses held at a pause point (after the peek and
    before any store; the batch's volumes stored but not its record; the record stored but the slot
    not advanced) and SIGKILLed there, with transactions committed between drains and while one is
    held; then a clean drain.  The archive holds each committed transaction once, in commit order."""
    rng = random.Random(1414)
    settings, ctx, conn = set_up(lpg, env, "CREATE TABLE t (id int PRIMARY KEY, v text)")
    slot = archive_slot(settings)
    committed: list[int] = []

    def commit_some() -> None:
        for _ in range(rng.randint(1, 4)):  # transactions of 1..600 rows (batches cut at 1000 rows)
            n, first = rng.randint(1, 600), len(committed)
            sql = "INSERT INTO t SELECT g, 'x' FROM generate_series(:a::int, :b::int) g"
            conn.run(sql, a=first, b=first + n - 1)
            committed.extend(range(first, first + n))

    def batch_at_slot() -> tuple[str, bool, list[str]]:
        """The slot's position, whether a batch record starts there, and the data stored for it."""
        at = slot_state(conn, slot).confirmed_lsn
        data = [o.key for o in ctx.storage.list(f"{DATA_PREFIX}{lsn16(at)}/")]
        return at, ctx.storage.exists(batch_key(at)), data

    plan = KILL_POINTS + [rng.choice(KILL_POINTS) for _ in range(3)]
    for i, point in enumerate(plan):
        commit_some()
        (tmp_path / str(i)).mkdir()
        killed_at_point(env, point, tmp_path / str(i), "changes", "drain", while_paused=commit_some)
        at, recorded, data = batch_at_slot()
        # The kill fell where it was meant to: the slot was not advanced past the batch in hand.
        if point == "changes:peeked":
            assert not recorded and not data, point
        elif point == "changes:stored-volumes":
            assert not recorded and data, point  # volumes orphaned, no batch listed
        else:
            assert recorded and data, point  # stored, the slot still before its end
            assert parse_lsn(ctx.storage.get_json(batch_key(at))["end_lsn"]) > parse_lsn(at)
    r = run_cli(env, "--json", "changes", "drain")
    assert r.rc == 0, r.err
    assert not batch_at_slot()[1]  # no stored batch waits for the slot to pass it
    txns = archived(ctx)
    assert ids_of(txns) == committed  # each committed row once, in commit order, none missing
    xids = [t["xid"] for t in txns]
    assert len(xids) == len(set(xids)) == len(txns)
    commits = [parse_lsn(t["commit_lsn"]) for t in txns]
    assert commits == sorted(commits) and len(set(commits)) == len(commits)
    recs = [ctx.storage.get_json(i.key) for i in ctx.storage.list(BATCHES_PREFIX)]
    assert continuity_gaps([Batch.from_record("", rec) for rec in recs]) == []
    assert parse_lsn(slot_state(conn, slot).confirmed_lsn) >= parse_lsn(recs[-1]["end_lsn"])
    assert [rec["transactions"] for rec in recs] == [
        sum(t["batch"] == i.key for t in txns) for i in ctx.storage.list(BATCHES_PREFIX)
    ]
    conn.close()


def test_ddl_travels_in_commit_order(lpg: PgCluster, env: dict[str, str]) -> None:
    settings, ctx, conn = set_up(lpg, env, "CREATE TABLE t (id int PRIMARY KEY, v text)")
    conn.run("INSERT INTO t VALUES (1, 'a')")
    conn.run("ALTER TABLE t ADD COLUMN w int NOT NULL DEFAULT 7")
    conn.run("INSERT INTO t VALUES (2, 'b', 8)")
    conn.run("CREATE TABLE u (k int PRIMARY KEY)")
    conn.run("INSERT INTO u VALUES (1)")
    conn.run("DROP TABLE u")
    conn.run("ALTER TABLE t RENAME COLUMN v TO vv")
    conn.run("INSERT INTO t VALUES (3, 'c', 9)")
    drain(ctx, conn, archive_slot(settings))
    seen = []
    for t in archived(ctx):
        for r in t["rows"]:
            if r["table"] == "ddl_log":
                seen.append(next(c["value"] for c in r["columns"] if c["name"] == "query"))
            elif r["table"] in ("t", "u"):
                seen.append(f"{r['table']}:{[c['name'] for c in r['columns']]}")
    assert seen == [
        "t:['id', 'v']",
        "ALTER TABLE t ADD COLUMN w int NOT NULL DEFAULT 7",
        "t:['id', 'v', 'w']",
        "CREATE TABLE u (k int PRIMARY KEY)",
        "u:['k']",
        "DROP TABLE u",
        "ALTER TABLE t RENAME COLUMN v TO vv",
        "t:['id', 'vv', 'w']",
    ]
    conn.close()


def test_a_million_row_transaction_drains_in_bounded_memory(lpg: PgCluster, env: dict[str, str]) -> None:
    settings, ctx, conn = set_up(
        lpg, env, "CREATE TABLE big (id int PRIMARY KEY, v text)", COLDCOPY_CHANGES_BATCH_ROWS="10000"
    )
    conn.run("INSERT INTO big SELECT g, md5(g::text) FROM generate_series(1, 1000000) g")
    tracemalloc.start()
    try:
        result = drain(ctx, conn, archive_slot(settings))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    raw = sum(b.raw_size for b in result.batches)
    rows = sum(b.rows for b in result.batches)
    assert rows >= 1_000_002  # the rows, plus BEGIN and COMMIT
    assert raw > 150 * 1024 * 1024
    assert peak < 64 * 1024 * 1024, f"peak {peak / 1e6:.0f} MB for {raw / 1e6:.0f} MB of changes"
    conn.close()


def test_concurrent_commits_at_the_dumps_start_are_archived_exactly_once_relative_to_it(
    lpg: PgCluster, env: dict[str, str]
) -> None:
    settings, ctx, conn = set_up(lpg, env, "CREATE TABLE t (id int PRIMARY KEY, v text)")
    conn.run("INSERT INTO t VALUES (1, 'before')")
    pending = _connect(lpg, env)
    pending.run("BEGIN")
    pending.run("INSERT INTO t VALUES (2, 'in progress at the snapshot')")
    stop = threading.Event()
    hammered: list[int] = []

    def hammer() -> None:
        c = _connect(lpg, env)
        i = 1000
        while not stop.is_set():
            c.run("INSERT INTO t VALUES (:i, 'concurrent')", i=i)
            hammered.append(i)
            i += 1
        c.close()

    thread = threading.Thread(target=hammer)
    thread.start()
    done_after: list[bool] = []

    def progress(raw: int, stored: int) -> None:
        if not done_after:  # the snapshot is taken: commit the transaction it saw in progress
            pending.run("COMMIT")
            conn.run("INSERT INTO t VALUES (3, 'after the snapshot')")
            done_after.append(True)

    try:
        while len(hammered) < 20:  # commits are flowing before the dump starts (no sleep: a count)
            thread.join(0.01)
        manifest = run_backup(settings, progress=progress, ctx=ctx)
    finally:
        stop.set()
        thread.join()
    vis = SnapshotVisibility.from_dict(manifest.extra["snapshot_visibility"])
    drain(ctx, conn, archive_slot(settings))
    target = env["DB_NAME"] + "_r"
    run_restore(settings, manifest.name, target)
    rc = lpg.connect(target)
    in_dump = {int(r[0]) for r in rc.run("SELECT id FROM t")}
    rc.close()
    lpg.drop_database(target)
    replayed: list[int] = []
    for txn in archived(ctx):
        ids = set(ids_of([txn]))
        if vis.visible(txn["xid"]):
            assert ids <= in_dump, (txn["xid"], vis)
        else:
            assert not ids & in_dump, (txn["xid"], vis)
            replayed += ids
    everything = {1, 2, 3, *hammered}
    assert sorted(in_dump | set(replayed)) == sorted(everything)
    assert len(replayed) == len(set(replayed))
    assert 2 in replayed and 3 in replayed and 1 in in_dump
    assert vis.xip, "the in-progress transaction is in the snapshot's xip"
    conn.close()
    pending.close()


def test_invalidated_slot_raises_its_alert_and_marks_the_gap(
    lpg: PgCluster, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, ctx, conn = set_up(lpg, env, "CREATE TABLE t (id int PRIMARY KEY)")
    conn.run("INSERT INTO t VALUES (1)")
    clock = [T0]
    drain_and_record(ctx, lambda: clock[0])
    assert changes_alerts(load_health(ctx.storage), settings.thresholds, T0) == []
    admin = lpg.connect()
    try:
        admin.run("ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'")
        admin.run("SELECT pg_reload_conf()")
        for _ in range(5):
            conn.run(
                "INSERT INTO t SELECT g FROM generate_series(:a::int, :b::int) g",
                a=10**6 * (_ + 1),
                b=10**6 * (_ + 1) + 20000,
            )
            admin.run("SELECT pg_switch_wal()")
        admin.run("CHECKPOINT")
        assert conn.run(
            "SELECT wal_status FROM pg_replication_slots WHERE slot_name = :s", s=archive_slot(settings)
        ) == [["lost"]]
    finally:
        admin.run("ALTER SYSTEM RESET max_slot_wal_keep_size")
        admin.run("SELECT pg_reload_conf()")
        admin.close()
    clock[0] = T0 + timedelta(minutes=1)
    drain_and_record(ctx, lambda: clock[0])  # re-creates the slot: the stream restarts with a gap
    h = load_health(ctx.storage)
    assert (
        h is not None and h.slot_exists and not h.slot_invalidated and h.gap_since == "2026-12-01T12:01:00Z"
    )
    assert conn.run(
        "SELECT wal_status FROM pg_replication_slots WHERE slot_name = :s", s=archive_slot(settings)
    ) == [["reserved"]]
    rules = {a.rule: a for a in changes_alerts(h, settings.thresholds, clock[0])}
    assert "changes-slot-lost" in rules and "next logical backup" in rules["changes-slot-lost"].message
    r = run_cli(env, "changes", "status")
    assert r.rc == 1 and "the change stream has a gap" in r.out
    # The next tick enqueues the backup the window restarts at (once), and that backup ends the alert.
    first = tick(settings, clock[0], storage=ctx.storage, wake_runner=False)
    again = tick(settings, clock[0], storage=ctx.storage, wake_runner=False)
    restart = [e for e in first["enqueued"] if e.get("why")]
    assert [e["slot"] for e in restart] == ["backup-full/2026-12-01T12:01Z"] and not [
        e for e in again["enqueued"] if e.get("why")
    ]
    run_backup(settings, ctx=ctx, now=lambda: clock[0] + timedelta(minutes=1))
    drain_and_record(ctx, lambda: clock[0] + timedelta(minutes=2))
    h = load_health(ctx.storage)
    assert h is not None and h.gap_since is None and h.window_start is not None
    assert changes_alerts(h, settings.thresholds, clock[0] + timedelta(minutes=2)) == []
    assert restart_backup_at(h) is None
    # Each drain finds the window's backup without reading every manifest again (once per process).
    read: list[str] = []
    get_json = ctx.storage.get_json
    monkeypatch.setattr(
        ctx.storage, "get_json", lambda key, *a, **k: read.append(key) or get_json(key, *a, **k)
    )
    drain_and_record(ctx, lambda: clock[0] + timedelta(minutes=3))
    assert read and not [k for k in read if k.startswith("backups/") or "manifest" in k], read
    conn.close()


def test_the_drain_loop_drains_on_its_interval_within_its_budget(lpg: PgCluster, env: dict[str, str]) -> None:
    settings, ctx, conn = set_up(
        lpg, env, "CREATE TABLE t (id int PRIMARY KEY)", COLDCOPY_CHANGES_INTERVAL_SECONDS="15"
    )
    clock = [0.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        clock[0] += s
        conn.run("INSERT INTO t VALUES (:i)", i=len(slept))

    out = drain_loop(ctx, 55, lambda: T0, sleep=sleep, monotonic=lambda: clock[0])
    assert len(out["drains"]) == 4 and len(slept) == 3  # at 0, 15, 30 and 45 s of a minute's run
    assert sorted(ids_of(archived(ctx))) == [1, 2, 3]
    conn.close()


def test_the_alert_check_reads_the_stored_health(lpg: PgCluster, env: dict[str, str]) -> None:
    settings, ctx, conn = set_up(lpg, env, "CREATE TABLE t (id int PRIMARY KEY)")
    inputs = gather(ctx.storage, T0)
    assert inputs.changes is None
    assert not [a for a in active_alerts(settings, ctx.catalog.read(), inputs, T0) if "changes" in a.rule]
    drain_and_record(ctx, lambda: T0)  # the archive is in use from now on: its rules apply
    later = T0 + timedelta(minutes=11)
    inputs = parse(build(later, [], None, {}, gather(ctx.storage, later).changes).to_dict())  # as stored
    assert inputs is not None and inputs.changes is not None
    rules = {a.rule for a in active_alerts(settings, ctx.catalog.read(), inputs, later)}
    assert "changes-stale" in rules
    shown = run_cli(env, "status")  # `coldcopy status` reads the stored health as well
    assert f"changes:      slot {archive_slot(settings)} ok, holds " in shown.out
    conn.close()


def test_the_scheduled_drain_does_nothing_where_the_archive_was_never_set_up(
    lpg: PgCluster, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in {**env, "COLDCOPY_ENV_FILE": os.devnull}.items():
        monkeypatch.setenv(key, value)
    ctx = _ctx(env)

    out = changes_function.run({"trigger": "coldcopy-changes"}, None)

    assert out == {"status": "not set up", "slot": archive_slot(ctx.settings)}
    assert load_health(ctx.storage) is None  # nothing stored: no alert for an archive never used
    settings, ctx, conn = set_up(lpg, env, "CREATE TABLE t (id int PRIMARY KEY)")
    assert archive_in_use(ctx)  # set up: the slot exists
    drain_and_record(ctx, lambda: T0)
    conn.run("SELECT pg_drop_replication_slot(:s)", s=archive_slot(settings))
    assert archive_in_use(ctx)  # drained before, slot gone: a lost slot, drained to raise its alert
    conn.close()


def test_retention_deletes_every_batch_before_the_dumps_snapshot_and_keeps_the_one_straddling_it(
    lpg: PgCluster, env: dict[str, str]
) -> None:
    settings, ctx, conn = set_up(lpg, env, "CREATE TABLE t (id int PRIMARY KEY, v text)")
    slot = archive_slot(settings)
    conn.run("INSERT INTO t VALUES (1, 'a')")
    drain(ctx, conn, slot)
    conn.run("INSERT INTO t VALUES (2, 'b')")
    drain(ctx, conn, slot)  # its batch is the newest before the dump: the old rule kept it as a margin
    pending = _connect(lpg, env)
    pending.run("BEGIN")
    pending.run("INSERT INTO t VALUES (3, 'in progress at the snapshot')")
    manifest = run_backup(settings, ctx=ctx, now=lambda: T0)
    pending.run("COMMIT")
    drain(ctx, conn, slot)  # straddles the snapshot: starts before wal_lsn_before, holds the xid in xip
    vis = SnapshotVisibility.from_dict(manifest.extra["snapshot_visibility"])
    limit = parse_lsn(vis.wal_lsn_before)
    recs = {i.key: ctx.storage.get_json(i.key) for i in ctx.storage.list(BATCHES_PREFIX)}
    # Each record lists exactly its transactions' xids (64-bit).
    by_batch: dict[str, list[int]] = {}
    for txn in archived(ctx):
        by_batch.setdefault(txn["batch"], []).append(vis.widen(txn["xid"]))
    assert {k: r["xids"] for k, r in recs.items()} == {k: xid_ranges(x) for k, x in by_batch.items()}
    before = sorted(k for k, r in recs.items() if parse_lsn(r["end_lsn"]) <= limit)
    straddling = [k for k, r in recs.items() if parse_lsn(r["start_lsn"]) <= limit < parse_lsn(r["end_lsn"])]
    assert len(before) >= 2 and len(straddling) == 1
    assert not vis.sees_all(recs[straddling[0]]["xids"])  # the transaction in progress at the snapshot

    plan = plan_changes(ctx.storage, [manifest.name], T0, timedelta(hours=1))
    assert [b.key for b in plan.batches] == before  # all of them: no margin
    apply_changes_plan(ctx.storage, plan)

    assert sorted(i.key for i in ctx.storage.list(BATCHES_PREFIX)) == sorted(set(recs) - set(before))
    # The dump still recovers: its snapshot lies in what is left, which holds every transaction it lacks.
    end = max(parse_lsn(r["end_lsn"]) for r in recs.values())
    replay_plan, _ = plan_for(ctx, Target("lsn", lsn=end))
    assert replay_plan.dump.name == manifest.name and straddling[0] in [b.key for b in replay_plan.batches]
    missing = {t["xid"] for t in archived(ctx) if not vis.visible(t["xid"])}
    assert 3 in ids_of([t for t in archived(ctx) if t["xid"] in missing])
    # Run again: nothing more to delete while that dump is kept.
    assert plan_changes(ctx.storage, [manifest.name], T0, timedelta(hours=1)).batches == []
    pending.close()
    conn.close()


def test_teardown_is_recorded_so_nothing_alerts_but_a_slot_that_vanishes_still_does(
    lpg: PgCluster, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in {**env, "COLDCOPY_ENV_FILE": os.devnull}.items():
        monkeypatch.setenv(key, value)
    settings, ctx, conn = set_up(lpg, env, "CREATE TABLE t (id int PRIMARY KEY)")
    slot = archive_slot(settings)
    drain_and_record(ctx, lambda: T0)

    r = run_cli(env, "--json", "changes", "teardown")

    assert r.rc == 0, r.err
    h = load_health(ctx.storage)
    assert h is not None and not h.in_use and h.torn_down_at == json.loads(r.out)["torn_down_at"]
    # The scheduled drain stands down: it says so and stores nothing; no rule fires, hours later.
    assert changes_function.run({}, None) == {
        "status": "not set up",
        "slot": slot,
        "torn_down_at": h.torn_down_at,
    }
    assert load_health(ctx.storage) == h
    later = T0 + timedelta(hours=3)
    assert not [
        a
        for a in active_alerts(settings, ctx.catalog.read(), gather(ctx.storage, later), later)
        if "changes" in a.rule
    ]
    shown = run_cli(env, "changes", "status")
    assert shown.rc == 0 and f"torn down at {h.torn_down_at}" in shown.out
    assert "torn down at" in run_cli(env, "status").out
    with pytest.raises(DatabaseError, match="torn down"):
        drain_and_record(ctx, lambda: later)
    assert load_health(ctx.storage) == h  # an explicit drain is refused without recording a failure

    # Set up again: a new stream, drained with no gap alert (nor one for DDL run while torn down).
    conn.run("ALTER TABLE t ADD COLUMN while_torn_down int")
    setup(conn, slot)
    conn.run("INSERT INTO t VALUES (1)")
    drain_and_record(ctx, lambda: later)
    h = load_health(ctx.storage)
    assert h is not None and h.in_use and changes_alerts(h, settings.thresholds, later) == []

    # A slot dropped without a teardown is lost: the drain re-creates it, marks the gap, and alerts.
    conn.run("SELECT pg_drop_replication_slot(:s)", s=slot)
    drain_and_record(ctx, lambda: later + timedelta(minutes=1))
    h = load_health(ctx.storage)
    assert h is not None and h.in_use and h.gap_since == "2026-12-01T15:01:00Z"
    assert [a.rule for a in changes_alerts(h, settings.thresholds, later)] == ["changes-slot-lost"]
    # A drain that keeps failing counts its failures (a metric) and alerts too.
    unreachable = open_context(load_settings({**env, "DB_PORT": str(_free_port())}))
    for _ in range(2):
        with pytest.raises(DatabaseError):
            drain_and_record(unreachable, lambda: later)
    h = load_health(ctx.storage)
    assert h is not None and h.consecutive_failures == 2
    assert "changes-drain-failing" in {a.rule for a in changes_alerts(h, settings.thresholds, later)}
    drain_and_record(ctx, lambda: later)
    assert load_health(ctx.storage).consecutive_failures == 0
    conn.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_untracked_ddl_and_large_objects_are_detected_and_alerted(
    lpg: PgCluster, env: dict[str, str]
) -> None:
    settings, ctx, conn = set_up(lpg, env, "CREATE TABLE t (id int PRIMARY KEY)")
    drain_and_record(ctx, lambda: T0)
    assert changes_alerts(load_health(ctx.storage), settings.thresholds, T0) == []
    hidden = _connect(lpg, env)  # a superuser in replica mode: event triggers do not fire for it
    hidden.run("SET session_replication_role = replica")
    hidden.run("ALTER TABLE t ADD COLUMN unseen int")
    hidden.close()
    conn.run("ALTER TABLE t ADD COLUMN seen int")  # captured: not flagged on its own
    conn.run("SELECT lo_from_bytea(0, '\\x01'::bytea)")
    at = T0 + timedelta(minutes=1)

    drain_and_record(ctx, lambda: at)

    h = load_health(ctx.storage)
    assert h is not None and h.large_objects == 1 and len(h.untracked_ddl) == 1
    assert {a.id for a in changes_alerts(h, settings.thresholds, at)} == {
        "changes-untracked:ddl",
        "changes-untracked:large-objects",
    }
    captured = [r for t in archived(ctx) for r in t["rows"] if r["table"] == "ddl_log"]
    assert [next(c["value"] for c in r["columns"] if c["name"] == "query") for r in captured] == [
        "ALTER TABLE t ADD COLUMN seen int"
    ]
    conn.run("ALTER TABLE t ADD COLUMN also_seen int")
    drain_and_record(ctx, lambda: at)
    assert load_health(ctx.storage).untracked_ddl == h.untracked_ddl  # captured DDL adds nothing
    conn.close()
