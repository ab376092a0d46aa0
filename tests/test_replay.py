"""`coldcopy pitr` on the change archive (plain PostgreSQL, wal_level=logical, a real S3 server):
restore the newest dump before the target, replay exactly the transactions it lacks up to the
target.  The marker pattern: a one-row status table written per phase, with the time, the xid, a
restore point and an LSN captured between phases; every target brings back exactly its marker."""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import pg8000.native
import pytest

import test_changes
from cli_helpers import killed_at_point, run_cli
from coldcopy.changes.slot import setup
from coldcopy.config import load_settings
from coldcopy.context import open_context
from coldcopy.core.changes import BATCHES_PREFIX, Batch, SnapshotVisibility
from coldcopy.core.manifest import StoredObject
from coldcopy.core.recovery_plan import RecoveryRefused, Target
from coldcopy.core.replay import Dump, plan_logical, stream_time
from coldcopy.core.replay_sql import Replayer, TableShape, literal
from coldcopy.postgres.cluster import PgCluster
from coldcopy.restore import replay as replay_module
from coldcopy.restore.replay import CatalogShapes, ReplayStats, Sender, batch_records, replay_lines

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
lpg, env = test_changes.lpg, test_changes.env  # the logical cluster and a database in it


# -- pure ------------------------------------------------------------------------------------------
def _line(**row: Any) -> str:
    return json.dumps(row, separators=(",", ":"))  # as wal2json writes it


def _b(xid: int, lsn: str, at: str) -> str:
    return _line(action="B", xid=xid, timestamp=at, lsn=lsn, nextlsn=lsn)


def test_the_replayer_skips_what_the_dump_has_and_stops_at_the_target() -> None:
    vis = SnapshotVisibility.parse("100:105:102", "0/10")
    target = Target("time", time=datetime(2026, 12, 1, 12, 0, 3, tzinfo=UTC))
    r = Replayer(vis, target)
    ins = {"schema": "public", "table": "t", "columns": [{"name": "id", "type": "integer", "value": 1}]}
    out: list[str] = []
    for xid, sec in ((101, 0), (102, 1), (105, 2), (106, 3)):
        out += r.feed(_b(xid, f"0/{xid:X}", f"2026-12-01 12:00:0{sec}.5+00"))
        out += r.feed(_line(action="I", **ins))
        out += r.feed(_line(action="C", xid=xid))
    # 101 is in the dump; 102 (in progress at the snapshot) and 105 are not; 106 is after the target
    assert r.skipped == 1 and r.applied == 2 and r.done and r.past_target and r.past_target.xid == 106
    assert out == [] and not r.visible_past_target  # held back: inserts of one table are grouped
    assert r.finish() == ['INSERT INTO "public"."t" ("id") OVERRIDING SYSTEM VALUE VALUES (\'1\'), (\'1\')']
    r2 = Replayer(vis, Target("time", time=datetime(2026, 12, 1, 12, 0, 3, tzinfo=UTC)))
    got: list[str] = []
    for xid, sec in ((102, 1), (105, 2)):
        got += r2.feed(_b(xid, f"0/{xid:X}", f"2026-12-01 12:00:0{sec}.5+00"))
        got += r2.feed(_line(action="I", **ins))
        got += r2.feed(_line(action="U", **ins, identity=[{"name": "id", "type": "integer", "value": 0}]))
        got += r2.feed(_line(action="U", **ins, identity=[{"name": "id", "type": "integer", "value": 1}]))
        got += r2.feed(_line(action="T", schema="public", table="a"))
        got += r2.feed(_line(action="T", schema="public", table="b"))
        got += r2.feed(_line(action="C", xid=xid))
    assert r2.applied == 2 and not r2.done
    assert got[0] == 'INSERT INTO "public"."t" ("id") OVERRIDING SYSTEM VALUE VALUES (\'1\')'
    assert got[1].startswith('UPDATE ONLY "public"."t" SET "id" = \'1\' WHERE ctid = (SELECT ctid FROM ONLY')
    assert got[2] == 'TRUNCATE ONLY "public"."a", "public"."b"'
    assert literal("it's") == "'it''s'" and literal(None) == "NULL" and literal(True) == "'true'"
    assert literal("00ff", "bytea") == "'\\x00ff'"  # wal2json writes bytea as bare hex


class _Shapes:
    """Shapes as a dict (what the database would answer), counting lookups and DDL."""

    def __init__(self, shapes: dict[str, TableShape]) -> None:
        self.shapes, self.lookups, self.changes = shapes, 0, 0

    def shape(self, schema: str, table: str) -> TableShape | None:
        self.lookups += 1
        return self.shapes.get(table)

    def changed(self) -> None:
        self.changes += 1


def _col(name: str, value: Any, type_name: str = "integer") -> dict[str, Any]:
    return {"name": name, "type": type_name, "value": value}


def test_rows_are_grouped_per_table_in_order_across_transactions() -> None:
    """pgbench's shape: each transaction updates three tables and inserts into a fourth. Each
    table's rows become one statement; a row updated again keeps only its last values; a different
    kind of row on a table ends that table's group only."""
    keyed = {n: TableShape(("id",), {"id": "int4", "v": "int4", "g": "int4"}) for n in ("a", "b")}
    shapes = _Shapes(
        {
            **keyed,
            "h": TableShape((), {"x": "int4"}),
            "u": TableShape(("id",), {"id": "int4", "v": "int4"}, other_unique=True),
            "gen": TableShape(
                ("id",),
                {"id": "int4", "v": "int4", "g": "int4"},
                frozenset({"g"}),
            ),
        }
    )
    r = Replayer(SnapshotVisibility.parse("1:1:", "0/1"), Target("lsn", lsn=1 << 40), shapes)
    out: list[str] = []

    def upd(table: str, key: int, v: int) -> None:
        ident = [_col("id", key)]
        out.extend(
            r.feed(
                _line(
                    action="U",
                    schema="public",
                    table=table,
                    columns=[_col("id", key), _col("v", v)],
                    identity=ident,
                )
            )
        )

    for xid in range(10, 16):
        out.extend(r.feed(_b(xid, f"0/{xid:X}", "2026-12-01 12:00:00+00")))
        upd("a", xid, xid)
        upd("b", xid % 2, xid)  # two rows, updated over and over
        out.extend(r.feed(_line(action="I", schema="public", table="h", columns=[_col("x", xid)])))
        out.extend(r.feed(_line(action="C", xid=xid)))
    assert out == [] and r.applied == 6 and r.rows == 18
    out += r.finish()
    assert shapes.lookups == 3  # one per table
    assert out == [
        'UPDATE ONLY "public"."a" AS t SET "v" = v.c0 FROM (VALUES (\'10\'::int4, \'10\'::int4), '
        "('11', '11'), ('12', '12'), ('13', '13'), ('14', '14'), ('15', '15')) AS v(k0, c0) "
        'WHERE t."id" = v.k0',
        'UPDATE ONLY "public"."b" AS t SET "v" = v.c0 FROM (VALUES (\'0\'::int4, \'14\'::int4), '
        "('1', '15')) AS v(k0, c0) WHERE t.\"id\" = v.k0",
        "INSERT INTO \"public\".\"h\" (\"x\") OVERRIDING SYSTEM VALUE VALUES ('10'), ('11'), ('12'), "
        "('13'), ('14'), ('15')",
    ]
    assert r.statements == 3
    # Insert, update, delete of one row, a key change, a table with another unique index, a
    # generated column, TRUNCATE and DDL as barriers: each table's own order is kept.
    out = r.feed(_b(20, "0/20", "2026-12-01 12:00:01+00"))
    feed = [
        _line(action="I", schema="public", table="a", columns=[_col("id", 1), _col("v", None)]),
        _line(
            action="U",
            schema="public",
            table="a",
            columns=[_col("id", 1), _col("v", 2)],
            identity=[_col("id", 1)],
        ),
        _line(
            action="U",
            schema="public",
            table="b",
            columns=[_col("id", 7), _col("v", 2)],
            identity=[_col("id", 1)],
        ),
        _line(action="D", schema="public", table="a", identity=[_col("id", 1)]),
        _line(action="D", schema="public", table="a", identity=[_col("id", 2)]),
        _line(
            action="U",
            schema="public",
            table="u",
            columns=[_col("id", 1), _col("v", 2)],
            identity=[_col("id", 1)],
        ),
        _line(action="I", schema="public", table="gen", columns=[_col("id", 1), _col("v", 1), _col("g", 2)]),
        _line(action="T", schema="public", table="h"),
        _line(action="U", schema="public", table="a", columns=[_col("id", 3)], identity=[_col("id", 3)]),
        _line(
            action="U",
            schema="public",
            table="a",
            columns=[_col("id", 4), _col("v", 1)],
            identity=[_col("id", 4)],
        ),
        _line(
            action="I",
            schema="coldcopy",
            table="ddl_log",
            columns=[_col("query", "ALTER TABLE a ADD c int;", "text")],
        ),
        _line(
            action="U",
            schema="public",
            table="a",
            columns=[_col("id", 4), _col("v", 2)],
            identity=[_col("id", 4)],
        ),
    ]
    for line in feed:
        out += r.feed(line)
    out += r.feed(_line(action="C", xid=20)) + r.finish()
    assert [s if s.startswith("ALTER") else s.split(" ")[0] + " " + s.split('"')[3] for s in out] == [
        "INSERT a",  # the insert of row 1 ...
        "UPDATE b",  # b's key change: its own statement, at once
        "UPDATE a",  # ... then its update, then both deletes in one statement
        "UPDATE u",  # another unique index: its own statement
        "DELETE a",
        "INSERT gen",
        "TRUNCATE h",  # a barrier: everything before it first
        "UPDATE a",  # DDL is a barrier too ...
        "ALTER TABLE a ADD c int",
        "INSERT ddl_log",
        "UPDATE a",  # ... and the table is looked up again after it
    ]
    assert shapes.changes == 1 and shapes.lookups == 3 + 3 + 1
    assert out[1] == (
        'UPDATE ONLY "public"."b" SET "id" = \'7\', "v" = \'2\' '
        'WHERE ctid = (SELECT ctid FROM ONLY "public"."b" WHERE "id" = \'1\' LIMIT 1)'
    )
    assert out[4] == (
        "DELETE FROM ONLY \"public\".\"a\" AS t USING (VALUES ('1'::int4), ('2')) AS v(k0) "
        'WHERE t."id" = v.k0'
    )
    assert out[5].startswith('INSERT INTO "public"."gen" ("id", "v") ')  # the server computes g


def test_plans_refuse_targets_outside_the_window_and_in_gaps() -> None:
    def batch(start: str, end: str, first: str, last: str) -> Batch:
        return Batch(f"k{start}", start, end, 1, f"2026-12-01 {first}+00", f"2026-12-01 {last}+00", 1)

    dump = Dump("full_backup_db_1", T0, T0 + timedelta(minutes=1), SnapshotVisibility(5, 6, (), "0/150"))
    batches = [
        batch("0/100", "0/200", "12:00:00", "12:10:00"),
        batch("0/200", "0/300", "12:10:01", "12:20:00"),
        batch("0/400", "0/500", "12:30:00", "12:40:00"),  # after a gap: no dump after it
    ]
    plan = plan_logical(Target("time", time=T0 + timedelta(minutes=15)), [dump], batches)
    assert plan.dump == dump and [b.start_lsn for b in plan.batches] == ["0/100", "0/200"]
    for when, reason in (
        (-1, "before the oldest usable"),
        (25, "gap"),
        (35, "gap"),
        (45, "after the newest"),
    ):
        with pytest.raises(RecoveryRefused, match=reason) as exc:
            plan_logical(Target("time", time=T0 + timedelta(minutes=when)), [dump], batches)
        assert exc.value.exit_code == 8


def test_plans_take_earlier_batches_holding_a_transaction_the_snapshot_does_not_see() -> None:
    """A transaction whose commit record precedes the dump's wal_lsn_before can still be in progress
    in its snapshot (xip): its batch is replayed although it ends before wal_lsn_before.  Batches
    whose transactions the snapshot all sees are not; a record without xids (older ones) cannot be
    decided, so the newest such batch before wal_lsn_before is taken."""
    vis = SnapshotVisibility(100, 110, (105,), "0/300")
    dump = Dump("full_backup_db_1", T0, T0 + timedelta(minutes=1), vis)

    def batch(start: str, end: str, minute: int, xids: tuple[tuple[int, int], ...] | None) -> Batch:
        first, last = f"2026-12-01 12:{minute:02d}:00+00", f"2026-12-01 12:{minute + 1:02d}:00+00"
        return Batch(f"k{start}", start, end, 1, first, last, 1, xids)

    def planned(*xids: tuple[tuple[int, int], ...] | None) -> list[str]:
        batches = [
            batch("0/100", "0/200", 0, xids[0]),
            batch("0/200", "0/300", 0, xids[1]),
            batch("0/300", "0/400", 5, xids[2]),
        ]
        plan = plan_logical(Target("time", time=T0 + timedelta(minutes=5)), [dump], batches)
        return [b.start_lsn for b in plan.batches]

    after = ((106, 112),)
    # 105 committed before wal_lsn_before but was in progress in the snapshot: its batch is taken
    assert planned(((90, 99),), ((104, 105),), after) == ["0/200", "0/300"]
    assert planned(((90, 99), (105, 105)), ((100, 104),), after) == ["0/100", "0/300"]
    # every transaction before wal_lsn_before seen (below xmax, not in xip): only the batch after
    assert planned(((90, 99),), ((100, 104), (106, 109)), after) == ["0/300"]
    assert planned(None, ((100, 104),), after) == ["0/300"]
    # older records without xids: the newest batch before wal_lsn_before is taken as a margin
    assert planned(None, None, None) == ["0/200", "0/300"]
    assert planned(((90, 99),), None, after) == ["0/200", "0/300"]


# -- a logical cluster (test_changes' fixtures) ------------------------------------------------------
def _drop_recovered(lpg: PgCluster, db: str) -> None:
    conn = lpg.connect()
    try:
        for (name,) in conn.run("SELECT datname FROM pg_database WHERE datname LIKE :p", p=f"{db}\\_%"):
            conn.run(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        conn.close()


SCHEMA_SQL = """
CREATE TABLE status (id int PRIMARY KEY, phase text NOT NULL);
INSERT INTO status VALUES (1, 'before-backup');
CREATE TABLE t (id serial PRIMARY KEY, v text);
CREATE TABLE big (id int PRIMARY KEY, n int, doc text);
CREATE TABLE nokey (a int, b text);
ALTER TABLE nokey REPLICA IDENTITY FULL;
CREATE TABLE trunc_me (id int PRIMARY KEY);
CREATE TABLE audit (id serial PRIMARY KEY, what text);
CREATE FUNCTION audit_t() RETURNS trigger LANGUAGE plpgsql AS
  $$BEGIN INSERT INTO audit (what) VALUES (TG_OP); RETURN NEW; END$$;
CREATE TRIGGER t_audit AFTER INSERT ON t FOR EACH ROW EXECUTE FUNCTION audit_t();
INSERT INTO t (v) SELECT 'seed' FROM generate_series(1, 5);
INSERT INTO big SELECT 1, 0, string_agg(md5(random()::text), '') FROM generate_series(1, 3000);
INSERT INTO trunc_me SELECT generate_series(1, 10);
"""


def _phase(conn: pg8000.native.Connection, phase: str) -> dict[str, str]:
    """Set the marker in its own transaction; the time just after its commit, its xid, the LSN."""
    xid = str(conn.run("UPDATE status SET phase = :p RETURNING txid_current()::text", p=phase)[0][0])
    at, lsn = conn.run("SELECT clock_timestamp(), pg_current_wal_lsn()::text")[0]
    return {"xid": xid, "after": at.astimezone(UTC).isoformat(), "lsn_after": str(lsn)}


def _contents(conn: pg8000.native.Connection) -> dict[str, Any]:
    return {
        "status": conn.run("SELECT phase FROM status"),
        "t": conn.run("SELECT * FROM t ORDER BY id"),
        "big": conn.run("SELECT id, n, md5(doc) FROM big ORDER BY id"),
        "nokey": conn.run("SELECT a, b FROM nokey ORDER BY a, b NULLS FIRST"),
        "trunc_me": conn.run("SELECT count(*) FROM trunc_me"),
        "audit": conn.run("SELECT count(*) FROM audit"),
    }


@pytest.mark.timeout(240)
def test_pitr_from_the_change_archive_to_every_kind_of_target(
    lpg: PgCluster, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small pieces: the stream is handed over in many pieces (some lines longer than one), and the
    # statements go in many round trips, so the reading and sending threads both queue and wait.
    monkeypatch.setattr(replay_module, "LINES_BYTES", 512)
    monkeypatch.setattr(replay_module, "ROUND_TRIP_BYTES", 4096)
    try:
        _marker_targets(lpg, env)
    finally:
        _drop_recovered(lpg, env["DB_NAME"])


def _marker_targets(lpg: PgCluster, env: dict[str, str]) -> None:
    db = env["DB_NAME"]
    conn = lpg.connect(db)
    conn.run("SET synchronous_commit = on")
    for sql in SCHEMA_SQL.split(";\n"):
        if sql.strip():
            conn.run(sql)
    setup(conn, f"coldcopy_changes_{db}")
    # A transaction open across the dump: it commits after the snapshot, so it must be replayed.
    other = lpg.connect(db)
    other.run("BEGIN")
    other.run("INSERT INTO t (v) VALUES ('open across the dump')")
    r = run_cli(env, "--json", "backup")
    assert r.rc == 0, r.err
    other.run("COMMIT")
    other.close()
    marks = {"one": _phase(conn, "one")}
    rp = run_cli(env, "--json", "restore-point", "rp1")
    assert rp.rc == 0, rp.err
    assert json.loads(rp.out)["change_archive"] is True
    marks["two"] = _phase(conn, "two")
    # DDL mid-stream: a column added with a default and filled, a table created, filled and
    # dropped, a column renamed; a TOAST value left unchanged; duplicates without a key; TRUNCATE.
    conn.run("ALTER TABLE t ADD COLUMN tag text DEFAULT 'd'")
    conn.run("UPDATE t SET tag = 'tag' || id WHERE id % 2 = 0")
    conn.run("CREATE TABLE scratch (id int PRIMARY KEY, x text)")
    conn.run("INSERT INTO scratch VALUES (1, 'x')")
    conn.run("DROP TABLE scratch")
    conn.run("ALTER TABLE t RENAME COLUMN v TO body")
    conn.run("INSERT INTO t (body) VALUES ('after rename')")
    conn.run("UPDATE big SET n = n + 1")
    conn.run("INSERT INTO nokey VALUES (1, NULL), (1, NULL), (2, 'two')")
    conn.run("UPDATE nokey SET b = 'one' WHERE ctid = (SELECT min(ctid) FROM nokey WHERE a = 1)")
    conn.run("DELETE FROM nokey WHERE a = 2")
    conn.run("TRUNCATE trunc_me")
    marks["three"] = _phase(conn, "three")
    conn.run("INSERT INTO t (body) SELECT 'bulk' FROM generate_series(1, 2000)")
    marks["four"] = _phase(conn, "four")
    final = _contents(conn)
    r = run_cli(env, "--json", "changes", "drain")
    assert r.rc == 0, r.err

    def pitr(*target: str) -> tuple[int, dict[str, Any], str]:
        name = f"{db}_{secrets.token_hex(3)}"
        res = run_cli(env, "--json", "pitr", *target, "--target-db", name)
        return res.rc, (json.loads(res.out) if res.rc == 0 else {"err": res.err}), name

    cases = [
        (("--target-time", marks["one"]["after"]), "one"),
        (("--target-name", "rp1"), "one"),
        (("--target-xid", marks["two"]["xid"]), "two"),
        (("--target-lsn", marks["three"]["lsn_after"]), "three"),
    ]
    for target, phase in cases:
        rc, out, name = pitr(*target)
        assert rc == 0, out
        assert out["archive"] == "logical" and out["target_db"] == name
        got = lpg.connect(name)
        assert got.run("SELECT phase FROM status") == [[phase]], target
        if phase == "three":
            here = _contents(got)
            assert here["nokey"] == [[1, None], [1, "one"]] and here["trunc_me"] == [[0]]
            assert got.run("SELECT body, tag FROM t WHERE body = 'after rename'") == [["after rename", "d"]]
            assert got.run("SELECT to_regclass('scratch')") == [[None]]
        got.close()
    # To the newest commit: every table as the source had it, triggers not fired twice, sequences
    # past every id in use.
    rc, out, name = pitr("--target-lsn", marks["four"]["lsn_after"])
    assert rc == 0, out
    assert out["replay"]["transactions"] >= 10 and out["replay"]["ddl"] == 4
    got = lpg.connect(name)
    assert _contents(got) == final
    new_id = got.run("SELECT nextval('t_id_seq')")[0][0]
    assert new_id > got.run("SELECT max(id) FROM t")[0][0]
    got.close()
    # Refused with exit 8, nothing created: before the backup, after the newest commit, unknown names.
    for target, reason in (
        (("--target-time", "2000-01-01T00:00:00Z"), "before the oldest usable"),
        (("--target-time", "2999-01-01T00:00:00Z"), "after the newest archived commit"),
        (("--target-name", "nope"), "no restore point named 'nope'"),
        (("--target-xid", "3999999"), "not in the change archive"),
    ):
        rc, out, name = pitr(*target)
        assert rc == 8 and reason in out["err"], out
        assert not lpg.connect().run("SELECT 1 FROM pg_database WHERE datname = :n", n=name)
    # A damaged batch (read ahead in the reading thread): the replay fails with the damage named,
    # rolls back, and the new database is dropped.
    ctx = open_context(load_settings(env))
    newest = max(o.key for o in ctx.storage.list(BATCHES_PREFIX) if o.key.endswith(".json"))
    volume = next(k for k, _ in StoredObject.from_dict(ctx.storage.get_json(newest)["data"]).pieces())
    data = bytearray(ctx.storage.get_bytes(volume))
    data[len(data) // 2] ^= 0xFF
    ctx.storage.put_bytes(volume, bytes(data))
    rc, out, name = pitr("--target-lsn", marks["four"]["lsn_after"])
    assert rc == 4 and "failed authentication: the stored data was altered" in out["err"], out
    assert not lpg.connect().run("SELECT 1 FROM pg_database WHERE datname = :n", n=name)
    conn.close()


@pytest.mark.timeout(180)
def test_a_target_inside_a_gap_is_refused_with_nothing_created(lpg: PgCluster, env: dict[str, str]) -> None:
    """A batch of the archive goes missing: a target inside it is refused (exit 8, the gap named)
    before anything is created; a target before the gap still recovers."""
    db = env["DB_NAME"]
    conn = lpg.connect(db)
    conn.run("SET synchronous_commit = on")
    conn.run("CREATE TABLE status (id int PRIMARY KEY, phase text NOT NULL)")
    conn.run("INSERT INTO status VALUES (1, 'backup')")
    setup(conn, f"coldcopy_changes_{db}")
    assert run_cli(env, "backup").rc == 0
    after: dict[str, datetime] = {}
    for phase in ("one", "two", "three"):
        _phase(conn, phase)
        after[phase] = conn.run("SELECT clock_timestamp()")[0][0]
        assert run_cli(env, "changes", "drain").rc == 0
    conn.close()
    ctx = open_context(load_settings(env))
    (lost,) = [
        b
        for b, _ in batch_records(ctx)
        if stream_time(str(b.first_commit_at)) < after["two"] < stream_time(str(b.last_commit_at))
    ]
    ctx.storage.delete([lost.key])  # the batch holding phase two is gone: a gap in the stream

    def databases() -> list[str]:
        admin = lpg.connect()
        try:
            return sorted(str(r[0]) for r in admin.run("SELECT datname FROM pg_database"))
        finally:
            admin.close()

    before = databases()
    for when in (after["two"], after["three"]):
        r = run_cli(env, "pitr", "--target-time", when.isoformat(), "--target-db", f"{db}_gap")
        assert r.rc == 8 and "falls in a gap of the change archive" in r.err, r.err
        assert databases() == before
    try:
        r = run_cli(
            env, "--json", "pitr", "--target-time", after["one"].isoformat(), "--target-db", f"{db}_one"
        )
        assert r.rc == 0, r.err
        got = lpg.connect(f"{db}_one")
        assert got.run("SELECT phase FROM status") == [["one"]]
        got.close()
    finally:
        _drop_recovered(lpg, db)


def _leads(
    lpg: PgCluster, env: dict[str, str], tmp_path: Any
) -> tuple[dict[str, str], pg8000.native.Connection]:
    """A lead table in DB_NAME and an erasure config for it: the env with it, and a connection."""
    config = tmp_path / "erasures.json"
    lead = {
        "statements": ["DELETE FROM lead WHERE email = :subject"],
        "check": "SELECT count(*) FROM lead WHERE email = :subject",
    }
    config.write_text(json.dumps({"kinds": {"lead": lead}}))
    conn = lpg.connect(env["DB_NAME"])
    conn.run("SET synchronous_commit = on")
    conn.run("CREATE TABLE lead (id int PRIMARY KEY, email text NOT NULL)")
    return {**env, "GDPR_ERASURE_CONFIG": str(config)}, conn


@pytest.mark.timeout(240)
def test_a_logical_pitr_re_applies_the_ledger_after_the_replay(
    lpg: PgCluster, env: dict[str, str], tmp_path: Any
) -> None:
    """A lead inserted after the dump and erased later: PITR to a time between the two replays the
    insert, then the ledger removes it before the database is handed over."""
    db = env["DB_NAME"]
    env, conn = _leads(lpg, env, tmp_path)
    conn.run("INSERT INTO lead VALUES (1, 'kept@example.com')")
    setup(conn, f"coldcopy_changes_{db}")
    name = f"{db}_{secrets.token_hex(3)}"
    try:
        assert run_cli(env, "--json", "backup").rc == 0
        conn.run("INSERT INTO lead VALUES (2, 'late@example.com')")
        target = conn.run("SELECT clock_timestamp()")[0][0].astimezone(UTC).isoformat()
        e = run_cli(env, "gdpr", "erase", "--subject", "late@example.com")
        assert e.rc == 0, e.err
        assert run_cli(env, "changes", "drain").rc == 0
        r = run_cli(env, "--json", "pitr", "--target-time", target, "--target-db", name)
        assert r.rc == 0, r.err
        out = json.loads(r.out)
        assert out["replay"]["transactions"] >= 1 and "late@" not in r.out + r.err
        assert out["erased"]["erasures_applied"] == 1 and out["erased"]["erased_rows_removed"] == 1
        got = lpg.connect(name)
        assert got.run("SELECT id, email FROM lead ORDER BY id") == [[1, "kept@example.com"]]
        got.close()
    finally:
        conn.close()
        _drop_recovered(lpg, db)


@pytest.mark.timeout(240)
def test_an_in_place_pitr_replays_and_erases_in_staging_before_the_swap(
    lpg: PgCluster, env: dict[str, str], tmp_path: Any
) -> None:
    """`coldcopy pitr` without --target-db replaces DB_NAME: the dump is restored, replayed and the
    ledger applied in the staging database, and only then swapped in.  A damaged batch leaves the
    live database exactly as it was; killed at the swap, the live database is untouched and the
    staging one already holds the replayed, erased result (never the dump's state); a full run
    gives that result under DB_NAME."""
    db = env["DB_NAME"]
    env, conn = _leads(lpg, env, tmp_path)
    conn.run("INSERT INTO lead VALUES (1, 'kept@example.com'), (2, 'gone@example.com')")
    setup(conn, f"coldcopy_changes_{db}")
    try:
        assert run_cli(env, "backup").rc == 0
        conn.run("INSERT INTO lead VALUES (3, 'late@example.com'), (5, 'late2@example.com')")
        conn.run("UPDATE lead SET email = 'kept2@example.com' WHERE id = 1")
        target = conn.run("SELECT clock_timestamp()")[0][0].astimezone(UTC).isoformat()
        for subject in ("gone@example.com", "late2@example.com"):  # one in the dump, one replayed
            assert run_cli(env, "gdpr", "erase", "--subject", subject).rc == 0
        assert run_cli(env, "changes", "drain").rc == 0
        conn.run("INSERT INTO lead VALUES (4, 'after@example.com')")  # the live state differs from both
        conn.close()

        def live() -> tuple[Any, Any, list[str]]:
            admin = lpg.connect()
            try:
                oid = admin.run("SELECT oid FROM pg_database WHERE datname = :d", d=db)
                others = admin.run("SELECT datname FROM pg_database WHERE datname LIKE :p", p=f"{db}\\_%")
            finally:
                admin.close()
            c = lpg.connect(db)
            try:
                return oid, c.run("SELECT id, email FROM lead ORDER BY id"), sorted(str(r[0]) for r in others)
            finally:
                c.close()

        before = live()
        assert before[1] == [[1, "kept2@example.com"], [3, "late@example.com"], [4, "after@example.com"]]
        assert before[2] == []

        # A damaged batch: the replay fails in the staging database; the live one is as it was.
        ctx = open_context(load_settings(env))
        pieces = [StoredObject.from_dict(r["data"]).pieces()[0][0] for _, r in batch_records(ctx)]
        originals = {k: ctx.storage.get_bytes(k) for k in pieces}
        for k, data in originals.items():
            bad = bytearray(data)
            bad[len(bad) // 2] ^= 0xFF
            ctx.storage.put_bytes(k, bytes(bad))
        r = run_cli(env, "pitr", "--target-time", target)
        assert r.rc != 0 and "authentication" in r.err, r.err
        assert live() == before
        for k, data in originals.items():
            ctx.storage.put_bytes(k, data)

        # Killed where the swap would start: the replay and the ledger have already run in staging.
        killed_at_point(env, "restore:before-swap", tmp_path, "pitr", "--target-time", target)
        oid, rows, others = live()
        assert (oid, rows) == before[:2]
        (staging,) = others
        assert "_ccstage_" in staging
        s = lpg.connect(staging)
        recovered = [[1, "kept2@example.com"], [3, "late@example.com"]]
        assert s.run("SELECT id, email FROM lead ORDER BY id") == recovered
        s.close()

        # The full run: the result under DB_NAME (the killed run's staging dropped first).
        r = run_cli(env, "--json", "pitr", "--target-time", target)
        assert r.rc == 0, r.err
        out = json.loads(r.out)
        assert out["target_db"] == db and out["replay"]["transactions"] >= 2
        # one pass of the ledger, in the replay's transaction: gone@ from the dump and late2, which
        # the replay brought back (the staging database is never seen, so no earlier pass)
        assert out["erased"]["erasures_applied"] == 2 and out["erased"]["erased_rows_removed"] == 2
        assert "late2@" not in r.out + r.err
        oid, rows, others = live()
        assert oid != before[0] and rows == recovered
        assert staging not in others and [n for n in others if "_ccstage_" in n] == []
    finally:
        admin = lpg.connect()
        admin.run(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database LIKE :p",
            p=f"{db}%",
        )
        admin.close()
        _drop_recovered(lpg, db)


@pytest.mark.heavy  # ~18 s on 2 loaded cores: drain 7 s, replay 7 s (building the SQL 6 s)
def test_a_million_row_transaction_is_replayed(lpg: PgCluster, env: dict[str, str]) -> None:
    """One transaction inserting a million narrow rows: drained, then replayed by `pitr` into a new
    database in one piece; the count and a hash of every row equal the source's."""
    db = env["DB_NAME"]
    conn = lpg.connect(db)
    conn.run("SET synchronous_commit = on")
    conn.run("CREATE TABLE m (id int PRIMARY KEY, v int NOT NULL)")
    setup(conn, f"coldcopy_changes_{db}")
    name = f"{db}_{secrets.token_hex(3)}"
    tally = "SELECT count(*), md5(string_agg(id || ':' || v, ',' ORDER BY id)) FROM m"
    try:
        assert run_cli(env, "backup").rc == 0
        conn.run("INSERT INTO m SELECT g, g % 1000 FROM generate_series(1, 1000000) g")
        source = conn.run(tally)
        assert source[0][0] == 1_000_000
        target = conn.run("SELECT clock_timestamp()")[0][0].astimezone(UTC).isoformat()
        conn.run("UPDATE m SET v = -1 WHERE id = 1")  # after the target: not replayed
        assert run_cli(env, "changes", "drain").rc == 0
        r = run_cli(env, "--json", "pitr", "--target-time", target, "--target-db", name)
        assert r.rc == 0, r.err
        out = json.loads(r.out)
        assert out["replay"]["transactions"] == 1 and out["replay"]["rows"] == 1_000_000
        got = lpg.connect(name)
        assert got.run(tally) == source
        got.close()
    finally:
        conn.close()
        _drop_recovered(lpg, db)


# -- grouped statements against the real server: the same stream, grouped and row by row ---------
EDGE_SCHEMA = """
CREATE TABLE acc (id int PRIMARY KEY, bal int, note text);
CREATE TABLE tel (id int PRIMARY KEY, bal int);
CREATE TABLE hist (a int, b int, at timestamptz);
CREATE TABLE kinds (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, b bytea, arr int[], tags text[],
  j json, jb jsonb, n numeric(10,2), f float8, ok bool, doc text,
  twice int GENERATED ALWAYS AS (id * 2) STORED);
ALTER TABLE kinds ALTER COLUMN doc SET STORAGE EXTERNAL;
CREATE TABLE pair (x int, y text, v int, PRIMARY KEY (x, y));
CREATE TABLE mail (id int PRIMARY KEY, email text UNIQUE);
CREATE TABLE dup (a int, b text);
ALTER TABLE dup REPLICA IDENTITY FULL;
INSERT INTO acc SELECT g, 0, NULL FROM generate_series(1, 50) g;
INSERT INTO tel SELECT g, 0 FROM generate_series(1, 3) g;
INSERT INTO mail VALUES (1, 'x@e'), (2, 'y@e');
INSERT INTO pair VALUES (1, 'a', 0), (1, 'b', 0);
INSERT INTO dup VALUES (1, 'a'), (1, 'a');
CREATE TABLE fixed (id int PRIMARY KEY, c char(5), bits bit(3), vc varchar(10), ts timestamp(3),
  ca char(3)[]);
INSERT INTO fixed VALUES (1, 'ab', '101', 'x', '2026-01-01 00:00:00.123', '{ab,c}'),
  (2, 'cd', '011', 'y', NULL, NULL);
CREATE TABLE par (id int PRIMARY KEY, v int);
CREATE TABLE chi () INHERITS (par);
ALTER TABLE chi ADD PRIMARY KEY (id);
INSERT INTO par VALUES (1, 0), (2, 0);
INSERT INTO chi VALUES (1, 0), (2, 0);
"""

EDGE_WORK = [
    # pgbench's shape, interleaved tables; the same tellers updated again and again
    *[
        f"BEGIN; UPDATE acc SET bal = bal + {i} WHERE id = {i % 50 + 1}; UPDATE tel SET bal = bal + {i} "
        f"WHERE id = {i % 3 + 1}; INSERT INTO hist VALUES ({i}, {i % 3}, now()); COMMIT"
        for i in range(120)
    ],
    # one row inserted, updated, deleted, inserted again and updated, in one transaction and across
    "BEGIN; INSERT INTO acc VALUES (100, 1, 'new'); UPDATE acc SET bal = 2 WHERE id = 100; "
    "DELETE FROM acc WHERE id = 100; INSERT INTO acc VALUES (100, 3, NULL); COMMIT",
    "UPDATE acc SET bal = 4, note = 'again' WHERE id = 100",
    "UPDATE acc SET note = NULL WHERE id BETWEEN 1 AND 10",
    "DELETE FROM acc WHERE id BETWEEN 5 AND 8",
    "INSERT INTO acc VALUES (5, 55, 'back')",
    # a key change, and rows moved onto keys just freed
    "UPDATE acc SET id = 1000 WHERE id = 1",
    "UPDATE acc SET id = 1 WHERE id = 2",
    "UPDATE acc SET bal = -1 WHERE id IN (1, 1000, 3)",
    # a composite key
    "UPDATE pair SET v = v + 1",
    "UPDATE pair SET y = 'c' WHERE y = 'a'",
    "UPDATE pair SET v = 9 WHERE x = 1",
    # another unique index: a swap that only works in the stream's order
    "BEGIN; UPDATE mail SET email = 'tmp' WHERE id = 1; UPDATE mail SET email = 'x@e' WHERE id = 2; "
    "UPDATE mail SET email = 'y@e' WHERE id = 1; COMMIT",
    # every kind of value, a TOASTed value left unchanged by later updates, generated columns
    "INSERT INTO kinds (b, arr, tags, j, jb, n, f, ok, doc) VALUES ('\\x00ff10', '{1,NULL,3}', "
    '\'{"a b",NULL,"c,d"}\', \'{"k": [1, "two"]}\', \'{"z": null}\', 12.5, 1e300, true, '
    "(SELECT string_agg(md5(g::text), '') FROM generate_series(1, 400) g)), "
    "(NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)",
    "UPDATE kinds SET n = n + 1",
    "UPDATE kinds SET ok = NOT ok, b = '\\x'",
    "UPDATE kinds SET jb = jb || '{\"q\": 1}', f = -2.5e-300 WHERE id = 1",
    # duplicates in a table without a key
    "UPDATE dup SET b = 'b' WHERE ctid = (SELECT min(ctid) FROM dup)",
    "DELETE FROM dup WHERE b = 'a'",
    "INSERT INTO dup VALUES (2, NULL), (2, NULL)",
    # types with a length (a cast to "character" would be char(1)); a parent and its child sharing keys
    "UPDATE fixed SET c = 'abcd', bits = '110', vc = 'longer one', ts = ts + interval '1 ms', ca = '{xyz,q}'",
    "UPDATE fixed SET c = 'z' WHERE id = 2",
    "UPDATE ONLY par SET v = 5",
    "UPDATE chi SET v = 7 WHERE id = 1",
    "DELETE FROM ONLY par WHERE id = 2",
    # TRUNCATE between groups
    "UPDATE tel SET bal = 0 WHERE id = 1",
    "TRUNCATE hist",
    "INSERT INTO hist VALUES (1, 1, NULL)",
    "UPDATE tel SET bal = 7 WHERE id = 1",
]

EDGE_TABLES = ["acc", "tel", "hist", "kinds", "pair", "mail", "dup", "fixed", "ONLY par", "chi"]


def _rows(conn: pg8000.native.Connection) -> dict[str, Any]:
    return {
        t: conn.run(f"SELECT md5(x::text) FROM {t} x ORDER BY md5(x::text)")  # every column, any order
        for t in EDGE_TABLES
    }


def test_grouped_replay_gives_the_tables_the_stream_describes(lpg: PgCluster) -> None:
    """A real wal2json stream replayed twice onto a copy of the start: grouped (per table, many
    rows a statement) and one row a statement; both end exactly as the source."""
    src = "edge_" + secrets.token_hex(3)
    lpg.create_database(src)
    conn = lpg.connect(src)
    copies: list[str] = []
    slot = f"edge_{secrets.token_hex(3)}"
    try:
        for sql in EDGE_SCHEMA.split(";\n"):
            if sql.strip():
                conn.run(sql)
        conn.close()
        admin = lpg.connect()
        for name in ("grouped", "single"):
            copies.append(f"{src}_{name}")
            admin.run(f'CREATE DATABASE "{copies[-1]}" TEMPLATE "{src}"')
        admin.close()
        conn = lpg.connect(src)
        conn.run("SET synchronous_commit = on")
        conn.run("SELECT pg_create_logical_replication_slot(:s, 'wal2json')", s=slot)
        for sql in EDGE_WORK:
            conn.run(sql)
        lines = [
            str(r[0])
            for r in conn.run(
                "SELECT data FROM pg_logical_slot_get_changes(:s, NULL, NULL, 'format-version', '2', "
                "'include-xids', '1', 'include-timestamp', '1', 'include-lsn', '1')",
                s=slot,
            )
        ]
        want = _rows(conn)
        assert any('"action":"U"' in x and '"table":"kinds"' in x and '"doc"' not in x for x in lines)
        results = {}
        for db, grouped in zip(copies, (True, False), strict=True):
            target = lpg.connect(db)
            stats = ReplayStats()
            sender = Sender(target, stats)
            vis = SnapshotVisibility.parse("3:3:", "0/1")  # the copies have none of it
            shapes = CatalogShapes(target, sender.sync)
            replayer = Replayer(
                vis, Target("lsn", lsn=1 << 62), shapes, max_group_rows=1000 if grouped else 1
            )
            target.run("BEGIN")
            target.run("SET LOCAL session_replication_role = replica")
            replay_lines(replayer, iter(lines), sender)
            sender.add(replayer.finish())
            sender.sync()
            sender.close()
            target.run("COMMIT")
            results[grouped] = (_rows(target), replayer.statements, replayer.rows)
            target.close()
        assert results[True][0] == want and results[False][0] == want
        rows = results[True][2]
        assert rows > 400 and results[True][1] < rows / 5 < results[False][1], results
    finally:
        conn.close()
        admin = lpg.connect()
        admin.run(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = :s",
            s=slot,
        )
        for db in (*copies, src):
            admin.run(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        admin.close()
