"""Reading a stored backup back: key confirmation first, then a checked stream."""

from __future__ import annotations

from collections.abc import Callable

from .backup import BackupContext
from .crypto import check_key, read_header
from .errors import IntegrityError, WrongKeyError
from .manifest import Manifest, StoredObject
from .names import validate_name
from .pipeline import Progress, StreamStats, Unpacker, prefetch

HEADER_PROBE = 64 * 1024
CHUNK = 1 << 20


def expected(obj: StoredObject) -> StreamStats:
    return StreamStats(obj.raw_size, obj.raw_sha256, obj.stored_size, obj.stored_sha256)


class BackupReader:
    def __init__(self, ctx: BackupContext, name: str) -> None:
        self.ctx = ctx
        self.name = validate_name(name)
        self.manifest: Manifest = ctx.catalog.manifest(self.name)

    def objects(self) -> list[StoredObject]:
        return [self.manifest.data] + ([self.manifest.globals] if self.manifest.globals else [])

    def confirm(self) -> None:
        """Sizes match and the configured key opens the data — before anything is written anywhere."""
        for obj in self.objects():
            info = self.ctx.storage.head(obj.key)
            if info is None:
                raise IntegrityError(
                    f"{obj.key} is missing from the bucket", "this backup is incomplete; use another backup"
                )
            if info.size != obj.stored_size:
                raise IntegrityError(
                    f"{obj.key} is {info.size} bytes but the manifest says {obj.stored_size}",
                    "the stored backup was altered or truncated; use another backup",
                )
        head = self.ctx.storage.get_bytes(self.manifest.data.key, (0, HEADER_PROBE - 1))
        header = read_header(head)
        want = self.manifest.encryption.get("key_id")
        if header.key_id != want:
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
        """Decrypt and decompress ``obj`` into ``sink``; raises IntegrityError on any mismatch."""
        body = self.ctx.storage.open(obj.key)
        unpacker = Unpacker(self.ctx.key)
        try:
            for chunk in prefetch(body.iter_chunks(CHUNK)):
                raw = unpacker.feed(chunk)
                if raw:
                    sink(raw)
                if progress:
                    progress(unpacker.raw_size, unpacker.stored_size)
            return unpacker.finish(expected(obj))
        finally:
            body.close()

    def read_small(self, obj: StoredObject) -> bytes:
        out = bytearray()
        self.stream(obj, out.extend)
        return bytes(out)
