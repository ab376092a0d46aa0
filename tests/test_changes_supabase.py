"""The change archive on the Supabase stand-in, as the non-superuser ``postgres``."""

from __future__ import annotations

import json
import secrets

import pytest

from cli_helpers import run_cli
from coldcopy.config import load_settings
from coldcopy.context import open_context
from coldcopy.localstack.s3server import S3Server
from supabase_project import project
from test_changes import archived, catalog_objects


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


@pytest.mark.timeout(240)
def test_pitr_from_the_change_archive_as_postgres_on_the_stand_in(s3_server: S3Server, bucket: str) -> None:
    """The marker pattern on the stand-in as ``postgres``: a restore point and an xid target,
    each into a new database through the Supabase-faithful restore, plus a UPDATE leaving a
    TOASTed column unchanged and DDL between them."""
    with project(with_app=False) as p:
        env = {
            **p.env(),
            "COLDCOPY_CLUSTER": "proj",
            **s3_server.spaces_env(bucket),
            "BACKUP_ENCRYPTION_KEY": secrets.token_urlsafe(32),
        }
        conn = p.connect()
        conn.run("SET synchronous_commit = on")
        conn.run("CREATE TABLE status (id int PRIMARY KEY, phase text)")
        conn.run("INSERT INTO status VALUES (1, 'backup')")
        conn.run("CREATE TABLE notes (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, n int, doc text)")
        big = "SELECT 0, string_agg(md5(random()::text), '') FROM generate_series(1, 3000)"
        conn.run(f"INSERT INTO notes (n, doc) {big}")
        assert run_cli(env, "changes", "setup").rc == 0
        r = run_cli(env, "--json", "backup")
        assert r.rc == 0, r.err
        conn.run("UPDATE status SET phase = 'one'")
        conn.run("UPDATE notes SET n = 1")  # doc is TOASTed and unchanged: not in the stream
        rp = run_cli(env, "--json", "restore-point", "before-two")
        assert rp.rc == 0, rp.err
        assert json.loads(rp.out)["change_archive"] and json.loads(rp.out)["lsn"] is None  # not superuser
        conn.run("ALTER TABLE notes ADD COLUMN tag text DEFAULT 'x'")
        xid = conn.run("UPDATE status SET phase = 'two' RETURNING txid_current()::text")[0][0]
        conn.run("INSERT INTO notes (n, doc) VALUES (2, 'short')")
        conn.run("UPDATE status SET phase = 'three'")
        doc = conn.run("SELECT md5(doc) FROM notes WHERE id = 1")[0][0]
        assert run_cli(env, "changes", "drain").rc == 0
        for target, db, phase in (
            (("--target-name", "before-two"), "rp_name", "one"),
            (("--target-xid", xid), "rp_xid", "two"),
        ):
            r = run_cli(env, "--json", "pitr", *target, "--target-db", db)
            assert r.rc == 0, r.err
            out = json.loads(r.out)
            assert out["archive"] == "logical" and out["replay"]["transactions"] >= 2
            got = p.connect(db)
            assert got.run("SELECT phase FROM status") == [[phase]]
            assert got.run("SELECT n, md5(doc) FROM notes WHERE id = 1") == [[1, doc]]
            has_tag = got.run("SELECT count(*) FROM information_schema.columns WHERE column_name = 'tag'")
            assert has_tag == [[1 if phase == "two" else 0]]
            got.close()
        r = run_cli(env, "pitr", "--target-name", "no-such-point", "--target-db", "rp_none")
        assert r.rc == 8 and "no restore point named" in r.err
        assert not conn.run("SELECT 1 FROM pg_database WHERE datname = 'rp_none'")
        conn.close()
