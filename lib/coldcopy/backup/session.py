"""The life of every backup, logical or physical (``run_stream_backup``).

Connect (a bad password fails before anything is written), check the client tool against the
server's major version, clean up after killed runs (in-flight markers), claim a unique name, run
the kind's body — which streams into the backup's volumes and commits the manifest — leave
nothing behind on failure and record the failure, then index the backup in the catalog.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from coldcopy import __version__
from coldcopy.backup.inflight import Marker, clean_stale, remove_partial
from coldcopy.config import Settings, redact
from coldcopy.context import Context, open_context
from coldcopy.core.manifest import Manifest, StoredObject, data_key, manifest_key
from coldcopy.core.names import make_name
from coldcopy.core.times import Clock, iso
from coldcopy.errors import ColdCopyError, ConflictError, DatabaseError, IntegrityError
from coldcopy.postgres.client import Postgres
from coldcopy.postgres.tools import ToolVersion, major_of
from coldcopy.storage.volumes import VolumeWriter, stored_problem
from coldcopy.stream.pipeline import StreamStats

log = logging.getLogger(__name__)


@dataclass
class Session:
    """What a backup's body gets: a checked connection and a claimed name."""

    ctx: Context
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


def phase(name: str, since: float) -> None:
    """Log how long a fixed-cost phase of a backup took (``--debug``; scripts/bench_backup.py
    reads these lines)."""
    log.debug("phase %s: %.3f s", name, time.monotonic() - since)


def stored_object(key: str, stats: StreamStats, volumes: list[int] | None = None) -> StoredObject:
    """What the manifest records of a stored payload: its sizes, checksums and volumes."""
    return StoredObject(
        key, stats.stored_size, stats.stored_sha256, stats.raw_size, stats.raw_sha256, tuple(volumes or ())
    )


def run_stream_backup(
    settings: Settings,
    kind: str,
    tool_name: str,
    body: Callable[[Session], Manifest],
    now: Clock,
    *,
    ctx: Context | None = None,
) -> Manifest:
    """The life of every backup, logical or physical: connect, check the tool against the server,
    clean up after killed runs, claim a name, run ``body`` (which commits the manifest), leave
    nothing behind on failure and record it, then index the backup in the catalog."""
    t0 = time.monotonic()
    ctx = ctx or open_context(settings)
    phase("storage client", t0)
    started = now()
    claimed: list[str] = []
    try:
        manifest = _in_session(ctx, kind, tool_name, started, claimed, body)
    except BaseException as exc:
        name = claimed[0] if claimed else str(make_name(kind, settings.db_name, started))
        _record_failure(ctx, name, kind, exc)
        raise
    try:
        t0 = time.monotonic()
        key = ctx.catalog.record(
            "backup", manifest.name, {"name": manifest.name, "entry": manifest.entry().to_dict()}
        )
        log.debug("journal record %s written", key)
        ctx.catalog.refresh()
        phase("catalog", t0)
    except ColdCopyError as exc:
        log.warning(
            "backup %s is stored, but the catalog could not be updated (%s); run `coldcopy catalog rebuild`",
            manifest.name,
            exc.message,
        )
    return manifest


def claim_name(ctx: Context, kind: str, started: datetime) -> tuple[str, Marker]:
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
    ctx: Context,
    kind: str,
    tool_name: str,
    started: datetime,
    claimed: list[str],
    body: Callable[[Session], Manifest],
) -> Manifest:
    t0 = time.monotonic()
    if ctx.settings.encrypted:
        assert ctx.key is not None  # derived here (scrypt), not in the middle of the stream
    phase("key derivation", t0)
    t0 = time.monotonic()
    pg = Postgres(ctx.settings)
    tool = pg.tool(tool_name)
    phase("client tool version", t0)
    t0 = time.monotonic()
    conn = pg.connect()  # fails early on a bad password, before anything is written
    try:
        server_num, server_text = pg.server_version(conn)
        phase("connection", t0)
        if tool.major < major_of(server_num):
            raise DatabaseError(
                f"the local {tool_name} is version {tool.major} but the server runs {server_text}",
                f"install postgresql-client-{major_of(server_num)} (or newer) or point PG_BIN_DIR at it",
            )
        t0 = time.monotonic()
        clean_stale(ctx.storage, ctx.settings.stale_upload_seconds)
        phase("stale uploads", t0)
        t0 = time.monotonic()
        name, marker = claim_name(ctx, kind, started)
        claimed.append(name)
        phase("name claim", t0)
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
        data=stored_object(data_key(ses.name), stats, volumes),
        compression={"algorithm": "zstd", "level": s.zstd_level},
        encryption={
            "algorithm": "AES-256-GCM" if ctx.key else "none",
            "key_id": ctx.key.key_id if ctx.key else None,
        },
        coldcopy_version=__version__,
        **fields,
    )


def commit(ctx: Context, manifest: Manifest) -> None:
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


def _record_failure(ctx: Context, name: str, kind: str, exc: BaseException) -> None:
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
