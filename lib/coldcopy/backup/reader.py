"""Reading a stored backup back: key confirmation first, then a checked stream (and a base
backup's tar, read from that stream)."""

from __future__ import annotations

import contextlib
import os
import tarfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace

from coldcopy.context import Context
from coldcopy.core.manifest import Manifest, StoredObject
from coldcopy.core.names import validate_name
from coldcopy.errors import IntegrityError, WrongKeyError
from coldcopy.storage.rekeys import read_rewrapped
from coldcopy.storage.store import ObjectStore
from coldcopy.storage.volumes import read_volumes, stored_problem
from coldcopy.stream.crypto import check_key, read_header
from coldcopy.stream.pipeline import Progress, StreamStats, Unpacker, check_stats, prefetch

HEADER_PROBE = 64 * 1024
CHUNK = 1 << 20


def expected(obj: StoredObject) -> StreamStats:
    return StreamStats(obj.raw_size, obj.raw_sha256, obj.stored_size, obj.stored_sha256)


def finish_checked(storage: ObjectStore, unpacker: Unpacker, stream: str, want: StreamStats) -> StreamStats:
    """Finish ``unpacker`` (fed the whole stream named ``stream``) against ``want``, the checksums
    the stream was written with, as its create-only record keeps them (a manifest, a change batch's
    record, a files snapshot's commit or content record).  A key rotation rewrites only the
    stream's header, so a stream it re-wrapped matches instead the checksum of the re-wrap record
    of the key id its envelope names (``storage/rekeys.py``); IntegrityError on any other mismatch.
    Every reader of a checksummed stream finishes through here."""
    got = unpacker.finish(None)
    key_id = unpacker.header_key_id
    if got.stored_sha256 != want.stored_sha256 and key_id is not None:
        rec = read_rewrapped(storage, key_id, stream)
        if rec is not None:
            want = replace(want, stored_sha256=rec.stored_sha256)
    check_stats(got, want)
    return got


class BackupReader:
    def __init__(self, ctx: Context, name: str) -> None:
        self.ctx = ctx
        self.name = validate_name(name)
        self.manifest: Manifest = ctx.catalog.manifest(self.name)

    def confirm(self) -> None:
        """Every object is there at its size and the configured key opens the data — before anything
        is written anywhere."""
        problem = stored_problem(self.ctx.storage, f"backups/{self.name}/", self.manifest.objects())
        if problem:
            raise IntegrityError(problem, "this backup is incomplete or was altered; use another backup")
        first = self.manifest.data.pieces()[0][0]
        head = self.ctx.storage.get_bytes(first, (0, HEADER_PROBE - 1))
        header = read_header(head)
        want = self.manifest.encryption.get("key_id")
        if header.key_id != want and (
            header.key_id is None
            or read_rewrapped(self.ctx.storage, header.key_id, self.manifest.data.key) is None
        ):
            raise IntegrityError(
                f"the stored data was written with key id {header.key_id}, but the manifest says {want}",
                "the backup's objects were mixed up",
            )
        try:
            check_key(header, self.ctx.key)
        except WrongKeyError:
            raise
        except IntegrityError as exc:
            raise WrongKeyError(exc.message, exc.hint) from None

    def stream(
        self, obj: StoredObject, sink: Callable[[bytes], object], progress: Progress | None = None
    ) -> StreamStats:
        """Decrypt and decompress ``obj`` into ``sink``; raises IntegrityError on any mismatch.  The
        volumes are read as one stream, so a missing, shortened, reordered or swapped volume
        breaks the frame sequence (docs/encryption-format.md) like a damaged byte."""
        unpacker = Unpacker(self.ctx.key, expect_object=obj.key)
        for chunk in prefetch(read_volumes(self.ctx.storage, obj, CHUNK)):
            raw = unpacker.feed(chunk)
            if raw:
                sink(raw)
            if progress:
                progress(unpacker.raw_size, unpacker.stored_size)
        return finish_checked(self.ctx.storage, unpacker, obj.key, expected(obj))

    def read_small(self, obj: StoredObject) -> bytes:
        out = bytearray()
        self.stream(obj, out.extend)
        return bytes(out)


@contextlib.contextmanager
def open_tar(reader: BackupReader) -> Iterator[tarfile.TarFile]:
    """The backup's tar in stream mode (``r|``), decrypted and checked while it is read.

    The checked stream (``reader.stream``) runs in a thread into a pipe; an integrity error there
    surfaces when the tar is closed, even if the tar itself looked complete.
    """
    rfd, wfd = os.pipe()
    failure: list[BaseException] = []

    def pump() -> None:
        try:
            with open(wfd, "wb", buffering=0) as out:
                reader.stream(reader.manifest.data, out.write)
        except BaseException as exc:  # handed to the reader side
            failure.append(exc)

    thread = threading.Thread(target=pump, name="tar-stream", daemon=True)
    thread.start()
    src = open(rfd, "rb")  # noqa: SIM115 - closed in every path below, before the thread is joined
    try:
        with tarfile.open(fileobj=src, mode="r|") as tar:
            yield tar
        while src.read(1 << 20):  # the tail after the end-of-archive blocks is checked too
            pass
    except BaseException as exc:
        src.close()
        thread.join(timeout=60)
        if failure and not isinstance(failure[0], BrokenPipeError):
            raise failure[0] from None  # the stream's own error explains a tar that ends early
        if isinstance(exc, tarfile.TarError):
            raise IntegrityError(
                f"the base backup's tar cannot be read: {exc}", "the backup cannot be used; use another one"
            ) from None
        raise
    src.close()
    thread.join(timeout=60)
    if failure and not isinstance(failure[0], BrokenPipeError):
        raise failure[0]
