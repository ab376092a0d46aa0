"""`coldcopy backup`: a logical backup of DB_NAME streamed into Spaces."""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import wait
from typing import Any

import pg8000.native

from coldcopy.backup.session import Session, commit, manifest_for, phase, run_stream_backup, stored_object
from coldcopy.config import Settings, redact
from coldcopy.context import Context
from coldcopy.core.changes import SnapshotVisibility
from coldcopy.core.dump_counts import ArchiveError, RowCounter
from coldcopy.core.manifest import Manifest, StoredObject, data_key, globals_key
from coldcopy.core.times import Clock, utc_now
from coldcopy.errors import ColdCopyError, DatabaseError
from coldcopy.postgres.client import Postgres
from coldcopy.postgres.shape import Facts, read_facts, read_shape
from coldcopy.postgres.tls import libpq_tls_hint
from coldcopy.postgres.tools import StderrTail, die_with_parent, run_tool
from coldcopy.storage.volumes import VolumeWriter
from coldcopy.stream.pipeline import Progress, Target, pack_bytes, pack_stream

log = logging.getLogger(__name__)


def run_backup(
    settings: Settings,
    kind: str = "full",
    progress: Progress | None = None,
    now: Clock = utc_now,
    *,
    ctx: Context | None = None,
    put_right: Callable[[Context], list[str]] | None = None,
) -> Manifest:
    """A logical backup (pg_dump) of DB_NAME (into ``ctx``'s bucket, when the caller has a context;
    ``put_right``: what a killed restore of DB_NAME left, set right in the background once pg_dump
    runs, or before connecting again when the connection fails)."""

    def body(ses: Session) -> Manifest:
        return _dump(ses, kind, progress, now)

    return run_stream_backup(
        settings, kind, "pg_dump", body, now, ctx=ctx, put_right=put_right, at_once=False
    )


def _dump(ses: Session, kind: str, progress: Progress | None, now: Clock) -> Manifest:
    pg, conn, s = ses.pg, ses.conn, ses.settings
    t0 = time.monotonic()
    # One exported snapshot for pg_dump, the list of tables and the shape, so they all agree.
    lsn_before = wal_lsn(conn)  # every transaction the snapshot misses commits after this
    conn.run("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
    snapshot = conn.run("SELECT pg_export_snapshot()")[0][0]
    args = _pg_dump_args(ses.tool.path, snapshot, s.db_name)
    # pg_dump and pg_dumpall start now and do their own start-up (catalog reads, locks) while the
    # bucket's side gets ready (begun only now: see Start); nothing is stored before the name is
    # claimed.
    t_dump = time.monotonic()
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=pg.libpq_env(), preexec_fn=die_with_parent
    )
    assert proc.stdout is not None and proc.stderr is not None
    log.debug("pg_dump started (monotonic clock %.3f s)", t_dump)
    ses.start.begin()
    errors = StderrTail(proc.stderr)
    roles = ses.start.background(lambda: _roles(ses))

    def in_snapshot() -> tuple[dict[str, Any], dict[str, int], Facts, dict[str, Any]]:
        t1 = time.monotonic()
        visibility = snapshot_visibility(conn, lsn_before)  # what the change archive replays on top
        listed = pg.user_tables(conn)  # the catalog only; the rows are counted in the dump's stream
        facts = read_facts(conn)
        shape = read_shape(conn, facts)  # in the dump's snapshot: what a restore must give back
        phase("tables and shape in the snapshot (in the background)", t1)
        return visibility, listed, facts, shape

    # Read while the dump streams (the connection is that thread's until the stream has ended).
    known = ses.start.background(in_snapshot)
    writers: list[VolumeWriter] = []

    def target(block: bool) -> Target | None:
        """The stream's volumes, its key and name, once the bucket's side is ready (``block``: wait)."""
        if not (block or ses.start.is_ready()):
            return None
        t1 = time.monotonic()
        ctx, name = ses.start.wait()
        phase("waiting for the bucket and the key", t1)
        writers.append(ses.data_writer())
        return writers[0], ctx.key, data_key(name)

    try:
        phase("snapshot", t0)
        counter = StreamCounts() if s.row_counts == "exact" else None
        tap = counter.feed if counter else None
        # The dump's first bytes are compressed and held (at most one volume) while the name is
        # claimed and the key derived: pg_dump does not wait for them.
        stats = pack_stream(
            proc.stdout,
            None,
            None,
            s.zstd_level,
            progress,
            tap=tap,
            target=target,
            hold=s.volume_size_mb << 20,
        )
        log.debug(
            "dump streamed: %d bytes in %.2f s from pg_dump's start",
            stats.raw_size,
            time.monotonic() - t_dump,
        )
        rc = proc.wait()
        if rc != 0:
            text = errors.text()
            raise DatabaseError(
                f"pg_dump failed (exit {rc}): {redact(text, s)[-800:]}",
                libpq_tls_hint(text, pg.names)
                or "nothing was stored; fix the cause above and run the backup again",
            )
        volumes = writers[0].complete()
        log.debug("upload complete after %.2f s", time.monotonic() - t_dump)
    except BaseException:
        proc.kill()
        proc.wait()
        for writer in writers:
            writer.abort()
        wait([known])  # the connection is free again before it is closed
        raise
    visibility, listed, facts, shape = known.result()
    conn.run("COMMIT")
    ctx, name = ses.start.wait()
    tables, row_counts = _row_counts(listed, counter)
    t1 = time.monotonic()
    glob_obj, glob_note = roles.result()
    phase("roles (stored during the dump)", t1)
    manifest = manifest_for(
        ses,
        kind=kind,
        finished=now(),
        duration=time.monotonic() - t0,
        stats=stats,
        volumes=volumes,
        tables=tables,
        row_counts=row_counts,
        globals=glob_obj,
        globals_note=glob_note,
        extra={"format": "pg_dump custom (-Fc -Z0), zstd-compressed", **visibility},
        platform=facts.to_dict(),
        shape=shape,
    )
    t1 = time.monotonic()
    commit(ctx, manifest)
    phase("manifest", t1)
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


class StreamCounts:
    """The dump's rows per table, counted as its bytes pass (``core.dump_counts``).  An archive
    this reader does not understand (a future pg_dump) stops the counting, not the backup."""

    def __init__(self) -> None:
        self.counter = RowCounter()
        self.error = ""

    def feed(self, data: bytes) -> None:
        if self.error:
            return
        try:
            self.counter.feed(data)
        except ArchiveError as exc:
            self.error = str(exc)

    def result(self) -> dict[str, int] | None:
        """The counts, or None (and ``error`` says why) when they could not be read."""
        if not self.error:
            try:
                return self.counter.finish()
            except ArchiveError as exc:
                self.error = str(exc)
        return None


def _row_counts(listed: dict[str, int], counter: StreamCounts | None) -> tuple[dict[str, int], str]:
    """The manifest's tables and how their counts were taken: exact from the dump's stream, or the
    planner's estimates (COLDCOPY_ROW_COUNTS=estimate, or when the stream could not be read)."""
    counts = counter.result() if counter else None
    if counter and counts is None:
        log.warning("row counts could not be read from the dump (%s); recording estimates", counter.error)
    if counts is None:
        return listed, "estimate"
    missing = sorted(set(listed) - set(counts))
    if missing:  # tables pg_dump leaves out (in a schema an extension owns): not in the backup
        log.warning("pg_dump wrote no rows for %d tables: %s", len(missing), ", ".join(missing[:20]))
    return {t: counts[t] for t in listed if t in counts}, "exact"


def _pg_dump_args(tool: str, snapshot: str, dbname: str) -> list[str]:
    """pg_dump of ``dbname`` in the exported ``snapshot``, uncompressed custom format to stdout."""
    return [tool, "--format=custom", "--compress=0", f"--snapshot={snapshot}", "--no-password", dbname]


def _roles_sql(pg: Postgres, settings: Settings) -> bytes | str:
    """Roles and tablespaces as SQL (``pg_dumpall --globals-only``, never their passwords), or why
    they could not be read (this user may not)."""
    try:
        tool = pg.tool("pg_dumpall")
        return run_tool(
            [
                tool.path,
                "--globals-only",
                "--no-role-passwords",
                "--no-password",
                f"--database={pg.maintenance_db()}",
            ],
            pg.libpq_env(),
            settings,
            "pg_dumpall --globals-only",
        )
    except ColdCopyError as exc:
        log.warning("roles were not saved: %s", exc.message)
        return f"roles not saved: {exc.message[:300]}"


def _roles(ses: Session) -> tuple[StoredObject | None, str]:
    """The roles' SQL stored beside the backup's data, once its name is claimed (in the background,
    while the dump streams); or, when it could not be read, why."""
    sql = _roles_sql(ses.pg, ses.settings)
    if isinstance(sql, str):
        return None, sql
    ctx, name = ses.start.wait()
    blob, stats = pack_bytes(sql, ctx.key, ctx.settings.zstd_level, object_key=globals_key(name))
    ctx.storage.put_bytes(globals_key(name), blob, create_only=True)
    return stored_object(globals_key(name), stats), ""
