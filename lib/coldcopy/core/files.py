"""Files snapshots of the project's Storage (Supabase Storage's S3 endpoint).  Pure: no I/O.

A snapshot lists every object of every bucket and records, per object, its metadata and the
*content* that holds its bytes.  A content is stored once (``files/content/<id>/``: volumes, then
``meta.json`` last, create-only: a content exists only when its meta does) and is shared by every
object and every snapshot with the same bytes.  Its id is decided from what the listing already
tells (the ETag and the size), so an unchanged or duplicated object costs no request beyond the
listing.  A snapshot is ``files/snapshots/<id>/index`` (the packed, encrypted index) then
``files/snapshots/<id>/snapshot.json`` (the commit point, create-only, with the index's checksums).

An object is unchanged when the previous snapshot has it under the same bucket and key with the
same ETag, size and last-modified time: its entry (metadata included) is carried over.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from coldcopy.errors import InvalidNameError

FILES_PREFIX = "files/"
CONTENT_PREFIX = "files/content/"
SNAPSHOT_PREFIX = "files/snapshots/"
INFLIGHT_PREFIX = "files/inflight/"
INDEX_FORMAT = "coldcopy-files-index/1"
_SNAPSHOT_RE = re.compile(r"files_(?P<ts>\d{8}_\d{6})")
_CONTENT_RE = re.compile(r"[0-9a-f]{64}")
_TS_FORMAT = "%Y%m%d_%H%M%S"
_MD5_ETAG = re.compile(r'"?([0-9a-fA-F]{32}(?:-\d+)?)"?')


def snapshot_id(when: datetime) -> str:
    """``files_YYYYMMDD_HHMMSS``: the id of a snapshot taken at ``when`` (UTC)."""
    return "files_" + when.astimezone(UTC).strftime(_TS_FORMAT)


def validate_snapshot_id(text: str) -> str:
    """``text`` when it is a snapshot id; InvalidNameError with the expected form otherwise."""
    m = _SNAPSHOT_RE.fullmatch(text) if isinstance(text, str) else None
    try:
        if not m:
            raise ValueError
        datetime.strptime(m["ts"], _TS_FORMAT)
    except ValueError:
        shown = text[:80] if isinstance(text, str) else type(text).__name__
        raise InvalidNameError(
            f"invalid files snapshot id {shown!r}",
            "ids look like files_<YYYYMMDD_HHMMSS>; run `coldcopy files list` to see them",
        ) from None
    return text


def snapshot_time(snap: str) -> datetime:
    """The time in a snapshot's id (UTC)."""
    return datetime.strptime(validate_snapshot_id(snap)[6:], _TS_FORMAT).replace(tzinfo=UTC)


def index_key(snap: str) -> str:
    """The packed index of a snapshot."""
    return f"{SNAPSHOT_PREFIX}{validate_snapshot_id(snap)}/index"


def commit_key(snap: str) -> str:
    """The commit record of a snapshot (written last, create-only)."""
    return f"{SNAPSHOT_PREFIX}{validate_snapshot_id(snap)}/snapshot.json"


def inflight_key(snap: str) -> str:
    """The marker a snapshot in progress leaves (cleanup deletes no content while one is fresh)."""
    return f"{INFLIGHT_PREFIX}{validate_snapshot_id(snap)}.json"


def content_meta_key(content: str) -> str:
    """The commit record of a stored content."""
    return f"{CONTENT_PREFIX}{validate_content_id(content)}/meta.json"


def validate_content_id(text: str) -> str:
    """A content id (64 lowercase hex digits); InvalidNameError otherwise."""
    if not isinstance(text, str) or not _CONTENT_RE.fullmatch(text):
        raise InvalidNameError(f"invalid content id {str(text)[:80]!r}")
    return text


def content_id(bucket: str, key: str, etag: str, size: int, last_modified: str) -> str:
    """The id of an object's content, from its listing.

    An MD5-form ETag (``"<32 hex>"``, or ``"<32 hex>-<parts>"`` for a multipart upload) names the
    bytes, so objects with equal ETag and size share one content.  Any other ETag does not: the id
    is then the object's own identity (bucket, key, ETag, size, time), and nothing is shared.
    """
    m = _MD5_ETAG.fullmatch(etag.strip())
    basis = f"md5:{m[1].lower()}:{size}" if m else f"object:{bucket}\0{key}\0{etag}\0{size}\0{last_modified}"
    return hashlib.sha256(basis.encode()).hexdigest()


def etag_md5(etag: str) -> str | None:
    """The MD5 an ETag states for a single-part object (None for a multipart or other ETag)."""
    m = _MD5_ETAG.fullmatch(etag.strip())
    return m[1].lower() if m and "-" not in m[1] else None


@dataclass(frozen=True)
class Listed:
    """An object as a bucket listing shows it."""

    bucket: str
    key: str
    size: int
    etag: str
    last_modified: str  # iso

    @property
    def content(self) -> str:
        return content_id(self.bucket, self.key, self.etag, self.size, self.last_modified)


@dataclass(frozen=True)
class Content:
    """A stored content: where its stream is and its checksums at both ends (and the raw MD5)."""

    id: str
    data_key: str  # volumes are <data_key>.NNNNNN
    volumes: tuple[int, ...]
    stored_size: int
    stored_sha256: str
    raw_size: int
    raw_sha256: str
    raw_md5: str

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["volumes"] = list(self.volumes)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Content:
        """Parse and check one content record; ValueError when malformed."""
        c = cls(
            id=validate_content_id(str(d["id"])),
            data_key=str(d["data_key"]),
            volumes=tuple(int(v) for v in d["volumes"]),
            stored_size=int(d["stored_size"]),
            stored_sha256=str(d["stored_sha256"]),
            raw_size=int(d["raw_size"]),
            raw_sha256=str(d["raw_sha256"]),
            raw_md5=str(d.get("raw_md5", "")),
        )
        if not c.data_key.startswith(f"{CONTENT_PREFIX}{c.id}/") or sum(c.volumes) != c.stored_size:
            raise ValueError(f"content record {c.id} is inconsistent")
        return c


@dataclass(frozen=True)
class Entry:
    """One object of a snapshot: where it was, what it looked like, and its content."""

    bucket: str
    key: str
    size: int
    etag: str
    last_modified: str
    content: str
    content_type: str = ""
    cache_control: str = ""
    metadata: dict[str, str] = field(default_factory=dict)

    def same_listing(self, obj: Listed) -> bool:
        """Whether ``obj`` is this entry unchanged (same ETag, size and last-modified time)."""
        return (obj.etag, obj.size, obj.last_modified) == (self.etag, self.size, self.last_modified)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Entry:
        """Parse one entry; ValueError when malformed."""
        meta = d.get("metadata") or {}
        if not isinstance(meta, dict):
            raise ValueError("metadata must be an object")
        return cls(
            bucket=str(d["bucket"]),
            key=str(d["key"]),
            size=int(d["size"]),
            etag=str(d["etag"]),
            last_modified=str(d["last_modified"]),
            content=validate_content_id(str(d["content"])),
            content_type=str(d.get("content_type", "")),
            cache_control=str(d.get("cache_control", "")),
            metadata={str(k): str(v) for k, v in meta.items()},
        )


@dataclass(frozen=True)
class Index:
    """A snapshot's index: every object and every content they need."""

    snapshot: str
    created_at: str
    backup: str | None
    buckets: tuple[str, ...]
    entries: tuple[Entry, ...]
    contents: Mapping[str, Content]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": INDEX_FORMAT,
            "snapshot": self.snapshot,
            "created_at": self.created_at,
            "backup": self.backup,
            "buckets": list(self.buckets),
            "entries": [asdict(e) for e in self.entries],
            "contents": {k: c.to_dict() for k, c in sorted(self.contents.items())},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Index:
        """Parse and check an index: every entry's content is listed; ValueError otherwise."""
        if d.get("format") != INDEX_FORMAT:
            raise ValueError(f"not a files index ({str(d.get('format'))[:40]!r})")
        contents = {k: Content.from_dict(v) for k, v in dict(d["contents"]).items()}
        entries = tuple(Entry.from_dict(e) for e in d["entries"])
        missing = {e.content for e in entries} - set(contents)
        if missing or any(k != c.id for k, c in contents.items()):
            raise ValueError("the index refers to contents it does not describe")
        return cls(
            snapshot=validate_snapshot_id(str(d["snapshot"])),
            created_at=str(d["created_at"]),
            backup=None if d.get("backup") is None else str(d["backup"]),
            buckets=tuple(str(b) for b in d["buckets"]),
            entries=entries,
            contents=contents,
        )

    def summary(self) -> dict[str, Any]:
        """Counts and sizes: what `files list` shows and the commit record carries."""
        return {
            "snapshot": self.snapshot,
            "created_at": self.created_at,
            "backup": self.backup,
            "buckets": len(self.buckets),
            "objects": len(self.entries),
            "bytes": sum(e.size for e in self.entries),
            "contents": len(self.contents),
            "stored_bytes": sum(c.stored_size for c in self.contents.values()),
        }


@dataclass
class Plan:
    """What a snapshot must do: entries carried over, and objects to read (grouped by content)."""

    kept: list[Entry] = field(default_factory=list)
    changed: list[Listed] = field(default_factory=list)


def plan_snapshot(previous: Index | None, listing: Iterable[Listed]) -> Plan:
    """Split the listing into unchanged entries (carried over) and new or changed objects."""
    before = {(e.bucket, e.key): e for e in previous.entries} if previous else {}
    plan = Plan()
    for obj in listing:
        old = before.get((obj.bucket, obj.key))
        if old is not None and old.same_listing(obj):
            plan.kept.append(old)
        else:
            plan.changed.append(obj)
    return plan


def select(entries: Iterable[Entry], bucket: str | None = None, prefix: str | None = None) -> list[Entry]:
    """The entries of ``bucket`` (all when None) whose key starts with ``prefix``."""
    return [
        e
        for e in entries
        if (bucket is None or e.bucket == bucket) and (prefix is None or e.key.startswith(prefix))
    ]


def snapshots_to_delete(
    snapshots: Mapping[str, str | None], kept_backups: Iterable[str], now: datetime, days: int
) -> list[str]:
    """The snapshots retention removes: one taken with a backup that is no longer kept goes with
    it; one taken without a backup (by hand) goes when it is ``days`` old.  The newest snapshot
    is always kept."""
    kept = set(kept_backups)
    newest = max(snapshots, default=None)

    def expired(snap: str, backup: str | None) -> bool:
        if backup is not None:
            return backup not in kept
        return now - snapshot_time(snap) >= timedelta(days=days)

    return sorted(s for s, b in snapshots.items() if s != newest and expired(s, b))


def unreferenced(stored: Iterable[str], indexes: Iterable[Index]) -> list[str]:
    """The stored contents no index refers to."""
    needed = {e.content for i in indexes for e in i.entries}
    return sorted(set(stored) - needed)


EXAMPLES_KEPT = 5  # of each kind of mismatch, in the commit record


def reconcile(rows: Iterable[tuple[str, str]], entries: Iterable[Entry]) -> dict[str, Any]:
    """``storage.objects`` rows (bucket, name) against a snapshot's objects: how many rows have no
    file in the snapshot (a dangling row after a restore) and how many files have no row (an
    object the API no longer knows), with a few of each as examples."""
    have = {(e.bucket, e.key) for e in entries}
    listed = set(rows)
    no_file = sorted(listed - have)
    no_row = sorted(have - listed)
    return {
        "rows_checked": len(listed),
        "rows_without_file": len(no_file),
        "files_without_row": len(no_row),
        "examples_rows_without_file": [f"{b}/{k[:200]}" for b, k in no_file[:EXAMPLES_KEPT]],
        "examples_files_without_row": [f"{b}/{k[:200]}" for b, k in no_row[:EXAMPLES_KEPT]],
    }


#: What the catalog keeps of a snapshot (its journal record): the summary and the row check.
RECORD_FIELDS = (
    "snapshot",
    "created_at",
    "backup",
    "buckets",
    "objects",
    "bytes",
    "contents",
    "stored_bytes",
    "rows_checked",
    "rows_without_file",
    "files_without_row",
)


def pairing_text(rec: Mapping[str, Any]) -> str:
    """One line on a snapshot for `show` and `restore`: its objects and the row check's counts."""
    rows = (
        "storage.objects not checked (no database connection when it was taken)"
        if rec.get("rows_checked") is None
        else f"{rec.get('rows_without_file')} storage.objects rows without a file, "
        f"{rec.get('files_without_row')} files without a row"
    )
    return f"{rec.get('snapshot')}: {rec.get('objects')} objects in {rec.get('buckets')} buckets; {rows}"


DRILL_SAMPLE = 20  # objects the weekly drill restores into a scratch bucket


def drill_bucket(when: datetime) -> str:
    """The scratch bucket of a drill started at ``when`` (a valid S3 bucket name)."""
    return "coldcopy-drill-" + when.astimezone(UTC).strftime("%Y%m%d-%H%M%S")


def drill_sample(entries: Sequence[Entry], n: int, seed: str) -> list[Entry]:
    """The objects a drill restores: the largest (it takes the multipart path when large) and a
    seeded random sample of the rest, ``n`` in all; the same seed picks the same objects."""
    if not entries:
        return []
    largest = max(entries, key=lambda e: (e.size, e.bucket, e.key))
    rest = [e for e in entries if e is not largest]
    picked = random.Random(seed).sample(rest, min(max(n - 1, 0), len(rest)))
    return [largest, *sorted(picked, key=lambda e: (e.bucket, e.key))]
