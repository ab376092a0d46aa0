"""Reading and writing the catalog in the bucket (the I/O half of ``catalog``, ``catalog_digest`` and
``catalog_pages``).

Every save writes ``catalog.json`` and, beside it, its backups cut into monthly pages with their
index (``catalog/pages/<YYYY-MM>.json``, ``catalog/index.json``: ``core.catalog_pages``; only the
pages that changed are written) and its digest (``state/catalog-digest.json``, a few kilobytes
whatever the history: ``core.catalog_digest``).  The monitor's ``/metrics``, ``/status``,
``/alerts`` and ``/recovery-time`` read the digest, ``/backups`` the index and the pages its answer
comes from (the digest and the index by a conditional GET; a page whose SHA-256 a parsed copy
already has is not fetched at all), and both the journal listing they read anyway; when the
listing holds records they have not applied, or a page is missing or not the one the index names,
they read the catalog instead.  ``/health`` checks that the catalog can be read
(``check_readable``).  The tick repairs the digest, the index and the pages (``save_digest``,
``save_pages``): a bucket from before them, a lost page, a writer that died between its record and
its save.  It does so from the records they have not applied (``upkeep``), reading
``catalog.json`` only when one of those changes a backup, a deletion or a verification (a writer
died between its record and its save) or a cache or page is missing.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from coldcopy.core.catalog import JOURNAL, Catalog, journal_key, start_after
from coldcopy.core.catalog_digest import DIGEST_KEY, CatalogDigest, advance, digest, parse_digest
from coldcopy.core.catalog_pages import (
    INDEX_KEY,
    PAGES,
    Listing,
    Page,
    PageIndex,
    PageRef,
    Since,
    SortKey,
    advance_index,
    build,
    listing_from_pages,
    listing_of,
    page_id,
    parse_index,
    parse_page,
    recut,
    touched,
)
from coldcopy.core.manifest import CatalogEntry, Manifest, check_identity, manifest_key
from coldcopy.core.times import iso
from coldcopy.errors import ColdCopyError, IntegrityError, NotFoundError
from coldcopy.storage.store import ObjectStore, encode_json

log = logging.getLogger(__name__)
CATALOG_KEY = "catalog.json"
PAGE_CACHE_BYTES = 16 << 20  # the stored size of the parsed pages a long-lived reader keeps


class CatalogStore:
    def __init__(self, storage: ObjectStore) -> None:
        self.storage = storage
        # read_cached(): the parsed snapshot with its ETag, and journal records already fetched.
        self._lock = threading.Lock()
        self._snapshot: tuple[str | None, Catalog | None] = (None, None)
        self._records: dict[str, dict[str, Any]] = {}
        self._small: dict[str, tuple[str | None, Any]] = {}  # digest and index: ETag, parsed
        self._pages: OrderedDict[str, tuple[int, Page]] = OrderedDict()  # SHA-256 -> size, page; LRU first

    # -- journal ----------------------------------------------------------------------------------
    def record(self, kind: str, ident: str, payload: dict[str, Any], when: datetime | None = None) -> str:
        """Write one create-only journal record; returns its key."""
        when = when or datetime.now(UTC)
        key = journal_key(kind, ident, when)
        body = {"type": kind, "at": iso(when), **payload}
        self.storage.put_json(key, body, create_only=True)
        with self._lock:  # what a GET of it would answer: read_cached() need not fetch it
            self._records[key] = json.loads(encode_json(body))
        return key

    def _fetch(self, keys: list[str]) -> list[tuple[str, dict[str, Any]]]:
        def get(key: str) -> tuple[str, dict[str, Any]] | None:
            try:
                return key, self.storage.get_json(key)
            except (NotFoundError, ValueError):
                log.warning("journal record %s is unreadable; skipped", key)
                return None

        with ThreadPoolExecutor(max_workers=8) as pool:
            return [r for r in pool.map(get, keys) if r is not None]

    # -- reading ----------------------------------------------------------------------------------
    def load_snapshot(self) -> Catalog | None:
        try:
            return Catalog.from_dict(self.storage.get_json(CATALOG_KEY))
        except NotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("catalog.json is unreadable (%s); reading the journal instead", exc)
            return None

    def read(self) -> Catalog:
        """The snapshot merged with the journal records newer than its watermark."""
        return self._read()[0]

    def _read(self) -> tuple[Catalog, Since | None]:
        """``read()``, and what it merged the snapshot with (None: there was no readable snapshot)."""
        snapshot = self.load_snapshot()
        cat = snapshot or Catalog()
        new = self._unapplied(cat.watermark, cat.applied)
        records = self._fetch(new) if new else []
        return _merged(cat, records, snapshot is not None)

    def read_cached(self) -> Catalog:
        """What read() answers, for long-lived readers (the web functions), without re-parsing
        (``_read_cached``)."""
        return self._read_cached()[0]

    def _read_cached(self) -> tuple[Catalog, Since | None]:
        """``read_cached()``, and what it merged the snapshot with (as ``_read``).

        Still one GET of catalog.json plus one journal listing per call, but the GET is
        conditional (If-None-Match on the ETag of the parsed copy): an unchanged snapshot is not
        downloaded or parsed again.  Journal records are immutable, so each is fetched once.
        Returns a fresh Catalog the caller may change.  Safe to call from several threads.
        """
        with self._lock:
            etag, snap = self._snapshot
        try:
            got = self.storage.get_bytes_if_changed(CATALOG_KEY, etag)
        except NotFoundError:
            etag, snap, got = None, None, None
        if got is not None and got[1] != etag:
            etag, snap = got[1], self._parse_snapshot(got[0])
        with self._lock:
            self._snapshot = (etag, snap)
        cat = _copy(snap) if snap is not None else Catalog()
        new = self._unapplied(cat.watermark, cat.applied)
        with self._lock:
            missing = [k for k in new if k not in self._records]
        fetched = dict(self._fetch(missing)) if missing else {}
        listed = set(new)
        with self._lock:
            self._records = {k: r for k, r in {**self._records, **fetched}.items() if k in listed}
            records = [(k, self._records[k]) for k in new if k in self._records]
        return _merged(cat, records, snap is not None)

    def _unapplied(self, watermark: str | None, applied: set[str] | frozenset[str]) -> list[str]:
        """Journal keys newer than ``watermark`` (less the skew) that are not in ``applied``."""
        return [
            o.key
            for o in self.storage.list(JOURNAL, start_after=start_after(watermark))
            if o.key.endswith(".json") and o.key not in applied
        ]

    def _read_small(self, key: str, parse: Callable[[Any], Any]) -> Any:
        """A small object kept parsed (the digest, the page index) as it is now: one conditional GET,
        so an unchanged one is not downloaded or parsed again.  None when there is none, or
        whatever ``parse`` answers for one it cannot read."""
        with self._lock:
            etag, parsed = self._small.get(key, (None, None))
        try:
            got = self.storage.get_bytes_if_changed(key, etag)
        except NotFoundError:
            etag, parsed, got = None, None, None
        if got is not None and got[1] != etag:
            etag, parsed = got[1], _parse_small(got[0], parse, key)
        with self._lock:
            self._small[key] = (etag, parsed)
        return parsed

    def _stored_digest(self) -> CatalogDigest | None:
        """The stored digest as it is; None when there is none or it is unreadable."""
        d: CatalogDigest | None = self._read_small(DIGEST_KEY, parse_digest)
        return d

    def read_digest(self) -> CatalogDigest | None:
        """The stored digest, when it is the catalog's as ``read()`` would answer it: one conditional
        GET and one journal listing.  None when there is none, it is unreadable, or the journal holds
        records it has not applied."""
        got_digest = self._stored_digest()
        if got_digest is None or self._unapplied(got_digest.watermark, got_digest.applied):
            return None
        return got_digest

    def check_readable(self) -> None:
        """Raise StorageError when the catalog's objects cannot be read, as ``read_cached()`` would,
        without reading ``catalog.json`` (``/health``): the digest's conditional GET (a missing or
        unreadable one is no problem, as a missing catalog is none) and the first page of the
        journal's listing from its watermark.  Neither grows with the history."""
        stored = self._stored_digest()
        after = start_after(stored.watermark if stored is not None else None)
        next(iter(self.storage.list(JOURNAL, start_after=after)), None)

    def current_digest(self, size_sample: int = 0) -> CatalogDigest:
        """The catalog's digest: the stored one (``read_digest``), or made now from ``read_cached()``
        when that is not current or kept fewer than ``size_sample`` sizes per group."""
        stored = self.read_digest()
        if stored is not None and stored.size_sample_kept >= size_sample:
            return stored
        return digest(self.read_cached(), size_sample)

    def read_index(self) -> PageIndex | None:
        """The stored page index, when it is the catalog's as ``read()`` would answer it: one
        conditional GET and one journal listing.  None when there is none, it is unreadable, or the
        journal holds records it has not applied."""
        index: PageIndex | None = self._read_small(INDEX_KEY, parse_index)
        if index is None or self._unapplied(index.watermark, index.applied):
            return None
        return index

    def load_page(self, ref: PageRef) -> Page | None:
        """The page ``ref`` names: the parsed copy with its SHA-256, else one GET; None when it is
        missing or not that page."""
        with self._lock:
            kept = self._pages.get(ref.sha256)
            if kept is not None:
                self._pages.move_to_end(ref.sha256)
                return kept[1]
        try:
            page = parse_page(self.storage.get_bytes(ref.key), ref)
        except NotFoundError:
            page = None
        if page is None:
            log.warning("%s is missing or not the page %s names; reading the catalog", ref.key, INDEX_KEY)
            return None
        with self._lock:
            self._pages[ref.sha256] = (ref.size, page)
            while len(self._pages) > 1 and sum(size for size, _ in self._pages.values()) > PAGE_CACHE_BYTES:
                self._pages.popitem(last=False)
        return page

    def listing(self, kind: str | None, limit: int, after: SortKey | None) -> Listing:
        """One page of the backups (``GET /backups``): from the index and the pages it comes from,
        or from ``read_cached()`` while they are behind the journal, missing or not readable."""
        index = self.read_index()
        got = None if index is None else listing_from_pages(index, self.load_page, kind, limit, after)
        return got if got is not None else listing_of(self.read_cached(), kind, limit, after)

    def files_of(self, entry: CatalogEntry) -> Mapping[str, Any] | None:
        """The files snapshot taken with the backup ``entry`` (``GET /backup/<name>``): from the one
        page that holds it, or from ``read_cached()`` while the pages are behind or unreadable."""
        index = self.read_index()
        ref = next((r for r in index.pages if r.id == page_id(entry.created_at)), None) if index else None
        page = self.load_page(ref) if ref is not None else None
        if page is not None:
            return page.files.get(entry.name)
        return self.read_cached().files_by_backup().get(entry.name)

    def save_digest(self, d: CatalogDigest) -> bool:
        """Store ``d`` when the stored digest is missing, unreadable, behind ``d``'s watermark, or says
        otherwise at the same watermark (the tick's repair of a digest no writer stored: a bucket
        from before digests, a writer that died between its record and its save); True when written.
        A digest newer than ``d`` (a writer saved after ``d`` was read) is left alone."""
        try:
            stored = parse_digest(self.storage.get_json(DIGEST_KEY))
        except (NotFoundError, ValueError):
            stored = None
        if stored is not None and (stored == d or (stored.watermark or "") > (d.watermark or "")):
            return False
        self.storage.put_json(DIGEST_KEY, d.to_dict())
        return True

    def save_pages(self, cat: Catalog, since: Since | None = None) -> int:
        """Store ``cat``'s pages and index: the pages the stored index names otherwise, or that are
        missing or of another size in the listing, then the index when it changed; pages of months
        left empty are deleted.  Returns how many pages were written.  A stored index newer than
        ``cat`` (a writer saved after ``cat`` was read) is left alone, as ``save_digest`` does.
        ``since`` (a writer's: what ``cat`` was merged from) cuts only the pages its records
        touched when the stored index allows (``catalog_pages.recut``), else every page."""
        try:
            stored = parse_index(self.storage.get_json(INDEX_KEY))
        except (NotFoundError, ValueError):
            stored = None
        if stored is not None and (stored.watermark or "") > (cat.watermark or ""):
            return 0
        listed = {o.key: o.size for o in self.storage.list(PAGES)}
        before = {r.id: r.sha256 for r in stored.pages} if stored is not None else {}

        def changes(index: PageIndex) -> list[PageRef]:
            return [r for r in index.pages if before.get(r.id) != r.sha256 or listed.get(r.key) != r.size]

        got = recut(cat, stored, since) if stored is not None and since is not None else None
        index, bodies = got if got is not None else build(cat)
        changed = changes(index)
        if any(r.key not in bodies for r in changed):  # a page it did not cut is lost: cut them all
            index, bodies = build(cat)
            changed = changes(index)
        for ref in changed:
            self.storage.put_bytes(ref.key, bodies[ref.key], content_type="application/json")
        if stored != index:
            self.storage.put_json(INDEX_KEY, index.to_dict())
        left = sorted(set(listed) - {r.key for r in index.pages})
        if left:
            self.storage.delete(left)
        return len(changed)

    def upkeep(self, now: datetime, size_sample: int = 0) -> CatalogDigest:
        """The tick's upkeep of the digest, the page index and the pages, bounded by what changed;
        returns the catalog's digest (what ``digest(read(), size_sample)`` makes).

        Reads the stored digest and index (a GET each), the journal after their watermarks (one
        LIST), the records they have not applied (a GET each) and the pages' listing (one LIST).
        Records that change no backup, deletion or verification (a job's run record, a failure:
        their writers save no catalog) advance the digest and the index without the catalog
        (``catalog_digest.advance``, ``catalog_pages.advance_index``), and a page no index names is
        deleted.  Otherwise (a writer died between its record and its save), or when the digest or
        the index is missing, unreadable or kept fewer sizes than ``size_sample``, or a page is
        lost, the catalog is read and they are made from it, as a writer makes them.  ``now``: the
        tick's clock (the watermark the merged records leave)."""
        stored: CatalogDigest | None = self._read_small(DIGEST_KEY, parse_digest)
        index: PageIndex | None = self._read_small(INDEX_KEY, parse_index)
        if stored is not None and index is not None and stored.size_sample_kept >= size_sample:
            got = self._advance(stored, index, now)
            if got is not None:
                return got
        cat = self.read()
        made = digest(cat, size_sample)
        self.save_digest(made)
        self.save_pages(cat)
        return made

    def _advance(self, stored: CatalogDigest, index: PageIndex, now: datetime) -> CatalogDigest | None:
        """``upkeep`` without the catalog; None when it needs the catalog."""
        floors = [start_after(stored.watermark) or "", start_after(index.watermark) or ""]
        keys = [
            o.key
            for o in self.storage.list(JOURNAL, start_after=min(floors) or None)
            if o.key.endswith(".json")
        ]
        for_digest = [k for k in keys if k > floors[0] and k not in stored.applied]
        for_index = [k for k in keys if k > floors[1] and k not in index.applied]
        fetched = dict(self._fetch(sorted({*for_digest, *for_index})))
        new_digest = advance(stored, [(k, fetched[k]) for k in for_digest if k in fetched], now)
        new_index = advance_index(index, [(k, fetched[k]) for k in for_index if k in fetched], now)
        if new_digest is None or new_index is None:
            return None
        listed = {o.key: o.size for o in self.storage.list(PAGES)}
        if any(listed.get(r.key) != r.size for r in new_index.pages):
            return None  # a page is lost or not the index's: the catalog rewrites it
        if new_digest != stored:
            self.save_digest(new_digest)
        if new_index != index:
            self.storage.put_json(INDEX_KEY, new_index.to_dict())
        left = sorted(set(listed) - {r.key for r in new_index.pages})
        if left:
            self.storage.delete(left)
        return new_digest

    @staticmethod
    def _parse_snapshot(raw: bytes) -> Catalog | None:
        try:
            return Catalog.from_dict(json.loads(raw))
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("catalog.json is unreadable (%s); reading the journal instead", exc)
            return None

    # -- writing ----------------------------------------------------------------------------------
    def save(self, cat: Catalog, since: Since | None = None) -> None:
        """Write catalog.json, then its pages and their index, then its digest (a reader finds an
        index or digest behind the catalog's records and reads the catalog until the next save or
        tick).  ``since``: what ``cat`` was merged from (``save_pages``)."""
        self.storage.put_json(CATALOG_KEY, cat.to_dict())
        self.save_pages(cat, since)
        self.storage.put_json(DIGEST_KEY, digest(cat).to_dict())

    def refresh(self) -> Catalog:
        """Read, merge and write back (writers call this after recording); only the pages of the
        months the merged records touched are cut again.  Reads as ``read_cached()``: a writer that
        read the catalog ahead (a backup, while its dump streams) downloads and parses
        ``catalog.json`` only if it changed since, and fetches no record it wrote itself."""
        cat, since = self._read_cached()
        self.save(cat, since)
        return cat

    def rebuild(self) -> Catalog:
        """Rebuild from the records themselves: every manifest, then the whole journal."""
        cat = Catalog()
        names = [p.split("/")[1] for p in self.storage.list_prefixes("backups/")]
        manifests = self._manifests(names)
        journal = [o.key for o in self.storage.list(JOURNAL) if o.key.endswith(".json")]
        records = self._fetch(journal)
        # Manifests are the truth about which backups exist; the journal adds failures,
        # verifications and deletions.  A deletion only wins when the manifest is gone too.
        cat.merge([(k, r) for k, r in records if r.get("type") != "backup"])
        cat.deleted = {n: at for n, at in cat.deleted.items() if n not in manifests}
        for name in names:
            m = manifests.get(name)
            if isinstance(m, Manifest):
                cat.backups[name] = m.entry()
            elif isinstance(m, str):
                cat.unreadable[name] = m
        self.save(cat)
        return cat

    def _manifests(self, names: list[str]) -> dict[str, Manifest | str]:
        def one(name: str) -> tuple[str, Manifest | str | None]:
            try:
                manifest = Manifest.from_dict(self.storage.get_json(manifest_key(name)))
                check_identity(manifest, name)
                return name, manifest
            except NotFoundError:
                return name, None  # unfinished (or being cleaned up): not a backup
            except IntegrityError as exc:
                return name, exc.message
            except (ValueError, ColdCopyError) as exc:
                return name, f"{type(exc).__name__}: {str(exc)[:200]}"

        with ThreadPoolExecutor(max_workers=16) as pool:
            return {n: m for n, m in pool.map(one, names) if m is not None}

    def manifest(self, name: str) -> Manifest:
        try:
            raw = self.storage.get_bytes(manifest_key(name))
        except NotFoundError:
            raise NotFoundError(
                f"no backup named {name}", "run `coldcopy list-backups` to see the backups"
            ) from None
        try:
            manifest = Manifest.from_dict(json.loads(raw))
        except ValueError:
            raise IntegrityError(
                f"manifest of {name} is not valid JSON", "the backup cannot be trusted; use another backup"
            ) from None
        check_identity(manifest, name)  # not another backup's manifest, stored (or edited) as this one's
        return manifest


def _parse_small(raw: bytes, parse: Callable[[Any], Any], key: str) -> Any:
    """``parse`` of a small object's JSON; None (with a warning) when this version cannot read it."""
    try:
        parsed = parse(json.loads(raw))
    except ValueError:
        parsed = None
    if parsed is None:
        log.warning("%s is not in a format this version reads; reading the catalog instead", key)
    return parsed


def _merged(
    cat: Catalog, records: list[tuple[str, dict[str, Any]]], snapshot: bool
) -> tuple[Catalog, Since | None]:
    """``cat`` (a snapshot, or empty when there was none readable) merged with ``records``, and what
    it was merged from (None without a snapshot: a writer then cuts every page)."""
    watermark, applied = cat.watermark, frozenset(cat.applied)
    pages = touched(cat, records)
    if records:
        cat.merge(records)
    return cat, Since(watermark, applied, frozenset(pages | touched(cat, records))) if snapshot else None


def _copy(cat: Catalog) -> Catalog:
    """A copy that merging cannot change the original through (entries themselves are immutable)."""
    return Catalog(
        backups=dict(cat.backups),
        deleted=dict(cat.deleted),
        failures=list(cat.failures),
        verifications=dict(cat.verifications),
        unreadable=dict(cat.unreadable),
        files=dict(cat.files),
        files_failures=list(cat.files_failures),
        files_due=dict(cat.files_due),
        watermark=cat.watermark,
        applied=set(cat.applied),
        generated_at=cat.generated_at,
    )
