"""Hosted Supabase, on stand-in projects built from the platform's own migrations
(tests/fixtures/supabase): backup, verify and restore as the non-superuser ``postgres`` — into a new
project, in place with the platform's sessions connected, into a new database — the shape check
after every restore, and the plans."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from cli_helpers import run_cli
from coldcopy.config import load_settings
from coldcopy.postgres.shape import read_facts, read_shape
from coldcopy.storage.s3 import make_client
from supabase_project import Project, as_role, project

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

USER1 = "00000000-0000-0000-0000-000000000001"
# What the app's users and the platform's services can read: the API's view of the data.
READS = [
    ("anon", None, "SELECT count(*) FROM public.profiles"),
    ("anon", None, "SELECT count(*) FROM public.notes"),
    ("authenticated", {"sub": USER1, "role": "authenticated"}, "SELECT count(*) FROM public.notes"),
    (
        "authenticated",
        {"sub": USER1, "role": "authenticated"},
        "SELECT username, plan::text FROM public.profiles",
    ),
    ("authenticated", {"sub": USER1, "role": "authenticated"}, "SELECT count(*) FROM public.my_notes"),
    ("authenticated", {"sub": USER1, "role": "authenticated"}, "SELECT name FROM storage.objects"),
    ("authenticated", {"sub": USER1, "role": "authenticated"}, "SELECT count(*) FROM public.audit"),
    ("service_role", None, "SELECT count(*) FROM public.audit"),
    ("service_role", None, "SELECT sum(cents) FROM billing.invoices"),
    ("supabase_auth_admin", None, "SELECT count(*) FROM auth.users"),
    ("supabase_auth_admin", None, "SELECT count(*) FROM auth.identities"),
    ("supabase_storage_admin", None, "SELECT count(*) FROM storage.objects"),
    ("reporting", None, "SELECT count(*) FROM public.audit"),
    ("reporting", None, "SELECT count(*) FROM public.notes"),  # RLS and no policy for it: none
]


def api_view(p: Project) -> list[Any]:
    return [as_role(p, role, sql, claims) for role, claims, sql in READS]


def shape_of(p: Project) -> dict[str, Any]:
    conn = p.connect()
    try:
        return read_shape(conn, read_facts(conn))
    finally:
        conn.close()


def rows_of(p: Project) -> dict[str, Any]:
    """The user's rows, as supabase_admin sees them (only to look)."""
    conn = p.connect(user="supabase_admin")
    try:
        out = {}
        for table, order in [
            ("auth.users", "id"),
            ("auth.identities", "provider_id"),
            ("public.profiles", "id"),
            ("public.notes", "id"),
            ("public.audit", "id"),
            ("billing.invoices", "id"),
            ("storage.buckets", "id"),
            ("storage.objects", "name"),
        ]:
            out[table] = [
                [str(v) for v in row] for row in conn.run(f"SELECT * FROM {table} ORDER BY {order}")
            ]
        out["sequences"] = conn.run(
            "SELECT last_value FROM public.notes_id_seq UNION ALL SELECT last_value FROM public.audit_id_seq"
        )
        return out
    finally:
        conn.close()


@pytest.fixture(scope="module")
def source() -> Iterator[Project]:
    with project(with_app=True) as p:
        yield p


@pytest.fixture(scope="module")
def backed_up(source: Project, s3_server) -> tuple[dict[str, str], str]:  # type: ignore[no-untyped-def]
    bucket = "supabase-" + secrets.token_hex(4)
    s3_server.create_bucket(bucket)
    env = {
        **source.env(),
        **s3_server.spaces_env(bucket),
        "BACKUP_ENCRYPTION_KEY": secrets.token_urlsafe(32),
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", "/root"),
    }
    r = run_cli(env, "--json", "backup")
    assert r.rc == 0, r.err
    return env, json.loads(r.out)["name"]


@pytest.fixture(scope="module")
def before(source: Project, backed_up: tuple[dict[str, str], str]) -> dict[str, Any]:
    return {"shape": shape_of(source), "rows": rows_of(source), "api": api_view(source)}


def test_the_backup_records_the_platform_and_the_shape(backed_up) -> None:  # type: ignore[no-untyped-def]
    env, name = backed_up
    shown = json.loads(run_cli(env, "--json", "show", name).out)
    assert shown["platform"] == {
        "platform": "supabase",
        "role": "postgres",
        "attributes": {
            "superuser": False,
            "createrole": True,
            "createdb": True,
            "replication": True,
            "bypassrls": True,
        },
    }
    shape = shown["shape"]
    assert shape["triggers"]["auth.users on_auth_user_created"].endswith(
        "EXECUTE FUNCTION public.handle_new_user()"
    )
    assert set(shape["policies"]) >= {"public.notes notes: own", "storage.objects avatars: owner reads"}
    assert shape["cron_jobs"][0]["name"] == "nightly-audit-trim"
    assert shape["publications"]["supabase_realtime"] == ["public.notes"]
    assert shape["enums"] == {"public.plan": ["free", "pro", "team"]}
    assert shape["roles"] == ["reporting"]
    assert "table public.audit r" in shape["grants"]["reporting"]
    assert not any(g.startswith("table public.audit ") for g in shape["grants"]["anon"])  # revoked
    text = run_cli(env, "show", name).out
    assert "supabase, as postgres (bypassrls, createdb, createrole, replication)" in text
    assert "2 schemas" in text and "1 cron jobs" in text


def test_round_trip_into_a_fresh_project(backed_up, before) -> None:  # type: ignore[no-untyped-def]
    env, name = backed_up
    with project(with_app=False) as fresh:
        r = run_cli({**env, **fresh.env()}, "--json", "restore", "--backup-name", name)
        assert r.rc == 0, r.err
        out = json.loads(r.out)
        assert out["platform"] == "supabase" and out["roles_given_back"] == ["reporting"]
        assert "auth.users" in out["platform_tables_restored"]
        assert shape_of(fresh) == before["shape"]
        assert rows_of(fresh) == before["rows"]  # profiles and audit rows not made twice by the trigger
        assert api_view(fresh) == before["api"]
        assert before["api"][2] == [[4]] and before["api"][3] == [["user1@example.com", "pro"]]  # RLS by JWT
        # The user's trigger on auth.users works again: a new sign-up gets its profile.
        fresh.run_sql(
            "insert into auth.users (instance_id, id, aud, role, email) values "
            "('00000000-0000-0000-0000-000000000000', gen_random_uuid(), 'authenticated', 'authenticated', "
            "'new@example.com')"
        )
        assert as_role(fresh, "service_role", "SELECT count(*) FROM public.profiles") == [[4]]


def test_in_place_after_damage_with_platform_sessions_connected(source, backed_up, before) -> None:  # type: ignore[no-untyped-def]
    env, name = backed_up
    source.run_sql(
        "delete from public.notes where id % 2 = 0; revoke select on public.notes from reporting;"
        'drop policy "avatars: owner reads" on storage.objects;'
        "select cron.unschedule('nightly-audit-trim');"
        "create table public.later (id int); delete from storage.objects where name like '%3/avatar.png';"
    )
    assert shape_of(source) != before["shape"]
    auth_session = source.connect(user="supabase_auth_admin")  # the auth service, connected throughout
    try:
        pid = auth_session.run("SELECT pg_backend_pid()")[0][0]
        cron_pid = _cron_launcher(source)
        r = run_cli(env, "--json", "restore", "--backup-name", name)
        assert r.rc == 0, r.err
        assert auth_session.run("SELECT pg_backend_pid()")[0][0] == pid  # never ended
        assert _cron_launcher(source) == cron_pid
        assert auth_session.run("SELECT count(*) FROM auth.users")[0][0] == 3  # it sees the new state
    finally:
        auth_session.close()
    assert shape_of(source) == before["shape"]
    assert rows_of(source) == before["rows"]
    assert api_view(source) == before["api"]


def test_in_place_failing_midway_changes_nothing(source, backed_up, before) -> None:  # type: ignore[no-untyped-def]
    env, name = backed_up
    # A newer platform version added a required column to auth.users (the platform's change, made
    # as its superuser): loading the backup's users fails after the user's schemas were replaced.
    admin = source.connect(user="supabase_admin")
    try:
        admin.run("ALTER TABLE auth.users ADD COLUMN cc_required text NOT NULL DEFAULT 'x'")
        admin.run("ALTER TABLE auth.users ALTER COLUMN cc_required DROP DEFAULT")
        source.run_sql("insert into public.notes (owner, body) values ('" + USER1 + "', 'written after')")
        shape, rows = shape_of(source), rows_of(source)
        r = run_cli(env, "restore", "--backup-name", name)
        assert r.rc == 5 and "rolled back" in r.err, r.err
        assert "cc_required" in r.err
        assert shape_of(source) == shape and rows_of(source) == rows
    finally:
        admin.run("ALTER TABLE auth.users DROP COLUMN cc_required")
        admin.close()
    source.run_sql("delete from public.notes where body = 'written after'")


def test_the_check_refuses_a_restore_that_loses_a_grant(source, backed_up, s3_server) -> None:  # type: ignore[no-untyped-def]
    env, name = backed_up
    # The manifest says the dump holds a grant it does not: the restored database lacks it.
    client = make_client_for(env)
    key = f"{_prefix(env)}backups/{name}/manifest.json"
    original = client.get_object(Bucket=env["DO_SPACES_BUCKET"], Key=key)["Body"].read()
    manifest = json.loads(original)
    manifest["shape"]["grants"]["reporting"].append("table billing.invoices r")
    with project(with_app=False) as fresh:
        client.put_object(Bucket=env["DO_SPACES_BUCKET"], Key=key, Body=json.dumps(manifest).encode())
        try:
            r = run_cli({**env, **fresh.env()}, "restore", "--backup-name", name)
        finally:
            client.put_object(Bucket=env["DO_SPACES_BUCKET"], Key=key, Body=original)
        assert r.rc == 5
        assert "grants reporting: missing table billing.invoices r" in r.err
        assert (
            as_role(fresh, "service_role", "SELECT count(*) FROM public.notes")
            == 'relation "public.notes" does not exist'
        )


def test_target_db_names_what_cannot_exist_there(source, backed_up, before) -> None:  # type: ignore[no-untyped-def]
    env, name = backed_up
    r = run_cli(env, "--json", "restore", "--backup-name", name, "--target-db", "restored")
    assert r.rc == 0, r.err
    out = json.loads(r.out)
    assert any("pg_cron" in x for x in out["left_out"])
    assert any("event trigger" in x for x in out["left_out"])
    conn = source.connect("restored")
    try:
        assert conn.run("SELECT count(*) FROM public.notes")[0][0] == len(before["rows"]["public.notes"])
        assert conn.run("SELECT count(*) FROM auth.users")[0][0] == 3
        policies = {r[0] for r in conn.run("SELECT policyname FROM pg_policies")}
        assert {"notes: own", "avatars: owner reads"} <= policies
    finally:
        conn.close()
    admin = source.connect()
    try:
        admin.run("DROP DATABASE restored WITH (FORCE)")
    finally:
        admin.close()


def test_verify_passes_on_a_supabase_backup_with_nothing_configured(backed_up) -> None:  # type: ignore[no-untyped-def]
    env, name = backed_up
    r = run_cli(env, "--json", "verify", name, "--level", "restore")
    out = json.loads(r.out)
    assert r.rc == 0, json.dumps(out["checks"], indent=1)
    names = [c["name"] for c in out["checks"]]
    assert "the restored shape equals the manifest's" in names


def _cron_launcher(p: Project) -> int:
    conn = p.connect(user="supabase_admin")
    try:
        return int(conn.run("SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_cron launcher'")[0][0])
    finally:
        conn.close()


def _prefix(env: dict[str, str]) -> str:
    return f"coldcopy/{env['DB_NAME']}/"


def make_client_for(env: dict[str, str]) -> S3Client:
    return make_client(load_settings(env, env_file=Path(os.devnull)))


def test_plans_print_commands_that_work_there_and_the_platform_steps(source, backed_up, before) -> None:  # type: ignore[no-untyped-def]
    env, name = backed_up
    disaster = json.loads(run_cli(env, "--json", "plan", "disaster").out)
    assert disaster["backup"]["name"] == name
    assert f"coldcopy restore --backup-name {name}" in disaster["commands"]
    steps = " ".join(disaster["first"] + disaster["after"])
    for needed in (
        "new Supabase project",
        "same PostgreSQL major version",
        "citext",
        "pg_cron",
        "ALTER ROLE reporting WITH PASSWORD",
        "Storage files",
        "Edge Functions",
        "Auth settings",
    ):
        assert needed in steps, needed
    corruption = json.loads(run_cli(env, "--json", "plan", "corruption").out)
    commands = [c for c in corruption["commands"] if c.startswith("coldcopy ")]
    assert any("--target-db" in c for c in commands) and f"coldcopy restore --backup-name {name}" in commands
    # Every command runs as printed, on the project: verify, the side restore, then the replacement.
    for command in commands:
        r = run_cli(env, *command.split()[1:])
        assert r.rc == 0, (command, r.err)
    side = next(c.split("--target-db ")[1] for c in commands if "--target-db" in c)
    conn = source.connect(side)
    try:
        assert conn.run("SELECT count(*) FROM public.notes")[0][0] == len(before["rows"]["public.notes"])
    finally:
        conn.close()
    admin = source.connect()
    try:
        admin.run(f'DROP DATABASE "{side}" WITH (FORCE)')
    finally:
        admin.close()
    assert shape_of(source) == before["shape"]


def test_a_transaction_pooler_is_refused_up_front(backed_up) -> None:  # type: ignore[no-untyped-def]
    env, _ = backed_up
    r = run_cli({**env, "DB_PORT": "6543"}, "backup")
    assert r.rc == 2
    assert "transaction-mode pooler" in r.err and "session pooler (port 5432" in r.err


def test_verify_names_an_extension_the_scratch_lacks_as_the_environment(backed_up) -> None:  # type: ignore[no-untyped-def]
    env, name = backed_up
    client = make_client_for(env)
    key = f"{_prefix(env)}backups/{name}/manifest.json"
    original = client.get_object(Bucket=env["DO_SPACES_BUCKET"], Key=key)["Body"].read()
    manifest = json.loads(original)
    manifest["shape"]["extensions"]["cc_not_installed_anywhere"] = "extensions"
    client.put_object(Bucket=env["DO_SPACES_BUCKET"], Key=key, Body=json.dumps(manifest).encode())
    try:
        r = run_cli(env, "verify", name, "--level", "full")
    finally:
        client.put_object(Bucket=env["DO_SPACES_BUCKET"], Key=key, Body=original)
    assert r.rc == 9, r.out + r.err  # not 4: the backup is not damaged
    assert "missing on a throwaway local cluster" in r.out and "cc_not_installed_anywhere" in r.out
    assert "NOT VERIFIED: the scratch environment" in r.out
