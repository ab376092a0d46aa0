"""Files restore and verification: a snapshot's objects back into a project's Storage.

``restore_files`` writes each selected object under its bucket and key with its content type,
cache control and user metadata, skipping objects already identical there (same size and MD5),
at most ``upload_concurrency`` objects in flight.  Every byte is authenticated before it is
written: an object up to one part (8 MiB) is unpacked whole and its checksums checked before its
one PUT; a larger one goes up as a multipart upload whose parts are made of authenticated frames,
completed only after the whole content's checksums match (else aborted: nothing appears).  Then
one listing per bucket checks count, sizes and ETags against the index.

``verify_files`` reads every stored content of a snapshot through the same checks.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from coldcopy.backup.files import content_stats, content_stream, in_parallel, read_index, resolve
from coldcopy.backup.reader import finish_checked
from coldcopy.context import Context
from coldcopy.core.files import Content, Entry, etag_md5, select
from coldcopy.errors import ColdCopyError, IntegrityError
from coldcopy.storage.project_files import ObjectMeta, ProjectStorage
from coldcopy.storage.store import ObjectStore
from coldcopy.stream.crypto import MasterKey

log = logging.getLogger(__name__)
PART_SIZE = 8 << 20  # S3's minimum part is 5 MiB


@dataclass
class RestoreReport:
    snapshot: str
    backup: str | None
    selected: int = 0
    restored: int = 0
    skipped: int = 0  # already identical in the target
    bytes_written: int = 0
    buckets_created: list[str] = field(default_factory=list)
    checked: int = 0
    problems: list[str] = field(default_factory=list)
    # storage.objects when the snapshot was taken (None: not checked): rows the files do not match
    rows_without_file: int | None = None
    files_without_row: int | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "ok": self.ok}


def _plain(storage: ObjectStore, content: Content, key: MasterKey | None) -> Iterator[bytes]:
    """The raw bytes of ``content`` in authenticated pieces; raises at the end if its checksums fail."""
    un, chunks = content_stream(storage, content, key)
    try:
        for chunk in chunks:
            raw = un.feed(chunk)
            if raw:
                yield raw
    finally:
        chunks.close()
    finish_checked(storage, un, content.data_key, content_stats(content))


def _multipart_etag(md5s: list[bytes]) -> str:
    return f'"{hashlib.md5(b"".join(md5s), usedforsecurity=False).hexdigest()}-{len(md5s)}"'


def write_object(
    target: ProjectStorage, storage: ObjectStore, key: MasterKey | None, e: Entry, c: Content
) -> str:
    """Write one object (``e``'s bucket and key, with its metadata) from its stored content, every
    byte authenticated first; returns the ETag the target must then list for it."""
    meta = ObjectMeta(c.raw_size, "", "", e.content_type, e.cache_control, dict(e.metadata))
    if c.raw_size <= PART_SIZE:
        data = b"".join(_plain(storage, c, key))  # checked whole before the PUT
        target.put(e.bucket, e.key, data, meta)
        return f'"{hashlib.md5(data, usedforsecurity=False).hexdigest()}"'
    upload = target.start_upload(e.bucket, e.key, meta)
    etags: list[str] = []
    md5s: list[bytes] = []
    pending: list[bytes] = []  # raw pieces of the next part (never more than a part and a frame)
    size = 0

    def send(part: bytes) -> None:
        md5s.append(hashlib.md5(part, usedforsecurity=False).digest())
        etags.append(target.put_part(e.bucket, e.key, upload, len(etags) + 1, part))

    try:
        for raw in _plain(storage, c, key):
            pending.append(raw)
            size += len(raw)
            if size >= PART_SIZE:
                joined = b"".join(pending)
                pending, size = [joined[PART_SIZE:]], size - PART_SIZE
                send(joined[:PART_SIZE])
                del joined
        if size or not etags:
            send(b"".join(pending))
        target.complete_upload(e.bucket, e.key, upload, etags)
    except BaseException:
        try:
            target.abort_upload(e.bucket, e.key, upload)
        except ColdCopyError as exc:
            log.warning("could not abort the upload of %s/%s: %s", e.bucket, e.key[:200], exc.message)
        raise
    return _multipart_etag(md5s)


def restore_files(
    ctx: Context,
    target: ProjectStorage,
    name: str,
    *,
    bucket: str | None = None,
    prefix: str | None = None,
) -> RestoreReport:
    """Restore snapshot ``name`` (or the snapshot of the backup ``name``) into ``target``."""
    storage = ctx.storage
    snap, commit = resolve(storage, name)
    index = read_index(storage, snap, ctx.key, commit)
    chosen = select(index.entries, bucket, prefix)
    report = RestoreReport(
        snap,
        index.backup,
        selected=len(chosen),
        rows_without_file=commit.get("rows_without_file"),
        files_without_row=commit.get("files_without_row"),
    )
    buckets = sorted({e.bucket for e in chosen})
    for b in buckets:
        if target.ensure_bucket(b):
            report.buckets_created.append(b)
    there = {(o.bucket, o.key): o for b in buckets for o in target.listing(b)}
    todo: list[Entry] = []
    for e in chosen:
        have = there.get((e.bucket, e.key))
        c = index.contents[e.content]
        if have is not None and have.size == c.raw_size and etag_md5(have.etag) == c.raw_md5:
            report.skipped += 1
        else:
            todo.append(e)

    def one(e: Entry) -> tuple[Entry, str]:
        return e, write_object(target, storage, ctx.key, e, index.contents[e.content])

    expected: dict[tuple[str, str], str] = {}
    for e, etag in in_parallel(one, todo, ctx.settings.upload_concurrency):
        expected[(e.bucket, e.key)] = etag
        report.restored += 1
        report.bytes_written += e.size
    # The check: every selected object is there, with its size and the ETag of its bytes.
    now_there = {(o.bucket, o.key): o for b in buckets for o in target.listing(b)}
    for e in chosen:
        c = index.contents[e.content]
        have = now_there.get((e.bucket, e.key))
        want = expected.get((e.bucket, e.key), f'"{c.raw_md5}"')
        if have is None:
            report.problems.append(f"{e.bucket}/{e.key[:200]} is missing after the restore")
        elif have.size != c.raw_size or have.etag != want:
            report.problems.append(f"{e.bucket}/{e.key[:200]} differs from the snapshot after the restore")
        else:
            report.checked += 1
    return report


def verify_files(ctx: Context, name: str) -> dict[str, Any]:
    """Read every stored content of a snapshot: each authenticates and matches the index."""
    storage = ctx.storage
    snap, commit = resolve(storage, name)
    index = read_index(storage, snap, ctx.key, commit)
    damaged: dict[str, str] = {}
    for c in index.contents.values():
        md5 = hashlib.md5(usedforsecurity=False)
        try:
            for raw in _plain(storage, c, ctx.key):
                md5.update(raw)
            if c.raw_md5 and md5.hexdigest() != c.raw_md5:
                raise IntegrityError("its MD5 does not match the index")
        except ColdCopyError as exc:
            damaged[c.id] = exc.message
    objects = [f"{e.bucket}/{e.key}" for e in index.entries if e.content in damaged]
    return {
        "snapshot": snap,
        "ok": not damaged,
        "contents": len(index.contents),
        "objects": len(index.entries),
        "damaged_contents": damaged,
        "damaged_objects": objects[:100],
    }
