"""Restores killed at chosen instants (issue 13, items 2-4 and 10): ColdCopy is stopped at a pause
point (COLDCOPY_PAUSE_AT=<point>@<fifo>; reading the FIFO wakes the test exactly at the point) and
killed with SIGKILL; then the invariants: the original database exists under its name or the next
command puts it back, no partial database under the name asked for, no staging database after the
next restore, no pg_restore left running."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli_helpers import killed_at_point, run_cli


def databases(pg) -> set[str]:  # type: ignore[no-untyped-def]
    c = pg.connect()
    try:
        return {str(r[0]) for r in c.run("SELECT datname FROM pg_database")}
    finally:
        c.close()


def marker(pg, db: str) -> str:  # type: ignore[no-untyped-def]
    c = pg.connect(db)
    try:
        return str(c.run("SELECT v FROM marker")[0][0])
    finally:
        c.close()


@pytest.fixture
def backed_up(pg, coldcopy_env, fresh_db) -> tuple[dict[str, str], str]:  # type: ignore[no-untyped-def]
    env = {**coldcopy_env, "DB_NAME": fresh_db}
    c = pg.connect(fresh_db)
    c.run("CREATE TABLE marker (v text)")
    c.run("INSERT INTO marker VALUES ('backed up')")
    c.close()
    r = run_cli(env, "--json", "backup")
    assert r.rc == 0, r.err
    c = pg.connect(fresh_db)
    c.run("UPDATE marker SET v = 'live'")
    c.close()
    return env, json.loads(r.out)["name"]


def killed_at(env: dict[str, str], point: str, tmp_path: Path, *args: str) -> int:
    """Run `coldcopy restore …` until it reaches ``point``; SIGKILL it there.  Returns its pid."""
    return killed_at_point(env, point, tmp_path, "restore", *args)


def children_of(pid: int) -> list[str]:
    """Processes whose parent was ``pid`` and that still run (a pg_restore left behind)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(stat.parent.name)
    return out


def test_killed_between_the_renames_the_next_command_puts_the_database_back(pg, backed_up, tmp_path) -> None:  # type: ignore[no-untyped-def]
    env, name = backed_up
    db = env["DB_NAME"]
    killed_at(env, "restore:between-renames", tmp_path, "--backup-name", name)
    left = databases(pg)
    assert db not in left  # the instant the issue describes: renamed aside, not yet replaced
    aside = [d for d in left if d.startswith(f"{db}_before_restore_")]
    assert len(aside) == 1 and marker(pg, aside[0]) == "live"
    status = run_cli(env, "--json", "status")
    assert status.rc == 1 and any("was interrupted" in p for p in json.loads(status.out)["problems"])
    alerts = json.loads(run_cli(env, "--json", "alerts").out)["alerts"]
    assert [a["id"] for a in alerts if a["rule"] == "restore-interrupted"] == [f"restore-interrupted:{db}"]
    r = run_cli(env, "backup")  # the next command that touches it
    assert r.rc == 0, r.err
    alerts = json.loads(run_cli(env, "--json", "alerts").out)["alerts"]
    assert not [a for a in alerts if a["rule"] == "restore-interrupted"]
    assert marker(pg, db) == "live"  # the original, under its own name
    assert not [d for d in databases(pg) if d.startswith(f"{db}_")]  # staging dropped, nothing aside
    assert run_cli(env, "--json", "status").rc == 0


def test_killed_between_the_renames_a_second_restore_puts_it_back_and_goes_on(
    pg, backed_up, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    env, name = backed_up
    db = env["DB_NAME"]
    killed_at(env, "restore:between-renames", tmp_path, "--backup-name", name)
    assert db not in databases(pg)
    r = run_cli(env, "--json", "restore", "--backup-name", name, "--no-keep-old")
    assert r.rc == 0, r.err
    assert any("put" in x and "back" in x for x in json.loads(r.out)["put_right"])
    assert marker(pg, db) == "backed up"
    assert not [d for d in databases(pg) if d.startswith(f"{db}_")]


def test_killed_before_the_swap_the_live_database_is_untouched_and_staging_goes(
    pg, backed_up, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    env, name = backed_up
    db = env["DB_NAME"]
    killed_at(env, "restore:before-swap", tmp_path, "--backup-name", name)
    assert marker(pg, db) == "live"
    assert [d for d in databases(pg) if d.startswith(f"{db}_ccstage_")]
    r = run_cli(env, "--json", "restore", "--backup-name", name)
    assert r.rc == 0, r.err
    assert any("staging database of an interrupted restore" in x for x in json.loads(r.out)["put_right"])
    assert marker(pg, db) == "backed up"
    kept = json.loads(r.out)["previous_kept_as"]
    assert not [d for d in databases(pg) if d.startswith(f"{db}_") and d != kept]
    pg.drop_database(kept)


def test_killed_midway_into_a_new_database_leaves_no_partial_one_and_no_pg_restore(
    pg, backed_up, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    env, name = backed_up
    target = f"{env['DB_NAME']}_copy"
    pid = killed_at(env, "restore:restoring", tmp_path, "--backup-name", name, "--target-db", target)
    assert target not in databases(pg)  # only a staging name: never a partial database under this one
    assert children_of(pid) == []  # pg_restore died with it
    staging = [d for d in databases(pg) if d.startswith(f"{target}_ccstage_")]
    assert len(staging) == 1
    r = run_cli(env, "--json", "restore", "--backup-name", name, "--target-db", target)
    assert r.rc == 0, r.err
    assert marker(pg, target) == "backed up"
    assert staging[0] not in databases(pg)
    pg.drop_database(target)
