"""The erasure ledger: a person erased after a backup (`gdpr erase`, per-kind statements declared
in GDPR_ERASURE_CONFIG) does not come back with any restore (into a new database, in place, a test
restore, a Supabase project's one transaction, after a catalog rebuild), the other rows do; a bad
configuration is refused before anything runs; `gdpr report` and `gdpr export` answer the person;
the subject never reaches the output or the logs.  (PITR and drills: tests/test_pitr.py.)"""

from __future__ import annotations

import io
import json
import os
import secrets
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from cli_helpers import run_cli
from coldcopy.config import load_settings
from coldcopy.context import open_context
from coldcopy.core.erasure import (
    ErasureInputError,
    ErasureKind,
    apply_sql,
    new_erasure,
    parse_kinds,
    positional,
)
from coldcopy.errors import DatabaseError
from coldcopy.restore.erasures import apply_erasures, record_erasure
from coldcopy.storage.s3 import make_client
from supabase_project import project

ALICE = "alice.erased@example.com"
SCHEMA = """
CREATE TABLE leads (id int PRIMARY KEY, email text NOT NULL, name text NOT NULL);
CREATE TABLE events (id int PRIMARY KEY, lead_id int NOT NULL REFERENCES leads, kind text, sent_to text);
INSERT INTO leads VALUES (1, 'alice.erased@example.com', 'Alice Erased'), (2, 'bob@example.com', 'Bob'),
                         (3, 'carol@example.com', 'Carol');
INSERT INTO events VALUES (10, 1, 'open', 'alice.erased@example.com'),
                          (11, 1, 'reply', 'alice.erased@example.com'), (12, 2, 'open', 'bob@example.com')
"""
LEAD = {
    "statements": [
        "UPDATE events SET sent_to = NULL WHERE sent_to = :subject",
        "DELETE FROM events WHERE lead_id IN (SELECT id FROM leads WHERE email = :subject)",
        "DELETE FROM leads WHERE email = :subject;",
    ],
    "check": "SELECT (SELECT count(*) FROM leads WHERE email = :subject)"
    " + (SELECT count(*) FROM events WHERE sent_to = :subject)",
    "read": {
        "lead": "SELECT id, email, name FROM leads WHERE email = :subject",
        "events": "SELECT e.id, e.kind FROM events e JOIN leads l ON l.id = e.lead_id"
        " WHERE l.email = :subject ORDER BY e.id",
    },
}


def configured(env: dict[str, str], tmp_path: Path, kinds: dict[str, Any]) -> dict[str, str]:
    path = tmp_path / f"erasure-{secrets.token_hex(3)}.json"
    path.write_text(json.dumps({"kinds": kinds}))
    return {**env, "GDPR_ERASURE_CONFIG": str(path)}


def all_keys(env: dict[str, str]) -> list[str]:
    s3 = make_client(load_settings(env, env_file=Path(os.devnull)))
    got = s3.list_objects_v2(Bucket=env["DO_SPACES_BUCKET"], Prefix="")
    return [o["Key"] for o in got.get("Contents", [])]


def ledger_keys(env: dict[str, str]) -> list[str]:
    return [k for k in all_keys(env) if "/erasures/" in k]


def rows(pg: Any, db: str, sql: str, **params: Any) -> list[Any]:
    c = pg.connect(db)
    try:
        return list(c.run(sql, **params))
    finally:
        c.close()


def schema(pg: Any, db: str) -> None:
    c = pg.connect(db)
    for stmt in SCHEMA.split(";"):
        if stmt.strip():
            c.run(stmt)
    c.close()


@pytest.fixture
def erased(pg, coldcopy_env, fresh_db, cli_clock, tmp_path) -> tuple[dict[str, str], str]:  # type: ignore[no-untyped-def]
    """A backup of leads holding Alice, then her erasure recorded and applied to the live database."""
    env = configured({**coldcopy_env, "DB_NAME": fresh_db}, tmp_path, {"lead": LEAD})
    schema(pg, fresh_db)
    b = run_cli(env, "--json", "backup")
    assert b.rc == 0, b.err
    cli_clock(datetime.now(UTC) + timedelta(minutes=1))  # the erasure comes after the backup
    r = run_cli(env, "--json", "--debug", "gdpr", "erase", "--subject", ALICE, "--kind", "lead")
    assert r.rc == 0, r.err
    added = json.loads(r.out)
    assert added["kind"] == "lead" and added["live"] == "applied"
    assert added["live_rows_changed"] == 5  # 2 events anonymised, then deleted, and the lead
    assert ALICE not in r.out + r.err
    assert rows(pg, fresh_db, "SELECT id FROM leads ORDER BY id") == [[2], [3]]
    assert rows(pg, fresh_db, "SELECT id FROM events ORDER BY id") == [[12]]
    assert len(ledger_keys(env)) == 1
    return env, json.loads(b.out)["name"]


def test_a_restore_into_a_new_database_does_not_bring_the_person_back(pg, erased) -> None:  # type: ignore[no-untyped-def]
    env, name = erased
    target = "erased_" + secrets.token_hex(3)
    r = run_cli(env, "--debug", "restore", "--backup-name", name, "--target-db", target)
    try:
        assert r.rc == 0, r.err
        assert "erasures re-applied before use: 1 (5 rows changed); subjects remaining: 0" in r.out
        assert ALICE not in r.out + r.err and "Alice" not in r.out + r.err
        assert rows(pg, target, "SELECT id, email FROM leads ORDER BY id") == [
            [2, "bob@example.com"],
            [3, "carol@example.com"],
        ]
        assert rows(pg, target, "SELECT id, sent_to FROM events ORDER BY id") == [[12, "bob@example.com"]]
    finally:
        pg.drop_database(target)


def test_an_in_place_restore_and_a_test_restore_apply_the_ledger(pg, erased) -> None:  # type: ignore[no-untyped-def]
    env, name = erased
    r = run_cli(env, "--json", "restore", "--backup-name", name, "--no-keep-old")
    assert r.rc == 0, r.err
    out = json.loads(r.out)
    assert out["replaced"] is True and out["previous_kept_as"] is None
    assert out["erasures_applied"] == 1 and out["erased_rows_removed"] == 5
    assert out["erased_subjects_remaining"] == 0
    assert ALICE not in r.out + r.err
    assert rows(pg, env["DB_NAME"], "SELECT count(*) FROM leads WHERE email LIKE 'alice%'") == [[0]]
    assert rows(pg, env["DB_NAME"], "SELECT count(*) FROM leads") == [[2]]
    v = run_cli(env, "--json", "verify", name, "--level", "full")
    assert v.rc == 0, v.err + v.out
    checks = {c["name"]: c for c in json.loads(v.out)["checks"]}
    assert checks["the erasure ledger applied"]["detail"] == (
        "1 erasure(s) applied, 5 row(s) changed; every check counts 0 rows of its subject"
    )
    assert checks["every table's row count equals the manifest's"]["ok"]  # counted before the erasure


def test_a_ledger_that_cannot_be_applied_fails_the_restore(pg, erased) -> None:  # type: ignore[no-untyped-def]
    env, name = erased
    ctx = open_context(load_settings(env, env_file=Path(os.devnull)))
    wrong = ErasureKind("lead", ("DELETE FROM leads WHERE nope = :subject",), LEAD["check"])
    bad = record_erasure(ctx, new_erasure(wrong, "bob@example.com", env["DB_NAME"], datetime.now(UTC)))
    target = "unerasable_" + secrets.token_hex(3)
    r = run_cli(env, "restore", "--backup-name", name, "--target-db", target)
    assert r.rc == 5 and f"erasure {bad.id} could not be applied (SQLSTATE 42703)" in r.err
    assert "bob@" not in r.out + r.err
    assert rows(pg, "postgres", "SELECT count(*) FROM pg_database WHERE datname LIKE :t", t=target + "%") == [
        [0]
    ]


def test_the_ledger_survives_a_catalog_rebuild(pg, erased) -> None:  # type: ignore[no-untyped-def]
    env, name = erased
    s3 = make_client(load_settings(env, env_file=Path(os.devnull)))
    (catalog,) = [k for k in all_keys(env) if k.endswith("/catalog.json")]
    s3.delete_object(Bucket=env["DO_SPACES_BUCKET"], Key=catalog)
    rb = run_cli(env, "catalog", "rebuild")
    assert rb.rc == 0, rb.err
    target = "rebuilt_" + secrets.token_hex(3)
    r = run_cli(env, "--json", "restore", "--backup-name", name, "--target-db", target)
    try:
        assert r.rc == 0, r.err
        assert json.loads(r.out)["erasures_applied"] == 1
        assert rows(pg, target, "SELECT count(*) FROM leads WHERE email = :e", e=ALICE) == [[0]]
    finally:
        pg.drop_database(target)
    rep = json.loads(run_cli(env, "--json", "gdpr", "report", "--subject", ALICE).out)
    assert [h["backup"] for h in rep["erasures"][0]["backups_holding_older_data"]] == [name]


def test_list_and_report_name_the_erasure_without_the_value(erased, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    env, name = erased
    ls = run_cli(env, "gdpr", "list")
    assert ls.rc == 0 and ": lead, live applied" in ls.out and ALICE not in ls.out
    shown = run_cli(env, "--json", "gdpr", "list", "--show-values")
    assert json.loads(shown.out)[0]["subject"] == ALICE
    pin = run_cli(env, "pin", name, "--reason", "legal hold 7")
    assert pin.rc == 0, pin.err
    r = run_cli(env, "--json", "gdpr", "report", "--subject", ALICE)
    assert r.rc == 0, r.err
    rep = json.loads(r.out)
    (one,) = rep["erasures"]
    assert one["kind"] == "lead" and one["restores_reapply"] is True and ALICE not in r.out
    (held,) = one["backups_holding_older_data"]
    assert held["backup"] == name and held["expires"] == "pinned (legal hold 7): kept until unpinned"
    run_cli(env, "unpin", name)
    text = run_cli(env, "gdpr", "report", "--subject", ALICE).out
    created = datetime.fromisoformat(held["created_at"].replace("Z", "+00:00"))
    assert f"expires: {(created + timedelta(days=30)).date().isoformat()}" in text
    assert "re-applies it before the data is used" in text
    other = run_cli(env, "gdpr", "report", "--subject", "someone.else@example.com")
    assert other.rc == 3
    monkeypatch.setattr(sys, "stdin", io.StringIO(ALICE + "\n"))  # --subject -: kept out of argv
    assert run_cli(env, "gdpr", "report", "--subject", "-").rc == 0
    assert len(ledger_keys(env)) == 1


def test_export_answers_from_a_backup_and_drops_the_scratch(pg, erased, tmp_path) -> None:  # type: ignore[no-untyped-def]
    env, name = erased
    out = tmp_path / "bob.json"
    r = run_cli(env, "--json", "gdpr", "export", "--subject", "bob@example.com", "--output", str(out))
    assert r.rc == 0, r.err
    assert "bob@" not in r.out + r.err
    doc = json.loads(out.read_text())
    assert doc["backup"] == name and doc["erasures_applied"] == 1
    assert doc["rows"] == {"lead": [{"id": 2, "email": "bob@example.com", "name": "Bob"}],
                           "events": [{"id": 12, "kind": "open"}]}  # fmt: skip
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    scratch = json.loads(r.out)["scratch_dropped"]
    assert rows(pg, "postgres", "SELECT count(*) FROM pg_database WHERE datname = :d", d=scratch) == [[0]]
    gone = tmp_path / "alice.json"  # erased: every restore, the export's too, re-applies the ledger
    assert run_cli(env, "gdpr", "export", "--subject", ALICE, "--output", str(gone)).rc == 0
    assert json.loads(gone.read_text())["rows"] == {"lead": [], "events": []}
    again = run_cli(env, "gdpr", "export", "--subject", ALICE, "--output", str(gone))
    assert again.rc == 2  # never overwrites a file


def test_check_only_records_only_what_the_application_erased(pg, coldcopy_env, fresh_db, tmp_path) -> None:  # type: ignore[no-untyped-def]
    env = configured({**coldcopy_env, "DB_NAME": fresh_db}, tmp_path, {"lead": LEAD})
    schema(pg, fresh_db)
    r = run_cli(env, "gdpr", "erase", "--subject", ALICE, "--check-only")
    assert r.rc == 7 and "its check still counts 3 row(s)" in r.err and ALICE not in r.out + r.err
    assert ledger_keys(env) == [] and rows(pg, fresh_db, "SELECT count(*) FROM leads") == [[3]]
    c = pg.connect(fresh_db)
    c.run("DELETE FROM events WHERE lead_id = 1")  # what the application does
    c.run("DELETE FROM leads WHERE id = 1")
    c.close()
    r = run_cli(env, "--json", "gdpr", "erase", "--subject", ALICE, "--check-only")
    assert r.rc == 0, r.err
    assert json.loads(r.out)["live"] == "checked" and len(ledger_keys(env)) == 1


def _with(**change: Any) -> dict[str, Any]:
    return {"lead": {**LEAD, **change}}


ONE = "DELETE FROM leads WHERE email = :subject"
BAD_CONFIGS = {
    "unknown kind": ({"lead": LEAD}, ["--kind", "customer"], "unknown kind 'customer'"),
    "no placeholder": (
        _with(statements=["DELETE FROM leads WHERE id = 1"]),
        [],
        "use the parameter :subject",
    ),
    "two statements": (_with(statements=[ONE + "; DROP TABLE events"]), [], "more than one statement"),
    "check not a select": (_with(check=ONE), [], "check must be a SELECT"),
    "other placeholder": (_with(check="SELECT :subject::int + :name"), [], "names the parameter :name"),
    "not ddl": (_with(statements=["DROP TABLE leads -- :subject"]), [], "must be a DELETE or UPDATE"),
    "no kinds": ({}, [], "with at least one kind"),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_a_bad_configuration_is_refused_before_anything_runs(
    pg, coldcopy_env, fresh_db, tmp_path, case
) -> None:  # type: ignore[no-untyped-def]
    kinds, extra, said = BAD_CONFIGS[case]
    env = configured({**coldcopy_env, "DB_NAME": fresh_db}, tmp_path, kinds)
    schema(pg, fresh_db)
    r = run_cli(env, "gdpr", "erase", "--subject", ALICE, *extra)
    assert r.rc == 2, (r.out, r.err)
    assert said in r.err and ALICE not in r.out + r.err
    assert ledger_keys(env) == []
    assert rows(pg, fresh_db, "SELECT count(*) FROM leads") == [[3]]  # nothing ran
    assert run_cli({**env, "GDPR_ERASURE_CONFIG": ""}, "gdpr", "erase", "--subject", ALICE).rc == 2


def test_a_statement_naming_a_missing_table_is_refused_on_the_live_database(
    pg, coldcopy_env, fresh_db, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    notes = "DELETE FROM lead_notes WHERE email = :subject"
    env = configured(
        {**coldcopy_env, "DB_NAME": fresh_db}, tmp_path, _with(statements=[*LEAD["statements"], notes])
    )
    schema(pg, fresh_db)
    r = run_cli(env, "gdpr", "erase", "--subject", ALICE)
    assert r.rc == 7 and "could not be applied (SQLSTATE 42P01)" in r.err
    assert ledger_keys(env) == [] and rows(pg, fresh_db, "SELECT count(*) FROM leads") == [[3]]


def test_a_supabase_restore_erases_inside_its_transaction(s3_server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with project(with_app=True) as source, project(with_app=False) as fresh:
        bucket = "erase-" + secrets.token_hex(4)
        s3_server.create_bucket(bucket)
        profile = {
            "statements": ["DELETE FROM public.profiles WHERE username = :subject"],
            "check": "SELECT count(*) FROM public.profiles WHERE username = :subject",
        }
        env = configured(
            {
                **source.env(),
                **s3_server.spaces_env(bucket),
                "BACKUP_ENCRYPTION_KEY": secrets.token_urlsafe(32),
                "PATH": os.environ["PATH"],
                "HOME": os.environ.get("HOME", "/root"),
            },
            tmp_path,
            {"profile": profile},
        )
        b = run_cli(env, "--json", "backup")
        assert b.rc == 0, b.err
        name = json.loads(b.out)["name"]
        admin = source.connect(user="supabase_admin")
        (victim,) = admin.run("SELECT username FROM public.profiles ORDER BY username LIMIT 1")[0]
        total = admin.run("SELECT count(*) FROM public.profiles")[0][0]
        admin.close()
        r = run_cli(env, "gdpr", "erase", "--subject", victim)
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


def test_the_configuration_is_checked_as_sql_not_as_text() -> None:
    kinds = parse_kinds(json.dumps({"kinds": {"lead": {
        "statements": ["UPDATE t SET note = ';' || $$ :other; $$ WHERE email = :subject AND x::text <> '--'"],
        "check": "SELECT count(*) FROM t /* ; */ WHERE email = :subject AND n <> E'\\';:x' -- ;",
    }}}))  # fmt: skip
    (sql,) = kinds["lead"].statements
    assert positional(sql) == "UPDATE t SET note = ';' || $$ :other; $$ WHERE email = $1 AND x::text <> '--'"
    with pytest.raises(ErasureInputError, match="not JSON"):
        parse_kinds("{")


LIKE_SQL = "o'hara$$); DELETE FROM t; --$cc00$ $ccerase$"


def test_subjects_that_look_like_sql_are_only_values(pg, fresh_db) -> None:  # type: ignore[no-untyped-def]
    c = pg.connect(fresh_db)
    c.run("CREATE TABLE t (id int, v text)")
    c.run("INSERT INTO t VALUES (1, :a), (2, 'kept'), (3, :a)", a=LIKE_SQL)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    kind = ErasureKind(
        "v", ("DELETE FROM t WHERE v = :subject",), "SELECT count(*) FROM t WHERE v = :subject"
    )
    absent = ErasureKind("a", ("DELETE FROM absent WHERE v = :subject",), "SELECT count(*) FROM absent")
    e, gone = new_erasure(kind, LIKE_SQL, "db", now), new_erasure(absent, "x", "db", now)
    applied = apply_erasures(c, [e, gone])
    assert applied.per_erasure == {e.id: 2, gone.id: 0}  # a table the backup lacks: nothing to remove
    assert c.run("SELECT id, v FROM t") == [[2, "kept"]]
    # The subjects are never in a statement's text (the server logs a failing one), and the
    # setting they travel in is gone with the transaction.
    assert "hara" not in apply_sql([e, gone]) and "hara" not in apply_sql([e], statements=False)
    assert c.run("SELECT current_setting('coldcopy.subjects', true)")[0][0] in ("", None)
    wrong = ErasureKind("w", ("DELETE FROM t WHERE nope = :subject",), kind.check)
    bad = new_erasure(wrong, LIKE_SQL, "db", now)
    with pytest.raises(DatabaseError) as err:
        apply_erasures(c, [bad])
    assert bad.id in str(err.value) and "hara" not in str(err.value)
    still = ErasureKind("s", ("UPDATE t SET v = v WHERE v = :subject",), "SELECT count(*) FROM t")
    with pytest.raises(DatabaseError, match="its check still counts 1 row"):
        apply_erasures(c, [new_erasure(still, "kept", "db", now)])
    assert c.run("SELECT count(*) FROM t") == [[1]]
    c.close()
