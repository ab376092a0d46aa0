"""The pure parts of restoring into a hosted project: the dump's entries chosen for a target, the
roles file made safe for the connecting role, and the shape comparison."""

from __future__ import annotations

from coldcopy.core.platform import (
    Target,
    choose_entries,
    owner_allowed,
    owner_change,
    parse_reserved,
    parse_toc,
    role_statements,
)
from coldcopy.core.shape import differences, expected_for, summary

LISTING = """;
; Archive created at 2026-12-02 05:00:00 UTC
;
3811; 0 0 ACL - SCHEMA billing postgres
2; 2615 16500 SCHEMA - auth supabase_admin
12; 2615 16501 SCHEMA - billing postgres
8; 3079 16842 EXTENSION - pg_cron {no_owner}
9; 0 0 COMMENT - EXTENSION pg_cron {no_owner}
10; 1255 16912 FUNCTION public handle_new_user() postgres
11; 1255 16913 FUNCTION auth uid() supabase_auth_admin
3783; 0 16458 TABLE DATA auth users supabase_auth_admin
3784; 0 16459 TABLE DATA auth schema_migrations supabase_auth_admin
3785; 0 16460 TABLE DATA cron job supabase_admin
3794; 0 16887 TABLE DATA public profiles postgres
3623; 2620 16913 TRIGGER auth users on_auth_user_created supabase_auth_admin
3624; 2620 16914 TRIGGER storage objects update_objects_updated_at supabase_storage_admin
3779; 3256 16952 POLICY storage objects avatars: owner reads supabase_storage_admin
3781; 6104 16950 PUBLICATION - supabase_realtime postgres
3782; 6106 16954 PUBLICATION TABLE public supabase_realtime notes postgres
2340; 826 16453 DEFAULT ACL public DEFAULT PRIVILEGES FOR TABLES supabase_admin
2341; 826 16454 DEFAULT ACL public DEFAULT PRIVILEGES FOR TABLES postgres
4000; 3466 16999 EVENT TRIGGER - pgrst_ddl_watch supabase_admin
""".format(no_owner="")  # an extension's line ends in an empty owner

PROJECT = Target(
    "postgres", False, True, True, frozenset({"supabase_auth_admin"}), frozenset({"public", "billing"})
)
EMPTY_DB = Target("postgres", False, False, False, frozenset({"supabase_auth_admin"}), frozenset({"public"}))


def test_the_list_is_parsed_with_multi_word_kinds_and_names() -> None:
    entries = {e.dump_id: e for e in parse_toc(LISTING)}
    assert len(entries) == 19
    assert (entries[3783].desc, entries[3783].schema, entries[3783].name) == ("TABLE DATA", "auth", "users")
    policy = entries[3779]
    assert (policy.desc, policy.name, policy.owner) == (
        "POLICY",
        "objects avatars: owner reads",
        "supabase_storage_admin",
    )
    assert entries[2340].desc == "DEFAULT ACL" and entries[3782].desc == "PUBLICATION TABLE"


def test_into_a_project_only_the_users_part_of_the_platform_comes_back() -> None:
    sel = choose_entries(parse_toc(LISTING), PROJECT, {"auth.users on_auth_user_created"})
    kept = {e.dump_id for e in sel.keep}
    assert kept == {3811, 8, 10, 3783, 3794, 3623, 3779, 3782, 2341}
    # the platform's schema, functions, migration history, its own trigger, its publication,
    # supabase_admin's default privileges and event trigger stay as the project has them; the
    # existing user schema is emptied, not created again
    assert sel.user_row_tables == ["auth.users"]
    assert sel.left_out == []
    assert sel.list_file().splitlines()[0] == "3811; 0 0 ACL - SCHEMA billing postgres"


def test_into_an_empty_database_everything_but_what_the_role_cannot_create() -> None:
    sel = choose_entries(parse_toc(LISTING), EMPTY_DB, set())
    kept = {e.dump_id for e in sel.keep}
    assert {2, 11, 3784, 3624, 3781}.issubset(kept)  # the platform's schema and rows exist nowhere else here
    assert 8 not in kept and 3785 not in kept and 4000 not in kept and 2340 not in kept
    assert any("pg_cron" in x for x in sel.left_out)
    assert any("event trigger pgrst_ddl_watch" in x for x in sel.left_out)


def test_owners_the_role_may_not_set_are_recognised() -> None:
    assert owner_change("ALTER TABLE public.notes OWNER TO postgres;") == "postgres"
    assert owner_change('ALTER FUNCTION auth.uid() OWNER TO "Odd Role";') == "Odd Role"
    assert owner_change("GRANT ALL ON TABLE public.notes TO anon;") is None
    assert owner_allowed("supabase_auth_admin", PROJECT)  # a member of it, in the project
    assert not owner_allowed("supabase_admin", PROJECT)
    assert not owner_allowed("supabase_auth_admin", EMPTY_DB)  # its grants are not there yet
    assert owner_allowed("anyone", Target("coldcopy_scratch", True, False, True))


ROLES = """\\restrict abc
SET default_transaction_read_only = off;
CREATE ROLE anon;
ALTER ROLE anon WITH NOSUPERUSER INHERIT NOCREATEROLE NOCREATEDB NOLOGIN NOREPLICATION NOBYPASSRLS;
CREATE ROLE postgres;
ALTER ROLE postgres WITH SUPERUSER INHERIT CREATEROLE CREATEDB LOGIN REPLICATION BYPASSRLS;
CREATE ROLE reporting;
ALTER ROLE reporting WITH NOSUPERUSER INHERIT NOCREATEROLE NOCREATEDB LOGIN NOREPLICATION BYPASSRLS;
CREATE ROLE "Odd Role";
ALTER ROLE reporting SET statement_timeout TO '5s';
GRANT anon TO reporting GRANTED BY supabase_admin;
GRANT supabase_admin TO reporting GRANTED BY supabase_admin;
GRANT reporting TO postgres GRANTED BY postgres;
GRANT pg_read_server_files TO reporting GRANTED BY postgres;
GRANT authenticated TO postgres GRANTED BY supabase_admin;
\\unrestrict abc
"""
RESERVED = parse_reserved("supabase_admin, anon*, authenticated*", "pg_read_server_files")


def test_the_roles_file_never_touches_reserved_roles_or_the_connecting_one() -> None:
    plan = role_statements(ROLES, role="postgres", superuser=False, reserved=RESERVED)
    text = "\n".join(plan.statements)
    assert plan.roles == ["reporting", "Odd Role"]
    assert "ALTER ROLE postgres" not in text and "ROLE anon" not in text  # never NOSUPERUSER on us
    assert "ALTER ROLE reporting WITH INHERIT NOCREATEROLE NOCREATEDB LOGIN;" in plan.statements
    assert any("BYPASSRLS" in x for x in plan.left_out)
    assert "GRANTED BY" not in text
    assert "GRANT anon TO reporting;" in plan.statements  # anon* may be granted
    assert "supabase_admin" not in text and "pg_read_server_files" not in text and "authenticated" not in text
    assert "GRANT reporting TO postgres;" in plan.statements
    assert 'CREATE ROLE "Odd Role";' in text and "\\restrict" not in text


def test_a_superuser_target_gets_the_roles_whole_but_its_own() -> None:
    plan = role_statements(ROLES, role="coldcopy_scratch", superuser=True, reserved=RESERVED)
    text = "\n".join(plan.statements)
    assert (
        "ALTER ROLE postgres WITH SUPERUSER INHERIT CREATEROLE CREATEDB LOGIN REPLICATION BYPASSRLS;" in text
    )
    assert "GRANT supabase_admin TO reporting;" in text
    assert plan.left_out == []


SHAPE = {
    "schemas": ["public"],
    "grants": {"anon": ["table public.notes r"], "reporting": ["table public.notes r"]},
    "extensions": {"citext": "extensions", "pg_cron": "pg_catalog"},
    "cron_jobs": [{"name": "trim", "schedule": "0 3 * * *"}],
    "roles": ["reporting"],
    "database_settings": ["app.x=1"],
}


def test_the_comparison_lists_what_was_lost_and_allows_a_larger_platform() -> None:
    expected = expected_for(SHAPE, cron_here=True, roles_given_back=True)
    assert "database_settings" not in expected
    actual = {
        **expected,
        "grants": {"anon": ["table public.notes r"]},
        "extensions": {**SHAPE["extensions"], "pgjwt": "extensions"},
        "roles": ["reporting", "other"],
    }
    assert differences(expected, actual) == ["grants: missing reporting"]
    actual["cron_jobs"] = []
    assert "cron_jobs: missing name=trim schedule=0 3 * * *" in differences(expected, actual)
    without_cron = expected_for(SHAPE, cron_here=False, roles_given_back=False)
    assert "cron_jobs" not in without_cron and "pg_cron" not in without_cron["extensions"]
    assert "roles" not in without_cron
    assert summary(SHAPE).startswith("1 schemas, 0 relations") and summary({}) == "not recorded"
