"""The manifest's row counts come from the dump's own stream (core.dump_counts): exact on a tricky
schema, and one backup reads each of the user's rows once (no second ``count(*)`` scan)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from cli_helpers import run_cli
from coldcopy.core.dump_counts import ArchiveError, RowCounter
from coldcopy.localstack.dbcompare import wait_until_alone
from coldcopy.postgres.client import Postgres
from coldcopy.postgres.cluster import PgCluster

# Every case where a newline-per-row count could go wrong, plus the shapes a dump has.
TRICKY = [
    'CREATE SCHEMA "Odd ""Schema"".x"',
    "CREATE SCHEMA s2",
    'CREATE TABLE "Odd ""Schema"".x"."we""ird.name ü" (id int, t text)',
    # newlines, carriage returns, backslashes, a line that looks like COPY's end marker, empty text
    """INSERT INTO "Odd ""Schema"".x"."we""ird.name ü"
       SELECT g, CASE g % 4 WHEN 0 THEN E'line1\\nline2\\r\\n\\\\.\\n' WHEN 1 THEN E'\\\\.'
                            WHEN 2 THEN '' ELSE NULL END FROM generate_series(1, 1000) g""",
    "CREATE TABLE s2.only_empty_strings (t text)",
    "INSERT INTO s2.only_empty_strings SELECT '' FROM generate_series(1, 10)",
    "CREATE TABLE s2.b (id int, b bytea)",
    "INSERT INTO s2.b SELECT g, decode(repeat('0a0d5c2e00', g), 'hex') FROM generate_series(1, 300) g",
    "CREATE TABLE big (id int, v text)",  # TOASTed values far larger than a read
    "INSERT INTO big SELECT g, repeat(E'x\\n', 600000 + g) FROM generate_series(1, 4) g",
    "CREATE TABLE empty (x int)",
    "CREATE TABLE parted (k int, v text) PARTITION BY RANGE (k)",
    "CREATE TABLE parted_1 PARTITION OF parted FOR VALUES FROM (0) TO (100)",
    "CREATE TABLE parted_2 PARTITION OF parted FOR VALUES FROM (100) TO (1000)",
    "INSERT INTO parted SELECT g, E'v\\t' || g FROM generate_series(0, 999) g",
    "CREATE UNLOGGED TABLE unl (x int)",
    "INSERT INTO unl SELECT generate_series(1, 77)",
    # rows whose chunk header has newline bytes: one row per chunk, its length a line's length,
    # with 0x0A as the low byte, the second, both, and in the third (past a 16-bit length)
    "CREATE TABLE lens (t text)",
    "INSERT INTO lens SELECT repeat('a', n - 1) FROM unnest(ARRAY[10, 266, 2570, 2600, 65546, 657930]) n",
    "CREATE TABLE narrow (a int)",
    "INSERT INTO narrow SELECT generate_series(1, 20000)",
    "SELECT lo_from_bytea(0, '\\x0a0a0a0a'::bytea)",  # a large object: a data block of its own
]


@pytest.fixture
def tricky_db(pg: PgCluster, fresh_db: str) -> str:
    conn = pg.connect(fresh_db)
    try:
        for sql in TRICKY:
            conn.run(sql)
    finally:
        conn.close()
    return fresh_db


def count_star(pg: PgCluster, db: str) -> dict[str, int]:
    conn = pg.connect(db)
    try:
        return Postgres.table_row_counts(conn)
    finally:
        conn.close()


def dump(pg: PgCluster, db: str, *extra: str) -> bytes:
    env = {**os.environ, **pg.env(), "PGDATABASE": db}
    args = [str(pg.bin_dir / "pg_dump"), "--format=custom", *extra]
    return subprocess.run(args, env=env, capture_output=True, check=True).stdout


def counted(raw: bytes, step: int) -> dict[str, int]:
    counter = RowCounter()
    for i in range(0, len(raw), step):
        counter.feed(raw[i : i + step])
    return counter.finish()


def test_stream_counts_equal_count_star_on_a_tricky_schema(pg: PgCluster, tricky_db: str) -> None:
    expected = count_star(pg, tricky_db)
    assert expected['Odd "Schema".x.we"ird.name ü'] == 1000 and expected["public.empty"] == 0
    raw = dump(pg, tricky_db, "--compress=0")
    # However the pipe cuts the stream: every structure split at every byte, and large reads.
    for step in (1 << 20, 4093, 7, 1):
        assert counted(raw, step) == expected, step


def test_a_truncated_or_compressed_archive_is_refused(pg: PgCluster, tricky_db: str) -> None:
    raw = dump(pg, tricky_db, "--compress=0")
    with pytest.raises(ArchiveError, match="ends inside"):
        counted(raw[: len(raw) // 2], 1 << 20)
    with pytest.raises(ArchiveError, match="compressed"):
        counted(dump(pg, tricky_db), 1 << 20)  # pg_dump's default: compressed data blocks
    with pytest.raises(ArchiveError, match="PGDMP"):
        counted(b"-- PostgreSQL database dump\n" * 10, 1 << 20)


@pytest.fixture
def coldcopy_db(tricky_db: str) -> str:
    return tricky_db


def _manifest(env: dict[str, str], *extra: str) -> dict:  # type: ignore[type-arg]
    r = run_cli(env, "backup", "--json", *extra)
    assert r.rc == 0, r.err
    name = json.loads(r.out)["name"]
    shown = run_cli(env, "show", name, "--json")
    assert shown.rc == 0, shown.err
    return json.loads(shown.out)  # type: ignore[no-any-return]


def test_backup_records_the_streams_counts(pg: PgCluster, coldcopy_env: dict[str, str]) -> None:
    shown = _manifest(coldcopy_env)
    assert shown["row_counts"] == "exact"
    assert shown["tables"] == count_star(pg, coldcopy_env["DB_NAME"])


def test_estimate_mode_still_records_estimates(pg: PgCluster, coldcopy_env: dict[str, str]) -> None:
    conn = pg.connect(coldcopy_env["DB_NAME"])
    try:
        conn.run("ANALYZE")
    finally:
        conn.close()
    shown = _manifest({**coldcopy_env, "COLDCOPY_ROW_COUNTS": "estimate"})
    assert shown["row_counts"] == "estimate"
    exact = count_star(pg, coldcopy_env["DB_NAME"])
    assert set(shown["tables"]) == set(exact)
    assert shown["tables"]["public.narrow"] == exact["public.narrow"]  # ANALYZE saw every row


def test_one_backup_reads_each_row_once(pg: PgCluster, coldcopy_env: dict[str, str]) -> None:
    db = coldcopy_env["DB_NAME"]
    live = sum(count_star(pg, db).values())
    conn = pg.connect(db)
    try:
        conn.run("ALTER SYSTEM SET autovacuum = off")  # nothing else may scan the tables meanwhile
        conn.run("SELECT pg_reload_conf()")
        wait_until_alone(conn, db)  # the count(*) above is in the statistics
        conn.run("SELECT pg_stat_reset()")
        before = conn.run("SELECT coalesce(sum(seq_tup_read), 0) FROM pg_stat_user_tables")[0][0]
        assert before == 0
        _manifest(coldcopy_env)
        wait_until_alone(conn, db)
        read = conn.run("SELECT coalesce(sum(seq_tup_read), 0) FROM pg_stat_user_tables")[0][0]
        assert read == live, f"one backup read {read / live:.2f}x the live rows"
    finally:
        conn.run("ALTER SYSTEM RESET autovacuum")
        conn.run("SELECT pg_reload_conf()")
        conn.close()
