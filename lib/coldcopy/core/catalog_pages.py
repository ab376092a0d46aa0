"""The catalog's backups cut into monthly pages with a small index, for ``GET /backups``.  Pure: no I/O.

``GET /backups`` (every page, every ``kind``; the dashboard reads its first 200) used to parse the
whole ``catalog.json`` on a cold start and cut its page from every backup: work that grows with the
history.  Beside ``catalog.json`` every catalog writer (and the tick's repair) stores the same
backups again, cut by the month of their ``created_at`` (``catalog/pages/<YYYY-MM>.json``, each
with the latest verification of its backups), and ``catalog/index.json``: for each page, newest
first, its SHA-256, its size and how many backups of each kind it holds, with the watermark and
the applied journal keys of the catalog it was cut from.  A listing reads the index and only the
pages its answer comes from; a page's size follows the backup schedule (one month of backups),
not the history, and the index gains one short row a month.

The pages are a cache like ``catalog.json`` (``../shared/DESIGN.md`` §3): made from the catalog by
:func:`build` alone, checked against the index's SHA-256 when read, and a reader that finds the
index behind the journal, a page missing or not the one the index names answers from the catalog
instead (``storage.catalog_store``).  Order, cursor and totals are those of :func:`listing_of`, the
whole catalog's, by construction: pages cut the same order (newest ``created_at`` first, the name
breaking ties) at prefixes of ``created_at``, and a prefix orders strings as the strings do.
"""

from __future__ import annotations

import hashlib
import json
import re
from bisect import bisect_left
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from coldcopy.core.catalog import ENTRY_TYPES, Catalog, merge_beside_entries, start_after
from coldcopy.core.manifest import CatalogEntry

PAGES = "catalog/pages/"
INDEX_KEY = "catalog/index.json"
INDEX_FORMAT = "coldcopy-catalog-index/1"
PAGE_FORMAT = "coldcopy-catalog-page/1"
_MONTH = re.compile(r"\d{4}-\d{2}")
SortKey = tuple[str, str]
Verification = Mapping[str, Any]


# -- the catalog's order --------------------------------------------------------------------------
def sort_key(entry: CatalogEntry) -> SortKey:
    """The catalog's order (newest first, name breaks ties): pages are cut on this key."""
    return entry.created_at, entry.name


def paginate(
    entries: Sequence[CatalogEntry], limit: int, after: SortKey | None
) -> tuple[list[CatalogEntry], SortKey | None]:
    """The page of ``entries`` (sorted newest first) strictly after ``after``, and the next cursor key.

    Cutting on the sort key, not an offset, means a backup added between two requests neither
    pushes an item onto the next page twice nor hides one.
    """
    start = 0
    if after is not None:
        ascending = [sort_key(e) for e in reversed(entries)]
        start = len(entries) - bisect_left(ascending, after)
    page = list(entries[start : start + limit])
    more = start + limit < len(entries)
    return page, (sort_key(page[-1]) if more and page else None)


@dataclass(frozen=True)
class Listing:
    """One page of ``GET /backups``: its backups with their latest verification, how many backups
    of the kind there are in all, and the sort key the next page starts after (None: the last)."""

    rows: list[tuple[CatalogEntry, Verification | None]]
    total: int
    next_key: SortKey | None
    files: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # the rows' files snapshots


def listing_of(cat: Catalog, kind: str | None, limit: int, after: SortKey | None) -> Listing:
    """The listing cut from the whole catalog."""
    entries = cat.entries(kind)
    rows, next_key = paginate(entries, limit, after)
    files = cat.files_by_backup()
    paired = {e.name: files[e.name] for e in rows if e.name in files}
    return Listing([(e, cat.verifications.get(e.name)) for e in rows], len(entries), next_key, paired)


# -- pages and their index ------------------------------------------------------------------------
def page_id(created_at: str) -> str:
    """The page a backup is on: the month of its ``created_at`` (its first 7 characters)."""
    return created_at[:7]


def page_key(pid: str) -> str:
    """Where a page is stored; a ``created_at`` that is not ISO (never written by ColdCopy) still
    gets a safe key of its own."""
    return f"{PAGES}{pid}.json" if _MONTH.fullmatch(pid) else f"{PAGES}x{pid.encode().hex()}.json"


@dataclass(frozen=True)
class PageRef:
    """A page as the index names it."""

    id: str
    sha256: str
    size: int
    counts: Mapping[str, int]  # backups on the page, by kind

    @property
    def key(self) -> str:
        return page_key(self.id)

    def count(self, kind: str | None) -> int:
        return sum(self.counts.values()) if kind is None else self.counts.get(kind, 0)


@dataclass(frozen=True)
class PageIndex:
    """The pages of the catalog as of ``watermark`` (with the journal keys it has ``applied``)."""

    watermark: str | None
    applied: frozenset[str]
    pages: tuple[PageRef, ...]  # newest first

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": INDEX_FORMAT,
            "watermark": self.watermark,
            "applied": sorted(self.applied),
            "pages": [[p.id, p.sha256, p.size, dict(sorted(p.counts.items()))] for p in self.pages],
        }


@dataclass(frozen=True)
class Page:
    """The backups of one page, newest first, their latest verifications and files snapshots."""

    entries: tuple[CatalogEntry, ...]
    verifications: Mapping[str, Verification]
    files: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # backup -> its snapshot

    def of_kind(self, kind: str | None) -> list[CatalogEntry]:
        return [e for e in self.entries if kind is None or e.kind == kind]


def build(cat: Catalog) -> tuple[PageIndex, dict[str, bytes]]:
    """The catalog's index and its pages' bodies by key (canonical JSON: the same catalog makes the
    same bytes, so a writer rewrites only the pages that changed)."""
    groups: dict[str, list[CatalogEntry]] = {}
    files = cat.files_by_backup()
    for e in cat.entries():  # newest first
        groups.setdefault(page_id(e.created_at), []).append(e)
    cut = [
        _cut(pid, entries, cat.verifications, files) for pid, entries in sorted(groups.items(), reverse=True)
    ]
    return PageIndex(cat.watermark, frozenset(cat.applied), tuple(r for r, _ in cut)), {
        r.key: body for r, body in cut
    }


def _cut(
    pid: str,
    entries: Sequence[CatalogEntry],
    verifications: Mapping[str, Any],
    files: Mapping[str, dict[str, Any]],
) -> tuple[PageRef, bytes]:
    """One page (``entries`` newest first) and its body; ``files``: each backup's files snapshot."""
    checked = {e.name: verifications[e.name] for e in entries if e.name in verifications}
    doc = {
        "format": PAGE_FORMAT,
        "id": pid,
        "backups": [e.to_dict() for e in entries],
        "verifications": checked,
        "files": {e.name: files[e.name] for e in entries if e.name in files},
    }
    body = json.dumps(doc, sort_keys=True, separators=(",", ":"), default=str).encode()
    counts: dict[str, int] = {}
    for e in entries:
        counts[e.kind] = counts.get(e.kind, 0) + 1
    return PageRef(pid, hashlib.sha256(body).hexdigest(), len(body), counts), body


@dataclass(frozen=True)
class Since:
    """What a writer's catalog was merged from: its snapshot's watermark and applied keys, and the
    pages the merged records' backups are on (before or after them: :func:`touched`)."""

    watermark: str | None
    applied: frozenset[str]
    pages: frozenset[str]


def touched(cat: Catalog, records: Sequence[tuple[str, Any]]) -> set[str]:
    """The pages the backups ``records`` name (directly, or through the files snapshot a files record
    names) are on in ``cat`` (asked before and after merging them), with those of the entries their
    backup records carry."""
    out: set[str] = set()
    for _, r in records:
        if not isinstance(r, dict) or r.get("type") not in ENTRY_TYPES:
            continue
        name = str(r.get("name", ""))
        # a files record names a snapshot (its own, or one retention deleted) or the backup it is for
        snapshot = cat.files.get(name) or {}
        for backup in (name, r.get("backup"), snapshot.get("backup")):
            e = cat.backups.get(str(backup))
            if e is not None:
                out.add(page_id(e.created_at))
        entry = r.get("entry")
        if isinstance(entry, dict) and isinstance(entry.get("created_at"), str):
            out.add(page_id(entry["created_at"]))
    return out


def recut(cat: Catalog, stored: PageIndex, since: Since) -> tuple[PageIndex, dict[str, bytes]] | None:
    """What :func:`build` makes of ``cat``, cutting only the pages ``since`` names (the bodies
    returned) and taking the others' rows from ``stored``: when ``stored`` was cut from a catalog
    between ``cat``'s snapshot and ``cat`` (the same one, or one a tick advanced over records that
    change no page), every other page is the same in both.  None otherwise."""
    floor, top = start_after(stored.watermark) or "", cat.watermark or ""
    if not (since.watermark or "") <= (stored.watermark or "") <= top:
        return None  # behind the snapshot, or cut from a newer catalog than this one
    if any(k > floor and k not in stored.applied for k in since.applied):
        return None  # the snapshot applied a record the stored index did not
    if any(k > (start_after(cat.watermark) or "") and k not in cat.applied for k in stored.applied):
        return None
    files = cat.files_by_backup()
    groups: dict[str, list[CatalogEntry]] = {pid: [] for pid in since.pages}
    for e in cat.backups.values():
        pid = page_id(e.created_at)
        if pid in groups:
            groups[pid].append(e)
    cut = {
        pid: _cut(pid, sorted(entries, key=sort_key, reverse=True), cat.verifications, files)
        for pid, entries in groups.items()
        if entries
    }
    refs = [r for r in stored.pages if r.id not in since.pages] + [r for r, _ in cut.values()]
    refs.sort(key=lambda r: r.id, reverse=True)
    return PageIndex(cat.watermark, frozenset(cat.applied), tuple(refs)), {r.key: b for r, b in cut.values()}


def advance_index(
    index: PageIndex, records: list[tuple[str, dict[str, Any]]], now: datetime
) -> PageIndex | None:
    """``index`` with journal records it has not applied, when none changes a backup, deletion or
    verification (so no page changes): what :func:`build` makes of the catalog they are merged
    into; None otherwise (the caller reads the catalog)."""
    merged = merge_beside_entries(index.watermark, index.applied, (), records, now)
    if merged is None:
        return None
    return replace(index, watermark=merged.watermark, applied=frozenset(merged.applied))


def parse_index(raw: Any) -> PageIndex | None:
    """A stored index; None when it is not one this version reads (the reader uses the catalog)."""
    if not isinstance(raw, dict) or raw.get("format") != INDEX_FORMAT:
        return None
    try:
        pages = tuple(
            PageRef(str(pid), str(sha), int(size), {str(k): int(n) for k, n in counts.items()})
            for pid, sha, size, counts in raw["pages"]
        )
        return PageIndex(raw["watermark"], frozenset(raw["applied"]), pages)
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


def parse_page(body: bytes, ref: PageRef) -> Page | None:
    """The page ``ref`` names, from its stored bytes; None when they are not that page (lost, left
    by another save, damaged)."""
    if hashlib.sha256(body).hexdigest() != ref.sha256:
        return None
    try:
        doc = json.loads(body)
        if doc.get("format") != PAGE_FORMAT or doc.get("id") != ref.id:
            return None
        return Page(
            tuple(CatalogEntry.from_dict(e) for e in doc["backups"]),
            dict(doc["verifications"]),
            dict(doc.get("files") or {}),  # absent in a page cut before files snapshots
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def listing_from_pages(
    index: PageIndex,
    load: Callable[[PageRef], Page | None],
    kind: str | None,
    limit: int,
    after: SortKey | None,
) -> Listing | None:
    """What :func:`listing_of` answers for the catalog ``index`` was cut from, loading only the pages
    the answer comes from (``load``: None when a page cannot be had; then so is the answer)."""
    refs = [r for r in index.pages if r.count(kind)]
    total = sum(r.count(kind) for r in refs)
    if after is not None:
        refs = [r for r in refs if r.id <= page_id(after[0])]  # newer pages hold nothing after it
    rows: list[tuple[CatalogEntry, Verification | None]] = []
    files: dict[str, Mapping[str, Any]] = {}
    for i, ref in enumerate(refs):
        page = load(ref)
        if page is None:
            return None
        got, more_here = paginate(page.of_kind(kind), limit - len(rows), after)
        rows += [(e, page.verifications.get(e.name)) for e in got]
        files.update({e.name: page.files[e.name] for e in got if e.name in page.files})
        if len(rows) == limit:
            more = more_here is not None or i + 1 < len(refs)
            return Listing(rows, total, sort_key(rows[-1][0]) if more else None, files)
    return Listing(rows, total, None, files)
