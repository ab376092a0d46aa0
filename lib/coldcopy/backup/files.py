"""Files snapshots: the project's Storage objects, incrementally and deduplicated, in the bucket.

``take_snapshot``: one listing of every bucket, a plan (``core.files.plan_snapshot``: unchanged
objects are carried over from the previous snapshot without a request), then per new content one
GET streamed through the pipeline (zstd, AES-256-GCM) into create-only volumes and its
``meta.json`` last; an object whose content is already stored costs one HEAD (its metadata).  The
index is written after every content it names, and the commit record after the index: killed at
any point, the snapshot does not exist, and the next run finds the contents the killed one
finished (their ``meta.json``) and copies only the rest.

Memory: per content in flight, one volume filling plus one being sent and one read chunk; at most
``upload_concurrency`` contents in flight, whatever the objects' sizes.  The index itself is held
in memory (a few hundred bytes per object).
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

from coldcopy.backup.reader import finish_checked
from coldcopy.config import Settings
from coldcopy.context import Context
from coldcopy.core.files import (
    CONTENT_PREFIX,
    INFLIGHT_PREFIX,
    RECORD_FIELDS,
    SNAPSHOT_PREFIX,
    Content,
    Entry,
    Index,
    Listed,
    commit_key,
    content_id,
    content_meta_key,
    etag_md5,
    index_key,
    inflight_key,
    plan_snapshot,
    reconcile,
    snapshot_id,
    snapshots_to_delete,
    unreferenced,
    validate_snapshot_id,
)
from coldcopy.core.manifest import StoredObject
from coldcopy.core.times import iso
from coldcopy.errors import ColdCopyError, ConflictError, IntegrityError, NotFoundError
from coldcopy.pausepoints import pause_point
from coldcopy.postgres.client import Postgres
from coldcopy.storage.catalog_store import CatalogStore
from coldcopy.storage.project_files import ObjectMeta, ProjectStorage
from coldcopy.storage.store import ObjectStore
from coldcopy.storage.volumes import VolumeWriter, read_volumes
from coldcopy.stream.crypto import MasterKey
from coldcopy.stream.pipeline import READ_SIZE, Packer, StreamStats, Unpacker, pack_bytes

log = logging.getLogger(__name__)
A = TypeVar("A")
R = TypeVar("R")
#: Called with a phase name as the snapshot passes it (tests stop a snapshot there).
Hook = Callable[[str], None]
#: What one listing page of stored contents costs, in small GETs (measured on moto: ~50; Spaces ~5-10).
LIST_PAGE_IN_GETS = 20
#: The ``storage.objects`` rows (bucket, name) to check a snapshot against; None: not checked.
Rows = Callable[[], list[tuple[str, str]] | None]


@dataclass
class SnapshotReport:
    snapshot: str
    backup: str | None
    objects: int = 0
    unchanged: int = 0
    changed: int = 0
    copied_contents: int = 0  # contents read from the project and stored now
    copied_bytes: int = 0
    deduplicated: int = 0  # new or changed objects whose content was already stored: no copy
    summary: dict[str, Any] = field(default_factory=dict)
    rows: dict[str, Any] | None = None  # storage.objects against the snapshot (None: not checked)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


# -- reading what is stored -----------------------------------------------------------------------
def committed(storage: ObjectStore) -> dict[str, dict[str, Any]]:
    """Every complete snapshot's commit record, by id (one listing plus one GET per snapshot)."""
    found: dict[str, dict[str, Any]] = {}
    for obj in storage.list(SNAPSHOT_PREFIX):
        if obj.key.endswith("/snapshot.json"):
            snap = obj.key[len(SNAPSHOT_PREFIX) :].split("/")[0]
            found[snap] = storage.get_json(obj.key)
    return dict(sorted(found.items()))


def unpack(storage: ObjectStore, obj: StoredObject, key: MasterKey | None) -> bytes:
    """A small packed object (an index), authenticated and checked against its stats."""
    un = Unpacker(key, expect_object=obj.key)
    raw = b"".join(un.feed(c) for c in read_volumes(storage, obj, READ_SIZE))
    finish_checked(
        storage, un, obj.key, StreamStats(obj.raw_size, obj.raw_sha256, obj.stored_size, obj.stored_sha256)
    )
    return raw


def read_index(
    storage: ObjectStore, snap: str, key: MasterKey | None, commit: dict[str, Any] | None = None
) -> Index:
    """A committed snapshot's index, authenticated; NotFoundError when it was never committed."""
    commit = commit if commit is not None else storage.get_json(commit_key(snap))
    stats = commit["index"]
    obj = StoredObject(
        index_key(snap),
        int(stats["stored_size"]),
        stats["stored_sha256"],
        int(stats["raw_size"]),
        stats["raw_sha256"],
    )
    return Index.from_dict(json.loads(unpack(storage, obj, key)))


def content_stream(storage: ObjectStore, content: Content, key: MasterKey | None) -> tuple[Unpacker, Any]:
    """An Unpacker and the stored chunks of ``content``; feed them, then finish with
    ``backup.reader.finish_checked`` and :func:`content_stats`."""
    obj = StoredObject(
        content.data_key,
        content.stored_size,
        content.stored_sha256,
        content.raw_size,
        content.raw_sha256,
        content.volumes,
    )
    return Unpacker(key, expect_object=obj.key), read_volumes(storage, obj, READ_SIZE)


def content_stats(content: Content) -> StreamStats:
    return StreamStats(content.raw_size, content.raw_sha256, content.stored_size, content.stored_sha256)


def stored_content(storage: ObjectStore, cid: str) -> Content | None:
    """A content stored earlier (its ``meta.json``), or None."""
    try:
        return Content.from_dict(storage.get_json(content_meta_key(cid)))
    except NotFoundError:
        return None


def in_parallel(fn: Callable[[A], R], items: list[A], workers: int) -> Iterator[R]:
    """``fn`` over ``items`` with at most ``workers`` running, results in order; after the first
    failure no further call starts, and it is raised once the running ones end."""
    failed = threading.Event()

    def guarded(item: A) -> R:
        if failed.is_set():
            raise _NotStarted
        try:
            return fn(item)
        except BaseException:
            failed.set()
            raise

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="files")
    futures = [pool.submit(guarded, item) for item in items]
    try:
        for fut in futures:
            yield fut.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


class _NotStarted(Exception):
    """A call ``in_parallel`` skipped after another failed (never raised to its caller first)."""


# -- taking a snapshot ------------------------------------------------------------------------------
class _Copier:
    """Stores one content from the project: GET → zstd → AES → volumes, then its meta.json."""

    def __init__(self, ctx: Context, project: ProjectStorage, hook: Hook) -> None:
        self.ctx, self.project, self.hook = ctx, project, hook
        self.volume_size = ctx.settings.volume_size_mb << 20

    def copy(self, obj: Listed) -> tuple[Content, ObjectMeta, bool]:
        """The stored content of ``obj`` with the object's metadata; True when copied now."""
        meta, chunks = self.project.open(obj.bucket, obj.key, READ_SIZE)
        # The object as read (it may have changed since the listing): its id follows the GET.
        cid = content_id(obj.bucket, obj.key, meta.etag, meta.size, meta.last_modified)
        if cid != obj.content:
            known = stored_content(self.ctx.storage, cid)
            if known is not None:
                chunks.close()
                return known, meta, False
        data_key = f"{CONTENT_PREFIX}{cid}/data-{secrets.token_hex(4)}"
        writer = VolumeWriter(self.ctx.storage, data_key, volume_size=self.volume_size, concurrency=1)
        packer = Packer(writer, self.ctx.key, self.ctx.settings.zstd_level, object_key=data_key)
        md5 = hashlib.md5(usedforsecurity=False)
        try:
            for chunk in chunks:
                packer.write(chunk)
                md5.update(chunk)
            stats = packer.close()
            volumes = writer.complete()
        except BaseException:
            writer.abort()
            raise
        said = etag_md5(meta.etag)
        if said is not None and said != md5.hexdigest():
            self.ctx.storage.delete([f"{data_key}.{i:06d}" for i in range(len(volumes))])
            raise IntegrityError(
                f"{obj.bucket}/{obj.key[:200]}: its ETag is not the MD5 of its bytes",
                "the endpoint's ETags cannot name contents; report this endpoint to ColdCopy",
            )
        content = Content(
            cid,
            data_key,
            tuple(volumes),
            stats.stored_size,
            stats.stored_sha256,
            stats.raw_size,
            stats.raw_sha256,
            md5.hexdigest(),
        )
        self.hook("content-volumes")
        try:
            self.ctx.storage.put_json(content_meta_key(cid), content.to_dict(), create_only=True)
        except ConflictError:  # another snapshot stored the same content meanwhile: keep theirs
            theirs = stored_content(self.ctx.storage, cid)
            self.ctx.storage.delete([f"{data_key}.{i:06d}" for i in range(len(volumes))])
            if theirs is None:
                raise
            return theirs, meta, False
        self.hook("content-stored")
        return content, meta, True


def _entry(obj: Listed, meta: ObjectMeta, content: Content) -> Entry:
    return Entry(
        obj.bucket,
        obj.key,
        content.raw_size,
        meta.etag or obj.etag,
        meta.last_modified or obj.last_modified,
        content.id,
        meta.content_type,
        meta.cache_control,
        dict(meta.metadata),
    )


def latest_index(storage: ObjectStore, key: MasterKey | None) -> Index | None:
    """The newest committed snapshot's index (None before the first)."""
    commits = committed(storage)
    if not commits:
        return None
    snap = max(commits)
    return read_index(storage, snap, key, commits[snap])


def take_snapshot(
    ctx: Context,
    project: ProjectStorage,
    *,
    now: datetime,
    backup: str | None = None,
    hook: Hook | None = None,
    rows: Rows | None = None,
) -> SnapshotReport:
    """Snapshot every bucket of ``project`` into the bucket; see the module's docstring.  ``rows``:
    the ``storage.objects`` rows to count mismatches against.  The outcome goes to the catalog's
    journal (``files_snapshot``, or ``files_snapshot_failed`` with the error)."""

    def phase(name: str) -> None:  # fault tests stop here: a hook in process, a pause point in a child
        pause_point(ctx.settings, f"files:{name}")
        if hook is not None:
            hook(name)

    storage = ctx.storage
    snap = snapshot_id(now)
    if storage.exists(commit_key(snap)):
        raise ConflictError(f"files snapshot {snap} already exists", "take the next one a second later")
    storage.put_json(inflight_key(snap), {"snapshot": snap, "started_at": iso(now)})
    try:
        report = _take(ctx, project, snap, now, backup, phase, rows)
    except Exception as exc:
        _record(ctx, "files_snapshot_failed", backup or "", {"backup": backup, "error": _why(exc)}, now)
        raise
    finally:
        storage.delete([inflight_key(snap)])
    _record(ctx, "files_snapshot", snap, {k: report.summary.get(k) for k in RECORD_FIELDS}, now)
    log.info(
        "files snapshot %s: %d objects, %d changed, %d contents copied (%d bytes), %d deduplicated",
        snap,
        report.objects,
        report.changed,
        report.copied_contents,
        report.copied_bytes,
        report.deduplicated,
    )
    return report


def _why(exc: Exception) -> str:
    return exc.message if isinstance(exc, ColdCopyError) else f"{type(exc).__name__}: {str(exc)[:200]}"


def _record(ctx: Context, kind: str, name: str, payload: dict[str, Any], when: datetime) -> None:
    """A journal record of a snapshot's outcome, and the catalog brought up to it (best effort: the
    snapshot itself is complete or not whatever happens here)."""
    try:
        ctx.catalog.record(kind, name, {"name": name, **payload}, when)
        ctx.catalog.refresh()
    except ColdCopyError as exc:
        log.warning("could not record the files snapshot in the catalog: %s", exc.message)


def storage_rows(settings: Settings) -> list[tuple[str, str]] | None:
    """Every ``storage.objects`` row (bucket, name) of the database; None without a database
    setting or without that table (not a Supabase project)."""
    if not settings.db_host:
        return None
    try:
        with Postgres(settings).session() as conn:
            if conn.run("SELECT to_regclass('storage.objects') IS NOT NULL")[0][0] is not True:
                return None
            return [(str(b), str(n)) for b, n in conn.run("SELECT bucket_id, name FROM storage.objects")]
    except ColdCopyError as exc:  # the files matter more than the check: the snapshot goes on
        log.warning("storage.objects not checked against the files: %s", exc.message)
        return None


def _stored_ids(storage: ObjectStore, known: int, unknown: list[str]) -> set[str] | None:
    """The contents stored (their meta.json) when listing them all is cheaper than a GET of each
    of the ``unknown`` contents' meta.json; None when the GETs are cheaper.  The listing has about
    two keys per content (``known``: the contents the previous snapshot holds), 1,000 per page, and
    a page costs about ``LIST_PAGE_IN_GETS`` small GETs (its 1,000 entries to send and parse)."""
    pages = (2 * (known + len(unknown))) // 1000 + 1
    if len(unknown) <= pages * LIST_PAGE_IN_GETS:
        return None
    return {
        o.key[len(CONTENT_PREFIX) :].split("/")[0]
        for o in storage.list(CONTENT_PREFIX)
        if o.key.endswith("/meta.json")
    }


def _take(
    ctx: Context,
    project: ProjectStorage,
    snap: str,
    now: datetime,
    backup: str | None,
    hook: Hook,
    rows: Rows | None,
) -> SnapshotReport:
    storage = ctx.storage
    previous = latest_index(storage, ctx.key)
    buckets = project.buckets()
    listing = [obj for b in buckets for obj in project.listing(b)]
    plan = plan_snapshot(previous, listing)
    report = SnapshotReport(
        snap, backup, objects=len(listing), unchanged=len(plan.kept), changed=len(plan.changed)
    )
    hook("listed")
    known: dict[str, Content] = dict(previous.contents) if previous else {}
    groups: dict[str, list[Listed]] = {}
    for obj in plan.changed:
        groups.setdefault(obj.content, []).append(obj)
    copier = _Copier(ctx, project, hook)
    present = _stored_ids(storage, len(known), [c for c in groups if c not in known])

    def one_group(objs: list[Listed]) -> list[tuple[Entry, Content, bool]]:
        first, rest = objs[0], objs[1:]
        content = known.get(first.content)
        if content is None and (present is None or first.content in present):
            content = stored_content(storage, first.content)  # stored by a killed run, or another
        out: list[tuple[Entry, Content, bool]] = []
        if content is None:
            content, meta, copied = copier.copy(first)
            out.append((_entry(first, meta, content), content, copied))
        else:
            rest = objs
        for obj in rest:
            head = project.head(obj.bucket, obj.key)
            if head is None:  # deleted since the listing: not in this snapshot
                continue
            if content_id(obj.bucket, obj.key, head.etag, head.size, head.last_modified) != content.id:
                c2, m2, copied = copier.copy(obj)  # changed since the listing
                out.append((_entry(obj, m2, c2), c2, copied))
                continue
            out.append((_entry(obj, head, content), content, False))
        return out

    entries = list(plan.kept)
    contents = {e.content: known[e.content] for e in plan.kept}
    for results in in_parallel(one_group, list(groups.values()), ctx.settings.upload_concurrency):
        for entry, content, copied in results:
            entries.append(entry)
            if not copied:
                report.deduplicated += 1
            else:
                report.copied_contents += 1
                report.copied_bytes += content.raw_size
            contents[content.id] = content
    entries.sort(key=lambda e: (e.bucket, e.key))
    found = rows() if rows is not None else None
    report.rows = None if found is None else reconcile(found, entries)
    index = Index(snap, iso(now), backup, tuple(buckets), tuple(entries), contents)
    hook("before-index")
    packed, stats = pack_bytes(
        json.dumps(index.to_dict(), sort_keys=True).encode(),
        ctx.key,
        ctx.settings.zstd_level,
        object_key=index_key(snap),
    )
    if not storage.exists(commit_key(snap)) and storage.exists(index_key(snap)):
        storage.delete([index_key(snap)])  # the index of a killed run of this same second
    storage.put_bytes(index_key(snap), packed, create_only=True)
    hook("before-commit")
    summary = {**index.summary(), **(report.rows or {"rows_checked": None})}
    commit = {
        **summary,
        "index": {
            "stored_size": stats.stored_size,
            "stored_sha256": stats.stored_sha256,
            "raw_size": stats.raw_size,
            "raw_sha256": stats.raw_sha256,
        },
        "key_id": ctx.key.key_id if ctx.key else None,
    }
    storage.put_json(commit_key(snap), commit, create_only=True)
    report.summary = summary
    return report


# -- retention ---------------------------------------------------------------------------------------
def prune_files(
    storage: ObjectStore,
    key_of: Callable[[], MasterKey | None],
    kept_backups: list[str],
    *,
    now: datetime,
    days: int,
    stale: timedelta,
    dry_run: bool,
) -> dict[str, Any]:
    """Delete the snapshots whose backup is gone (``core.files.snapshots_to_delete``), then every
    stored content no remaining snapshot refers to.  Contents are left alone while a snapshot is
    in progress (a fresh in-flight marker) and when younger than ``stale`` (a running snapshot
    may have just stored them); leftovers of killed runs go once ``stale`` old."""
    commits = committed(storage)
    if not commits and not any(True for _ in storage.list(CONTENT_PREFIX)):
        return {"snapshots_deleted": [], "contents_deleted": 0, "reported": []}
    doomed = snapshots_to_delete({s: c.get("backup") for s, c in commits.items()}, kept_backups, now, days)
    remaining = [s for s in commits if s not in doomed]
    key = key_of() if remaining else None
    indexes = [read_index(storage, s, key, commits[s]) for s in remaining]
    reported: list[str] = []
    by_content: dict[str, list[tuple[str, datetime]]] = {}
    for obj in storage.list(CONTENT_PREFIX):
        by_content.setdefault(obj.key[len(CONTENT_PREFIX) :].split("/")[0], []).append(
            (obj.key, obj.last_modified)
        )
    needed = {e.content: i.contents[e.content] for i in indexes for e in i.entries}
    busy = [o.key for o in storage.list(INFLIGHT_PREFIX) if now - o.last_modified < stale]
    doomed_keys: list[str] = []
    for cid in unreferenced(by_content, indexes):
        if all(now - at >= stale for _, at in by_content[cid]):
            doomed_keys += [k for k, _ in by_content[cid]]
    for cid, content in needed.items():  # leftovers beside a content in use (a losing racer, a killed run)
        keep = {content_meta_key(cid)} | {f"{content.data_key}.{i:06d}" for i in range(len(content.volumes))}
        doomed_keys += [k for k, at in by_content.get(cid, []) if k not in keep and now - at >= stale]
    if busy:
        reported.append(
            f"a files snapshot is in progress ({len(busy)} marker(s)): no content deleted this time"
        )
        doomed_keys = []
    partial = [
        o.key
        for o in storage.list(SNAPSHOT_PREFIX)
        if o.key[len(SNAPSHOT_PREFIX) :].split("/")[0] not in commits and now - o.last_modified >= stale
    ]
    out = {
        "snapshots_deleted": doomed,
        "contents_deleted": len({k.split("/")[2] for k in doomed_keys if k.endswith("/meta.json")}),
        "objects_deleted": len(doomed_keys) + len(partial),
        "reported": reported,
    }
    if dry_run:
        return out
    catalog = CatalogStore(storage)  # the caller (cleanup) brings the catalog up to these records
    for snap in doomed:  # commit first: a half-deleted snapshot is never listed
        storage.delete([commit_key(snap)])
        storage.delete([index_key(snap)])
        catalog.record("files_snapshot_deleted", snap, {"name": snap}, now)
    metas = [k for k in doomed_keys if k.endswith("/meta.json")]
    storage.delete(metas)  # a content's meta first, like a snapshot's commit
    storage.delete([k for k in doomed_keys if not k.endswith("/meta.json")] + partial)
    return out


def resolve(storage: ObjectStore, name: str) -> tuple[str, dict[str, Any]]:
    """A snapshot id, or a backup's name, to its committed snapshot and commit record."""
    commits = committed(storage)
    if name.startswith("files_"):
        snap = validate_snapshot_id(name)
    else:
        snap = max((s for s, c in commits.items() if c.get("backup") == name), default="")
    if snap not in commits:
        raise NotFoundError(
            f"no complete files snapshot {name[:80]!r}", "run `coldcopy files list` to see them"
        )
    return snap, commits[snap]
