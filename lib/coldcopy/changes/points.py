"""`coldcopy restore-point NAME`: a named target for point-in-time recovery.

Two archives, two marks: a row in ``coldcopy.restore_points`` (committed synchronously, so it is in
the change archive's stream at the next drain; any role that may insert there, no superuser), and
``pg_create_restore_point`` in the WAL for physical recovery when the role may call it.  At least
one must be written, or the command fails and says how to get either.
"""

from __future__ import annotations

from typing import Any

import pg8000.native

from coldcopy.core.changes import RESTORE_POINTS, SCHEMA
from coldcopy.errors import DatabaseError


def _has_table(conn: pg8000.native.Connection) -> bool:
    rows = conn.run("SELECT to_regclass(:t) IS NOT NULL", t=f"{SCHEMA}.{RESTORE_POINTS}")
    return bool(rows[0][0])


def _may_mark_wal(conn: pg8000.native.Connection) -> bool:
    rows = conn.run(
        "SELECT has_function_privilege('pg_catalog.pg_create_restore_point(text)', 'execute') "
        "AND current_setting('wal_level') <> 'minimal' AND NOT pg_is_in_recovery()"
    )
    return bool(rows[0][0])


def write_restore_point(conn: pg8000.native.Connection, name: str) -> dict[str, Any]:
    """Mark this moment as ``name`` in the change stream and/or the WAL; what was written."""
    out: dict[str, Any] = {
        "name": name,
        "change_archive": False,
        "xid": None,
        "at": None,
        "lsn": None,
        "wal_switched": False,
    }
    stream, wal = _has_table(conn), _may_mark_wal(conn)
    if not stream and not wal:
        raise DatabaseError(
            "nowhere to write the restore point: the change archive is not set up in this database "
            "and this role may not call pg_create_restore_point",
            "run `coldcopy changes setup` (logical PITR), or connect as a superuser (physical PITR)",
        )
    if stream:
        conn.run("BEGIN")
        try:
            conn.run("SET LOCAL synchronous_commit = on")
            xid, at = conn.run(
                f"INSERT INTO {SCHEMA}.{RESTORE_POINTS} (name) VALUES (:n) "
                "RETURNING pg_current_xact_id()::text, at",
                n=name,
            )[0]
            conn.run("COMMIT")
        except BaseException:
            conn.run("ROLLBACK")
            raise
        out.update(change_archive=True, xid=int(xid), at=at.isoformat())
    if wal:
        out["lsn"] = str(conn.run("SELECT pg_create_restore_point(:n)::text", n=name)[0][0])
        # Close the segment so the restore point reaches the archive now, not at the next switch.
        try:
            conn.run("SELECT pg_switch_wal()")
            out["wal_switched"] = True
        except (
            pg8000.exceptions.DatabaseError
        ):  # a privilege the role may lack; archive_timeout does it later
            pass
    return out
