"""The change archive on the Supabase stand-in, as the non-superuser ``postgres``."""

from __future__ import annotations

import json
import secrets
from typing import Any

import pg8000.native
import pytest

from cli_helpers import run_cli
from coldcopy.config import load_settings
from coldcopy.context import open_context
from coldcopy.localstack.s3server import S3Server
from coldcopy.verify.pitr_drill import run_pitr_drill
from supabase_project import Project, project
from test_changes import archived, catalog_objects
from test_pitr_drill import Fraction


@pytest.mark.timeout(180)
def test_setup_drain_and_teardown_as_postgres_on_the_stand_in(s3_server: S3Server, bucket: str) -> None:
    with project(with_app=False) as p:
        env = {
            **p.env(),
            "COLDCOPY_CLUSTER": "proj",
            **s3_server.spaces_env(bucket),
            "BACKUP_ENCRYPTION_KEY": secrets.token_urlsafe(32),
        }
        admin = p.connect(user="supabase_admin")  # only to look
        conn = p.connect()
        assert conn.run("SELECT rolsuper FROM pg_roles WHERE rolname = current_user") == [[False]]
        conn.run("CREATE TABLE notes (id int PRIMARY KEY, body text)")
        conn.run("CREATE TABLE events (at timestamptz, what text)")  # no primary key
        before = catalog_objects(admin)
        r = run_cli(env, "--json", "changes", "setup")
        assert r.rc == 0, r.err
        assert json.loads(r.out)["left_out"] == ["public.events"]
        conn.run("INSERT INTO notes VALUES (1, 'one')")
        conn.run("ALTER TABLE notes ADD COLUMN tag text DEFAULT 'x'")
        conn.run("INSERT INTO notes VALUES (2, 'two', 'y')")
        conn.run("INSERT INTO events VALUES (now(), 'left out')")
        r = run_cli(env, "--json", "changes", "drain")
        assert r.rc == 0, r.err
        txns = archived(open_context(load_settings(env)))
        tables = [row["table"] for t in txns for row in t["rows"] if row["table"] != "heartbeat"]
        assert tables == ["notes", "ddl_log", "notes"]  # DDL in commit order; events left out
        r = run_cli(env, "--json", "changes", "status")
        st = json.loads(r.out)
        assert st["left_out"] == ["public.events"] and st["slot_exists"] and st["last_error"] == ""
        # DDL by the platform's superuser does not fire postgres's event triggers: found, alerted,
        # even beside DDL that was captured in the same interval.
        admin.run("ALTER TABLE public.notes ADD COLUMN by_platform int")
        conn.run("ALTER TABLE notes ADD COLUMN by_user int")
        assert run_cli(env, "--json", "changes", "drain").rc == 0
        st = json.loads(run_cli(env, "--json", "changes", "status").out)
        assert len(st["untracked_ddl"]) == 1, st
        assert "changes-untracked:ddl" in [a["id"] for a in st["alerts"]]
        assert run_cli(env, "changes", "teardown").rc == 0
        assert catalog_objects(admin) == before
        gone = run_cli(env, "changes", "status")
        assert gone.rc == 0 and "torn down at" in gone.out
        admin.close()
        conn.close()


def _stand_in_env(p: Project, s3_server: S3Server, bucket: str, key: str) -> dict[str, str]:
    return {
        **p.env(),
        "COLDCOPY_CLUSTER": "proj",
        **s3_server.spaces_env(bucket),
        "BACKUP_ENCRYPTION_KEY": key,
    }


def _state(conn: pg8000.native.Connection) -> dict[str, Any]:
    """The markers a target must bring back exactly."""
    return {
        "status": conn.run("SELECT phase FROM status"),
        "notes": conn.run("SELECT count(*), max(id) FROM notes"),
        "nokey": conn.run("SELECT a, b FROM nokey ORDER BY a, b"),
    }


def _no_id_reused(conn: pg8000.native.Connection, notes: int) -> None:
    """A new row takes an id never handed out before the target: above every notes id (identity),
    and above serials' 5, which was used and then deleted (its sequence's captured position)."""
    for table, used in (("notes", notes), ("serials", 5)):
        new = conn.run(f"INSERT INTO {table} (n) VALUES (99) RETURNING id")[0][0]
        assert new > used, (table, new, used)


@pytest.mark.timeout(300)
def test_pitr_from_the_change_archive_as_postgres_on_the_stand_in(s3_server: S3Server, bucket: str) -> None:
    """The marker pattern on the stand-in as ``postgres``, every target type (name, xid, LSN, time)
    into a new database through the Supabase-faithful restore, with an UPDATE leaving a TOASTed
    column unchanged, DDL, and a REPLICA IDENTITY FULL table without a key between them; sequences
    never hand out a replayed id; then the disaster case: DB_* pointed at a new, empty project,
    recovered in place."""
    key = secrets.token_urlsafe(32)
    with project(with_app=False) as p:
        env = _stand_in_env(p, s3_server, bucket, key)
        conn = p.connect()
        conn.run("SET synchronous_commit = on")
        conn.run("CREATE TABLE status (id int PRIMARY KEY, phase text)")
        conn.run("INSERT INTO status VALUES (1, 'backup')")
        conn.run("CREATE TABLE notes (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, n int, doc text)")
        big = "SELECT 0, string_agg(md5(random()::text), '') FROM generate_series(1, 3000)"
        conn.run(f"INSERT INTO notes (n, doc) {big}")
        conn.run("CREATE TABLE serials (id serial PRIMARY KEY, n int)")
        conn.run("CREATE TABLE nokey (a int, b text)")
        conn.run("ALTER TABLE nokey REPLICA IDENTITY FULL")
        assert run_cli(env, "changes", "setup").rc == 0
        r = run_cli(env, "--json", "backup")
        assert r.rc == 0, r.err
        conn.run("UPDATE status SET phase = 'one'")
        conn.run("UPDATE notes SET n = 1")  # doc is TOASTed and unchanged: not in the stream
        conn.run("INSERT INTO nokey VALUES (1, 'a'), (1, 'a'), (2, 'b')")
        conn.run("INSERT INTO serials (n) SELECT g FROM generate_series(1, 5) g")
        marks = {"one": _state(conn)}
        at_one = conn.run("SELECT clock_timestamp()")[0][0].isoformat()
        rp = run_cli(env, "--json", "restore-point", "before-two")
        assert rp.rc == 0, rp.err
        assert json.loads(rp.out)["change_archive"] and json.loads(rp.out)["lsn"] is None  # not superuser
        conn.run("ALTER TABLE notes ADD COLUMN tag text DEFAULT 'x'")
        xid = conn.run("UPDATE status SET phase = 'two' RETURNING txid_current()::text")[0][0]
        marks["two-xid"] = _state(conn)
        conn.run("INSERT INTO notes (n, doc) VALUES (2, 'short')")
        conn.run("UPDATE nokey SET b = 'z' WHERE ctid = (SELECT min(ctid) FROM nokey WHERE a = 1)")
        conn.run("DELETE FROM nokey WHERE a = 2")
        conn.run("DELETE FROM serials WHERE id = 5")  # the highest id goes: its value must not come back
        marks["two-lsn"] = _state(conn)
        lsn_two = conn.run("SELECT pg_current_wal_lsn()::text")[0][0]
        conn.run("UPDATE status SET phase = 'three'")
        conn.run("INSERT INTO notes (n, doc) SELECT 3, 'bulk' FROM generate_series(1, 50)")
        marks["three"] = _state(conn)
        at_three = conn.run("SELECT clock_timestamp()")[0][0].isoformat()
        doc = conn.run("SELECT md5(doc) FROM notes WHERE id = 1")[0][0]
        assert run_cli(env, "changes", "drain").rc == 0
        for target, db, mark in (
            (("--target-name", "before-two"), "rp_name", "one"),
            (("--target-xid", xid), "rp_xid", "two-xid"),
            (("--target-lsn", lsn_two), "rp_lsn", "two-lsn"),
            (("--target-time", at_one), "rp_time", "one"),
        ):
            r = run_cli(env, "--json", "pitr", *target, "--target-db", db)
            assert r.rc == 0, r.err
            out = json.loads(r.out)
            assert out["archive"] == "logical" and out["replay"]["transactions"] >= 2
            got = p.connect(db)
            assert _state(got) == marks[mark], target
            assert got.run("SELECT n, md5(doc) FROM notes WHERE id = 1") == [[1, doc]]
            has_tag = got.run("SELECT count(*) FROM information_schema.columns WHERE column_name = 'tag'")
            assert has_tag == [[0 if mark == "one" else 1]]
            _no_id_reused(got, marks[mark]["notes"][0][1])
            got.close()
        r = run_cli(env, "pitr", "--target-name", "no-such-point", "--target-db", "rp_none")
        assert r.rc == 8 and "no restore point named" in r.err
        assert not conn.run("SELECT 1 FROM pg_database WHERE datname = 'rp_none'")
        # The drill on a Supabase dump: its scratch database in this project, as postgres.
        verify = {"VERIFY_DB_HOST": p.host, "VERIFY_DB_PORT": str(p.port), "VERIFY_DB_USER": "postgres",
                  "VERIFY_DB_PASSWORD": env["DB_PASSWORD"], "VERIFY_DB_SSLMODE": "disable"}  # fmt: skip
        databases = conn.run("SELECT datname FROM pg_database ORDER BY 1")
        drill = run_pitr_drill(load_settings({**env, **verify}), rng=Fraction(0.95))
        assert drill is not None and drill.ok, [c for c in drill.checks if not c.ok] if drill else None
        assert drill.measurement and drill.measurement["replay_transactions"] >= 1
        assert conn.run("SELECT datname FROM pg_database ORDER BY 1") == databases
        # In place into this project, which holds data: the replay could not be undone after the
        # dump's commit, so it is refused before anything is written.
        before = _state(conn)
        r = run_cli(env, "pitr", "--target-time", at_one)
        assert r.rc == 8 and "not all or nothing" in r.err and "--target-db" in r.err, r.err
        assert _state(conn) == before
        conn.close()

        # The disaster: the project is lost; DB_* point at a new, empty project; pitr without
        # --target-db recovers into its database, as postgres.
        with project(with_app=False) as fresh:
            env_new = _stand_in_env(fresh, s3_server, bucket, key)
            r = run_cli(env_new, "--json", "pitr", "--target-time", at_three)
            assert r.rc == 0, r.err
            out = json.loads(r.out)
            assert out["archive"] == "logical" and out["target_db"] == "postgres"
            got = fresh.connect()
            assert got.run("SELECT rolsuper FROM pg_roles WHERE rolname = current_user") == [[False]]
            assert _state(got) == marks["three"]
            assert got.run("SELECT n, md5(doc), tag FROM notes WHERE id = 1") == [[1, doc, "x"]]
            _no_id_reused(got, marks["three"]["notes"][0][1])
            got.close()
