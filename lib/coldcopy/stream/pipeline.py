"""The stream pipeline: source → zstd → AEAD → sha256 → volumes in the bucket, and back.

Each stage keeps at most one frame or one volume in memory, so memory is set by frame size and
volume size × volumes in flight, never by the size of the database.  Nothing touches local disk.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any, Protocol, TypeVar

import zstandard

from coldcopy.errors import IntegrityError
from coldcopy.stream.crypto import Decryptor, Encryptor, MasterKey

READ_SIZE = 1 << 20
F_SETPIPE_SZ = 1031  # Linux
Progress = Callable[[int, int], None]  # (raw bytes so far, stored bytes so far)


class Sink(Protocol):
    def write(self, data: bytes | bytearray | memoryview) -> Any: ...


@dataclass(frozen=True)
class StreamStats:
    raw_size: int
    raw_sha256: str
    stored_size: int
    stored_sha256: str


class Packer:
    """Compress, encrypt and hash bytes on their way to a sink.

    Created without a sink, it compresses and holds the compressed bytes (``held``) until
    ``attach`` names the sink, the key and the object: a backup compresses its dump's first bytes
    while its name is claimed and its key derived."""

    def __init__(
        self, sink: Sink | None, key: MasterKey | None, level: int, threads: int = 0, *, object_key: str = ""
    ) -> None:
        self.sink: Sink | None = None
        self._zstd = zstandard.ZstdCompressor(level=level, threads=threads, write_checksum=True).compressobj()
        self._enc: Encryptor | None = None
        self._held = bytearray()  # compressed, before the sink is attached
        self._raw = hashlib.sha256()
        self._stored = hashlib.sha256()
        self.raw_size = 0
        self.stored_size = 0
        if sink is not None:
            self.attach(sink, key, object_key)

    @property
    def held(self) -> int:
        """Compressed bytes waiting for ``attach``."""
        return len(self._held)

    def attach(self, sink: Sink, key: MasterKey | None, object_key: str = "") -> None:
        """From now on, encrypt for ``key`` as ``object_key`` into ``sink``, what was held first."""
        self.sink, self._enc = sink, Encryptor(key, object_key=object_key)
        self._emit(self._enc.header())
        if self._held:
            held, self._held = bytes(self._held), bytearray()
            self._emit(self._enc.update(held))

    def _emit(self, data: bytes) -> None:
        if data:
            assert self.sink is not None
            self._stored.update(data)
            self.stored_size += len(data)
            self.sink.write(data)

    def write(self, data: bytes | memoryview) -> None:
        self._raw.update(data)
        self.raw_size += len(data)
        compressed = self._zstd.compress(data)
        if not compressed:
            return
        if self._enc is None:
            self._held += compressed
        else:
            self._emit(self._enc.update(compressed))

    def close(self) -> StreamStats:
        if self._enc is None:
            raise RuntimeError("Packer.close() before attach()")
        tail = self._zstd.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH)
        self._emit(self._enc.update(tail) + self._enc.finalize())
        return StreamStats(self.raw_size, self._raw.hexdigest(), self.stored_size, self._stored.hexdigest())


#: Where packed bytes go once known: the sink, the key, the object they are written as.
Target = tuple[Sink, MasterKey | None, str]


def read_chunks(source: IO[bytes], size: int = READ_SIZE) -> Iterator[bytes]:
    fd = source.fileno()
    with contextlib.suppress(OSError):  # a 1 MiB pipe: fewer, larger reads; the writer blocks less
        fcntl.fcntl(fd, F_SETPIPE_SZ, size)
    while chunk := os.read(fd, size):
        yield chunk


def pack_stream(
    source: IO[bytes],
    sink: Sink | None,
    key: MasterKey | None,
    level: int,
    progress: Progress | None = None,
    threads: int = 0,
    tap: Callable[[bytes], None] | None = None,
    *,
    object_key: str = "",
    target: Callable[[bool], Target | None] | None = None,
    hold: int = 0,
) -> StreamStats:
    """Read ``source`` to EOF through the packer into ``sink``; ``tap`` sees every raw chunk, in
    order, after it was packed (a backup counts the dump's rows there as they pass).

    The source is drained by its own thread (``prefetch``) so the producer (pg_dump) never waits
    while a chunk is being compressed; zstd and AES release the GIL, so the stages overlap.

    Without a ``sink``, ``target(block)`` names it (with the key and object; ``sink``, ``key`` and
    ``object_key`` are then unused) once it can: asked after each chunk without blocking, which
    answers None while it is not ready, and blocking once ``hold`` compressed bytes are held or the
    source has ended.  Until then the packer holds what it compressed (at most about ``hold``).
    """
    packer = Packer(sink, key, level, threads, object_key=object_key)
    for chunk in prefetch(read_chunks(source)):
        packer.write(chunk)
        if tap:
            tap(chunk)
        if packer.sink is None:
            _attach(packer, target, block=packer.held >= hold)
        if progress:
            progress(packer.raw_size, packer.stored_size)
    if packer.sink is None:
        _attach(packer, target, block=True)
    return packer.close()


def _attach(packer: Packer, target: Callable[[bool], Target | None] | None, *, block: bool) -> None:
    if target is None:
        raise ValueError("pack_stream needs a sink or a target")
    got = target(block)
    if got is not None:
        packer.attach(*got)


def pack_bytes(
    data: bytes, key: MasterKey | None, level: int, *, object_key: str = ""
) -> tuple[bytes, StreamStats]:
    out = bytearray()

    class _Buf:
        def write(self, b: bytes | bytearray | memoryview) -> None:
            out.extend(b)

    packer = Packer(_Buf(), key, level, object_key=object_key)
    packer.write(data)
    stats = packer.close()
    return bytes(out), stats


def pack_frame(
    data: bytes | memoryview, key: MasterKey | None, zstd: zstandard.ZstdCompressor, *, object_key: str = ""
) -> bytes:
    """``data`` already in memory as a stored object, in one shot: the format ``Packer`` writes
    (one zstd frame with its content checksum, in the AEAD container) without the two SHA-256
    passes, for objects whose manifest records none (WAL files: ~14 ms of a segment's push)."""
    enc = Encryptor(key, object_key=object_key)
    return b"".join((enc.header(), enc.update(zstd.compress(data)), enc.finalize()))


class Unpacker:
    """Hash, decrypt and decompress stored bytes; checks sizes and checksums at the end."""

    def __init__(self, key: MasterKey | None, *, expect_object: str | None = None) -> None:
        self._dec = Decryptor(key, expect_object=expect_object)
        self._zstd = zstandard.ZstdDecompressor().decompressobj()
        self._raw = hashlib.sha256()
        self._stored = hashlib.sha256()
        self.raw_size = 0
        self.stored_size = 0

    def feed(self, stored: bytes) -> bytes:
        self._stored.update(stored)
        self.stored_size += len(stored)
        plain = self._dec.update(stored)
        if not plain:
            return b""
        try:
            raw = self._zstd.decompress(plain)
        except zstandard.ZstdError as exc:
            raise IntegrityError(f"the compressed stream is damaged: {exc}") from None
        self._raw.update(raw)
        self.raw_size += len(raw)
        return raw

    @property
    def header_key_id(self) -> str | None:
        """The key id the stream's envelope names (None before its header, or unencrypted)."""
        info = self._dec.header_info
        return info.key_id if info is not None else None

    def finish(self, expected: StreamStats | None) -> StreamStats:
        self._dec.finalize()
        if not self._zstd.eof:
            raise IntegrityError("the compressed stream ends early (truncated backup)")
        stats = StreamStats(self.raw_size, self._raw.hexdigest(), self.stored_size, self._stored.hexdigest())
        if expected is not None:
            check_stats(stats, expected)
        return stats


def check_stats(got: StreamStats, expected: StreamStats) -> None:
    for field in ("stored_size", "stored_sha256", "raw_size", "raw_sha256"):
        if getattr(got, field) != getattr(expected, field):
            raise IntegrityError(
                f"{field} does not match the manifest (expected {getattr(expected, field)}, "
                f"got {getattr(got, field)})",
                "the stored backup was altered or is incomplete; use another backup",
            )


_T = TypeVar("_T")


def prefetch(chunks: Iterator[_T], depth: int = 8) -> Iterator[_T]:
    """Read ``chunks`` in a background thread, at most ``depth`` ahead (overlaps network and CPU;
    whatever work producing an item takes runs in that thread too)."""
    q: queue.Queue[_T | BaseException | None] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: _T | BaseException | None) -> bool:
        """Hand ``item`` over unless the consumer has gone (then it would wait forever)."""
        while not stop.is_set():
            try:
                q.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def pump() -> None:
        try:
            for chunk in chunks:
                if not put(chunk):
                    return
            put(None)
        except BaseException as exc:  # handed to the consumer
            put(exc)
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:  # a generator: its own cleanup runs now, in this thread
                close()

    thread = threading.Thread(target=pump, name="prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
