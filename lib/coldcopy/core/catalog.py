"""The catalog: a rebuildable cache over immutable records.  Pure: no I/O.

Truth lives in create-only records: each backup's manifest, and a journal entry per event
(``journal/<UTC timestamp>-<type>-<id>.json``) written right after it.  ``catalog.json`` is a
snapshot of the journal applied up to a *watermark*.  A reader lists the journal from
``watermark - SKEW`` (one ListObjectsV2 with StartAfter), fetches only the keys the snapshot has
not applied, and applies them.  Applying is idempotent, so overlapping windows are harmless, and
the skew window covers writers whose clocks or uploads lag behind a newer watermark.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from coldcopy.core.manifest import CatalogEntry
from coldcopy.core.times import iso

CATALOG_FORMAT = "coldcopy-catalog/1"
JOURNAL = "journal/"
SKEW = timedelta(minutes=10)
MAX_FAILURES = 200
# Journal records of files snapshots: one complete (``name``: its id), deleted by retention, failed
# (``name``: the backup it was for, or ""), and queued after a full backup (``name``: the backup).
FILES_RECORDS = ("files_snapshot", "files_snapshot_deleted", "files_snapshot_failed", "files_snapshot_due")
# The record types that change the catalog's backups, deletions, verifications or files pairing
# (pages and digest); the others (job runs, pins, cleanups, failures) change at most its failures,
# watermark and applied keys.
ENTRY_TYPES = frozenset({"backup", "backup_deleted", "verification", *FILES_RECORDS})
_STAMP = "%Y%m%dT%H%M%S.%fZ"


def journal_key(kind: str, ident: str, when: datetime) -> str:
    """Time-ordered, unique key for a journal record."""
    stamp = when.astimezone(UTC).strftime(_STAMP)
    return f"{JOURNAL}{stamp}-{kind}-{ident}-{secrets.token_hex(3)}.json"


def key_time(key: str) -> datetime | None:
    """The time a journal key was written at (its prefix), or None for another key."""
    try:
        return datetime.strptime(key[len(JOURNAL) :].split("-", 1)[0], _STAMP).replace(tzinfo=UTC)
    except ValueError:
        return None


def start_after(watermark: str | None) -> str | None:
    """Where a reader's journal listing starts: SKEW before the watermark."""
    when = key_time(watermark) if watermark else None
    if when is None:
        return None
    return f"{JOURNAL}{(when - SKEW).strftime(_STAMP)}"


@dataclass
class Catalog:
    """Every backup, deletion, failure and verification the records tell of, as of the watermark."""

    backups: dict[str, CatalogEntry] = field(default_factory=dict)
    deleted: dict[str, str] = field(default_factory=dict)  # name -> when
    failures: list[dict[str, Any]] = field(default_factory=list)  # newest last
    verifications: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> latest result
    unreadable: dict[str, str] = field(default_factory=dict)  # name -> why its manifest can't be read
    # Files snapshots of the project's Storage (``core.files``): each complete one's commit summary
    # by id (with the backup it was taken with), the failed attempts (newest last), and the backups
    # whose snapshot the worker queued (backup -> when): a pair the alerts expect.
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    files_failures: list[dict[str, Any]] = field(default_factory=list)
    files_due: dict[str, str] = field(default_factory=dict)
    watermark: str | None = None
    applied: set[str] = field(default_factory=set)  # journal keys applied inside the skew window
    generated_at: str | None = None

    # -- applying records -------------------------------------------------------------------------
    def apply(self, key: str, record: dict[str, Any], limit: str | None = None) -> None:
        """Apply one record.  The watermark never moves past ``limit`` (now + SKEW): one writer
        whose clock runs ahead must not push honest writers' records out of readers' window."""
        if key in self.applied:
            return
        if not isinstance(record, dict):
            record = {}
        kind = record.get("type")
        name = str(record.get("name", ""))
        if kind == "backup" and name not in self.deleted:
            try:
                self.backups[name] = CatalogEntry.from_dict(record["entry"])
                self.unreadable.pop(name, None)
            except (KeyError, TypeError, AttributeError):
                # A damaged journal record never breaks reading; the manifest stays the truth and
                # `coldcopy catalog rebuild` reads it.
                self.unreadable.setdefault(
                    name, f"journal record {key} is damaged; run `coldcopy catalog rebuild`"
                )
        elif kind == "backup_deleted":
            self.backups.pop(name, None)
            self.unreadable.pop(name, None)
            self.deleted[name] = str(record.get("at", ""))
        elif kind == "backup_failed":
            self.failures.append({k: record.get(k) for k in ("name", "kind", "at", "error")})
            self.failures.sort(key=lambda f: str(f.get("at")))
            del self.failures[:-MAX_FAILURES]
        elif kind in FILES_RECORDS:
            self._apply_files(kind, name, record)
        elif kind == "verification":
            prev = self.verifications.get(name)
            if prev is None or str(prev.get("at")) <= str(record.get("at")):
                self.verifications[name] = {k: v for k, v in record.items() if k != "type"}
        self.applied.add(key)
        if (self.watermark is None or key > self.watermark) and (limit is None or key <= limit):
            self.watermark = key

    def _apply_files(self, kind: str, name: str, record: dict[str, Any]) -> None:
        if kind == "files_snapshot":
            self.files[name] = {k: v for k, v in record.items() if k != "type"}
        elif kind == "files_snapshot_deleted":
            self.files.pop(name, None)
        elif kind == "files_snapshot_failed":
            self.files_failures.append({k: record.get(k) for k in ("name", "backup", "at", "error")})
            self.files_failures.sort(key=lambda f: str(f.get("at")))
            del self.files_failures[:-MAX_FAILURES]
        elif kind == "files_snapshot_due" and name not in self.deleted:
            self.files_due[name] = str(record.get("at", ""))

    def merge(self, records: list[tuple[str, dict[str, Any]]], now: datetime | None = None) -> None:
        limit = f"{JOURNAL}{((now or datetime.now(UTC)) + SKEW).strftime(_STAMP)}"
        for key, record in sorted(records, key=lambda kr: kr[0]):
            self.apply(key, record, limit)
        self._trim_applied()

    def _trim_applied(self) -> None:
        floor = start_after(self.watermark)
        if floor:
            self.applied = {k for k in self.applied if k > floor}

    # -- reading ----------------------------------------------------------------------------------
    def entries(self, kind: str | None = None) -> list[CatalogEntry]:
        """Backups newest first; ties broken by name so the order is stable."""
        items = [e for e in self.backups.values() if kind is None or e.kind == kind]
        return sorted(items, key=lambda e: (e.created_at, e.name), reverse=True)

    def files_by_backup(self) -> dict[str, dict[str, Any]]:
        """The newest files snapshot taken with each backup still in the catalog, by backup."""
        out: dict[str, dict[str, Any]] = {}
        for _, rec in sorted(self.files.items()):
            backup = rec.get("backup")
            if isinstance(backup, str) and backup in self.backups:
                out[backup] = rec
        return out

    def last_failure(self) -> dict[str, Any] | None:
        return self.failures[-1] if self.failures else None

    # -- serialisation ----------------------------------------------------------------------------
    def to_dict(self, now: datetime | None = None) -> dict[str, Any]:
        return {
            "format": CATALOG_FORMAT,
            "generated_at": iso(now or datetime.now(UTC)),
            "watermark": self.watermark,
            "applied": sorted(self.applied),
            "backups": [e.to_dict() for e in self.entries()],
            "deleted": self.deleted,
            "failures": self.failures,
            "verifications": self.verifications,
            "unreadable": self.unreadable,
            "files": self.files,
            "files_failures": self.files_failures,
            "files_due": {n: at for n, at in self.files_due.items() if n in self.backups},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Catalog:
        if d.get("format") != CATALOG_FORMAT:
            raise ValueError(f"unknown catalog format {d.get('format')!r}")
        cat = cls(
            backups={e["name"]: CatalogEntry.from_dict(e) for e in d.get("backups", [])},
            deleted=dict(d.get("deleted", {})),
            failures=list(d.get("failures", [])),
            verifications=dict(d.get("verifications", {})),
            unreadable=dict(d.get("unreadable", {})),
            files=dict(d.get("files", {})),
            files_failures=list(d.get("files_failures", [])),
            files_due=dict(d.get("files_due", {})),
            watermark=d.get("watermark"),
            applied=set(d.get("applied", [])),
            generated_at=d.get("generated_at"),
        )
        return cat


def merge_beside_entries(
    watermark: str | None,
    applied: Iterable[str],
    failures: Sequence[dict[str, Any]],
    records: list[tuple[str, dict[str, Any]]],
    now: datetime,
) -> Catalog | None:
    """What merging ``records`` leaves of a catalog's failures, watermark and applied keys, from
    those alone (a cache made from the catalog keeps them: the digest, the page index); None when
    a record is of one of ENTRY_TYPES, which needs the whole catalog."""
    if any(isinstance(r, dict) and r.get("type") in ENTRY_TYPES for _, r in records):
        return None
    cat = Catalog(failures=[dict(f) for f in failures], watermark=watermark, applied=set(applied))
    cat.merge(records, now)
    return cat
