"""`coldcopy changes setup|teardown`: what the change archive needs in the database, and its state.

Everything works as hosted Supabase's non-superuser ``postgres`` (REPLICATION, and event triggers
through supautils) and on plain PostgreSQL 13+:

* a logical replication slot with the **wal2json** output plugin.  Why wal2json and not pgoutput:
  the drain reads the slot with the SQL functions (no replication protocol, so it works through
  pg8000 wherever the function or the runner runs), and over SQL pgoutput gives its binary
  protocol and needs a publication (``FOR ALL TABLES`` needs a superuser on plain PostgreSQL);
  wal2json (installed on hosted projects) gives one JSON line per row with the transaction ids
  and commit times a recovery needs, and needs no publication;
* the schema ``coldcopy`` with ``ddl_log`` (one row per DDL command, written by an event trigger
  in the DDL's own transaction, so DDL travels in the stream in commit order) and ``heartbeat``
  (one row each drain rewrites: the stream's clock, with a fingerprint of the schema so that DDL
  the trigger cannot see — run by the platform's superuser — is detected);
* ``restore_points``: a row per ``coldcopy restore-point NAME``, so a named target travels in the
  stream (``pg_create_restore_point`` needs superuser, and marks only the WAL);
* the event triggers ``coldcopy_capture_ddl`` (``ddl_command_end``: the ddl_log row) and
  ``coldcopy_capture_ddl_start`` (``ddl_command_start``: the schema's fingerprint before the
  command, which the row records with the one after it).

``teardown`` removes exactly these.  A slot no drain reads keeps WAL on the server until its disk
fills (or, on Supabase, until ``max_slot_wal_keep_size`` invalidates it): status and alerts name it.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

import pg8000.native

from coldcopy.core.changes import FINGERPRINT_MODULUS, RESTORE_POINTS, SCHEMA
from coldcopy.errors import DatabaseError

log = logging.getLogger(__name__)

PLUGIN = "wal2json"
EVENT_TRIGGER = "coldcopy_capture_ddl"  # ddl_command_end: the ddl_log row
START_TRIGGER = "coldcopy_capture_ddl_start"  # ddl_command_start: the fingerprint before
EVENT_TRIGGERS = (
    (START_TRIGGER, "ddl_command_start", "capture_ddl_start"),
    (EVENT_TRIGGER, "ddl_command_end", "capture_ddl"),
)
HEARTBEAT_ID = 1
#: The stream's own tables (they travel in the stream; everything else of ColdCopy's does not exist).
OWN_TABLES = (f"{SCHEMA}.ddl_log", f"{SCHEMA}.heartbeat", f"{SCHEMA}.{RESTORE_POINTS}")
_SKIP_SCHEMAS = "('pg_catalog', 'information_schema', 'pg_toast', 'coldcopy')"


#: A fingerprint of every user table's columns: changes when the schema does.  A set hash (the
#: sum of each column's hash, mod FINGERPRINT_MODULUS: ``core/changes.FINGERPRINT_MODULUS``), so
#: that the captured DDL's changes add up whatever order concurrent commands commit in.
FINGERPRINT_SQL = f"""
SELECT (coalesce(sum(('x' || substr(md5(format('%s.%s.%s:%s', n.nspname, c.relname, a.attname,
                                               format_type(a.atttypid, a.atttypmod))), 1, 15))
                     ::bit(60)::bigint), 0) % {FINGERPRINT_MODULUS})::text
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN {_SKIP_SCHEMAS}
  AND n.nspname NOT LIKE 'pg_temp%' AND n.nspname NOT LIKE 'pg_toast_temp%'"""

SETUP_SQL = [
    f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}",
    f"""CREATE TABLE IF NOT EXISTS {SCHEMA}.ddl_log (
        id bigserial PRIMARY KEY,
        at timestamptz NOT NULL DEFAULT clock_timestamp(),
        role text NOT NULL DEFAULT session_user,
        command_tag text NOT NULL,
        objects text[],
        query text NOT NULL)""",
    # The schema's fingerprint before and after each captured command: the drain adds up their
    # differences, so DDL the trigger did not see shows at the next heartbeat (untracked DDL).
    f"ALTER TABLE {SCHEMA}.ddl_log ADD COLUMN IF NOT EXISTS fingerprint_before text, "
    "ADD COLUMN IF NOT EXISTS fingerprint_after text",
    f"""CREATE TABLE IF NOT EXISTS {SCHEMA}.heartbeat (
        id int PRIMARY KEY,
        at timestamptz NOT NULL,
        fingerprint text NOT NULL)""",
    # `coldcopy restore-point NAME` inserts a row: a named target in the stream, without superuser.
    f"""CREATE TABLE IF NOT EXISTS {SCHEMA}.{RESTORE_POINTS} (
        id bigserial PRIMARY KEY,
        name text NOT NULL,
        at timestamptz NOT NULL DEFAULT clock_timestamp(),
        role text NOT NULL DEFAULT session_user)""",
    f"""CREATE OR REPLACE FUNCTION {SCHEMA}.schema_fingerprint() RETURNS text
        LANGUAGE sql STABLE SET search_path = pg_catalog AS $${FINGERPRINT_SQL}$$""",
    # ddl_command_start: the fingerprint before the command, for its ddl_log row (transaction-local).
    f"""CREATE OR REPLACE FUNCTION {SCHEMA}.capture_ddl_start() RETURNS event_trigger
        LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
        BEGIN
          PERFORM set_config('coldcopy.fingerprint_before', {SCHEMA}.schema_fingerprint(), true);
        END $$""",
    # SECURITY DEFINER: whoever runs the DDL, the row is written as the owner (postgres).
    f"""CREATE OR REPLACE FUNCTION {SCHEMA}.capture_ddl() RETURNS event_trigger
        LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
        DECLARE objs text[];
        BEGIN
          SELECT array_agg(object_identity) INTO objs FROM pg_event_trigger_ddl_commands();
          INSERT INTO {SCHEMA}.ddl_log (command_tag, objects, query, fingerprint_before, fingerprint_after)
          VALUES (tg_tag, objs, current_query(),
                  nullif(current_setting('coldcopy.fingerprint_before', true), ''),
                  {SCHEMA}.schema_fingerprint());
        END $$""",
    f"REVOKE ALL ON FUNCTION {SCHEMA}.capture_ddl() FROM PUBLIC",
    f"REVOKE ALL ON FUNCTION {SCHEMA}.capture_ddl_start() FROM PUBLIC",
]

#: Tables whose UPDATE and DELETE cannot be replayed exactly: no primary key and REPLICA IDENTITY
#: DEFAULT (or NOTHING).  wal2json would send no old key for them.
UNREPLAYABLE_SQL = f"""
SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND n.nspname NOT IN {_SKIP_SCHEMAS}
  AND n.nspname NOT LIKE 'pg_temp%' AND n.nspname NOT LIKE 'pg_toast_temp%'
  AND (c.relreplident = 'n' OR (c.relreplident = 'd' AND NOT EXISTS (
        SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)))
ORDER BY 1, 2"""


@dataclass
class SlotState:
    """The slot as the server sees it (None fields: no slot)."""

    slot: str
    exists: bool
    plugin: str = ""
    wal_status: str = ""
    confirmed_lsn: str = ""
    lag_bytes: int = 0
    max_keep_bytes: int | None = None

    @property
    def invalidated(self) -> bool:
        return self.wal_status == "lost"


@dataclass
class SetupReport:
    slot: str
    created: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)  # tables without a replayable identity
    fixes: list[str] = field(default_factory=list)
    large_objects: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def quote_table(schema: str, table: str) -> str:
    return f"{pg8000.native.identifier(schema)}.{pg8000.native.identifier(table)}"


def unreplayable_tables(conn: pg8000.native.Connection) -> list[str]:
    """``schema.table`` of every table whose changes could not be replayed exactly (left out)."""
    return [f"{s}.{t}" for s, t in conn.run(UNREPLAYABLE_SQL)]


def large_object_count(conn: pg8000.native.Connection) -> int:
    return int(conn.run("SELECT count(*) FROM pg_largeobject_metadata")[0][0])


def fingerprint(conn: pg8000.native.Connection) -> str:
    return str(conn.run(FINGERPRINT_SQL)[0][0])


def slot_state(conn: pg8000.native.Connection, slot: str) -> SlotState:
    rows = conn.run(
        "SELECT plugin, coalesce(wal_status, ''), coalesce(confirmed_flush_lsn::text, ''), "
        "coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn), 0)::bigint "
        "FROM pg_replication_slots WHERE slot_name = :s",
        s=slot,
    )
    keep = conn.run("SELECT setting::bigint FROM pg_settings WHERE name = 'max_slot_wal_keep_size'")
    max_keep = int(keep[0][0]) * 1024 * 1024 if keep and int(keep[0][0]) >= 0 else None
    if not rows:
        return SlotState(slot, False, max_keep_bytes=max_keep)
    plugin, wal_status, confirmed, lag = rows[0]
    return SlotState(slot, True, str(plugin), str(wal_status), str(confirmed), int(lag), max_keep)


def _check_can_replicate(conn: pg8000.native.Connection) -> None:
    level = str(conn.run("SHOW wal_level")[0][0])
    if level != "logical":
        raise DatabaseError(
            f"wal_level is {level!r}: logical decoding needs 'logical'",
            "set wal_level = logical and restart the server (on Supabase it is already logical)",
        )
    can = conn.run("SELECT rolsuper OR rolreplication FROM pg_roles WHERE rolname = current_user")
    if not can or not can[0][0]:
        raise DatabaseError(
            "this role may not create replication slots (it has neither REPLICATION nor SUPERUSER)",
            "connect as a role WITH REPLICATION (on Supabase: postgres), or ALTER ROLE … REPLICATION",
        )


def setup(conn: pg8000.native.Connection, slot: str) -> SetupReport:
    """Create the slot, the ColdCopy schema, the DDL capture and the heartbeat (idempotent)."""
    _check_can_replicate(conn)
    report = SetupReport(slot)
    had_schema = bool(conn.run("SELECT 1 FROM pg_namespace WHERE nspname = :s", s=SCHEMA))
    conn.run("BEGIN")
    try:
        for sql in SETUP_SQL:
            conn.run(sql)
        conn.run(
            f"INSERT INTO {SCHEMA}.heartbeat (id, at, fingerprint) VALUES (:i, clock_timestamp(), '') "
            "ON CONFLICT (id) DO NOTHING",
            i=HEARTBEAT_ID,
        )
        for name, event, function in EVENT_TRIGGERS:
            if conn.run("SELECT 1 FROM pg_event_trigger WHERE evtname = :n", n=name):
                report.existing.append(f"event trigger {name}")
            else:
                conn.run(f"CREATE EVENT TRIGGER {name} ON {event} EXECUTE FUNCTION {SCHEMA}.{function}()")
                report.created.append(f"event trigger {name}")
        conn.run("COMMIT")
    except pg8000.exceptions.DatabaseError as exc:
        conn.run("ROLLBACK")
        raise DatabaseError(
            f"could not create the change capture: {_message(exc)}",
            "the role needs CREATE on the database and the right to create event triggers "
            "(superuser, or postgres on Supabase through supautils)",
        ) from None
    (report.existing if had_schema else report.created).append(
        f"schema {SCHEMA} (ddl_log, heartbeat, {RESTORE_POINTS})"
    )
    state = slot_state(conn, slot)
    if state.exists and state.invalidated:
        raise DatabaseError(
            f"the replication slot {slot} exists but was invalidated (wal_status lost)",
            "run `coldcopy changes teardown`, then setup again, and take a logical backup: "
            "the change window restarts there",
        )
    if state.exists:
        if state.plugin != PLUGIN:
            raise DatabaseError(
                f"a slot named {slot} exists with plugin {state.plugin}, not {PLUGIN}",
                "drop it (SELECT pg_drop_replication_slot(...)) or set COLDCOPY_CLUSTER to another name",
            )
        report.existing.append(f"slot {slot}")
    else:
        try:
            conn.run("SELECT pg_create_logical_replication_slot(:s, :p)", s=slot, p=PLUGIN)
        except pg8000.exceptions.DatabaseError as exc:
            raise DatabaseError(
                f"could not create the replication slot {slot}: {_message(exc)}",
                f"is the {PLUGIN} plugin installed (Debian: postgresql-<major>-wal2json), and is a slot "
                "free (max_replication_slots)?",
            ) from None
        report.created.append(f"slot {slot} ({PLUGIN})")
    report.left_out = unreplayable_tables(conn)
    report.fixes = [
        f"ALTER TABLE {quote_table(*t.split('.', 1))} REPLICA IDENTITY FULL;" for t in report.left_out
    ]
    report.large_objects = large_object_count(conn)
    return report


def teardown(conn: pg8000.native.Connection, slot: str) -> list[str]:
    """Remove everything setup created; what was removed."""
    removed = []
    if conn.run("SELECT 1 FROM pg_replication_slots WHERE slot_name = :s", s=slot):
        try:
            conn.run("SELECT pg_drop_replication_slot(:s)", s=slot)
        except pg8000.exceptions.DatabaseError as exc:
            raise DatabaseError(
                f"could not drop the replication slot {slot}: {_message(exc)}",
                "a drain may be reading it right now: run teardown again in a minute",
            ) from None
        removed.append(f"slot {slot}")
    for name, _, _ in EVENT_TRIGGERS:
        if conn.run("SELECT 1 FROM pg_event_trigger WHERE evtname = :n", n=name):
            conn.run(f"DROP EVENT TRIGGER {name}")
            removed.append(f"event trigger {name}")
    if conn.run("SELECT 1 FROM pg_namespace WHERE nspname = :s", s=SCHEMA):
        conn.run(f"DROP SCHEMA {SCHEMA} CASCADE")
        removed.append(f"schema {SCHEMA}")
    return removed


def _message(exc: Exception) -> str:
    arg = exc.args[0] if exc.args else exc
    return str(arg.get("M", arg)) if isinstance(arg, dict) else str(arg)
