"""Files snapshots of the project's Storage: a second moto server on loopback stands in for Supabase
Storage's S3 endpoint; the bucket is the session's S3 server (Spaces)."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import tracemalloc
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from cli_helpers import killed_at_point, run_cli, web_get
from coldcopy.backup.files import committed, prune_files, resolve, take_snapshot
from coldcopy.config import Settings, load_settings
from coldcopy.context import Context, open_context
from coldcopy.core.alerts import evaluate
from coldcopy.core.catalog import Catalog, journal_key
from coldcopy.core.files import CONTENT_PREFIX, Entry, drill_sample, inflight_key
from coldcopy.core.manifest import CatalogEntry
from coldcopy.core.metrics import render
from coldcopy.core.runbooks import Facts, build_plan
from coldcopy.core.thresholds import Thresholds
from coldcopy.core.times import iso
from coldcopy.core.views import status_view
from coldcopy.errors import IntegrityError
from coldcopy.functions import web
from coldcopy.localstack.s3server import Counted, S3Server
from coldcopy.ops import queue
from coldcopy.ops.worker import HANDLERS, run_worker
from coldcopy.postgres.cluster import PgCluster
from coldcopy.restore.files import restore_files, verify_files
from coldcopy.storage.project_files import ProjectStorage, open_project_storage
from coldcopy.verify.files_drill import drill_files
from test_metrics import assert_clean

T0 = datetime(2026, 11, 24, 2, 0, tzinfo=UTC)
UNICODE_KEY = "users/ünï cödé/fïle ✓ (1).txt"


@pytest.fixture(scope="module")
def storage_server() -> Iterator[S3Server]:
    """The Storage stand-in: a second S3 server, emptied before each test (``project``)."""
    with S3Server() as server:
        yield server


@pytest.fixture
def env(storage_server: S3Server, s3_server: S3Server, bucket: str) -> dict[str, str]:
    storage_server.reset()
    return {
        **s3_server.spaces_env(bucket),
        "COLDCOPY_CLUSTER": "files",
        "BACKUP_ENCRYPTION_KEY": secrets.token_urlsafe(32),
        "SUPABASE_STORAGE_ENDPOINT": storage_server.endpoint_url,
        "SUPABASE_STORAGE_REGION": storage_server.region,
        "SUPABASE_STORAGE_KEY": "project-key",
        "SUPABASE_STORAGE_SECRET": "project-storage-secret-xyz",
        "COLDCOPY_ENV_FILE": os.devnull,
        "HOME": os.environ.get("HOME", "/root"),
    }


@pytest.fixture
def settings(env: dict[str, str]) -> Settings:
    return load_settings(env)


def _put(server: S3Server, bucket: str, key: str, body: bytes, **extra: Any) -> None:
    server.client().put_object(Bucket=bucket, Key=key, Body=body, **extra)


def _seed(server: S3Server) -> None:
    c = server.client()
    for b in ("avatars", "docs", "empty-bucket"):
        c.create_bucket(Bucket=b)
    _put(
        server,
        "avatars",
        "u1/me.png",
        b"\x89PNG" + b"a" * 3000,
        ContentType="image/png",
        CacheControl="max-age=3600",
    )
    _put(
        server,
        "avatars",
        "u2/me.png",
        b"\x89PNG" + b"b" * 2000,
        ContentType="image/png",
        Metadata={"owner": "u2"},
    )
    _put(server, "docs", UNICODE_KEY, "héllo wörld\n".encode(), ContentType="text/plain; charset=utf-8")
    _put(server, "docs", "a/b/c/deep key.txt", b"deep", Metadata={"x-note": "kept", "size": "4"})
    _put(server, "docs", "empty", b"")
    _put(server, "docs", "copy-of-u1.png", b"\x89PNG" + b"a" * 3000, ContentType="image/png")  # same bytes


def _state(server: S3Server) -> dict[tuple[str, str], tuple[bytes, str, str, dict[str, str]]]:
    """Every object of every bucket: bytes, content type, cache control, user metadata."""
    c = server.client()
    out = {}
    for b in c.list_buckets()["Buckets"]:
        for o in c.list_objects_v2(Bucket=b["Name"]).get("Contents", []):
            r = c.get_object(Bucket=b["Name"], Key=o["Key"])
            out[(b["Name"], o["Key"])] = (
                r["Body"].read(),
                r.get("ContentType", ""),
                r.get("CacheControl", ""),
                r.get("Metadata", {}),
            )
    return out


def _contents(ctx: Context) -> set[str]:
    return {o.key.split("/")[2] for o in ctx.storage.list(CONTENT_PREFIX) if o.key.endswith("/meta.json")}


def _project(settings: Settings) -> tuple[ProjectStorage, Counted]:
    p = open_project_storage(settings)
    return p, Counted(p.client)


def test_a_snapshot_restores_into_an_empty_project_equal_object_by_object(
    settings: Settings, storage_server: S3Server
) -> None:
    _seed(storage_server)
    before = _state(storage_server)
    ctx = open_context(settings)
    project, counted = _project(settings)
    r = take_snapshot(ctx, project, now=T0, backup="full_backup_app_20261124_020000")
    assert (r.objects, r.changed, r.copied_contents) == (6, 6, 5)  # the copy of u1's avatar is deduplicated
    assert len(_contents(ctx)) == 5
    assert counted.calls["GetObject"] == 5 and counted.calls["HeadObject"] == 1
    assert list(committed(ctx.storage)) == ["files_20261124_020000"]
    assert resolve(ctx.storage, "full_backup_app_20261124_020000")[0] == "files_20261124_020000"

    storage_server.reset()  # the disaster: a new, empty project
    assert _state(storage_server) == {}
    out = restore_files(ctx, open_project_storage(settings), "full_backup_app_20261124_020000")
    assert out.ok and (out.restored, out.checked, out.skipped) == (6, 6, 0)
    assert sorted(out.buckets_created) == ["avatars", "docs"]
    assert _state(storage_server) == before  # bytes, content type, cache control, metadata

    again = restore_files(ctx, open_project_storage(settings), "files_20261124_020000")
    assert (again.restored, again.skipped) == (0, 6)  # already identical: nothing written

    storage_server.reset()  # a support case: one folder of one bucket
    part = restore_files(
        ctx, open_project_storage(settings), "files_20261124_020000", bucket="docs", prefix="a/"
    )
    assert part.ok and part.restored == 1
    assert list(_state(storage_server)) == [("docs", "a/b/c/deep key.txt")]


def test_a_second_snapshot_copies_only_new_and_changed_objects(
    settings: Settings, storage_server: S3Server
) -> None:
    _seed(storage_server)
    ctx = open_context(settings)
    take_snapshot(ctx, open_project_storage(settings), now=T0)
    _put(storage_server, "docs", "a/b/c/deep key.txt", b"deeper now")  # changed
    _put(storage_server, "avatars", "u3/me.png", b"new avatar", ContentType="image/png")  # added
    _put(storage_server, "avatars", "u3/again.png", b"\x89PNG" + b"b" * 2000)  # added, bytes already stored
    storage_server.client().delete_object(Bucket="docs", Key="empty")  # deleted
    project, counted = _project(settings)
    spaces = Counted(ctx.storage.client)  # type: ignore[attr-defined]
    r = take_snapshot(ctx, project, now=T0 + timedelta(days=1))
    assert (r.objects, r.unchanged, r.changed, r.copied_contents, r.deduplicated) == (7, 4, 3, 2, 1)
    # The listing, plus one GET per new content and one HEAD for the one already stored.
    assert dict(counted.calls) == {"ListBuckets": 1, "ListObjectsV2": 3, "GetObject": 2, "HeadObject": 1}
    # Bucket side: 2 contents × (volume + meta) + index + commit + in-flight marker, then the
    # catalog's journal record, catalog.json, its page index (no backups: no page) and its digest.
    assert spaces.calls["PutObject"] == 7 + 4

    project, counted = _project(settings)
    spaces = Counted(ctx.storage.client)  # type: ignore[attr-defined]
    r3 = take_snapshot(ctx, project, now=T0 + timedelta(days=2))
    assert (r3.changed, r3.copied_contents) == (0, 0)
    assert dict(counted.calls) == {"ListBuckets": 1, "ListObjectsV2": 3}
    # marker, index, commit (+ the catalog: journal record, catalog.json, page index, digest); GETs:
    # the previous index and commit, the catalog.json and the page index (not the journal record
    # just written: the writer keeps what it wrote)
    assert spaces.calls["PutObject"] == 3 + 4 and spaces.calls["GetObject"] == 3 + 2


class Killed(Exception):
    pass


@pytest.mark.parametrize("at", ["content-volumes", "content-stored", "before-index", "before-commit"])
def test_a_killed_snapshot_is_never_listed_and_the_next_run_copies_only_what_is_missing(
    settings: Settings, storage_server: S3Server, at: str
) -> None:
    _seed(storage_server)
    ctx = open_context(settings.__class__(**{**settings.__dict__, "upload_concurrency": 1}))
    seen: Counter[str] = Counter()

    def hook(phase: str) -> None:
        seen[phase] += 1
        if phase == at and seen[phase] == (3 if at.startswith("content") else 1):
            raise Killed(phase)

    with pytest.raises(Killed):
        take_snapshot(ctx, open_project_storage(settings), now=T0, hook=hook)
    assert committed(ctx.storage) == {}
    assert run_cli(dict(os.environ) | _env_of(settings), "files", "list").out.startswith("no files snapshots")
    done = len(_contents(ctx))
    assert done == {"content-volumes": 2, "content-stored": 3}.get(at, 5)
    project, counted = _project(settings)
    r = take_snapshot(ctx, project, now=T0 + timedelta(minutes=5))
    assert r.copied_contents == 5 - done and counted.calls["GetObject"] == 5 - done
    assert list(committed(ctx.storage)) == ["files_20261124_020500"]
    assert verify_files(ctx, "files_20261124_020500")["ok"]


def _env_of(settings: Settings) -> dict[str, str]:
    return {name: value.reveal() for name, value in settings.variables} | {"COLDCOPY_ENV_FILE": os.devnull}


def test_a_large_object_is_streamed_in_bounded_memory(env: dict[str, str], storage_server: S3Server) -> None:
    settings = load_settings({**env, "COLDCOPY_VOLUME_SIZE_MB": "1", "COLDCOPY_UPLOAD_CONCURRENCY": "1"})
    storage_server.create_bucket("exports")
    big = os.urandom(24 << 20)  # incompressible, 3 restore parts, 24 volumes
    _put(storage_server, "exports", "big.bin", big, ContentType="application/octet-stream")
    digest = hashlib.sha256(big).hexdigest()
    del big
    ctx = open_context(settings)
    project = open_project_storage(settings)
    tracemalloc.start()
    try:
        take_snapshot(ctx, project, now=T0)
        _, peak_snapshot = tracemalloc.get_traced_memory()
        storage_server.reset()
        tracemalloc.reset_peak()
        out = restore_files(ctx, open_project_storage(settings), "files_20261124_020000")
        _, peak_restore = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out.ok and out.restored == 1
    body = storage_server.client().get_object(Bucket="exports", Key="big.bin")["Body"].read()
    assert hashlib.sha256(body).hexdigest() == digest
    print(f"peak Python memory: snapshot {peak_snapshot >> 20} MiB, restore {peak_restore >> 20} MiB")
    assert peak_snapshot < 12 << 20  # half the object: volumes of 1 MiB, one read chunk
    assert peak_restore < 36 << 20  # parts of 8 MiB (a part, its join, botocore), not the object


def test_a_damaged_content_is_found_by_verify_and_refused_by_restore(
    settings: Settings, storage_server: S3Server, s3_server: S3Server, bucket: str
) -> None:
    _seed(storage_server)
    ctx = open_context(settings)
    take_snapshot(ctx, open_project_storage(settings), now=T0)
    assert verify_files(ctx, "files_20261124_020000")["ok"]
    vol = next(o for o in ctx.storage.list(CONTENT_PREFIX) if o.key.endswith(".000000"))
    data = bytearray(ctx.storage.get_bytes(vol.key))
    data[-5] ^= 1
    s3_server.client().put_object(Bucket=bucket, Key=ctx.storage.full_key(vol.key), Body=bytes(data))
    out = verify_files(ctx, "files_20261124_020000")
    assert not out["ok"] and list(out["damaged_contents"]) == [vol.key.split("/")[2]]
    storage_server.reset()
    with pytest.raises(IntegrityError):
        restore_files(ctx, open_project_storage(settings), "files_20261124_020000")
    assert len(_state(storage_server)) < 6  # the damaged one never reached the project


def test_retention_deletes_unreferenced_contents_and_keeps_what_a_retained_snapshot_needs(
    settings: Settings, storage_server: S3Server
) -> None:
    storage_server.create_bucket("bkt")
    _put(storage_server, "bkt", "shared", b"in both snapshots")
    _put(storage_server, "bkt", "old-only", b"only in the first")
    ctx = open_context(settings)
    take_snapshot(ctx, open_project_storage(settings), now=T0, backup="full_backup_app_20261124_020000")
    storage_server.client().delete_object(Bucket="bkt", Key="old-only")
    _put(storage_server, "bkt", "new", b"only in the second")
    take_snapshot(
        ctx,
        open_project_storage(settings),
        now=T0 + timedelta(days=1),
        backup="full_backup_app_20261125_020000",
    )
    assert len(_contents(ctx)) == 3
    later = T0 + timedelta(days=40)
    kept = ["full_backup_app_20261125_020000"]

    ctx.storage.put_json(inflight_key("files_20261224_020000"), {})  # a snapshot is being taken now
    busy = prune_files(
        ctx.storage,
        lambda: ctx.key,
        kept,
        now=ctx.storage.head(inflight_key("files_20261224_020000")).last_modified,
        days=30,
        stale=timedelta(minutes=15),
        dry_run=False,
    )  # type: ignore[union-attr]
    assert busy["snapshots_deleted"] == ["files_20261124_020000"] and busy["contents_deleted"] == 0
    assert len(_contents(ctx)) == 3 and busy["reported"]
    ctx.storage.delete([inflight_key("files_20261224_020000")])

    out = prune_files(
        ctx.storage, lambda: ctx.key, kept, now=later, days=30, stale=timedelta(minutes=15), dry_run=False
    )
    assert out["contents_deleted"] == 1
    assert list(committed(ctx.storage)) == ["files_20261125_020000"]
    assert list(ctx.catalog.read().files) == ["files_20261125_020000"]  # the catalog follows
    storage_server.reset()
    r = restore_files(ctx, open_project_storage(settings), "files_20261125_020000")
    assert r.ok and r.restored == 2  # every content the retained snapshot needs is still there


def test_without_the_settings_nothing_changes(memory_env: dict[str, str]) -> None:
    settings = load_settings(memory_env)
    assert not settings.files_configured
    r = run_cli(memory_env, "files", "backup")
    assert r.rc == 2 and "SUPABASE_STORAGE_ENDPOINT is not set" in r.err
    assert "SUPABASE_STORAGE_SECRET" in r.err and "memory-store-secret" not in r.err
    assert "files-snapshot" in HANDLERS


def test_the_storage_secret_never_shows(env: dict[str, str]) -> None:
    bad = {**env, "SUPABASE_STORAGE_ENDPOINT": "http://127.0.0.1:9"}  # nothing listens
    r = run_cli(bad, "files", "backup")
    assert r.rc != 0 and "project's Storage" in r.err
    assert env["SUPABASE_STORAGE_SECRET"] not in r.err + r.out
    assert "project-storage-secret" not in repr(load_settings(env))


# -- tied to the database backup ------------------------------------------------------------------
@pytest.fixture
def coldcopy_db(fresh_db: str) -> str:
    """The database ``coldcopy_env`` points at here: a fresh one, given a ``storage.objects`` table."""
    return fresh_db


def _storage_objects(pg: PgCluster, db: str, rows: list[tuple[str, str]]) -> None:
    """The part of Supabase's storage schema the check reads: ``storage.objects (bucket_id, name)``."""
    conn = pg.connect(db)
    try:
        conn.run("CREATE SCHEMA storage")
        conn.run("CREATE TABLE storage.objects (id serial PRIMARY KEY, bucket_id text, name text)")
        for b, n in rows:
            conn.run("INSERT INTO storage.objects (bucket_id, name) VALUES (:b, :n)", b=b, n=n)
    finally:
        conn.close()


def test_a_scheduled_full_backup_is_followed_by_its_snapshot_and_every_view_shows_the_pair(
    coldcopy_env: dict[str, str], env: dict[str, str], pg: PgCluster, fresh_db: str, storage_server: S3Server
) -> None:
    _seed(storage_server)
    # Rows for four of the six objects, and one row whose file is gone: 1 row without a file,
    # 2 files without a row (the unicode key and the copy of u1's avatar).
    rows = [("avatars", "u1/me.png"), ("avatars", "u2/me.png"), ("docs", "a/b/c/deep key.txt")]
    _storage_objects(pg, fresh_db, [*rows, ("docs", "empty"), ("avatars", "gone/lost.png")])
    full = {**env, **coldcopy_env, "MONITOR_TOKEN": "t" * 32, "COLDCOPY_CLUSTER": "files"}
    settings = load_settings(full)
    queue.enqueue(open_context(settings).storage, "backup-full", {})
    report = run_worker(settings, heartbeat_seconds=5)
    assert [(r["kind"], r["state"]) for r in report.runs] == [
        ("backup-full", "succeeded"),
        ("files-snapshot", "succeeded"),
    ]
    ctx = open_context(settings)
    name = ctx.catalog.read().entries()[0].name
    (snap,) = committed(ctx.storage)
    assert list(ctx.catalog.read().files) == [snap]  # keyed by snapshot id
    assert list(ctx.catalog.read().files_due) == [name]  # the worker queued it after the backup

    listed = json.loads(run_cli(full, "list-backups", "--json").out)
    assert [(r["name"], r["files_snapshot"]) for r in listed] == [(name, snap)]
    assert snap in run_cli(full, "list-backups").out  # the FILES column
    shown = json.loads(run_cli(full, "show", name, "--json").out)["files_snapshot"]
    assert (shown["snapshot"], shown["backup"], shown["objects"]) == (snap, name, 6)
    assert (shown["rows_checked"], shown["rows_without_file"], shown["files_without_row"]) == (5, 1, 2)
    assert "1 storage.objects rows without a file, 2 files without a row" in run_cli(full, "show", name).out

    clock = lambda: datetime.now(UTC)  # noqa: E731 - the backup was taken now
    api = web_get(settings, "backups", full["MONITOR_TOKEN"], clock)
    assert [(b["name"], b["files_snapshot"]) for b in api["backups"]] == [(name, snap)]
    web.use_settings(settings, clock=clock)
    try:
        headers = {"authorization": f"Bearer {full['MONITOR_TOKEN']}"}
        detail = web.handle("backup", {"http": {"method": "GET", "path": f"/{name}", "headers": headers}})
    finally:
        web.use_settings(None)
    assert json.loads(detail["body"])["files_snapshot"]["snapshot"] == snap

    st = json.loads(run_cli(full, "status", "--json").out)
    assert st["files"]["newest"]["snapshot"] == snap and st["files"]["problems"] == []
    assert f"files:        newest snapshot {snap}: 6 objects in 3 buckets" in run_cli(full, "status").out
    text = render(ctx.catalog.read(), datetime.now(UTC))
    assert "coldcopy_files_rows_without_file 1" in text and "coldcopy_files_without_row 2" in text

    plan = run_cli(full, "plan", "disaster")
    assert f"coldcopy files restore --snapshot {snap}" in plan.out, plan.out + plan.err
    restored = run_cli(full, "restore", "--backup-name", name, "--target-db", f"{fresh_db}_r")
    assert restored.rc == 0, restored.err
    assert f"restore them with: coldcopy files restore --snapshot {snap}" in restored.out
    assert "1 storage.objects rows without a file" in restored.out
    pg.drop_database(f"{fresh_db}_r")
    files = run_cli(full, "files", "restore", "--snapshot", name)  # by the backup's name
    assert files.rc == 0 and "6 already identical" in files.out, files.out + files.err
    assert "1 storage.objects rows without a file, 2 files without a row" in files.out


def _entry(name: str, finished: datetime) -> CatalogEntry:
    return CatalogEntry(
        name=name,
        kind="full",
        database="app",
        created_at=iso(finished - timedelta(minutes=1)),
        finished_at=iso(finished),
        duration_seconds=60.0,
        size_bytes=100,
        raw_size_bytes=300,
        encrypted=True,
        key_id="k1",
        server_version="17.2",
    )


def test_the_files_alerts_fire_and_clear_from_the_records_and_the_metrics_follow() -> None:
    t = datetime(2026, 11, 24, 2, 1, tzinfo=UTC)
    name = "full_backup_app_20261124_020000"
    cat = Catalog(backups={name: _entry(name, t)})
    th = Thresholds(files_max_lag_hours=6)
    records: list[tuple[str, dict[str, Any]]] = []

    def add(kind: str, ident: str, at: datetime, **payload: Any) -> None:
        records.append(
            (journal_key(kind, ident, at), {"type": kind, "name": ident, "at": iso(at), **payload})
        )
        cat.merge(records, now=at)

    def files_alerts(now: datetime) -> list[tuple[str, str]]:
        return [(a.rule, a.severity) for a in evaluate(cat, [], None, th, now) if a.rule.startswith("files")]

    add("files_snapshot_due", name, t)  # the worker queued its snapshot
    assert files_alerts(t + timedelta(hours=5)) == []
    assert files_alerts(t + timedelta(hours=7)) == [("files-snapshot-late", "warning")]
    text = render(cat, t + timedelta(hours=7))
    assert_clean(text)
    assert "coldcopy_files_snapshot_behind_seconds 25200" in text and "coldcopy_files_snapshots 0" in text

    add(
        "files_snapshot_failed",
        name,
        t + timedelta(minutes=10),
        backup=name,
        error="cannot reach the project's Storage",
    )
    assert ("files-snapshot-failed", "critical") in files_alerts(t + timedelta(hours=1))
    st = status_view(cat, t + timedelta(hours=1), encrypted=True, wal=None, thresholds=th)
    assert not st["ok"] and any("files snapshot" in p for p in st["problems"])
    assert "coldcopy_files_snapshot_failures_total 1" in render(cat, t)

    snap = {
        "snapshot": "files_20261124_100000",
        "created_at": iso(t + timedelta(hours=8)),
        "backup": name,
        "buckets": 2,
        "objects": 6,
        "bytes": 9000,
        "contents": 5,
        "stored_bytes": 4000,
        "rows_checked": None,
    }
    add("files_snapshot", snap["snapshot"], t + timedelta(hours=8), **snap)
    assert files_alerts(t + timedelta(hours=9)) == []  # taken by hand after the failure: both clear
    assert status_view(cat, t + timedelta(hours=9), encrypted=True, wal=None, thresholds=th)["ok"]
    text = render(cat, t + timedelta(hours=9))
    assert_clean(text)
    assert (
        "coldcopy_files_snapshot_behind_seconds 0" in text
        and "coldcopy_files_last_snapshot_objects 6" in text
    )
    assert "coldcopy_files_rows_without_file" not in text  # not checked: no series rather than a false 0
    facts = Facts(db_name="app", key_id="k1")
    plan = build_plan("files", cat, facts, t + timedelta(hours=9))
    assert plan.alert == "files" and "coldcopy files backup" in plan.first[0]

    supabase = replace(cat.backups[name], platform={"platform": "supabase", "extensions": []})
    with_files = build_plan("disaster", replace(cat, backups={name: supabase}), facts, t + timedelta(hours=9))
    restore_cmd = "coldcopy files restore --snapshot files_20261124_100000"
    assert restore_cmd in with_files.commands and not any("Storage files" in a for a in with_files.after)

    add("files_snapshot_deleted", snap["snapshot"], t + timedelta(days=40))
    without = build_plan("disaster", replace(cat, backups={name: supabase}), facts, t + timedelta(days=40))
    assert not any("coldcopy files" in c for c in without.commands)
    assert any("no files snapshot was taken with" in r for r in without.risks)
    assert any("Storage files (the objects' rows come back" in a for a in without.after)
    assert cat.files == {} and "coldcopy_files_snapshots 0" in render(cat, t + timedelta(days=40))


@pytest.mark.parametrize(("point", "done"), [("files:content-stored", 1), ("files:before-commit", 5)])
def test_a_snapshot_killed_by_sigkill_lists_nothing_partial_and_the_next_run_copies_only_what_is_missing(
    env: dict[str, str], storage_server: S3Server, tmp_path: Any, point: str, done: int
) -> None:
    _seed(storage_server)
    env = {**env, "COLDCOPY_UPLOAD_CONCURRENCY": "1", "PATH": os.environ.get("PATH", "")}
    killed_at_point(env, point, tmp_path, "files", "backup")
    settings = load_settings(env)
    ctx = open_context(settings)
    assert committed(ctx.storage) == {}
    assert run_cli(env, "files", "list").out.startswith("no files snapshots")
    assert len(_contents(ctx)) == done
    project, counted = _project(settings)
    r = take_snapshot(ctx, project, now=datetime.now(UTC) + timedelta(seconds=2))
    assert (r.copied_contents, counted.calls["GetObject"]) == (5 - done, 5 - done)
    (snap,) = committed(ctx.storage)
    assert verify_files(ctx, snap)["ok"]


def test_the_weekly_drill_restores_a_sample_into_a_scratch_bucket_compares_it_and_removes_it(
    settings: Settings, storage_server: S3Server, s3_server: S3Server, bucket: str
) -> None:
    _seed(storage_server)
    ctx = open_context(settings)
    take_snapshot(ctx, open_project_storage(settings), now=T0)
    before = _state(storage_server)
    out = drill_files(ctx, open_project_storage(settings), T0 + timedelta(days=3), sample=4)
    assert out["ok"] and (out["sampled"], out["compared"]) == (4, 4), out
    assert out["scratch_bucket"] == "coldcopy-drill-20261127-020000"
    assert _state(storage_server) == before  # the scratch bucket is gone; nothing else was touched

    # A stored content changed behind ColdCopy's back: the drill says which object, and cleans up.
    vol = next(o for o in ctx.storage.list(CONTENT_PREFIX) if o.key.endswith(".000000"))
    data = bytearray(ctx.storage.get_bytes(vol.key))
    data[-5] ^= 1
    s3_server.client().put_object(Bucket=bucket, Key=ctx.storage.full_key(vol.key), Body=bytes(data))
    bad = drill_files(ctx, open_project_storage(settings), T0 + timedelta(days=3), sample=6)
    assert not bad["ok"] and all("could not be restored" in p for p in bad["problems"])
    assert bad["compared"] == 6 - len(bad["problems"]) < 6
    assert _state(storage_server) == before


def test_the_drill_sample_is_the_largest_object_and_a_sample_that_changes_with_the_week() -> None:
    cid = "0" * 64
    entries = [Entry("b", f"k{i:03d}", i, '"e"', "2026-11-24T00:00:00Z", cid) for i in range(100)]
    week = drill_sample(entries, 20, "2026-W48")
    assert len(week) == 20 and week[0].key == "k099" and len({e.key for e in week}) == 20
    assert drill_sample(entries, 20, "2026-W48") == week  # the same all week
    assert drill_sample(entries, 20, "2026-W49") != week
    assert drill_sample(entries[:3], 20, "2026-W48") == [entries[2], entries[0], entries[1]]
    assert drill_sample([], 20, "2026-W48") == []
