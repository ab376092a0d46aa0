"""A backup's payload stored as volumes: ``<key>.000000``, ``<key>.000001``, … in stream order.

The stored stream (docs/encryption-format.md) is the concatenation of the volumes; each volume is
one create-only PUT.  Compared with one multipart object this needs no completion step, so a
backup is stored when its last byte is: S3 servers that assemble a completed upload by copying
every part (moto does, about 2 s per 270 MB) no longer add that to every backup.  It also keeps
S3's 10,000-part limit out of the picture, lets a reader start on a volume without the rest, and
an interrupted upload leaves only whole objects, which cleanup deletes like any other.

``VolumeWriter`` holds one volume filling plus at most ``concurrency`` being sent: memory is
volume size × (concurrency + 1).  The volume size doubles every 1,000 volumes (8 GB at the default
8 MB), so a multi-terabyte backup stays at a few thousand objects; memory then grows with it, to
2 × 64 MB around 100 GB stored.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from coldcopy.core.manifest import StoredObject, volume_key
from coldcopy.errors import ConflictError, IntegrityError, StorageError
from coldcopy.storage.store import ObjectStore, ReadInterrupted

log = logging.getLogger(__name__)

DOUBLE_EVERY = 1000  # volumes between doublings of the volume size
READ_ATTEMPTS = 4  # reads of one volume that may break in a row, without progress, before giving up


def stored_problem(storage: ObjectStore, prefix: str, objects: Iterable[StoredObject]) -> str | None:
    """The first object of ``objects`` (all under ``prefix``) that is missing from the bucket or not
    its recorded size, described; None when all are there.  One listing, however many volumes;
    a key the listing lacks is asked for directly (a store's index may trail a PUT that just
    returned)."""
    found = {o.key: o.size for o in storage.list(prefix)}
    for obj in objects:
        for key, size in obj.pieces():
            if key not in found:
                info = storage.head(key)
                if info is None:
                    return f"{key} is missing from the bucket"
                found[key] = info.size
            if found[key] != size:
                return f"{key} is {found[key]} bytes but the manifest says {size}"
    return None


class VolumeWriter:
    """Cuts a byte stream into volumes and stores each with one create-only PUT, in parallel."""

    def __init__(self, storage: ObjectStore, key: str, *, volume_size: int, concurrency: int) -> None:
        self.storage, self.key, self.volume_size = storage, key, volume_size
        self._chunks: list[bytes] = []
        self._pending = 0
        self._sent: list[Future[int]] = []
        self._concurrency = concurrency
        self._slots = threading.BoundedSemaphore(concurrency)
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="volume")
        self._closed = False
        self._error: BaseException | None = None
        self.bytes_written = 0

    def _target(self) -> int:
        return self.volume_size << min(len(self._sent) // DOUBLE_EVERY, 10)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        self._chunks.append(bytes(data))
        self._pending += len(data)
        self.bytes_written += len(data)
        if self._pending >= self._target():
            self._cut()

    def _cut(self) -> None:
        body = b"".join(self._chunks)
        self._chunks.clear()
        self._pending = 0
        try:
            self._submit(body)
        except BaseException:
            self.abort()  # a volume failed for good: remove what was stored
            raise

    def _submit(self, body: bytes) -> None:
        self._raise_failed()
        # Bounded in bytes, not volumes: a volume of k × volume_size holds k slots, so the bytes in
        # flight stay under volume_size × concurrency however large volumes grow.  One producer
        # thread takes the slots, so taking several in a row cannot deadlock.
        weight = min(self._concurrency, max(1, -(-len(body) // self.volume_size)))
        for _ in range(weight):
            self._slots.acquire()
        key = volume_key(self.key, len(self._sent))

        def send() -> int:
            try:
                self._put(key, body)
                return len(body)
            except BaseException as exc:
                if self._error is None:  # the first failure, raised to the producer at its next write
                    self._error = exc
                raise
            finally:
                for _ in range(weight):
                    self._slots.release()

        self._sent.append(self._pool.submit(send))

    def _put(self, key: str, body: bytes) -> None:
        for attempt in range(4):
            try:
                self.storage.put_bytes(key, body, create_only=True)
                return
            except ConflictError:
                # A retried PUT whose first attempt landed answers 412: fine if that object is this
                # one (a single PUT's ETag is the MD5 of its body).  A 409 (the first attempt still
                # in progress) may leave nothing to see yet: look again shortly.
                info = self.storage.head(key)
                if info is None:
                    if attempt < 3:
                        time.sleep(0.5 * 2**attempt)
                    continue
                if info.etag.strip('"') == hashlib.md5(body, usedforsecurity=False).hexdigest():
                    return
                raise IntegrityError(
                    f"{key} already exists with other content",
                    "another process wrote under this backup's name; run the backup again",
                ) from None
        raise StorageError(
            f"writing {key} still conflicted with a write in progress after 4 attempts",
            "run the backup again; if it keeps happening, check for another process using this bucket",
        )

    def _raise_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def complete(self) -> list[int]:
        """Store the last volume and wait for all of them; returns each volume's size."""
        try:
            if self._chunks or not self._sent:
                self._cut()
            sizes = [f.result() for f in self._sent]
            self._closed = True
            log.debug("%d volumes of %s stored", len(sizes), self.key)
            return sizes
        except BaseException:
            self.abort()
            raise
        finally:
            self._pool.shutdown(wait=False)

    def abort(self) -> None:
        """Stop and delete every volume stored so far (best effort: cleanup catches the rest)."""
        if self._closed:
            return
        self._closed = True
        for fut in self._sent:
            fut.cancel()
        self._pool.shutdown(wait=True, cancel_futures=True)
        stored = [
            volume_key(self.key, i)
            for i, fut in enumerate(self._sent)
            if not fut.cancelled() and fut.exception() is None
        ]
        self._chunks.clear()
        if stored:
            try:
                self.storage.delete(stored)
            except Exception as exc:  # noqa: BLE001 - the original error matters more
                log.warning("could not delete the stored volumes of %s: %s", self.key, exc)


def read_volumes(storage: ObjectStore, obj: StoredObject, chunk_size: int) -> Iterator[bytes]:
    """The stored stream of ``obj``: its volumes (or its one object) in order, in chunks.

    The next volume's GET is sent while the current one is read, so its latency to the first byte
    (tens of ms on Spaces) hides behind the transfer.  A connection that breaks or stalls midway
    is picked up where it stopped (a ranged GET), so a long restore survives a network blip, and a
    pre-opened response the server dropped while it waited costs one more request.  Closing the
    generator closes every response it opened.
    """
    pieces = obj.pieces()
    pool = ThreadPoolExecutor(1, thread_name_prefix="volume-open")
    following: Future[Any] = pool.submit(storage.open, pieces[0][0])
    body: Any = None
    try:
        for i, (key, size) in enumerate(pieces):
            body = following.result()
            if i + 1 < len(pieces):
                following = pool.submit(storage.open, pieces[i + 1][0])
            done = failures = 0
            while True:
                at = done
                try:
                    for chunk in body.iter_chunks(chunk_size):
                        done += len(chunk)
                        yield chunk
                    break
                except ReadInterrupted as exc:
                    body.close()
                    # Attempts count per stall: a read that moved on since the last break starts over.
                    failures = 1 if done > at else failures + 1
                    if failures >= READ_ATTEMPTS or done >= size:
                        raise StorageError(
                            f"reading {key} failed at byte {done} of {size} ({exc.cause or 'broken'}), "
                            f"{failures} attempts",
                            "check the network to the storage endpoint and run the command again",
                        ) from None
                    log.warning(
                        "reading %s broke at byte %d (%s); resuming", key, done, exc.cause or "broken"
                    )
                    body = storage.open(key, start=done)
            body.close()
            body = None
            if done != size:  # a response without Content-Length that ended early, or a bigger object
                raise StorageError(f"{key} gave {done} bytes, but the manifest says {size}")
    finally:
        if body is not None:
            body.close()
        if not following.cancel():
            following.add_done_callback(lambda f: f.exception() is None and f.result().close())
        pool.shutdown(wait=False)
