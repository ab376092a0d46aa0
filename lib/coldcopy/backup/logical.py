"""`coldcopy backup`: a logical backup of DB_NAME streamed into Spaces."""

from __future__ import annotations

import logging
import subprocess
import time
from typing import Any

import pg8000.native

from coldcopy.backup.session import Session, commit, manifest_for, run_stream_backup, stored_object
from coldcopy.config import Settings, redact
from coldcopy.context import Context
from coldcopy.core.changes import SnapshotVisibility
from coldcopy.core.manifest import Manifest, StoredObject, globals_key
from coldcopy.core.times import Clock, utc_now
from coldcopy.errors import ColdCopyError, DatabaseError
from coldcopy.postgres.client import Postgres
from coldcopy.postgres.shape import read_facts, read_shape
from coldcopy.postgres.tls import libpq_tls_hint
from coldcopy.postgres.tools import StderrTail, run_tool
from coldcopy.stream.pipeline import Progress, pack_bytes, pack_stream

log = logging.getLogger(__name__)


def run_backup(
    settings: Settings,
    kind: str = "full",
    progress: Progress | None = None,
    now: Clock = utc_now,
    *,
    ctx: Context | None = None,
) -> Manifest:
    """A logical backup (pg_dump) of DB_NAME (into ``ctx``'s bucket, when the caller has a context)."""

    def body(ses: Session) -> Manifest:
        return _dump(ses, kind, progress, now)

    return run_stream_backup(settings, kind, "pg_dump", body, now, ctx=ctx)


def _dump(ses: Session, kind: str, progress: Progress | None, now: Clock) -> Manifest:
    ctx, pg, conn, name = ses.ctx, ses.pg, ses.conn, ses.name
    s = ctx.settings
    t0 = time.monotonic()
    # One exported snapshot for pg_dump and for the row counts, so the counts match the dump.
    lsn_before = wal_lsn(conn)  # every transaction the snapshot misses commits after this
    conn.run("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
    snapshot = conn.run("SELECT pg_export_snapshot()")[0][0]
    visibility = snapshot_visibility(conn, lsn_before)  # what the change archive replays on top
    args = _pg_dump_args(pg.tool("pg_dump").path, snapshot, s.db_name)
    writer = ses.data_writer()

    counts = pg.counts_in_snapshot(snapshot, exact=s.row_counts == "exact")  # overlaps the dump
    try:
        facts = read_facts(conn)
        shape = read_shape(conn, facts)  # in the dump's snapshot: what a restore must give back
    except BaseException:
        counts.cancel(via=conn)
        raise
    try:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=pg.libpq_env())
    except BaseException:
        counts.cancel(via=conn)
        raise
    assert proc.stdout is not None and proc.stderr is not None
    errors = StderrTail(proc.stderr)
    try:
        stats = pack_stream(proc.stdout, writer, ctx.key, s.zstd_level, progress)
        log.debug("dump streamed: %d bytes in %.2f s", stats.raw_size, time.monotonic() - t0)
        rc = proc.wait()
        if rc != 0:
            text = errors.text()
            raise DatabaseError(
                f"pg_dump failed (exit {rc}): {redact(text, s)[-800:]}",
                libpq_tls_hint(text, pg.names)
                or "nothing was stored; fix the cause above and run the backup again",
            )
        volumes = writer.complete()
        log.debug("upload complete after %.2f s", time.monotonic() - t0)
        tables = counts.result()
    except BaseException:
        proc.kill()
        proc.wait()
        counts.cancel(via=conn)
        writer.abort()
        raise
    log.debug("row counts taken after %.2f s", time.monotonic() - t0)
    conn.run("COMMIT")
    glob_obj, glob_note = _globals(ctx, pg, name)
    log.debug("roles saved after %.2f s", time.monotonic() - t0)
    manifest = manifest_for(
        ses,
        kind=kind,
        finished=now(),
        duration=time.monotonic() - t0,
        stats=stats,
        volumes=volumes,
        tables=tables,
        row_counts=s.row_counts,
        globals=glob_obj,
        globals_note=glob_note,
        extra={"format": "pg_dump custom (-Fc -Z0), zstd-compressed", **visibility},
        platform=facts.to_dict(),
        shape=shape,
    )
    commit(ctx, manifest)
    return manifest


def wal_lsn(conn: pg8000.native.Connection) -> str:
    """The server's WAL position now ("" on a standby, where there is none to read)."""
    try:
        return str(
            conn.run("SELECT CASE WHEN pg_is_in_recovery() THEN '' ELSE pg_current_wal_lsn()::text END")[0][0]
        )
    except pg8000.exceptions.DatabaseError:
        return ""


def snapshot_visibility(conn: pg8000.native.Connection, lsn_before: str) -> dict[str, Any]:
    """The manifest's ``snapshot_visibility``: xmin, xmax and in-progress xids of the transaction's
    snapshot (``pg_current_snapshot``, PostgreSQL 13+), so that a recovery from the change archive
    applies exactly the transactions this dump does not contain; {} before PostgreSQL 13."""
    try:
        text = str(conn.run("SELECT pg_current_snapshot()::text")[0][0])
    except pg8000.exceptions.DatabaseError:
        return {}
    return {"snapshot_visibility": SnapshotVisibility.parse(text, lsn_before).to_dict()}


def _pg_dump_args(tool: str, snapshot: str, dbname: str) -> list[str]:
    """pg_dump of ``dbname`` in the exported ``snapshot``, uncompressed custom format to stdout."""
    return [tool, "--format=custom", "--compress=0", f"--snapshot={snapshot}", "--no-password", dbname]


def _globals(ctx: Context, pg: Postgres, name: str) -> tuple[StoredObject | None, str]:
    """Roles and tablespaces, when this user may read them (never their passwords)."""
    try:
        tool = pg.tool("pg_dumpall")
        sql = run_tool(
            [
                tool.path,
                "--globals-only",
                "--no-role-passwords",
                "--no-password",
                f"--database={pg.maintenance_db()}",
            ],
            pg.libpq_env(),
            ctx.settings,
            "pg_dumpall --globals-only",
        )
    except ColdCopyError as exc:
        log.warning("roles were not saved: %s", exc.message)
        return None, f"roles not saved: {exc.message[:300]}"
    blob, stats = pack_bytes(sql, ctx.key, ctx.settings.zstd_level)
    ctx.storage.put_bytes(globals_key(name), blob, create_only=True)
    return stored_object(globals_key(name), stats), ""
