"""Row counts taken in the background, inside the snapshot pg_dump reads (pg.SnapshotCounts)."""

from __future__ import annotations

import os

import pytest

from coldcopy.config import load_settings
from coldcopy.errors import DatabaseError
from coldcopy.postgres.client import Postgres


@pytest.fixture
def postgres(pg, coldcopy_env, fresh_db) -> Postgres:  # type: ignore[no-untyped-def]
    env = {**coldcopy_env, "DB_NAME": fresh_db, "COLDCOPY_ENV_FILE": os.devnull}
    return Postgres(load_settings(env))


def test_counts_see_the_snapshot_not_later_writes(postgres: Postgres) -> None:
    setup = postgres.connect()
    setup.run("CREATE TABLE t (x int)")
    setup.run("INSERT INTO t SELECT generate_series(1, 100)")
    exporter = postgres.connect()
    exporter.run("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
    snapshot = exporter.run("SELECT pg_export_snapshot()")[0][0]
    setup.run("INSERT INTO t SELECT generate_series(1, 50)")  # after the snapshot: not counted
    try:
        counts = postgres.counts_in_snapshot(snapshot, exact=True).result()
        assert counts == {"public.t": 100}
        assert setup.run("SELECT count(*) FROM t")[0][0] == 150
    finally:
        exporter.close()
        setup.close()


def test_cancel_stops_a_count_that_is_still_running(postgres: Postgres) -> None:
    """A failed backup must not wait for a long count: the count is cancelled on the server."""
    setup = postgres.connect()
    setup.run("CREATE TABLE busy (x int)")
    exporter = postgres.connect()
    exporter.run("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
    snapshot = exporter.run("SELECT pg_export_snapshot()")[0][0]
    setup.run("BEGIN")
    setup.run("LOCK TABLE busy IN ACCESS EXCLUSIVE MODE")  # count(*) on busy now blocks
    watcher = postgres.connect()
    try:
        counts = postgres.counts_in_snapshot(snapshot, exact=True)
        # Poll (server-side, from a connection outside any transaction: activity is snapshotted per
        # transaction) until the count is really blocked on our lock, then cancel it.
        blocked = (
            "SELECT count(*) FROM pg_stat_activity, pg_sleep(:pause) WHERE wait_event_type = 'Lock' "
            "AND query LIKE 'SELECT count(*) FROM ONLY %busy%'"
        )
        waited = 0
        for attempt in range(200):
            waited = watcher.run(blocked, pause=0 if attempt == 0 else 0.05)[0][0]
            if waited:
                break
        assert waited == 1
        counts.cancel(via=exporter)
        # The lock is still held, so only the cancel can have ended the count.
        assert not watcher.run(
            "SELECT 1 FROM pg_stat_activity WHERE query LIKE 'SELECT count(*) FROM ONLY %busy%' "
            "AND state = 'active'"
        )
    finally:
        setup.run("ROLLBACK")
        watcher.close()
        exporter.close()
        setup.close()


def test_a_malformed_snapshot_id_is_refused(postgres: Postgres) -> None:
    with pytest.raises(DatabaseError, match="snapshot"):
        postgres.counts_in_snapshot("1'; DROP TABLE x; --", exact=True)
