"""`coldcopy backup`: a logical backup of DB_NAME streamed into Spaces."""

from __future__ import annotations

import contextlib
import logging
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import IO, Any

from coldcopy import __version__
from coldcopy.backup.inflight import Marker, clean_stale, remove_partial
from coldcopy.config import Settings, redact
from coldcopy.core.manifest import Manifest, StoredObject, data_key, globals_key, iso, manifest_key
from coldcopy.core.names import make_name
from coldcopy.errors import ColdCopyError, ConflictError, DatabaseError, IntegrityError
from coldcopy.postgres.client import Postgres, ToolVersion, major_of, run_tool
from coldcopy.storage.catalog_store import CatalogStore
from coldcopy.storage.s3 import Storage
from coldcopy.storage.volumes import VolumeWriter, stored_problem
from coldcopy.stream.crypto import MasterKey
from coldcopy.stream.pipeline import Progress, StreamStats, pack_bytes, pack_stream

log = logging.getLogger(__name__)


@dataclass
class BackupContext:
    settings: Settings
    storage: Storage
    catalog: CatalogStore
    key: MasterKey | None


def context(settings: Settings) -> BackupContext:
    storage = Storage(settings)
    key = MasterKey.from_passphrase(settings.encryption_key.reveal()) if settings.encrypted else None
    return BackupContext(settings, storage, CatalogStore(storage), key)


class _StderrTail:
    """Drains a child's stderr in a thread (so it can never block) and keeps the last lines."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._drain, args=(stream,), daemon=True)
        self._thread.start()

    def _drain(self, stream: IO[bytes]) -> None:
        for line in stream:
            self.lines.append(line.decode(errors="replace").rstrip())
            del self.lines[:-40]

    def text(self) -> str:
        self._thread.join(timeout=5)
        return "\n".join(self.lines)


def _stored(key: str, stats: StreamStats, volumes: list[int] | None = None) -> StoredObject:
    return StoredObject(
        key, stats.stored_size, stats.stored_sha256, stats.raw_size, stats.raw_sha256, tuple(volumes or ())
    )


def run_backup(
    settings: Settings,
    kind: str = "full",
    progress: Progress | None = None,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> Manifest:
    """A logical backup (pg_dump) of DB_NAME."""

    def body(ses: Session) -> Manifest:
        return _dump(ses, kind, progress, now)

    return run_stream_backup(settings, kind, "pg_dump", body, now)


@dataclass
class Session:
    """What a backup's body gets: a checked connection and a claimed name."""

    ctx: BackupContext
    pg: Postgres
    conn: Any
    name: str
    started: datetime
    server: tuple[int, str]  # server_version_num, server_version
    tool: ToolVersion

    def data_writer(self) -> VolumeWriter:
        """Where the backup's stream goes: its volumes under ``backups/<name>/data``."""
        s = self.ctx.settings
        return VolumeWriter(
            self.ctx.storage,
            data_key(self.name),
            volume_size=s.volume_size_mb << 20,
            concurrency=s.upload_concurrency,
        )


def run_stream_backup(
    settings: Settings,
    kind: str,
    tool_name: str,
    body: Callable[[Session], Manifest],
    now: Callable[[], datetime],
) -> Manifest:
    """The life of every backup, logical or physical: connect, check the tool against the server,
    clean up after killed runs, claim a name, run ``body`` (which commits the manifest), leave
    nothing behind on failure and record it, then index the backup in the catalog."""
    ctx = context(settings)
    started = now()
    claimed: list[str] = []
    try:
        manifest = _in_session(ctx, kind, tool_name, started, claimed, body)
    except BaseException as exc:
        name = claimed[0] if claimed else str(make_name(kind, settings.db_name, started))
        _record_failure(ctx, name, kind, exc)
        raise
    try:
        key = ctx.catalog.record(
            "backup", manifest.name, {"name": manifest.name, "entry": manifest.entry().to_dict()}
        )
        log.debug("journal record %s written", key)
        ctx.catalog.refresh()
    except ColdCopyError as exc:
        log.warning(
            "backup %s is stored, but the catalog could not be updated (%s); run `coldcopy catalog rebuild`",
            manifest.name,
            exc.message,
        )
    return manifest


def _claim_name(ctx: BackupContext, kind: str, started: datetime) -> tuple[str, Marker]:
    """The backup's name, unique even when two backups start within the same second."""
    for offset in range(30):
        name = str(make_name(kind, ctx.settings.db_name, started + timedelta(seconds=offset)))
        if next(iter(ctx.storage.list(f"backups/{name}/")), None) is not None:
            continue
        marker = Marker(ctx.storage, name)
        try:
            marker.create()
        except ConflictError:
            continue
        return name, marker
    raise ConflictError("could not find a free backup name", "too many backups are starting at once")


def _in_session(
    ctx: BackupContext,
    kind: str,
    tool_name: str,
    started: datetime,
    claimed: list[str],
    body: Callable[[Session], Manifest],
) -> Manifest:
    pg = Postgres(ctx.settings)
    tool = pg.tool(tool_name)
    conn = pg.connect()  # fails early on a bad password, before anything is written
    try:
        server_num, server_text = pg.server_version(conn)
        if tool.major < major_of(server_num):
            raise DatabaseError(
                f"the local {tool_name} is version {tool.major} but the server runs {server_text}",
                f"install postgresql-client-{major_of(server_num)} (or newer) or point PG_BIN_DIR at it",
            )
        clean_stale(ctx.storage, ctx.settings.stale_upload_seconds)
        name, marker = _claim_name(ctx, kind, started)
        claimed.append(name)
        try:
            return body(Session(ctx, pg, conn, name, started, (server_num, server_text), tool))
        except BaseException:
            try:  # a backup that did not finish leaves nothing behind
                remove_partial(ctx.storage, name)
            except ColdCopyError as exc:
                log.warning("could not remove the partial objects of %s: %s", name, exc.message)
            raise
        finally:
            try:
                marker.remove()
            except ColdCopyError as exc:
                log.warning("could not remove the in-flight marker: %s", exc.message)
    finally:
        with contextlib.suppress(Exception):  # the backup's outcome is decided; closing can't change it
            conn.close()


def _dump(ses: Session, kind: str, progress: Progress | None, now: Callable[[], datetime]) -> Manifest:
    ctx, pg, conn, name = ses.ctx, ses.pg, ses.conn, ses.name
    s = ctx.settings
    t0 = time.monotonic()
    # One exported snapshot for pg_dump and for the row counts, so the counts match the dump.
    conn.run("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
    snapshot = conn.run("SELECT pg_export_snapshot()")[0][0]
    args = [
        pg.tool("pg_dump").path,
        "--format=custom",
        "--compress=0",
        f"--snapshot={snapshot}",
        "--no-password",
        s.db_name,
    ]
    writer = ses.data_writer()

    counts = pg.counts_in_snapshot(snapshot, exact=s.row_counts == "exact")  # overlaps the dump
    try:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=pg.libpq_env())
    except BaseException:
        counts.cancel(via=conn)
        raise
    assert proc.stdout is not None and proc.stderr is not None
    errors = _StderrTail(proc.stderr)
    try:
        stats = pack_stream(proc.stdout, writer, ctx.key, s.zstd_level, progress)
        log.debug("dump streamed: %d bytes in %.2f s", stats.raw_size, time.monotonic() - t0)
        rc = proc.wait()
        if rc != 0:
            raise DatabaseError(
                f"pg_dump failed (exit {rc}): {redact(errors.text(), s)[-800:]}",
                "nothing was stored; fix the cause above and run the backup again",
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
        extra={"format": "pg_dump custom (-Fc -Z0), zstd-compressed"},
    )
    commit(ctx, manifest)
    return manifest


def manifest_for(
    ses: Session,
    *,
    kind: str,
    finished: datetime,
    duration: float,
    stats: StreamStats,
    volumes: list[int],
    **fields: Any,
) -> Manifest:
    """The manifest of a session's finished stream (every kind): what is common, plus kind-specific
    ``fields``."""
    ctx, s = ses.ctx, ses.ctx.settings
    return Manifest(
        name=ses.name,
        kind=kind,
        database=s.db_name,
        cluster=s.prefix.split("/")[1],
        started_at=iso(ses.started),
        finished_at=iso(finished),
        duration_seconds=round(duration, 3),
        server_version=ses.server[1],
        server_version_num=ses.server[0],
        tool=ses.tool.text,
        data=_stored(data_key(ses.name), stats, volumes),
        compression={"algorithm": "zstd", "level": s.zstd_level},
        encryption={
            "algorithm": "AES-256-GCM" if ctx.key else "none",
            "key_id": ctx.key.key_id if ctx.key else None,
        },
        coldcopy_version=__version__,
        **fields,
    )


def commit(ctx: BackupContext, manifest: Manifest) -> None:
    """Write the manifest (create-only): the commit point.  Only after checking that every object
    it names is in the bucket at the recorded size."""
    problem = stored_problem(ctx.storage, f"backups/{manifest.name}/", manifest.objects())
    if problem:
        raise IntegrityError(
            f"{problem} just before the commit; the backup was not committed",
            "another process removed or changed it; run the backup again",
        )
    try:
        ctx.storage.put_json(manifest_key(manifest.name), manifest.to_dict(), create_only=True)
    except ConflictError:
        # A retried PUT whose first attempt landed answers 412: that is our own manifest.
        stored = ctx.catalog.manifest(manifest.name)
        if stored.data.stored_sha256 != manifest.data.stored_sha256:
            raise


def _globals(ctx: BackupContext, pg: Postgres, name: str) -> tuple[StoredObject | None, str]:
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
    return _stored(globals_key(name), stats), ""


def _record_failure(ctx: BackupContext, name: str, kind: str, exc: BaseException) -> None:
    if isinstance(exc, KeyboardInterrupt):
        message = "interrupted"
    elif isinstance(exc, ColdCopyError):
        message = exc.message
    else:
        message = f"{type(exc).__name__}: {exc}"
    try:
        ctx.catalog.record(
            "backup_failed", name, {"name": name, "kind": kind, "error": redact(message, ctx.settings)[:500]}
        )
    except Exception as rec_exc:  # noqa: BLE001 - the original error matters more
        log.warning("could not record the failure: %s", rec_exc)
