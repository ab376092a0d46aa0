"""Safety properties found by review: heartbeats through every phase, the commit check, database
renames that always leave the database reachable, tables pg_dump does not dump."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from pathlib import Path

import pytest

from cli_helpers import run_cli
from coldcopy.backup import inflight
from coldcopy.backup.logical import run_backup
from coldcopy.backup.session import commit
from coldcopy.config import load_settings
from coldcopy.context import open_context
from coldcopy.errors import DatabaseError, IntegrityError
from coldcopy.postgres.client import Postgres
from coldcopy.storage.memory import MemoryStore


def test_marker_heartbeat_runs_in_the_background(coldcopy_env, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(inflight, "HEARTBEAT_SECONDS", 0.05)
    ctx = open_context(load_settings(coldcopy_env))
    marker = inflight.Marker(ctx.storage, "full_backup_demo_20260101_000000")
    marker.create()
    key = inflight.marker_key(marker.name)
    first = ctx.storage.get_json(key)["heartbeat_at"]
    deadline = time.monotonic() + 20
    while ctx.storage.get_json(key)["heartbeat_at"] == first:  # refreshed with nobody calling it
        assert time.monotonic() < deadline, "the marker was never refreshed"
    marker.remove()
    assert not ctx.storage.exists(key)


def test_commit_refuses_when_an_object_went_missing(coldcopy_env) -> None:  # type: ignore[no-untyped-def]
    r = run_cli(coldcopy_env, "backup", "--json")
    assert r.rc == 0, r.err
    ctx = open_context(load_settings(coldcopy_env))
    m = ctx.catalog.manifest(json.loads(r.out)["name"])
    other = dataclasses.replace(
        m,
        name="full_backup_demo_20200101_000000",
        data=dataclasses.replace(m.data, key="backups/full_backup_demo_20200101_000000/data"),
    )
    with pytest.raises(IntegrityError, match="data.000000 is missing from the bucket just before the commit"):
        commit(ctx, other)
    assert not ctx.storage.exists("backups/full_backup_demo_20200101_000000/manifest.json")
    first, *rest = m.data.volumes
    bigger = dataclasses.replace(m.data, volumes=(first + 1, *rest), stored_size=m.data.stored_size + 1)
    resized = dataclasses.replace(m, data=bigger)
    with pytest.raises(IntegrityError, match=f"000000 is {first} bytes but the manifest says {first + 1}"):
        commit(ctx, resized)
    commit(ctx, m)  # committing the same manifest again (a retried PUT) is not an error


def test_a_failed_rename_leaves_the_database_reachable(pg, coldcopy_env) -> None:  # type: ignore[no-untyped-def]
    pg.create_database("rn_a")
    pg.create_database("rn_b")
    p = Postgres(load_settings(coldcopy_env))
    try:
        with p.session("postgres") as admin, pytest.raises(DatabaseError, match="could not rename"):
            p.rename_database(admin, "rn_a", "rn_b")  # the new name is taken
        c = pg.connect()
        assert c.run("SELECT datallowconn FROM pg_database WHERE datname = 'rn_a'") == [[True]]
        c.close()
    finally:
        pg.drop_database("rn_a")
        pg.drop_database("rn_b")


def test_extension_owned_tables_do_not_block_restore(pg, coldcopy_env, fresh_db) -> None:  # type: ignore[no-untyped-def]
    env = {**coldcopy_env, "DB_NAME": fresh_db}
    c = pg.connect(fresh_db)
    c.run("CREATE TABLE app (x int)")
    c.run("INSERT INTO app VALUES (1), (2)")
    c.run("CREATE TABLE ext_queue (x int)")
    c.run("INSERT INTO ext_queue VALUES (1)")
    c.run("ALTER EXTENSION plpgsql ADD TABLE ext_queue")  # like pg_net's queue on Supabase
    c.close()
    r = run_cli(env, "backup", "--json")
    assert r.rc == 0, r.err
    name = json.loads(r.out)["name"]
    shown = json.loads(run_cli(env, "show", name, "--json").out)
    assert shown["tables"] == {"public.app": 2}
    assert run_cli(env, "verify", name).rc == 0
    target = f"{fresh_db}_x"
    assert run_cli(env, "restore", "--backup-name", name, "--target-db", target).rc == 0
    pg.drop_database(target)


def test_in_place_restore_keeps_database_settings_and_grants(pg, coldcopy_env, fresh_db) -> None:  # type: ignore[no-untyped-def]
    env = {**coldcopy_env, "DB_NAME": fresh_db}
    c = pg.connect()
    c.run("CREATE ROLE reporting NOLOGIN")
    c.run(f"ALTER DATABASE {fresh_db} SET work_mem = '7MB'")
    c.run(f"ALTER ROLE reporting IN DATABASE {fresh_db} SET statement_timeout = '5s'")
    c.run(f"GRANT CREATE ON DATABASE {fresh_db} TO reporting")
    c.run(f"COMMENT ON DATABASE {fresh_db} IS 'the app''s data'")
    c.close()
    name = json.loads(run_cli(env, "backup", "--json").out)["name"]
    r = run_cli(env, "restore", "--backup-name", name, "--no-keep-old", "--json")
    assert r.rc == 0, r.err
    c = pg.connect()
    try:
        settings = c.run(
            "SELECT coalesce(pg_get_userbyid(NULLIF(setrole, 0)), ''), setconfig FROM pg_db_role_setting s "
            "JOIN pg_database d ON d.oid = s.setdatabase WHERE d.datname = :n ORDER BY 1",
            n=fresh_db,
        )
        assert settings == [["", ["work_mem=7MB"]], ["reporting", ["statement_timeout=5s"]]]
        assert c.run("SELECT has_database_privilege('reporting', :n, 'CREATE')", n=fresh_db) == [[True]]
        assert c.run(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = :n", n=fresh_db
        ) == [["the app's data"]]
    finally:
        c.run(f"REVOKE ALL ON DATABASE {fresh_db} FROM reporting")
        c.run(f"ALTER ROLE reporting IN DATABASE {fresh_db} RESET ALL")
        c.run("DROP ROLE reporting")
        c.close()


def _children_named(name: str) -> list[int]:
    """This process's child processes called ``name`` (from /proc: their parent and command)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            text = stat.read_text()
            comm, rest = text[text.index("(") + 1 : text.rindex(")")], text[text.rindex(")") + 2 :].split()
            if comm == name and int(rest[1]) == os.getpid():
                found.append(int(stat.parent.name))
    return found


def test_a_logical_backups_bucket_side_begins_once_pg_dump_runs(pg, coldcopy_env) -> None:  # type: ignore[no-untyped-def]
    """The bucket's side (here: putting right an interrupted restore, then the name's claim) starts
    after pg_dump did, so the connection and the snapshot before it do not wait for the GIL behind
    botocore's import; and whatever it did still happens before anything is stored."""
    settings = load_settings({**coldcopy_env, "COLDCOPY_ENV_FILE": os.devnull})
    ctx = open_context(settings, MemoryStore())
    seen: list[list[int]] = []

    def put_right(c: object) -> list[str]:
        seen.append(_children_named("pg_dump"))
        return []

    manifest = run_backup(settings, ctx=ctx, put_right=put_right)
    assert len(seen) == 1 and seen[0], "the bucket's side began before pg_dump was running"
    assert ctx.catalog.manifest(manifest.name).name == manifest.name
