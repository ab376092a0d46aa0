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
from cli_helpers import run_cli
from coldcopy.changes.slot import setup
from coldcopy.config import load_settings
from coldcopy.context import open_context
from coldcopy.core.changes import Batch, SnapshotVisibility
from coldcopy.core.recovery_plan import RecoveryRefused, Target
from coldcopy.core.replay import Dump, Replayer, literal, plan_logical, stream_time
from coldcopy.postgres.cluster import PgCluster
from coldcopy.restore.replay import batch_records

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
    assert len(out) == 2 and not r.visible_past_target
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
    assert got[1].startswith('UPDATE "public"."t" SET "id" = \'1\' WHERE ctid = (SELECT ctid FROM ONLY')
    assert got[2] == 'TRUNCATE ONLY "public"."a", "public"."b"'
    assert literal("it's") == "'it''s'" and literal(None) == "NULL" and literal(True) == "'true'"


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
def test_pitr_from_the_change_archive_to_every_kind_of_target(lpg: PgCluster, env: dict[str, str]) -> None:
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


@pytest.mark.timeout(240)
def test_a_logical_pitr_re_applies_the_ledger_after_the_replay(
    lpg: PgCluster, env: dict[str, str], tmp_path: Any
) -> None:
    """A lead inserted after the dump and erased later: PITR to a time between the two replays the
    insert, then the ledger removes it before the database is handed over."""
    db = env["DB_NAME"]
    config = tmp_path / "erasures.json"
    lead = {
        "statements": ["DELETE FROM lead WHERE email = :subject"],
        "check": "SELECT count(*) FROM lead WHERE email = :subject",
    }
    config.write_text(json.dumps({"kinds": {"lead": lead}}))
    env = {**env, "GDPR_ERASURE_CONFIG": str(config)}
    conn = lpg.connect(db)
    conn.run("SET synchronous_commit = on")
    conn.run("CREATE TABLE lead (id int PRIMARY KEY, email text NOT NULL)")
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
