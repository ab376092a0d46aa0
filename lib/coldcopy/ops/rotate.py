"""Key rotation: re-wrap the data key of every stored stream under a new passphrase
(docs/key-rotation.md).

No data is re-encrypted: a stream's frames are bound to its params, not to its key envelope
(docs/encryption-format.md §4), so only the header at the start of the stream (the first volume of
a backup, change batch or files content, or the one object of a WAL file, files index or erasure
record) is rewritten, at the same length.  The order per stream:

1. every frame is authenticated under the old key while the SHA-256 of the stream with the new
   header is computed;
2. a checksummed stream (a backup's, a change batch's, a files snapshot's index or content) gets a
   create-only re-wrap record (``storage/rekeys.py``) with that checksum and the new header: the
   record that checksums it stays as written, and readers (``backup.reader.finish_checked``) take
   the checksum from the re-wrap record of the key id the stream's envelope names;
3. the object holding the header is replaced by the same bytes behind the new header (one PUT:
   readers see the old or the new object, both valid).

The state of a rotation is the bucket itself (each stream's envelope names its key, and the records
are create-only), so an interrupted rotation is resumed by running it again.  Before it reports done,
every stream is read in full under the new key alone and checked against its checksum.  A stream
under a key that none of the given keys holds is refused before anything is written.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from coldcopy.backup.files import committed, stored_content
from coldcopy.backup.reader import expected, finish_checked
from coldcopy.config import Settings
from coldcopy.context import Context
from coldcopy.core.changes import BATCHES_PREFIX
from coldcopy.core.erasure import LEDGER_PREFIX
from coldcopy.core.files import CONTENT_PREFIX, index_key
from coldcopy.core.keys import KEYS_STATE_KEY, keys_state
from coldcopy.core.lsn import WAL_PREFIX
from coldcopy.core.manifest import StoredObject
from coldcopy.core.times import iso
from coldcopy.errors import ColdCopyError, ConflictError, IntegrityError, WrongKeyError
from coldcopy.pausepoints import pause_point
from coldcopy.storage.rekeys import Rewrapped, read_rewrapped, rekey_key
from coldcopy.storage.volumes import read_volumes
from coldcopy.stream.crypto import (
    ALG_NONE,
    HEADER_MAX,
    HeaderInfo,
    MasterKey,
    check_key,
    read_header,
    rewrap_header,
)
from coldcopy.stream.pipeline import Unpacker

log = logging.getLogger(__name__)
CHUNK = 1 << 20


@dataclass(frozen=True)
class Stream:
    """One stored stream: checksummed by a create-only record (a backup's data or globals, a change
    batch, a files snapshot's index or content), or not (a WAL file, an erasure record)."""

    kind: str  # "backup" | "change" | "files-index" | "files-content" | "wal" | "erasure"
    obj: StoredObject  # key = the stream's name; pieces() = the objects holding it

    @property
    def checksummed(self) -> bool:
        return bool(self.obj.stored_sha256)


@dataclass
class RotationReport:
    target_key_id: str
    dry_run: bool
    streams: int = 0
    rewrapped: list[str] = field(default_factory=list)
    already: int = 0
    unencrypted: int = 0
    proved: int = 0
    by_key_id: dict[str, int] = field(default_factory=dict)  # before the rotation

    def to_dict(self) -> dict[str, Any]:
        return {
            "target_key_id": self.target_key_id,
            "dry_run": self.dry_run,
            "streams": self.streams,
            "rewrapped": len(self.rewrapped),
            "rewrapped_streams": self.rewrapped,
            "already_under_target": self.already,
            "unencrypted": self.unencrypted,
            "proved": self.proved,
            "by_key_id_before": self.by_key_id,
        }


def streams(ctx: Context) -> list[Stream]:
    """Every encrypted stream ColdCopy stores: each backup's data and globals, each change batch,
    each files snapshot's index and each stored files content, each WAL file and erasure record."""
    out: list[Stream] = []
    for name in sorted(ctx.catalog.read().backups):
        m = ctx.catalog.manifest(name)
        out.extend(Stream("backup", o) for o in (m.data, m.globals) if o is not None)
    for info in ctx.storage.list(BATCHES_PREFIX):
        if info.key.endswith(".json"):
            out.append(Stream("change", StoredObject.from_dict(ctx.storage.get_json(info.key)["data"])))
    for snap, commit in committed(ctx.storage).items():
        i = commit["index"]
        obj = StoredObject(
            index_key(snap),
            int(i["stored_size"]),
            str(i["stored_sha256"]),
            int(i["raw_size"]),
            str(i["raw_sha256"]),
        )
        out.append(Stream("files-index", obj))
    for info in ctx.storage.list(CONTENT_PREFIX):
        if info.key.endswith("/meta.json"):
            c = stored_content(ctx.storage, info.key[len(CONTENT_PREFIX) :].split("/")[0])
            if c is not None:
                obj = StoredObject(
                    c.data_key, c.stored_size, c.stored_sha256, c.raw_size, c.raw_sha256, c.volumes
                )
                out.append(Stream("files-content", obj))
    for prefix, kind in ((WAL_PREFIX, "wal"), (LEDGER_PREFIX, "erasure")):
        for info in ctx.storage.list(prefix):
            if kind == "wal" or info.key.endswith(".json.zst"):
                out.append(Stream(kind, StoredObject(info.key, info.size, "", 0, "")))
    return out


def _header(ctx: Context, s: Stream) -> HeaderInfo:
    first, size = s.obj.pieces()[0]
    return read_header(ctx.storage.get_bytes(first, (0, min(HEADER_MAX, size) - 1)))


def key_census(ctx: Context) -> dict[str, dict[str, int]]:
    """Streams per key id (``"none"``: unencrypted) and kind, read from their headers."""
    census: dict[str, Counter[str]] = {}
    for s in streams(ctx):
        kid = _header(ctx, s).key_id or "none"
        census.setdefault(kid, Counter())[s.kind] += 1
    return {k: dict(v) for k, v in sorted(census.items())}


def _read_all(
    ctx: Context, s: Stream, key: MasterKey, new_header: bytes | None = None
) -> tuple[str, str | None]:
    """Authenticate every frame of ``s`` under ``key``; the SHA-256 of the stream as stored, and
    (with ``new_header``) of the stream with that header instead of its own."""
    unpacker = Unpacker(key, expect_object=s.obj.key)
    swapped = hashlib.sha256(new_header) if new_header is not None else None
    skip = len(new_header or b"")  # stored bytes of the old header (the same length) still to skip
    for chunk in read_volumes(ctx.storage, s.obj, CHUNK):
        unpacker.feed(chunk)
        if swapped is not None:
            swapped.update(memoryview(chunk)[skip:])
            skip = max(0, skip - len(chunk))
    stats = unpacker.finish(None)
    return stats.stored_sha256, swapped.hexdigest() if swapped is not None else None


def _check_proof(ctx: Context, s: Stream, target: MasterKey) -> None:
    unpacker = Unpacker(target, expect_object=s.obj.key)
    for chunk in read_volumes(ctx.storage, s.obj, CHUNK):
        unpacker.feed(chunk)
    if not s.checksummed:
        unpacker.finish(None)
        return
    try:
        finish_checked(ctx.storage, unpacker, s.obj.key, expected(s.obj))
    except IntegrityError as exc:
        raise IntegrityError(
            f"{s.obj.key} does not match its checksum after re-wrapping: {exc.message}",
            "run `coldcopy key rotate` again",
        ) from None


def _rewrap_one(
    ctx: Context,
    s: Stream,
    info: HeaderInfo,
    source: MasterKey,
    target: MasterKey,
    pause: Callable[[str], None],
) -> None:
    first, _size = s.obj.pieces()[0]
    rec = read_rewrapped(ctx.storage, target.key_id, s.obj.key) if s.checksummed else None
    if rec is None:
        old = ctx.storage.get_bytes(first, (0, info.size - 1))
        header = rewrap_header(old, source, target)
        if len(header) != info.size:
            raise ColdCopyError(f"the re-wrapped header of {s.obj.key} has another length", None)
        _, new_sha = _read_all(ctx, s, source, header)
        assert new_sha is not None
        if s.checksummed:
            rec = Rewrapped(s.obj.key, str(info.key_id), target.key_id, header, new_sha)
            try:
                ctx.storage.put_json(rekey_key(target.key_id, s.obj.key), rec.to_dict(), create_only=True)
            except ConflictError:  # another rotation got there first: write its header
                rec = read_rewrapped(ctx.storage, target.key_id, s.obj.key)
                assert rec is not None
            pause("rotate:after-record")
    else:
        header = rec.header
    check_key(read_header(header), target)  # the new envelope opens under the new key alone
    body = ctx.storage.get_bytes(first)
    if read_header(body).key_id != info.key_id:
        raise ColdCopyError(f"{first} changed during the rotation", "run `coldcopy key rotate` again")
    new_body = header + body[info.size :]
    if not s.checksummed:  # no record to check against: authenticate the new object first
        unpacker = Unpacker(target, expect_object=s.obj.key)
        unpacker.feed(new_body)
        unpacker.finish(None)
    ctx.storage.put_bytes(first, new_body)
    pause("rotate:after-put")


def rotate(
    ctx: Context,
    sources: MasterKey,
    target: MasterKey,
    *,
    now: datetime,
    dry_run: bool = False,
    settings: Settings | None = None,
) -> RotationReport:
    """Re-wrap every stream not under ``target`` with the key of ``sources`` (a key ring) whose id
    its envelope names; then prove every stream under ``target`` alone."""
    settings = settings or ctx.settings

    def pause(point: str) -> None:
        pause_point(settings, point)

    report = RotationReport(target.key_id, dry_run)
    todo: list[tuple[Stream, HeaderInfo]] = []
    proved_keys: set[str] = set()
    unknown: Counter[str] = Counter()
    all_streams = streams(ctx)
    report.streams = len(all_streams)
    held = set(sources.key_ids())
    for s in all_streams:
        info = _header(ctx, s)
        kid = info.key_id or "none"
        report.by_key_id[kid] = report.by_key_id.get(kid, 0) + 1
        if info.alg == ALG_NONE:
            report.unencrypted += 1
        elif info.key_id == target.key_id:
            report.already += 1
        elif info.key_id in held:
            if info.key_id not in proved_keys:  # the old passphrase really opens it, before any write
                check_key(info, sources)
                proved_keys.add(str(info.key_id))
            todo.append((s, info))
        else:
            unknown[str(info.key_id)] += 1
    if unknown:
        ids = ", ".join(f"{k} ({n} objects)" for k, n in sorted(unknown.items()))
        raise WrongKeyError(
            f"stored objects are under key id {ids}, which none of the given old keys has "
            f"(they have {', '.join(sorted(held))}); nothing was written",
            "give the passphrase that wrote them as BACKUP_ENCRYPTION_KEY or in "
            "BACKUP_ENCRYPTION_KEY_PREVIOUS",
        )
    if dry_run:
        report.rewrapped = [s.obj.key for s, _ in todo]
        return report
    for s, info in todo:
        _rewrap_one(ctx, s, info, sources.for_key_id(info.key_id), target, pause)
        report.rewrapped.append(s.obj.key)
        log.info("re-wrapped %s under key id %s", s.obj.key, target.key_id)
    for s in all_streams:  # the proof: every encrypted stream opens under the new key alone
        if _header(ctx, s).alg != ALG_NONE:
            _check_proof(ctx, s, target)
            report.proved += 1
    holding = (target.key_id, *sources.key_ids())
    ctx.storage.put_json(KEYS_STATE_KEY, keys_state(iso(now), key_census(ctx), holding))
    return report


def census_state(ctx: Context, now: datetime) -> dict[str, Any]:
    """Count the streams per key id now and store the count, with the key ids the settings hold, for
    ``status`` and the alert rule (``state/keys.json``)."""
    held = ctx.key.key_ids() if ctx.key else ()
    state = keys_state(iso(now), key_census(ctx), held)
    ctx.storage.put_json(KEYS_STATE_KEY, state)
    return state
