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
        assert run_cli(env, "changes", "teardown").rc == 0
        assert catalog_objects(admin) == before
        admin.close()
        conn.close()
