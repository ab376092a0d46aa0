"""The erasure ledger: a person erased after a backup does not come back with any restore (into a
new database, in place, a test restore, a Supabase project's one transaction), the other rows do,
bad requests are refused before anything is recorded, and the values never reach the output."""

from __future__ import annotations

import json
import os
import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from cli_helpers import run_cli
from coldcopy.config import load_settings
from coldcopy.core.erasure import Erasure
from coldcopy.errors import DatabaseError
from coldcopy.restore.erasures import apply_erasures
from coldcopy.storage.s3 import make_client
from supabase_project import project

ALICE = "alice.erased@example.com"
SCHEMA = """
CREATE TABLE leads (id int PRIMARY KEY, email text NOT NULL, name text NOT NULL);
CREATE TABLE events (id int PRIMARY KEY, lead_id int NOT NULL REFERENCES leads ON DELETE CASCADE, kind text);
INSERT INTO leads VALUES (1, 'alice.erased@example.com', 'Alice Erased'), (2, 'bob@example.com', 'Bob'),
                         (3, 'carol@example.com', 'Carol');
INSERT INTO events VALUES (10, 1, 'open'), (11, 1, 'reply'), (12, 2, 'open');
"""


def ledger_keys(env: dict[str, str]) -> list[str]:
    s3 = make_client(load_settings(env, env_file=Path(os.devnull)))
    got = s3.list_objects_v2(Bucket=env["DO_SPACES_BUCKET"], Prefix="")
    return [o["Key"] for o in got.get("Contents", []) if "/erasures/" in o["Key"]]


def rows(pg: Any, db: str, sql: str) -> list[Any]:
    c = pg.connect(db)
    try:
        return list(c.run(sql))
    finally:
        c.close()


@pytest.fixture
def erased(pg, coldcopy_env, fresh_db, cli_clock) -> tuple[dict[str, str], str]:  # type: ignore[no-untyped-def]
    """A backup of leads holding Alice, then her erasure recorded and applied to the live database."""
    env = {**coldcopy_env, "DB_NAME": fresh_db}
    c = pg.connect(fresh_db)
    for stmt in SCHEMA.split(";"):
        if stmt.strip():
            c.run(stmt)
    c.close()
    b = run_cli(env, "--json", "backup")
    assert b.rc == 0, b.err
    cli_clock(datetime.now(UTC) + timedelta(minutes=1))  # the erasure comes after the backup
    r = run_cli(env, "--json", "erase", "add", "--table", "public.leads", "--where", f"email={ALICE}")
    assert r.rc == 0, r.err
    added = json.loads(r.out)
    assert added["live_rows_matching"] == 1 and added["columns"] == ["email"]
    assert ALICE not in r.out + r.err
    c = pg.connect(fresh_db)
    c.run("DELETE FROM leads WHERE email = :e", e=ALICE)  # what the application does
    c.close()
    return env, json.loads(b.out)["name"]


def test_a_restore_into_a_new_database_does_not_bring_the_person_back(pg, erased) -> None:  # type: ignore[no-untyped-def]
    env, name = erased
    target = "erased_" + secrets.token_hex(3)
    r = run_cli(env, "--debug", "restore", "--backup-name", name, "--target-db", target)
    try:
        assert r.rc == 0, r.err
        assert "erasures re-applied before use: 1 (1 rows removed)" in r.out
        assert ALICE not in r.out + r.err and "Alice" not in r.out + r.err
        assert rows(pg, target, "SELECT id, email FROM leads ORDER BY id") == [
            [2, "bob@example.com"],
            [3, "carol@example.com"],
        ]
        assert rows(pg, target, "SELECT id FROM events ORDER BY id") == [[12]]  # her events cascaded
    finally:
        pg.drop_database(target)


def test_an_in_place_restore_and_a_test_restore_apply_the_ledger(pg, erased) -> None:  # type: ignore[no-untyped-def]
    env, name = erased
    r = run_cli(env, "--json", "restore", "--backup-name", name, "--no-keep-old")
    assert r.rc == 0, r.err
    out = json.loads(r.out)
    assert out["replaced"] is True and out["previous_kept_as"] is None
    assert out["erasures_applied"] == 1 and out["erased_rows_removed"] == 1
    assert ALICE not in r.out + r.err
    assert rows(pg, env["DB_NAME"], "SELECT count(*) FROM leads WHERE email LIKE 'alice%'") == [[0]]
    assert rows(pg, env["DB_NAME"], "SELECT count(*) FROM leads") == [[2]]
    v = run_cli(env, "--json", "verify", name, "--level", "full")
    assert v.rc == 0, v.err + v.out
    checks = {c["name"]: c for c in json.loads(v.out)["checks"]}
    assert checks["the erasure ledger applied"]["detail"] == "1 erasure(s) applied, 1 row(s) removed"
    assert checks["every table's row count equals the manifest's"]["ok"]  # counted before the erasure


def test_list_and_report_name_the_erasure_without_the_value(erased) -> None:  # type: ignore[no-untyped-def]
    env, name = erased
    ls = run_cli(env, "erase", "list")
    assert ls.rc == 0 and "public.leads where email = …" in ls.out and ALICE not in ls.out
    shown = run_cli(env, "--json", "erase", "list", "--show-values")
    assert json.loads(shown.out)[0]["match"] == {"email": ALICE}
    rep = json.loads(run_cli(env, "--json", "erase", "report", "--subject", ALICE).out)
    (one,) = rep["erasures"]
    assert one["subject_matches"] is True and ALICE not in json.dumps(rep)
    (held,) = one["backups_holding_older_data"]
    created = datetime.fromisoformat(held["created_at"].replace("Z", "+00:00"))
    assert held["backup"] == name and held["expires"] == (created + timedelta(days=30)).date().isoformat()
    other = run_cli(env, "erase", "report", "--subject", "someone.else@example.com")
    assert other.rc == 2
    assert len(ledger_keys(env)) == 1


@pytest.mark.parametrize(
    "args",
    [
        ["--table", "public.nope", "--where", "email=x@example.com"],
        ["--table", "public.leads", "--where", "nope=x@example.com"],
        ["--table", "public.leads", "--where", "email="],
        ["--table", "public.leads", "--where", "email"],
        ["--table", "public.leads"],
        ["--table", "public.leads; DROP TABLE leads", "--where", "email=x"],
        ["--table", "public.leads", "--where", "email=x@example.com", "--where", "email) OR (1=1=x"],
    ],
)
def test_bad_requests_are_refused_and_nothing_is_recorded(pg, coldcopy_env, fresh_db, args) -> None:  # type: ignore[no-untyped-def]
    env = {**coldcopy_env, "DB_NAME": fresh_db}
    c = pg.connect(fresh_db)
    c.run("CREATE TABLE leads (id int, email text)")
    c.close()
    r = run_cli(env, "erase", "add", *args)
    assert r.rc == 2, (r.out, r.err)
    assert "x@example.com" not in r.out + r.err
    assert ledger_keys(env) == []


def test_a_supabase_restore_erases_inside_its_transaction(s3_server) -> None:  # type: ignore[no-untyped-def]
    with project(with_app=True) as source, project(with_app=False) as fresh:
        bucket = "erase-" + secrets.token_hex(4)
        s3_server.create_bucket(bucket)
        env = {
            **source.env(),
            **s3_server.spaces_env(bucket),
            "BACKUP_ENCRYPTION_KEY": secrets.token_urlsafe(32),
            "PATH": os.environ["PATH"],
            "HOME": os.environ.get("HOME", "/root"),
        }
        b = run_cli(env, "--json", "backup")
        assert b.rc == 0, b.err
        name = json.loads(b.out)["name"]
        admin = source.connect(user="supabase_admin")
        (victim,) = admin.run("SELECT username FROM public.profiles ORDER BY username LIMIT 1")[0]
        total = admin.run("SELECT count(*) FROM public.profiles")[0][0]
        admin.close()
        r = run_cli(env, "erase", "add", "--table", "public.profiles", "--where", f"username={victim}")
        assert r.rc == 0, r.err
        r = run_cli({**env, **fresh.env()}, "--json", "restore", "--backup-name", name)
        assert r.rc == 0, r.err
        out = json.loads(r.out)
        assert out["erasures_applied"] == 1 and out["erased_rows_removed"] == 1
        assert victim not in r.out + r.err
        conn = fresh.connect(user="supabase_admin")
        assert conn.run("SELECT count(*) FROM public.profiles WHERE username = :u", u=victim) == [[0]]
        assert conn.run("SELECT count(*) FROM public.profiles") == [[total - 1]]
        conn.close()


def erasure(n: int, table: str, match: dict[str, str]) -> Erasure:
    return Erasure(
        f"20260101T00000{n}Z-0000abc{n}", datetime(2026, 1, 1, tzinfo=UTC), "db", table, match, "s", "d"
    )


def test_values_that_look_like_sql_are_only_values(pg, fresh_db) -> None:  # type: ignore[no-untyped-def]
    odd = "o'hara$$); DELETE FROM t; --$cc00$"
    c = pg.connect(fresh_db)
    c.run("CREATE TABLE t (id int, v text)")
    c.run("INSERT INTO t VALUES (1, :a), (2, 'kept'), (3, :a)", a=odd)
    e, gone = erasure(1, "public.t", {"v": odd}), erasure(2, "public.absent", {"v": "x"})
    applied = apply_erasures(c, [e, gone])
    assert applied.per_erasure == {e.id: 2, gone.id: 0}  # a table the backup lacks: nothing to remove
    assert c.run("SELECT id, v FROM t") == [[2, "kept"]]
    bad = erasure(3, "public.t", {"nope": odd})
    with pytest.raises(DatabaseError) as err:
        apply_erasures(c, [bad])
    assert bad.id in str(err.value) and "hara" not in str(err.value)
    assert c.run("SELECT count(*) FROM t") == [[1]]
    c.close()
