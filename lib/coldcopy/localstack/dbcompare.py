"""Compare two databases by content, computed server-side: the check behind every restore test.

Each table is reduced to its row count plus two sums of 64-bit slices of ``md5(row::text)``.
Sums do not depend on row order, keep duplicate rows apart (an XOR would cancel them), and need
constant memory however large the table is.  Both sides are read in one REPEATABLE READ snapshot
with the same output settings (time zone, date and float formats), so equal data prints equally.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass, field

import pg8000.native

_KINDS = {
    "r": "table",
    "p": "partitioned table",
    "v": "view",
    "m": "materialized view",
    "S": "sequence",
    "f": "foreign table",
}
_MAX_LISTED = 10  # per kind of difference, so one broken restore does not print a million lines

# The text form of values depends on these settings; pin them on both sides.  JIT only costs time here.
_SESSION_SETTINGS = {
    "jit": "off",
    "TimeZone": "UTC",
    "DateStyle": "ISO, MDY",
    "IntervalStyle": "postgres",
    "extra_float_digits": "1",
    "bytea_output": "hex",
    "lc_monetary": "C",
}


@dataclass
class _Snapshot:
    relations: dict[str, str] = field(default_factory=dict)  # name → kind
    columns: dict[str, str] = field(default_factory=dict)  # table → "col type, …"
    rows: dict[str, int] = field(default_factory=dict)
    digests: dict[str, str] = field(default_factory=dict)
    sequences: dict[str, int | None] = field(default_factory=dict)
    large_objects: dict[int, str] = field(default_factory=dict)  # oid → md5 of the contents


def table_row_counts(conn: pg8000.native.Connection) -> dict[str, int]:
    """Exact ``count(*)`` of every table in every non-system schema, keyed ``"schema.table"``."""
    return {
        f"{schema}.{name}": int(conn.run(f"SELECT count(*) FROM ONLY {_quoted(schema, name)}")[0][0])
        for schema, name in _tables(conn)
    }


def compare_databases(conn_a: pg8000.native.Connection, conn_b: pg8000.native.Connection) -> list[str]:
    """Differences between the databases of two connections, one readable line each; [] means equal.

    Compares the set of tables, views and sequences, each table's columns, row count and content,
    sequences' last values, and large objects (by oid and md5 of contents).  Call it on
    connections that are not inside a transaction: it opens and ends its own.
    """
    a, b = _snapshot(conn_a), _snapshot(conn_b)
    diffs: list[str] = []
    diffs += _limited(_only_in_one(a.relations, b.relations))
    diffs += _limited(
        f"{name}: {a.relations[name]} vs {b.relations[name]}"
        for name in sorted(a.relations.keys() & b.relations.keys())
        if a.relations[name] != b.relations[name]
    )
    table_diffs = []
    for name in sorted(a.columns.keys() & b.columns.keys()):
        if a.columns[name] != b.columns[name]:
            table_diffs.append(f"table {name}: columns differ: ({a.columns[name]}) vs ({b.columns[name]})")
        elif a.rows[name] != b.rows[name]:
            table_diffs.append(f"table {name}: {a.rows[name]} rows vs {b.rows[name]} rows")
        elif a.digests[name] != b.digests[name]:
            table_diffs.append(f"table {name}: contents differ ({a.rows[name]} rows on each side)")
    diffs += _limited(table_diffs)
    diffs += _limited(
        f"sequence {name}: last value {a.sequences[name]} vs {b.sequences[name]}"
        for name in sorted(a.sequences.keys() & b.sequences.keys())
        if a.sequences[name] != b.sequences[name]
    )
    lo_a, lo_b = a.large_objects, b.large_objects
    if len(lo_a) != len(lo_b):
        diffs.append(f"large objects: {len(lo_a)} vs {len(lo_b)}")
    diffs += _limited(
        _only_in_one({str(o): "large object" for o in lo_a}, {str(o): "large object" for o in lo_b})
    )
    diffs += _limited(
        f"large object {oid}: contents differ"
        for oid in sorted(lo_a.keys() & lo_b.keys())
        if lo_a[oid] != lo_b[oid]
    )
    return diffs


def _snapshot(conn: pg8000.native.Connection) -> _Snapshot:
    snap = _Snapshot()
    conn.run("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
    try:
        for name, value in _SESSION_SETTINGS.items():
            conn.run("SELECT set_config(:name, :value, true)", name=name, value=value)
        for schema, rel, kind in conn.run(
            f"""SELECT n.nspname, c.relname, c.relkind::text FROM pg_class c
                JOIN pg_namespace n ON n.oid = c.relnamespace
                WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') AND {_user_schema("n.nspname")}"""
        ):
            snap.relations[f"{schema}.{rel}"] = _KINDS[kind]
        for schema, name in _tables(conn):
            table = f"{schema}.{name}"
            snap.columns[table] = conn.run(
                """SELECT coalesce(string_agg(attname || ' ' || format_type(atttypid, atttypmod), ', '
                                              ORDER BY attnum), '')
                   FROM pg_attribute
                   WHERE attrelid = CAST(:t AS regclass) AND attnum > 0 AND NOT attisdropped""",
                t=_quoted(schema, name),
            )[0][0]
            rows, digest = conn.run(
                f"""SELECT count(*), coalesce(sum(high), 0) || ':' || coalesce(sum(low), 0)
                    FROM (SELECT ('x' || substr(h, 1, 16))::bit(64)::bigint::numeric AS high,
                                 ('x' || substr(h, 17, 16))::bit(64)::bigint::numeric AS low
                          FROM (SELECT md5(t::text) AS h FROM ONLY {_quoted(schema, name)} AS t) r) s"""
            )[0]
            snap.rows[table], snap.digests[table] = int(rows), str(digest)
        for schema, seq, last_value in conn.run(
            "SELECT schemaname, sequencename, last_value FROM pg_sequences"
            f" WHERE {_user_schema('schemaname')}"
        ):
            snap.sequences[f"{schema}.{seq}"] = None if last_value is None else int(last_value)
        # lo_get reads one object at a time into memory: fine up to a few hundred MB each.
        for oid, digest in conn.run("SELECT oid::bigint, md5(lo_get(oid)) FROM pg_largeobject_metadata"):
            snap.large_objects[int(oid)] = str(digest)
    finally:
        with contextlib.suppress(Exception):  # the connection may be what failed
            conn.run("ROLLBACK")
    return snap


def _user_schema(column: str) -> str:
    return f"{column} !~ '^pg_' AND {column} <> 'information_schema'"


def _tables(conn: pg8000.native.Connection) -> list[tuple[str, str]]:
    # Leaf tables only (partitions, not their parents), read with ONLY, so no row is counted twice.
    rows = conn.run(
        f"""SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE c.relkind = 'r' AND {_user_schema("n.nspname")} ORDER BY 1, 2"""
    )
    return [(str(schema), str(name)) for schema, name in rows]


def _quoted(schema: str, name: str) -> str:
    return f"{pg8000.native.identifier(schema)}.{pg8000.native.identifier(name)}"


def _only_in_one(a: dict[str, str], b: dict[str, str]) -> list[str]:
    """Names on one side only; the values say what each name is ("view", "large object"…)."""
    return [f"{a[k]} {k}: only in the first database" for k in sorted(a.keys() - b.keys())] + [
        f"{b[k]} {k}: only in the second database" for k in sorted(b.keys() - a.keys())
    ]


def _limited(lines: Iterable[str]) -> list[str]:
    items = list(lines)
    if len(items) > _MAX_LISTED:
        return [*items[:_MAX_LISTED], f"… and {len(items) - _MAX_LISTED} more like these"]
    return items


def wait_until_alone(conn: pg8000.native.Connection, db: str, deadline_polls: int = 600) -> None:
    """Poll (on the server, 50 ms apart, at most ``deadline_polls`` times) until ``conn`` is the only
    session in ``db``; then its next statistics read is fresh.  A backend flushes its table
    statistics on exit before it leaves pg_stat_activity, so afterwards ``pg_stat_user_tables``
    holds everything the departed sessions read (tests and benchmarks of rows read)."""
    for attempt in range(deadline_polls):
        left = conn.run(
            "SELECT count(*) FROM pg_stat_activity, pg_sleep(:pause) "
            "WHERE datname = :db AND pid <> pg_backend_pid()",
            db=db,
            pause=0 if attempt == 0 else 0.05,
        )[0][0]
        if not left:
            conn.run("SELECT pg_stat_clear_snapshot()")
            return
    raise TimeoutError(f"sessions still open in {db} after {deadline_polls} polls")
