"""The WAL archive: ``wal-push`` (archive_command) and ``wal-fetch`` (restore_command).

Each archived file is compressed and encrypted as one small stream and written create-only to
``wal/<timeline>/<file>``: the stored format of every ColdCopy object (docs/encryption-format.md,
a zstd frame inside the chunked AES-256-GCM container), read back by ``pipeline.Unpacker``.
PostgreSQL may hand us the same file twice (a crash after the upload but before it noted success);
that is fine when the stored content is the same, and a loud error when it is not: two different
files under one name mean two servers archive into the same place, and continuing would corrupt
the archive.  The comparison unpacks the stored object
and compares the raw bytes' SHA-256, so nothing but the object itself is needed.

The fast path for pushing is :mod:`coldcopy.wal.pushd` (a warm daemon) with
:mod:`coldcopy.walclient` (a stdlib-only archive_command); fetching prefetches into
:mod:`coldcopy.wal.spool`.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import zstandard

from coldcopy.context import Context
from coldcopy.core.lsn import ARCHIVE_NAME_RE, WAL_PREFIX, check_archive_name, wal_key
from coldcopy.errors import ConflictError, IntegrityError, NotFoundError
from coldcopy.stream.pipeline import Unpacker, pack_frame
from coldcopy.wal import spool as walspool

log = logging.getLogger(__name__)
WAL_LEVEL = 1  # zstd level for segments: per-segment latency matters more than ~10 % size (bench_pitr)


@dataclass(frozen=True)
class PushResult:
    name: str
    key: str
    raw_size: int
    stored_size: int
    already_archived: bool
    timings: dict[str, float] = field(default_factory=dict)  # seconds: read, pack, put

    def timing_text(self) -> str:
        return ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in self.timings.items())


def unpack(ctx: Context, blob: bytes, key: str) -> bytes:
    """The raw bytes of the stored object ``key`` (IntegrityError if it was stored as another)."""
    unpacker = Unpacker(ctx.key, expect_object=key)
    raw = unpacker.feed(blob)
    unpacker.finish(None)
    return raw


class _Workspace:
    """A read buffer and a zstd context, kept between pushes.

    A fresh 16 MiB buffer and compression context per segment cost more than compressing it (page
    faults on memory that is allocated, touched once and freed: ~10 ms per segment on the bench
    machine).  A warm daemon keeps one workspace per push in flight (16 MiB each, plus the zstd
    context), and a workspace is only ever used by one push at a time.
    """

    def __init__(self) -> None:
        self.buf = bytearray(SEGMENT_BUFFER)
        self.zstd = zstandard.ZstdCompressor(level=WAL_LEVEL, write_checksum=True)

    def read(self, path: Path) -> memoryview:
        """The whole file, in this workspace's buffer (grown for an unusual wal_segment_size)."""
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            if size > len(self.buf):
                self.buf = bytearray(size)
            view, n = memoryview(self.buf), 0
            while n < len(view) and (got := os.readv(fd, [view[n:]])):
                n += got
            if n == len(view) and os.read(fd, 1):
                raise OSError(f"{path} grew while it was being read; PostgreSQL will hand it over again")
            return view[:n]
        finally:
            os.close(fd)


SEGMENT_BUFFER = 16 << 20
MAX_IDLE_WORKSPACES = 2
_workspaces: list[_Workspace] = []
_workspaces_lock = threading.Lock()


@contextlib.contextmanager
def _workspace() -> Iterator[_Workspace]:
    with _workspaces_lock:
        ws = _workspaces.pop() if _workspaces else _Workspace()
    try:
        yield ws
    finally:
        with _workspaces_lock:
            if len(_workspaces) < MAX_IDLE_WORKSPACES:  # a burst of pushes does not stay resident
                _workspaces.append(ws)


def push(ctx: Context, path: Path) -> PushResult:
    """Store one WAL file; returns only once it is stored (or already stored with the same bytes)."""
    name = check_archive_name(path.name)
    key = wal_key(name)
    with _workspace() as ws:
        t0 = time.perf_counter()
        data = ws.read(path)
        t1 = time.perf_counter()
        blob = pack_frame(data, ctx.key, ws.zstd, object_key=key)
        t2 = time.perf_counter()
        try:
            ctx.storage.put_bytes(key, blob, create_only=True)
            timings = {"read": t1 - t0, "pack": t2 - t1, "put": time.perf_counter() - t2}
            return PushResult(name, key, len(data), len(blob), False, timings)
        except ConflictError:
            raw = bytes(data)  # the name is taken: compare the contents (rare; no hurry)
    try:
        stored = unpack(ctx, ctx.storage.get_bytes(key), key)
    except IntegrityError as exc:
        raise IntegrityError(
            f"{key} already exists and cannot be read with the configured key: {exc.message}",
            "another server or another key archives into this prefix; give each cluster its own "
            "COLDCOPY_CLUSTER, and do not delete the stored file",
        ) from None
    if hashlib.sha256(stored).digest() != hashlib.sha256(raw).digest():
        raise ConflictError(
            f"WAL file {name} is already archived with DIFFERENT content "
            f"(stored sha256 {hashlib.sha256(stored).hexdigest()[:16]}…, "
            f"this one {hashlib.sha256(raw).hexdigest()[:16]}…)",
            "two servers (or a restored copy still archiving) write to the same WAL archive; stop "
            "one of them and give each its own COLDCOPY_CLUSTER. Nothing was overwritten.",
        )
    log.info("%s was already archived with the same content", name)
    return PushResult(name, key, len(raw), len(blob), True)


def fetch(ctx: Context, name: str, dest: Path, *, prefetch: int = 0, spool: Path | None = None) -> int:
    """Write archived file ``name`` to ``dest`` atomically; NotFoundError when it is not archived.

    With a ``spool`` and ``prefetch`` > 0 (segments only), the next ``prefetch`` segments are
    fetched in parallel with this one into the spool (best effort: a missing or failing one is
    skipped; the next wal-fetch of it goes to the archive).
    """
    key = wal_key(name)
    wanted = [n for n in walspool.ahead(name, prefetch) if not walspool.has(spool, n)] if spool else []
    with ThreadPoolExecutor(max_workers=1 + len(wanted)) as pool:
        extra = [pool.submit(prefetch_one, ctx, n, spool) for n in wanted if spool is not None]
        try:
            blob = ctx.storage.get_bytes(key)
        except NotFoundError:
            raise NotFoundError(f"{name} is not in the WAL archive") from None
        data = unpack(ctx, blob, key)
        dest = dest if dest.is_absolute() else Path.cwd() / dest
        walspool.write_atomic(dest.parent, dest.name, data)
        for fut in extra:
            fut.result()
    if spool is not None:
        walspool.prune(spool, name)
    return len(data)


def read_archived(ctx: Context, name: str) -> bytes:
    """The raw bytes of one archived file (a timeline history, say); NotFoundError when absent."""
    key = wal_key(name)
    return unpack(ctx, ctx.storage.get_bytes(key), key)


def prefetch_one(ctx: Context, name: str, spool: Path, owner: tuple[int, int] | None = None) -> bool:
    """Fetch ``name`` into the spool (owned by ``owner``); False when absent or failed (best effort)."""
    try:
        key = wal_key(name)
        data = unpack(ctx, ctx.storage.get_bytes(key), key)
        walspool.put(spool, name, data, owner)
    except NotFoundError:
        return False  # not archived (yet): the end of WAL, or a later call fetches it
    except Exception as exc:  # noqa: BLE001 - prefetch is best effort; the real fetch reports errors
        log.debug("prefetch of %s failed: %s", name, exc)
        return False
    return True


def archived_names(ctx: Context, timeline: int | None = None) -> list[tuple[str, float]]:
    """(file name, archived at as a POSIX time) of everything in the archive (or one timeline)."""
    prefix = WAL_PREFIX if timeline is None else f"{WAL_PREFIX}{timeline:08X}/"
    out: list[tuple[str, float]] = []
    for info in ctx.storage.list(prefix):
        name = info.key.rsplit("/", 1)[-1]
        if ARCHIVE_NAME_RE.match(name):
            out.append((name, info.last_modified.timestamp()))
    return out
