"""Reading and writing the catalog in the bucket (the I/O half of ``catalog`` and ``catalog_digest``).

Every save writes ``catalog.json`` and, beside it, its digest (``state/catalog-digest.json``, a few
kilobytes whatever the history: ``core.catalog_digest``).  The monitor's ``/metrics``, ``/status``
``/alerts`` and ``/recovery-time`` read the digest (a conditional GET) and the journal listing they
read anyway; when the listing holds records the digest has not applied, they read the catalog
instead.  ``/health`` checks that the two can be read (``check_readable``).
"""

from __future__ import annotations

import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from coldcopy.core.catalog import JOURNAL, Catalog, journal_key, start_after
from coldcopy.core.catalog_digest import DIGEST_KEY, CatalogDigest, digest, parse_digest
from coldcopy.core.manifest import Manifest, check_identity, manifest_key
from coldcopy.core.times import iso
from coldcopy.errors import ColdCopyError, IntegrityError, NotFoundError
from coldcopy.storage.store import ObjectStore, encode_json

log = logging.getLogger(__name__)
CATALOG_KEY = "catalog.json"


class CatalogStore:
    def __init__(self, storage: ObjectStore) -> None:
        self.storage = storage
        # read_cached(): the parsed snapshot with its ETag, and journal records already fetched.
        self._lock = threading.Lock()
        self._snapshot: tuple[str | None, Catalog | None] = (None, None)
        self._records: dict[str, dict[str, Any]] = {}
        self._digest: tuple[str | None, CatalogDigest | None] = (None, None)

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
        cat = self.load_snapshot() or Catalog()
        new = self._unapplied(cat.watermark, cat.applied)
        if new:
            cat.merge(self._fetch(new))
        return cat

    def read_cached(self) -> Catalog:
        """What read() answers, for long-lived readers (the web functions), without re-parsing.

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
        if records:
            cat.merge(records)
        return cat

    def _unapplied(self, watermark: str | None, applied: set[str] | frozenset[str]) -> list[str]:
        """Journal keys newer than ``watermark`` (less the skew) that are not in ``applied``."""
        return [
            o.key
            for o in self.storage.list(JOURNAL, start_after=start_after(watermark))
            if o.key.endswith(".json") and o.key not in applied
        ]

    def _stored_digest(self) -> CatalogDigest | None:
        """The stored digest as it is (one conditional GET: an unchanged digest is not downloaded or
        parsed again); None when there is none or it is unreadable."""
        with self._lock:
            etag, got_digest = self._digest
        try:
            got = self.storage.get_bytes_if_changed(DIGEST_KEY, etag)
        except NotFoundError:
            etag, got_digest, got = None, None, None
        if got is not None and got[1] != etag:
            etag, got_digest = got[1], _parse_digest_bytes(got[0])
        with self._lock:
            self._digest = (etag, got_digest)
        return got_digest

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

    @staticmethod
    def _parse_snapshot(raw: bytes) -> Catalog | None:
        try:
            return Catalog.from_dict(json.loads(raw))
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("catalog.json is unreadable (%s); reading the journal instead", exc)
            return None

    # -- writing ----------------------------------------------------------------------------------
    def save(self, cat: Catalog) -> None:
        """Write catalog.json, then its digest (a reader finds a digest behind the catalog's records
        and reads the catalog until the next save or tick)."""
        self.storage.put_json(CATALOG_KEY, cat.to_dict())
        self.storage.put_json(DIGEST_KEY, digest(cat).to_dict())

    def refresh(self) -> Catalog:
        """Read, merge and write back (writers call this after recording).  Reads as ``read_cached()``:
        a writer that read the catalog ahead (a backup, while its dump streams) downloads and
        parses ``catalog.json`` only if it changed since, and fetches no record it wrote itself."""
        cat = self.read_cached()
        self.save(cat)
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


def _parse_digest_bytes(raw: bytes) -> CatalogDigest | None:
    try:
        d = parse_digest(json.loads(raw))
    except ValueError:
        d = None
    if d is None:
        log.warning("%s is not a catalog digest this version reads; reading the catalog", DIGEST_KEY)
    return d


def _copy(cat: Catalog) -> Catalog:
    """A copy that merging cannot change the original through (entries themselves are immutable)."""
    return Catalog(
        backups=dict(cat.backups),
        deleted=dict(cat.deleted),
        failures=list(cat.failures),
        verifications=dict(cat.verifications),
        unreadable=dict(cat.unreadable),
        watermark=cat.watermark,
        applied=set(cat.applied),
        generated_at=cat.generated_at,
    )
