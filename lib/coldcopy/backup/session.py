"""The life of every backup, logical or physical (``run_stream_backup``).

Connect (a bad password fails before anything is streamed), check the client tool against the
server's major version, run the kind's body — which starts its tool, then streams into the
backup's volumes and commits the manifest — leave nothing behind on failure and record the
failure, then index the backup in the catalog.  Meanwhile, in threads (``Start``), the bucket's
side gets ready: the key derived, the storage client set up, killed runs cleaned up (in-flight
markers) and a unique name claimed; the body waits for it only when its stream's first bytes are
there to be stored.  What each part costs: ``phase`` lines of ``--debug`` (scripts/bench_backup.py).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from coldcopy import __version__
from coldcopy.backup.inflight import Marker, clean_stale, remove_partial
from coldcopy.config import Settings, redact
from coldcopy.context import Context, open_context, settings_key
from coldcopy.core.manifest import Manifest, StoredObject, data_key, manifest_key
from coldcopy.core.names import make_name
from coldcopy.core.times import Clock, iso
from coldcopy.errors import ColdCopyError, ConflictError, DatabaseError, IntegrityError
from coldcopy.postgres.client import Postgres
from coldcopy.postgres.tools import ToolVersion, major_of
from coldcopy.storage.volumes import VolumeWriter, stored_problem
from coldcopy.stream.crypto import MasterKey
from coldcopy.stream.pipeline import StreamStats

log = logging.getLogger(__name__)
T = TypeVar("T")


class Start:
    """The bucket's side of a backup's start and its key, made ready in threads while the database's
    side starts: the key derived (scrypt, twice, one after the other: its id and this process's
    key-encryption key; scrypt releases the GIL), and, from ``begin()``, the storage client
    (botocore's import and set-up), then at once ``put_right`` (an interrupted restore of DB_NAME),
    killed backups cleaned up and the name claimed, then the catalog read ahead for its update at
    the end.  Nothing is written under the backup's name before the name is claimed, and nothing is
    stored before ``wait()``.

    The key's derivation starts at once.  A logical backup begins the bucket's side once pg_dump
    runs (pg_dump's own start-up, its catalog reads, takes ~50 ms before its first byte): begun
    before the connection, botocore's import held the GIL while the connection and the snapshot
    waited for it (~35 ms more before pg_dump started).  A base backup, whose label is the name,
    begins it at once.  Whatever needs the bucket's side (``wait``, ``is_ready``, ``background``,
    ``settled``) begins it if nothing did."""

    def __init__(
        self,
        settings: Settings,
        kind: str,
        started: datetime,
        ctx: Context | None,
        put_right: Callable[[Context], list[str]] | None,
        *,
        at_once: bool = True,
    ) -> None:
        self.settings, self.kind, self.started = settings, kind, started
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="backup-start")
        self._tasks: list[Future[Any]] = []  # the body's (``background``)
        self._ctx, self._put_right_fn = ctx, put_right
        self._key = self._pool.submit(self._derive_key, ctx)
        self._bucket: Future[tuple[Context, str, Marker]] | None = None
        self._catalog: Future[object] | None = None
        self._ready: tuple[Context, str] | None = None
        self._lock = threading.Lock()
        self._opened = ctx is None  # the context is ours to give the derived key
        self.put_right_done: list[str] = []
        if at_once:
            self.begin()

    def begin(self) -> Future[tuple[Context, str, Marker]]:
        """Start the bucket's side (once); its future.  Once begun it answers without the lock,
        which ``wait()`` holds while it waits: ``is_ready()``, asked after every chunk of the dump,
        must never wait behind it."""
        bucket = self._bucket
        if bucket is not None:
            return bucket
        with self._lock:
            if self._bucket is None:
                self._bucket = self._pool.submit(self._bucket_side, self._ctx, self._put_right_fn)
            return self._bucket

    def _derive_key(self, ctx: Context | None) -> MasterKey | None:
        t0 = time.monotonic()
        key = ctx.key if ctx is not None else settings_key(self.settings)
        if key is not None:
            key.ready()  # this process's key-encryption key, derived now rather than at the stream's start
        phase("key derivation (in the background)", t0)
        return key

    def _bucket_side(
        self, ctx: Context | None, put_right: Callable[[Context], list[str]] | None
    ) -> tuple[Context, str, Marker]:
        t0 = time.monotonic()
        ctx = ctx or open_context(self.settings)
        phase("storage client (in the background)", t0)
        # Three independent parts, at once (one to three requests each; a killed backup's marker is
        # stale, never this one's: its process is alive and it was just written).
        side = [self._pool.submit(self._clean_stale, ctx)]
        if put_right is not None:
            side.append(self._pool.submit(self._put_right, put_right, ctx))
        t0 = time.monotonic()
        try:
            name, marker = claim_name(ctx, self.kind, self.started)
        finally:
            done = wait(side)
        phase("name claim (in the background)", t0)
        try:
            for f in done.done:
                f.result()
        except BaseException:
            _remove_marker(marker)
            raise
        self._catalog = self._pool.submit(ctx.catalog.read_cached)  # what the update at the end reads
        return ctx, name, marker

    def _clean_stale(self, ctx: Context) -> None:
        t0 = time.monotonic()
        clean_stale(ctx.storage, self.settings.stale_upload_seconds)
        phase("stale uploads (in the background)", t0)

    def _put_right(self, put_right: Callable[[Context], list[str]], ctx: Context) -> None:
        t0 = time.monotonic()
        self.put_right_done = put_right(ctx)
        phase("interrupted restores (in the background)", t0)

    def background(self, fn: Callable[[], T]) -> Future[T]:
        """``fn()`` in one of the start's threads (a backup's roles, while its dump streams); a
        failed backup waits for it before it removes what was stored."""
        self.begin()
        task = self._pool.submit(fn)
        self._tasks.append(task)
        return task

    def is_ready(self) -> bool:
        """Whether ``wait()`` would answer (or raise) at once."""
        return self.begin().done() and self._key.done()

    def wait(self) -> tuple[Context, str]:
        """The context (with the derived key) and the claimed name, once both are ready; raises
        what went wrong on the bucket's side."""
        bucket = self.begin()
        with self._lock:
            if self._ready is None:
                ctx, name, _ = bucket.result()
                key = self._key.result()
                if self._opened and key is not None:
                    ctx.key = key
                self._ready = ctx, name
            return self._ready

    def settled(self) -> tuple[Context | None, str | None, Marker | None]:
        """After a failure: what the bucket's side got to (a context, a claimed name and its
        marker), once it and the body's tasks have stopped; Nones for what it did not get to."""
        bucket = self.begin()  # a failure before it began still needs the bucket, to be recorded
        wait([self._key, *self._tasks])
        try:
            ctx, name, marker = bucket.result()
        except BaseException:  # noqa: BLE001 - the backup's own error is the one reported
            return None, None, None
        return ctx, name, marker

    def catalog_read(self) -> None:
        """Wait for the catalog's read-ahead (its errors are the update's to meet again)."""
        if self._catalog is not None:
            with contextlib.suppress(Exception):
                self._catalog.result()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


@dataclass
class Session:
    """What a backup's body gets: a checked connection, and (``ctx``, ``name``: each waits for the
    bucket's side, so read them once the dump has started) the context and the claimed name."""

    start: Start
    pg: Postgres
    conn: Any
    started: datetime
    server: tuple[int, str]  # server_version_num, server_version
    tool: ToolVersion

    @property
    def settings(self) -> Settings:
        return self.start.settings

    @property
    def ctx(self) -> Context:
        return self.start.wait()[0]

    @property
    def name(self) -> str:
        return self.start.wait()[1]

    def data_writer(self) -> VolumeWriter:
        """Where the backup's stream goes: its volumes under ``backups/<name>/data``."""
        s = self.settings
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
    put_right: Callable[[Context], list[str]] | None = None,
    at_once: bool = True,
) -> Manifest:
    """The life of every backup, logical or physical: connect and check the tool against the server
    while the bucket's side starts in the background (``Start``; ``at_once=False``: once the body
    begins it, when its tool runs), run ``body`` (which starts its tool, waits for the name and
    commits the manifest), leave nothing behind on failure and record it, then index the backup in
    the catalog."""
    start = Start(settings, kind, now(), ctx, put_right, at_once=at_once)
    try:
        try:
            manifest = _in_session(start, tool_name, body)
        except BaseException as exc:
            _failed(start, exc)
            raise
        ctx = start.wait()[0]
        try:
            t0 = time.monotonic()
            start.catalog_read()
            key = ctx.catalog.record(
                "backup", manifest.name, {"name": manifest.name, "entry": manifest.entry().to_dict()}
            )
            log.debug("journal record %s written", key)
            ctx.catalog.refresh()
            phase("catalog", t0)
        except ColdCopyError as exc:
            log.warning(
                "backup %s is stored, but the catalog could not be updated (%s); "
                "run `coldcopy catalog rebuild`",
                manifest.name,
                exc.message,
            )
        return manifest
    finally:
        start.close()


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


def _in_session(start: Start, tool_name: str, body: Callable[[Session], Manifest]) -> Manifest:
    t0 = time.monotonic()
    pg = Postgres(start.settings)
    tool = pg.tool(tool_name)
    phase("client tool version", t0)
    t0 = time.monotonic()
    conn = _connect(pg, start)  # fails early on a bad password, before anything is streamed
    try:
        server_num, server_text = pg.server_version(conn)
        phase("connection", t0)
        if tool.major < major_of(server_num):
            raise DatabaseError(
                f"the local {tool_name} is version {tool.major} but the server runs {server_text}",
                f"install postgresql-client-{major_of(server_num)} (or newer) or point PG_BIN_DIR at it",
            )
        manifest = body(Session(start, pg, conn, start.started, (server_num, server_text), tool))
    finally:
        with contextlib.suppress(Exception):  # the backup's outcome is decided; closing can't change it
            conn.close()
    _, _, marker = start.settled()
    if marker is not None:
        _remove_marker(marker)
    return manifest


def _connect(pg: Postgres, start: Start) -> Any:
    """The connection to DB_NAME; when it fails, and the bucket's side then finds that a killed
    restore had renamed DB_NAME aside and puts it back, connect again."""
    try:
        return pg.connect()
    except DatabaseError:
        start.settled()
        if not start.put_right_done:
            raise
        return pg.connect()


def _remove_marker(marker: Marker) -> None:
    try:
        marker.remove()
    except ColdCopyError as exc:
        log.warning("could not remove the in-flight marker: %s", exc.message)


def _failed(start: Start, exc: BaseException) -> None:
    """A backup that did not finish leaves nothing behind (its objects, its marker) and is recorded
    as failed, as far as the bucket's side got (once it has stopped)."""
    ctx, name, marker = start.settled()
    if ctx is None:
        return
    if name is not None:
        try:
            remove_partial(ctx.storage, name)
        except ColdCopyError as rm_exc:
            log.warning("could not remove the partial objects of %s: %s", name, rm_exc.message)
    if marker is not None:
        _remove_marker(marker)
    _record_failure(
        ctx, name or str(make_name(start.kind, start.settings.db_name, start.started)), start.kind, exc
    )


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
