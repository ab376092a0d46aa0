"""Reading a stored backup back: key confirmation first, then a checked stream."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .backup import BackupContext
from .crypto import check_key, read_header
from .errors import IntegrityError, WrongKeyError
from .manifest import Manifest, StoredObject
from .names import validate_name
from .pipeline import Progress, StreamStats, Unpacker, prefetch
from .volumes import stored_problem

HEADER_PROBE = 64 * 1024
CHUNK = 1 << 20


def expected(obj: StoredObject) -> StreamStats:
    return StreamStats(obj.raw_size, obj.raw_sha256, obj.stored_size, obj.stored_sha256)


class BackupReader:
    def __init__(self, ctx: BackupContext, name: str) -> None:
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
        """Decrypt and decompress ``obj`` into ``sink``; raises IntegrityError on any mismatch.  The
        volumes are read one after another as one stream, so a missing, shortened, reordered or
        swapped volume breaks the frame sequence (docs/encryption-format.md) like a damaged byte.
        The next volume's GET is sent while the current one is read: its latency to the first byte
        (tens of ms on Spaces) hides behind the transfer."""
        opened: list[Any] = []

        def open_body(key: str) -> Any:
            body = self.ctx.storage.open(key)
            opened.append(body)
            return body

        def chunks() -> Iterator[bytes]:
            keys = [key for key, _ in obj.pieces()]
            with ThreadPoolExecutor(1, thread_name_prefix="volume-open") as pool:
                following = pool.submit(open_body, keys[0])
                for i in range(len(keys)):
                    body = following.result()
                    if i + 1 < len(keys):
                        following = pool.submit(open_body, keys[i + 1])
                    yield from body.iter_chunks(CHUNK)
                    body.close()
                    opened.remove(body)

        unpacker = Unpacker(self.ctx.key)
        try:
            for chunk in prefetch(chunks()):
                raw = unpacker.feed(chunk)
                if raw:
                    sink(raw)
                if progress:
                    progress(unpacker.raw_size, unpacker.stored_size)
            return unpacker.finish(expected(obj))
        finally:
            for body in opened:
                body.close()

    def read_small(self, obj: StoredObject) -> bytes:
        out = bytearray()
        self.stream(obj, out.extend)
        return bytes(out)
