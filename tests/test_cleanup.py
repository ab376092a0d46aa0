"""Retention on real objects in the local S3 server: cleanup, pins, WAL, bucket lifecycle."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from cli_helpers import run_cli, stored_run
from coldcopy.config import Settings, load_settings
from coldcopy.core.changes import batch_key
from coldcopy.core.changes import data_key as changes_data_key
from coldcopy.core.manifest import Manifest, StoredObject, data_key, globals_key, manifest_key
from coldcopy.core.names import make_name
from coldcopy.core.retention import RetentionPolicy
from coldcopy.core.times import iso
from coldcopy.ops import queue as jobs
from coldcopy.ops.cleanup import run_cleanup
from coldcopy.ops.worker import run_worker
from coldcopy.storage.catalog_store import CatalogStore
from coldcopy.storage.memory import MemoryStore
from coldcopy.storage.s3 import open_store
from coldcopy.storage.store import ObjectStore


def settings(env: dict[str, str]) -> Settings:
    return load_settings(env, env_file=Path(os.devnull))


def keys(storage: ObjectStore, prefix: str) -> list[str]:
    return sorted(o.key for o in storage.list(prefix))


def prepare(
    store: CatalogStore,
    kind: str,
    when: datetime,
    db: str,
    *,
    verified: bool | None = None,
    extra: dict[str, Any] | None = None,
    unreadable: bool = False,
) -> str:
    """A backup as `coldcopy backup` leaves it: data, globals, manifest (last), journal record."""
    name = str(make_name(kind, db, when))
    storage = store.storage
    storage.put_bytes(data_key(name), b"payload of " + name.encode())
    storage.put_bytes(globals_key(name), b"roles")
    obj = StoredObject(data_key(name), 20, "0" * 64, 40, "1" * 64)
    m = Manifest(
        name=name,
        kind=kind,
        database=db,
        cluster=db,
        started_at=iso(when),
        finished_at=iso(when + timedelta(minutes=3)),
        duration_seconds=180.0,
        server_version="17.2",
        server_version_num=170002,
        tool="pg_dump 17.2",
        data=obj,
        compression={"algorithm": "zstd", "level": 1},
        encryption={"algorithm": "AES-256-GCM", "key_id": "k1"},
        globals=StoredObject(globals_key(name), 5, "2" * 64, 5, "3" * 64),
        extra=extra or {},
    )
    if unreadable:
        storage.put_bytes(manifest_key(name), b"{ not json", create_only=True)
    else:
        storage.put_json(manifest_key(name), m.to_dict(), create_only=True)
        store.record("backup", name, {"name": name, "entry": m.entry().to_dict()})
    if verified is not None:
        store.record("verification", name, {"name": name, "ok": verified, "level": "checks"})
    return name


def test_cleanup_cli_dry_run_equals_real_run(coldcopy_env: dict[str, str]) -> None:
    env = coldcopy_env
    storage = open_store(settings(env))
    store = CatalogStore(storage)
    real = run_cli(env, "backup", "--json")
    assert real.rc == 0, real.err
    newest = json.loads(real.out)["name"]
    db = newest.split("_backup_")[1].rsplit("_", 2)[0]
    now = datetime.now(UTC).replace(microsecond=0)
    young = prepare(store, "full", now - timedelta(days=5), db)
    verified = prepare(store, "full", now - timedelta(days=40), db, verified=True)
    pinned = prepare(store, "full", now - timedelta(days=45), db)
    old = prepare(store, "full", now - timedelta(days=50), db, verified=False)
    old_verified = prepare(store, "full", now - timedelta(days=60), db, verified=True)
    compliance = prepare(store, "compliance", now - timedelta(days=100), db)
    compliance_old = prepare(store, "compliance", now - timedelta(days=400), db)
    broken = prepare(store, "full", now - timedelta(days=70), db, unreadable=True)
    store.rebuild()  # finds the unreadable manifest

    assert run_cli(env, "pin", "../../catalog", "--reason", "x").rc == 2
    assert run_cli(env, "pin", "full_backup_nosuch_20200101_000000", "--reason", "x").rc == 3
    p = run_cli(env, "pin", pinned, "--reason", "legal hold 2026-11", "--by", "ops@example")
    assert p.rc == 0, p.err
    again = run_cli(env, "pin", pinned, "--reason", "other")
    assert again.rc == 7 and "already pinned (by ops@example" in again.err

    human = run_cli(env, "cleanup", "--dry-run")
    assert human.rc == 0, human.err
    assert (
        f"would delete 3 backup(s):\n  - {compliance_old}: compliance backup older than 365 days" in human.out
    )
    assert "pinned: legal hold 2026-11" in human.out and f"manifest of {broken} cannot be read" in human.out
    dry = run_cli(env, "cleanup", "--dry-run", "--json")
    assert dry.rc == 0, dry.err
    plan = json.loads(dry.out)
    planned = [d["name"] for d in plan["delete"]]
    assert planned == [compliance_old, old_verified, old]  # oldest first
    kept = {k["name"]: k["reasons"] for k in plan["keep"]}
    assert set(kept) == {newest, young, verified, pinned, compliance}
    assert kept[verified] == ["newest verified backup"] and kept[pinned] == ["pinned: legal hold 2026-11"]
    assert any(broken in r for r in plan["reported"])
    every = keys(storage, "backups/")
    assert all(manifest_key(n) in every for n in planned), "a dry run deletes nothing"

    stale = run_cli(env, "cleanup", "--expect", "0123456789abcdef")
    assert stale.rc == 7 and "plan changed" not in stale.out and keys(storage, "backups/") == every

    done = run_cli(env, "cleanup", "--json", "--now", plan["now"], "--expect", plan["plan_id"])
    assert done.rc == 0, done.err
    result = json.loads(done.out)
    assert result["deleted"] == planned and result["skipped"] == [] and result["plan_id"] == plan["plan_id"]
    left = keys(storage, "backups/")
    for name in planned:
        assert not [k for k in left if k.startswith(f"backups/{name}/")]
    for name in (newest, young, verified, pinned, compliance, broken):
        assert manifest_key(name) in left and any(k.startswith(data_key(name)) for k in left)
    # The journal tells why each went, and the run as a whole; the refreshed catalog agrees.
    records = [storage.get_json(k) for k in keys(storage, "journal/")]
    gone = {r["name"]: r["reason"] for r in records if r["type"] == "backup_deleted"}
    assert gone == {d["name"]: d["reason"] for d in plan["delete"]}
    runs = [r for r in records if r["type"] == "cleanup"]
    assert len(runs) == 1 and runs[0]["deleted"] == planned and runs[0]["plan_id"] == plan["plan_id"]
    snapshot = store.load_snapshot()
    assert snapshot is not None and set(planned) <= set(snapshot.deleted)
    assert not set(planned) & set(snapshot.backups) and broken in snapshot.unreadable
    listed = run_cli(env, "list-backups", "--json")
    assert {r["name"] for r in json.loads(listed.out)} == {newest, young, verified, pinned, compliance}

    # Nothing more to do; unpinning hands the backup back to the policy.
    assert json.loads(run_cli(env, "cleanup", "--dry-run", "--json").out)["delete"] == []
    assert run_cli(env, "unpin", pinned).rc == 0
    assert run_cli(env, "unpin", pinned).rc == 3
    after = json.loads(run_cli(env, "cleanup", "--dry-run", "--json").out)
    assert [d["name"] for d in after["delete"]] == [pinned]
    assert run_cli(env, "cleanup", "--now", "2999-01-01T00:00Z").rc == 1  # never a future clock


class RecordingStorage(MemoryStore):
    """A bucket that remembers the order of deletions."""

    def __init__(self, s: Settings) -> None:
        super().__init__(s.spaces_bucket, s.prefix)
        self.deleted: list[str] = []

    def delete(self, keys: list[str]) -> None:
        self.deleted.extend(keys)
        super().delete(keys)


def test_wal_and_base_backups(memory_env: dict[str, str]) -> None:
    s = settings(memory_env)
    storage = RecordingStorage(s)
    store = CatalogStore(storage)
    # WAL objects are "archived" now (the server sets the time); evaluate 40 days later.
    now = datetime.now(UTC).replace(microsecond=0) + timedelta(days=40)
    old = prepare(
        store,
        "base",
        now - timedelta(days=50),
        "app",
        extra={"start_wal_segment": "0" * 7 + "1" + "0" * 14 + "10"},
    )
    new = prepare(
        store,
        "base",
        now - timedelta(days=10),
        "app",
        extra={"start_wal_segment": "0" * 7 + "1" + "0" * 14 + "30"},
    )
    store.refresh()
    segs = [f"00000001000000000000{n:04X}" for n in (0x0F, 0x10, 0x1F, 0x30, 0x31)]
    wal = [f"wal/00000001/{seg}.zst" for seg in segs] + ["wal/00000002/00000002.history"]
    for key in wal:
        storage.put_bytes(key, b"wal")
    policy = RetentionPolicy()

    dry = run_cleanup(s, dry_run=True, now=now, policy=policy, storage=storage)
    assert [d["name"] for d in dry["delete"]] == [old]
    assert [w["key"] for w in dry["wal_delete"]] == wal[:3]  # before `new`'s start, which it needs on
    assert storage.deleted == []
    done = run_cleanup(s, dry_run=False, now=now, policy=policy, storage=storage, expect=dry["plan_id"])
    assert done["deleted"] == [old] and done["wal_deleted"] == wal[:3]
    assert keys(storage, "wal/") == sorted(wal[3:])
    assert manifest_key(new) in keys(storage, "backups/")
    # The manifest (the commit point) goes first, then the data.
    order = [k for k in storage.deleted if k.startswith(f"backups/{old}/")]
    assert order[0] == manifest_key(old) and set(order[1:]) == {data_key(old), globals_key(old)}

    # A base backup whose manifest cannot be read holds every WAL file.
    prepare(store, "base", now - timedelta(days=60), "app", unreadable=True)
    store.rebuild()
    held = run_cleanup(s, dry_run=True, now=now + timedelta(days=30), policy=policy, storage=storage)
    assert held["wal_delete"] == [] and any("no WAL deleted" in r for r in held["reported"])


def test_cleanup_job_in_the_worker(memory_env: dict[str, str]) -> None:
    s = settings(memory_env)
    storage = MemoryStore(prefix=s.prefix)
    store = CatalogStore(storage)
    now = datetime.now(UTC)
    keep = prepare(store, "full", now - timedelta(days=1), "app")
    drop = prepare(store, "full", now - timedelta(days=31), "app")
    store.refresh()
    run_id = str(jobs.enqueue(storage, "cleanup", {}))
    report = run_worker(s, heartbeat_seconds=0.05, storage=storage)
    assert [r["state"] for r in report.runs] == ["succeeded"], report.runs
    result = (stored_run(storage, run_id) or {}).get("result") or {}
    assert result["deleted"] == [drop] and result["kept"] == 1
    assert keys(storage, f"backups/{drop}/") == [] and manifest_key(keep) in keys(storage, "backups/")


def test_storage_lifecycle(coldcopy_env: dict[str, str], s3_server: Any) -> None:
    env = coldcopy_env
    client = s3_server.client()
    bucket = env["DO_SPACES_BUCKET"]
    shown = run_cli(env, "storage", "lifecycle", "--json")
    assert shown.rc == 0, shown.err
    out = json.loads(shown.out)
    assert out["rules"] == [] and out["in_place"] is False and out["applied"] is False
    other = {"ID": "logs", "Status": "Enabled", "Filter": {"Prefix": "logs/"}, "Expiration": {"Days": 2}}
    client.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": [other]})

    applied = run_cli(
        {**env, "COLDCOPY_LIFECYCLE_ABORT_DAYS": "4"}, "storage", "lifecycle", "--apply", "--json"
    )
    assert applied.rc == 0, applied.err
    assert json.loads(applied.out)["in_place"] is True
    rules = {r["ID"]: r for r in client.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]}
    ours = rules.pop(f"coldcopy-abort-incomplete-uploads.coldcopy-{env['DB_NAME']}-")
    assert ours["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 4}
    assert ours["Filter"] == {"Prefix": f"coldcopy/{env['DB_NAME']}/"} and "Expiration" not in ours
    assert list(rules) == ["logs"], "the bucket's other rules are kept"
    human = run_cli(env, "storage", "lifecycle")
    assert "abort incomplete uploads after 4 days" in human.out and "NOT in place" in human.out  # 3 wanted

    # A rule that would expire our backups sooner than the policy: shown, and --apply refuses.
    short = {"ID": "tmp", "Status": "Enabled", "Filter": {"Prefix": ""}, "Expiration": {"Days": 7}}
    client.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": [short]})
    refused = run_cli(env, "storage", "lifecycle", "--apply")
    assert refused.rc == 1 and "disagree with the retention policy" in refused.err
    assert [r["ID"] for r in client.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]] == ["tmp"]
    listed = run_cli(env, "storage", "lifecycle", "--json")
    assert listed.rc == 1 and "less than the policy's 365" in json.loads(listed.out)["problems"][0]


@pytest.mark.parametrize("value", ["-1", "x"])
def test_bad_tier_setting_is_a_config_error(memory_env: dict[str, str], value: str) -> None:
    r = run_cli({**memory_env, "COLDCOPY_KEEP_DAILY": value}, "cleanup", "--dry-run")
    assert r.rc == 2 and "COLDCOPY_KEEP_DAILY must be a whole number" in r.err


def test_a_pin_made_while_cleanup_runs_wins(
    memory_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import coldcopy.ops.cleanup as cleanup
    from coldcopy.ops.pins import pin

    s = settings(memory_env)
    storage = MemoryStore(prefix=s.prefix)
    store = CatalogStore(storage)
    now = datetime.now(UTC)
    prepare(store, "full", now - timedelta(days=1), "app")
    first = prepare(store, "full", now - timedelta(days=41), "app")
    second = prepare(store, "full", now - timedelta(days=40), "app")
    store.refresh()
    planner = cleanup.plan_cleanup

    def plan_then_pin(*args: Any) -> Any:
        plan = planner(*args)
        pin(store, second, "pinned by someone else meanwhile")
        return plan

    monkeypatch.setattr(cleanup, "plan_cleanup", plan_then_pin)
    out = run_cleanup(s, dry_run=False, storage=storage)
    assert [d["name"] for d in out["delete"]] == [first, second]
    assert out["deleted"] == [first]
    assert out["skipped"] == [
        {"name": second, "reason": "pinned while cleanup ran: pinned by someone else meanwhile"}
    ]
    assert manifest_key(second) in keys(storage, "backups/") and keys(storage, f"backups/{first}/") == []


def test_manifests_are_read_afresh(memory_env: dict[str, str]) -> None:
    """The catalog is a cache: a manifest damaged or removed since it was recorded is caught at cleanup."""
    s = settings(memory_env)
    storage = MemoryStore(prefix=s.prefix)
    store = CatalogStore(storage)
    now = datetime.now(UTC)
    prepare(store, "full", now - timedelta(days=1), "app")
    damaged = prepare(store, "full", now - timedelta(days=50), "app")
    vanished = prepare(store, "full", now - timedelta(days=2), "app")  # young, but its manifest is gone
    plain = prepare(store, "full", now - timedelta(days=52), "app")
    interrupted = prepare(store, "full", now - timedelta(days=53), "app")
    store.refresh()
    storage.put_bytes(manifest_key(damaged), b"[]")
    storage.delete([manifest_key(vanished), manifest_key(interrupted)])
    store.record("backup_deleted", interrupted, {"name": interrupted, "reason": "test"})
    store.refresh()
    # A backup being written: data, an in-flight marker, no manifest yet.
    running = str(make_name("full", "app", now - timedelta(minutes=1)))
    storage.put_json(f"inflight/{running}.json", {"name": running}, create_only=True)
    storage.put_bytes(data_key(running), b"partial")

    dry = run_cleanup(s, dry_run=True, storage=storage)
    out = run_cleanup(
        s, dry_run=False, storage=storage, expect=dry["plan_id"], now=datetime.fromisoformat(dry["now"])
    )
    assert out["deleted"] == [plain, interrupted, vanished] == [d["name"] for d in dry["delete"]]
    assert dict((d["name"], d["reason"]) for d in out["delete"])[vanished].startswith(
        "finishing an interrupted"
    )
    assert any(damaged in r and "cannot be read" in r for r in out["reported"])
    left = keys(storage, "backups/")
    assert data_key(damaged) in left and data_key(running) in left
    assert not [k for k in left if k.startswith((f"backups/{vanished}/", f"backups/{interrupted}/"))]


def test_old_job_records_are_pruned_and_recent_or_unfinished_ones_kept(memory_env: dict[str, str]) -> None:
    """runs/, jobs/claims/ and jobs/slots/ would grow forever: cleanup prunes what is past the history."""
    s = settings(memory_env)
    storage = MemoryStore(prefix=s.prefix)
    now = datetime.now(UTC).replace(microsecond=0)
    old, recent = now - timedelta(days=s.job_history_days + 5), now - timedelta(days=2)

    def run_through(at: datetime, slot: str | None = None, finish: bool = True) -> str:
        run_id = str(jobs.enqueue(storage, "verify", {}, slot=slot, now=at))
        claimed = jobs.claim_next(storage, "w1", now=at)
        assert claimed is not None and claimed[0].run_id == run_id
        if finish:
            jobs.finish(storage, claimed[1], ok=True, result={}, now=at)
        return run_id

    old_done = run_through(old, slot=f"verify/{old:%Y-%m-%dT%H:%MZ}")
    old_running = run_through(old - timedelta(hours=1), finish=False)  # still queued and claimed
    recent_done = run_through(recent, slot=f"verify/{recent:%Y-%m-%dT%H:%MZ}")
    expected = {
        jobs.run_key(old_done),
        jobs.claim_key(old_done),
        f"jobs/slots/verify/{old:%Y-%m-%dT%H:%MZ}.json",
    }

    dry = run_cleanup(s, dry_run=True, now=now, storage=storage)
    assert {d["key"] for d in dry["job_records_delete"]} == expected
    assert storage.exists(jobs.run_key(old_done))  # a dry run deletes nothing

    done = run_cleanup(s, dry_run=False, now=now, storage=storage)
    assert done["job_records_deleted"] == len(expected)
    for key in expected:
        assert not storage.exists(key), key
    for kept in (jobs.run_key(old_running), jobs.claim_key(old_running), jobs.run_key(recent_done)):
        assert storage.exists(kept), kept
    assert storage.exists(f"jobs/slots/verify/{recent:%Y-%m-%dT%H:%MZ}.json")
    assert run_cleanup(s, dry_run=True, now=now, storage=storage)["job_records_delete"] == []


def test_job_history_shorter_than_a_grace_window_is_refused(memory_env: dict[str, str]) -> None:
    r = run_cli({**memory_env, "COLDCOPY_JOB_HISTORY_DAYS": "3"}, "cleanup", "--dry-run")
    assert r.rc == 2 and "COLDCOPY_JOB_HISTORY_DAYS" in r.err


def test_cleanup_prunes_change_batches_no_kept_dump_needs_and_volumes_of_killed_drains(
    memory_env: dict[str, str],
) -> None:
    s = settings({**memory_env, "COLDCOPY_STALE_UPLOAD_SECONDS": "3600"})
    now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    clock = [now - timedelta(hours=2)]
    storage = MemoryStore(prefix=s.prefix, clock=lambda: clock[0])
    store = CatalogStore(storage)

    def seen(lsn: str) -> dict[str, Any]:
        return {"snapshot_visibility": {"xmin": 1, "xmax": 2, "xip": [], "wal_lsn_before": lsn}}

    prepare(store, "full", now - timedelta(days=40), "app", extra=seen("0/1000"))  # deleted by the policy
    oldest_kept = prepare(store, "full", now - timedelta(days=5), "app", extra=seen("0/3000"))
    prepare(store, "full", now - timedelta(days=1), "app", extra=seen("0/5000"))
    prepare(store, "compliance", now - timedelta(days=20), "app")  # before the archive: needs no batch
    store.refresh()

    def batch(start: str, end: str, attempt: str = "a1a1a1a1", *dead: str) -> None:
        for a in (*dead, attempt):
            storage.put_bytes(changes_data_key(start, a) + ".000000", b"volume")
        obj = StoredObject(changes_data_key(start, attempt), 6, "0" * 64, 6, "1" * 64, (6,))
        record = {"start_lsn": start, "end_lsn": end, "transactions": 1, "data": asdict(obj)}
        storage.put_json(batch_key(start), record, create_only=True)

    batch("0/1000", "0/2000")
    batch("0/2000", "0/2800", "b2b2b2b2", "deaddead")
    batch("0/2800", "0/3000")  # the newest batch before the oldest kept snapshot: kept as a margin
    batch("0/3000", "0/4000", "c3c3c3c3", "0dead0dead")  # a killed attempt beside the stored one
    batch("0/4000", "0/6000")
    storage.put_bytes(changes_data_key("0/7000", "e5e5e5e5") + ".000000", b"killed before its record")
    clock[0] = now - timedelta(minutes=1)
    storage.put_bytes(changes_data_key("0/6000", "f6f6f6f6") + ".000000", b"a drain writing now")
    before = keys(storage, "changes/")

    dry = run_cleanup(s, dry_run=True, now=now, storage=storage)

    assert dry["changes"] == {
        "oldest_needed_lsn": "0/3000",
        "needed_by": oldest_kept,
        "batches_delete": [batch_key("0/1000"), batch_key("0/2000")],
        "orphans_delete": [  # (the killed attempt at 0/2000 goes with its batch)
            changes_data_key("0/3000", "0dead0dead") + ".000000",
            changes_data_key("0/7000", "e5e5e5e5") + ".000000",
        ],
    }
    assert keys(storage, "changes/") == before  # a dry run deletes nothing

    out = run_cleanup(s, dry_run=False, now=now, storage=storage)

    assert out["changes_deleted"] == 2 + 3 + 2  # two records, their volumes (both attempts), two orphans
    assert keys(storage, "changes/batches/") == [batch_key(x) for x in ("0/2800", "0/3000", "0/4000")]
    assert keys(storage, "changes/data/") == sorted(
        changes_data_key(start, attempt) + ".000000"
        for start, attempt in [
            ("0/2800", "a1a1a1a1"),
            ("0/3000", "c3c3c3c3"),
            ("0/4000", "a1a1a1a1"),
            ("0/6000", "f6f6f6f6"),
        ]
    )


def test_cleanup_prunes_no_change_batch_when_no_kept_dump_recorded_its_snapshot(
    memory_env: dict[str, str],
) -> None:
    s = settings(memory_env)
    now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    storage = MemoryStore(prefix=s.prefix, clock=lambda: now - timedelta(days=3))
    store = CatalogStore(storage)
    prepare(store, "full", now - timedelta(days=1), "app")  # no snapshot_visibility
    store.refresh()
    for start, end in [("0/1000", "0/2000"), ("0/2000", "0/3000")]:
        obj = StoredObject(changes_data_key(start, "a1a1a1a1"), 6, "0" * 64, 6, "1" * 64)
        storage.put_bytes(obj.key, b"volume")
        storage.put_json(batch_key(start), {"start_lsn": start, "end_lsn": end, "data": asdict(obj)})

    out = run_cleanup(s, dry_run=False, now=now, storage=storage)

    assert out["changes"]["batches_delete"] == [] and out["changes"]["orphans_delete"] == []
    assert len(keys(storage, "changes/")) == 4
