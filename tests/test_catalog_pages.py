"""The catalog's monthly pages: ``GET /backups`` (every page, every kind, any cursor) answers from the
index and the pages its answer comes from exactly what cutting the page from the whole catalog
answered (tests/catalog_walk.py keeps that code), falls back to the catalog while pages are behind
the journal, missing or from before pages, and the tick writes them again.  Pure tests, a
MemoryStore, and moto's S3 server over HTTP for the requests a warm call makes."""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterator
from dataclasses import asdict, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import catalog_walk
from coldcopy.alerting.notify import check_alerts
from coldcopy.config import Settings, load_settings
from coldcopy.core.catalog import Catalog
from coldcopy.core.catalog_pages import (
    INDEX_KEY,
    PAGES,
    Listing,
    Page,
    PageRef,
    SortKey,
    build,
    listing_from_pages,
    listing_of,
    page_id,
    page_key,
    parse_index,
    parse_page,
)
from coldcopy.core.manifest import CatalogEntry, Manifest, StoredObject, manifest_key
from coldcopy.core.names import KINDS
from coldcopy.core.times import iso
from coldcopy.functions import web
from coldcopy.localstack.s3server import S3Server
from coldcopy.storage import s3 as s3_module
from coldcopy.storage.catalog_store import CATALOG_KEY, CatalogStore
from coldcopy.storage.memory import MemoryStore
from coldcopy.storage.s3 import S3Store

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
TOKEN = "monitor-token-for-page-tests"
LIMITS = (1, 3, 50, 500)


def entry(when: datetime, kind: str = "full", db: str = "app", created_at: str | None = None) -> CatalogEntry:
    return CatalogEntry(
        name=f"{kind}_backup_{db}_{when:%Y%m%d_%H%M%S}",
        kind=kind,
        database=db,
        created_at=created_at or iso(when),
        finished_at=iso(when + timedelta(seconds=60)),
        duration_seconds=60.0,
        size_bytes=1000,
        raw_size_bytes=3000,
        encrypted=True,
        key_id="k1",
        server_version="15.18",
    )


def history(seed: int, n: int = 240) -> Catalog:
    """``n`` backups over 14 months at random times (some sharing a created_at, so the name breaks
    the tie), of every kind, about half of them verified; plus one whose created_at is not ISO."""
    rng = random.Random(seed)
    cat = Catalog()
    start = NOW - timedelta(days=420)
    for i in range(n):
        when = start + timedelta(minutes=rng.randrange(0, 420 * 24 * 60, 30))
        kind = rng.choice(KINDS)
        e = entry(when, kind, f"db{i % 3}")
        cat.backups[e.name] = e
        if rng.random() < 0.5:
            cat.verifications[e.name] = {
                "name": e.name,
                "ok": rng.random() < 0.8,
                "at": iso(when),
                "checks": [],
            }
    odd = entry(start - timedelta(days=1), created_at="unknown time")
    cat.backups[odd.name] = odd
    cat.verifications["full_backup_gone_20250101_000000"] = {"ok": True, "at": iso(start)}  # a deleted one's
    return cat


def oracle(cat: Catalog, kind: str | None, limit: int, after: SortKey | None) -> Listing:
    rows, total, next_key = catalog_walk.backups_page(cat, kind, limit, after)
    return Listing(rows, total, next_key)


def stored_pages(cat: Catalog) -> tuple[Any, dict[str, bytes]]:
    """The index and the bodies as a reader gets them (through their JSON)."""
    index, bodies = build(cat)
    again = parse_index(json.loads(json.dumps(index.to_dict())))
    assert again == index
    return again, bodies


def cursors(cat: Catalog) -> Iterator[SortKey]:
    """Every backup's own sort key, one just after and one just before it (a deleted backup's), and
    times before, between and after every month."""
    for e in cat.backups.values():
        yield e.created_at, e.name
        yield e.created_at, e.name + "-deleted"
        yield e.created_at, e.name[:-1]
    for month in range(1, 13):
        for year in (2025, 2026, 2027):
            yield f"{year}-{month:02d}", ""
            yield f"{year}-{month:02d}-31T99", "z"
    yield "", ""
    yield "\uffff", "\uffff"


# -- pure: the pages answer what the whole catalog answered ---------------------------------------
def test_every_listing_from_the_pages_is_the_whole_catalogs() -> None:
    cat = history(seed=18)
    index, bodies = stored_pages(cat)
    assert len(index.pages) >= 14 and all(len(b) < 64_000 for b in bodies.values())

    def load(ref: PageRef) -> Page | None:
        return parse_page(bodies[ref.key], ref)

    for kind in (None, *KINDS):
        for limit in LIMITS:
            # Every page of the walk, cursor after cursor.
            after: SortKey | None = None
            seen: list[str] = []
            while True:
                got = listing_from_pages(index, load, kind, limit, after)
                assert got == oracle(cat, kind, limit, after) == listing_of(cat, kind, limit, after)
                seen += [e.name for e, _ in got.rows]
                if got.next_key is None:
                    break
                after = got.next_key
            assert seen == [e.name for e in cat.entries(kind)]
        for cursor in cursors(cat):
            assert listing_from_pages(index, load, kind, 7, cursor) == oracle(cat, kind, 7, cursor), cursor


def test_a_listing_reads_only_the_pages_its_answer_comes_from() -> None:
    cat = history(seed=5, n=600)
    index, bodies = stored_pages(cat)
    for kind in (None, "compliance"):
        for limit in LIMITS:
            for cursor in [None, *list(cursors(cat))[::37]]:
                loaded: list[str] = []

                def load(ref: PageRef, loaded: list[str] = loaded) -> Page | None:
                    loaded.append(ref.id)
                    return parse_page(bodies[ref.key], ref)

                got = listing_from_pages(index, load, kind, limit, cursor)
                assert got is not None
                needed = {page_id(e.created_at) for e, _ in got.rows}
                if cursor is not None:
                    needed.add(page_id(cursor[0]))  # the cursor's own month may hold only newer ones
                assert set(loaded) <= needed and len(loaded) == len(set(loaded)), (loaded, needed)


def test_a_page_that_is_not_the_one_the_index_names_is_not_read() -> None:
    cat = history(seed=3)
    index, bodies = stored_pages(cat)
    ref = index.pages[0]
    other = index.pages[1]
    assert parse_page(bodies[ref.key], ref) is not None
    assert parse_page(bodies[other.key], ref) is None  # another page's bytes
    assert parse_page(bodies[ref.key][:-1], ref) is None  # truncated
    assert parse_page(b"not json", PageRef(ref.id, "0" * 64, 8, {})) is None
    assert listing_from_pages(index, lambda r: None, None, 50, None) is None  # the reader falls back
    assert parse_index({"format": "something else"}) is None
    assert parse_index({**index.to_dict(), "pages": [["2026-11", "x"]]}) is None
    assert page_key("2026-11") == f"{PAGES}2026-11.json"
    assert page_key("../../x").startswith(PAGES) and "/" not in page_key("../../x")[len(PAGES) :]


def test_an_entry_as_a_row_is_what_asdict_made() -> None:
    e = replace(entry(NOW), platform={"platform": "supabase", "schemas": ["auth", "storage"], "n": {"x": 1}})
    d = e.to_dict()
    assert d == asdict(e) and list(d) == list(asdict(e))
    d["platform"]["schemas"].append("changed")  # a copy: the entry is not changed through it
    assert e.platform["schemas"] == ["auth", "storage"]


# -- the bucket: writers, the tick's repair, the fallbacks ----------------------------------------
class Counting(MemoryStore):
    """A MemoryStore that notes each request: ("GET"|"PUT"|"LIST"|"DELETE", key or prefix)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, str]] = []

    def get_bytes(self, key: str, byte_range: tuple[int, int] | None = None) -> bytes:
        self.seen.append(("GET", key))
        return super().get_bytes(key, byte_range)

    def get_bytes_if_changed(self, key: str, etag: str | None) -> tuple[bytes, str] | None:
        self.seen.append(("GET", key))
        return super().get_bytes_if_changed(key, etag)

    def put_bytes(
        self,
        key: str,
        data: bytes,
        *,
        create_only: bool = False,
        content_type: str = "application/octet-stream",
    ) -> None:
        self.seen.append(("PUT", key))
        super().put_bytes(key, data, create_only=create_only, content_type=content_type)

    def list(self, prefix: str, *, start_after: str | None = None) -> Any:
        self.seen.append(("LIST", prefix))
        return super().list(prefix, start_after=start_after)

    def delete(self, keys: list[str]) -> None:
        self.seen += [("DELETE", k) for k in keys]
        super().delete(keys)

    def take(self) -> list[tuple[str, str]]:
        out, self.seen = self.seen, []
        return out


@pytest.fixture
def settings(memory_env: dict[str, str]) -> Settings:
    return load_settings(memory_env, env_file=Path(os.devnull))


def every_listing(store: CatalogStore, cat: Catalog) -> None:
    """Each kind's every page, and a few cursors, as the whole catalog answers them."""
    for kind in (None, *KINDS):
        after: SortKey | None = None
        while True:
            got = store.listing(kind, 50, after)
            assert got == oracle(cat, kind, 50, after)
            if got.next_key is None:
                break
            after = got.next_key
        for cursor in list(cursors(cat))[::53]:
            assert store.listing(kind, 20, cursor) == oracle(cat, kind, 20, cursor)


def test_a_lost_page_is_read_around_and_the_tick_writes_it_again(settings: Settings) -> None:
    storage = Counting()
    cat = history(seed=11)
    CatalogStore(storage).save(cat)
    lost = build(cat)[0].pages[2].key
    storage.delete([lost])
    store = CatalogStore(storage)
    every_listing(store, cat)  # the catalog answers the listings that need the lost page
    storage.take()
    check_alerts(settings, storage, NOW)  # the tick
    assert [k for op, k in storage.take() if op == "PUT" and k.startswith(PAGES)] == [lost]
    # Answered from the pages alone now: without catalog.json, the same answers.
    storage.delete([CATALOG_KEY])
    every_listing(CatalogStore(storage), cat)
    # A page that is not the one the index names (left by another save, damaged): read around.
    storage.put_json(CATALOG_KEY, cat.to_dict())
    storage.put_bytes(lost, b"{}")
    every_listing(CatalogStore(storage), cat)
    storage.take()
    check_alerts(settings, storage, NOW)
    assert [k for op, k in storage.take() if op == "PUT" and k.startswith(PAGES)] == [lost]


def test_a_bucket_written_by_the_old_layout(settings: Settings) -> None:
    """catalog.json (and the journal) only, as a version before pages left it: the listings come
    from the catalog with the journal's fresh records; the tick writes the pages and the index."""
    storage = MemoryStore()
    cat = history(seed=21)
    storage.put_json(CATALOG_KEY, cat.to_dict())
    fresh = entry(NOW - timedelta(hours=1), "compliance")
    store = CatalogStore(storage)
    store.record("backup", fresh.name, {"name": fresh.name, "entry": fresh.to_dict()}, NOW)
    cat = store.read()
    assert fresh.name in cat.backups and not storage.exists(INDEX_KEY)
    every_listing(CatalogStore(storage), cat)
    # A cursor handed out before the pages existed pages on the same after them.
    cursor = store.listing(None, 30, None).next_key
    check_alerts(settings, storage, NOW)
    index = parse_index(storage.get_json(INDEX_KEY))
    assert index is not None and index == build(cat)[0]
    assert {o.key for o in storage.list(PAGES)} == {r.key for r in index.pages}
    storage.delete([CATALOG_KEY])
    every_listing(CatalogStore(storage), cat)
    assert CatalogStore(storage).listing(None, 30, cursor) == oracle(cat, None, 30, cursor)


def test_records_the_index_has_not_applied_are_in_the_answer(settings: Settings) -> None:
    storage = MemoryStore()
    store = CatalogStore(storage)
    cat = history(seed=8)
    store.save(cat)
    late = entry(NOW - timedelta(minutes=5))
    store.record("backup", late.name, {"name": late.name, "entry": late.to_dict()}, NOW)
    gone = cat.entries()[3].name
    store.record("backup_deleted", gone, {"name": gone}, NOW)
    store.record("verification", late.name, {"name": late.name, "ok": True}, NOW)
    first = store.listing(None, 10, None)
    rows = dict((e.name, v) for e, v in first.rows)
    assert rows[late.name] is not None and gone not in rows
    assert first == oracle(store.read(), None, 10, None)
    store.refresh()  # a writer's save: the pages apply the records
    storage.delete([CATALOG_KEY])
    assert store.listing(None, 10, None) == first


def test_the_catalog_rebuild_writes_the_pages_from_the_manifests() -> None:
    storage = MemoryStore()
    for month in range(5):
        for day in (3, 17):
            when = NOW - timedelta(days=31 * month + day)
            e = entry(when, "compliance" if day == 3 else "full")
            m = Manifest(
                name=e.name,
                kind=e.kind,
                database=e.database,
                cluster="app",
                started_at=e.created_at,
                finished_at=e.finished_at,
                duration_seconds=60.0,
                server_version="15.18",
                server_version_num=150018,
                tool="pg_dump 15.18",
                data=StoredObject(f"backups/{e.name}/data", 10, "0" * 64, 30, "1" * 64),
                compression={"algorithm": "zstd", "level": 1},
                encryption={"algorithm": "AES-256-GCM", "key_id": "k1"},
            )
            storage.put_json(manifest_key(e.name), m.to_dict(), create_only=True)
    storage.put_bytes(page_key("2020-01"), b"a page of a month with no backup left")
    cat = CatalogStore(storage).rebuild()
    assert len(cat.backups) == 10
    assert parse_index(storage.get_json(INDEX_KEY)) == build(cat)[0]
    assert sorted(o.key for o in storage.list(PAGES)) == sorted(build(cat)[1])  # 2020-01 is gone
    storage.delete([CATALOG_KEY])
    every_listing(CatalogStore(storage), cat)


def test_a_writer_rewrites_only_the_pages_that_changed() -> None:
    storage = Counting()
    store = CatalogStore(storage)
    cat = history(seed=2)
    store.save(cat)
    pages = build(cat)[0].pages
    assert sorted(k for op, k in storage.take() if op == "PUT" and k.startswith(PAGES)) == sorted(
        r.key for r in pages
    )

    def written() -> list[str]:
        return [
            k for op, k in storage.take() if op in ("PUT", "DELETE") and k.startswith(("catalog/", PAGES))
        ]

    new = entry(NOW)  # this month's backup: this month's page and the index
    cat.backups[new.name] = new
    store.save(cat)
    assert written() == [page_key(page_id(new.created_at)), INDEX_KEY]
    old = pages[-3].id  # a verification of an old backup: its month's page
    name = next(e.name for e in cat.entries() if page_id(e.created_at) == old)
    cat.verifications[name] = {"ok": True, "at": iso(NOW), "level": "full"}
    store.save(cat)
    assert written() == [page_key(old), INDEX_KEY]
    store.save(cat)  # nothing changed: nothing rewritten
    assert written() == []
    for e in [e for e in cat.entries() if page_id(e.created_at) == old]:  # retention empties a month
        del cat.backups[e.name]
    store.save(cat)
    assert written() == [INDEX_KEY, page_key(old)]  # the index first, then the page it no longer names
    every_listing(store, cat)


# -- over HTTP: the requests a call makes ----------------------------------------------------------
def test_backups_reads_the_index_and_only_the_pages_it_needs(
    s3_server: S3Server, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {**s3_server.spaces_env(bucket), "MONITOR_TOKEN": TOKEN, "COLDCOPY_LAUNCHER": "none"}
    settings = load_settings(env, env_file=Path(os.devnull))
    calls: list[tuple[str, str]] = []
    real = s3_module.open_store

    def counting(s: Settings) -> S3Store:
        store = real(s)

        def seen(model: Any, params: dict[str, Any], **_: Any) -> None:
            calls.append((model.name, str(params.get("Key", params.get("Prefix", "")))))

        store.client.meta.events.register("before-parameter-build.s3", seen)
        return store

    monkeypatch.setattr(s3_module, "open_store", counting)
    cat = history(seed=13, n=400)
    CatalogStore(real(settings)).save(cat)
    web.use_settings(settings, clock=lambda: NOW)
    try:

        def get(query: str) -> dict[str, Any]:
            calls.clear()
            r = web.handle(
                "backups", {"http": {"method": "GET", "path": "", "headers": auth}, **query_of(query)}
            )
            assert r["statusCode"] == 200, r
            body: dict[str, Any] = json.loads(r["body"])
            return body

        auth = {"authorization": f"Bearer {TOKEN}"}
        first = get("limit=200")
        got = sorted(k.removeprefix(settings.prefix) for op, k in calls if op == "GetObject")
        needed = {page_key(page_id(e.created_at)) for e in cat.entries()[:200]}
        assert got == sorted([INDEX_KEY, *needed]) and len(needed) < len(build(cat)[0].pages)
        assert [e["name"] for e in first["backups"]] == [e.name for e in cat.entries()[:200]]
        assert first["total"] == len(cat.backups)
        get("limit=200")  # warm: the index (unchanged: 304) and the journal listing, no page
        assert sorted(op for op, _ in calls) == ["GetObject", "ListObjectsV2"], calls
        last = get(f"limit=500&cursor={first['next_cursor']}")
        assert [e["name"] for e in last["backups"]] == [e.name for e in cat.entries()[200:]]
        assert last["next_cursor"] is None
    finally:
        web.use_settings(None)


def query_of(query: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in query.split("&"))


def test_a_writer_cuts_only_the_pages_its_records_touched_and_stores_what_cutting_all_gives(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Writers' records of every kind (new backups in old and new months, a backup recorded again
    with another created_at, deletions, verifications, failures, files snapshots taken and deleted,
    job runs), a writer that dies
    before its save, ticks that advance the index over run records: after each save the stored
    index and pages are what cutting the whole catalog gives, and most saves cut only a page."""
    from coldcopy.storage import catalog_store

    full_cuts: list[int] = []
    real_build = catalog_store.build
    monkeypatch.setattr(catalog_store, "build", lambda cat: full_cuts.append(1) or real_build(cat))
    rng = random.Random(23)
    storage = MemoryStore()
    store = CatalogStore(storage)
    store.save(history(seed=3, n=120))
    names = sorted(store.read().backups)
    saves = 0
    for step in range(120):
        when = NOW + timedelta(minutes=10 * step)
        roll = rng.random()
        if roll < 0.3:
            e = entry(when - timedelta(days=rng.choice([0, 0, 40, 200])), rng.choice(KINDS))
            names.append(e.name)
            store.record("backup", e.name, {"name": e.name, "entry": e.to_dict()}, when=when)
        elif roll < 0.4:
            old = store.read().backups.get(rng.choice(names))
            if old is not None:  # the same backup recorded again, in another month
                moved = replace(old, created_at=iso(when))
                store.record("backup", old.name, {"name": old.name, "entry": moved.to_dict()}, when=when)
        elif roll < 0.5:
            store.record("backup_deleted", rng.choice(names), {"name": rng.choice(names)}, when=when)
        elif roll < 0.7:
            name = rng.choice(names)
            store.record("verification", name, {"name": name, "ok": rng.random() < 0.7}, when=when)
        elif roll < 0.75:
            store.record("backup_failed", "x", {"name": "x", "kind": "full"}, when=when)
        elif roll < 0.8:  # a files snapshot taken with a backup, or one retention deleted
            snap = f"s{rng.randrange(8)}"
            if rng.random() < 0.7:
                rec = {"name": snap, "backup": rng.choice(names), "created_at": iso(when)}
                store.record("files_snapshot", snap, rec, when=when)
            else:
                store.record("files_snapshot_deleted", snap, {"name": snap}, when=when)
        else:
            store.record("run", f"r{step}", {"run_id": f"r{step}", "kind": "verify"}, when=when)
        if rng.random() < 0.3:
            store.upkeep(when)  # the tick: advances the index over run records and failures
        if rng.random() < 0.8:  # else the writer died between its record and its save
            store.refresh()
            saves += 1
            cat = store.read()
            index, bodies = real_build(cat)
            assert parse_index(storage.get_json(INDEX_KEY)) == index, step
            assert {k: storage.get_bytes(k) for k in bodies} == bodies, step
            assert sorted(o.key for o in storage.list(PAGES)) == sorted(bodies)
    assert len(full_cuts) < saves / 3, (len(full_cuts), saves)
