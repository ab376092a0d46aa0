"""`coldcopy cleanup`: apply the retention policy to the bucket (the I/O half of ``retention``).

One plan, computed once from the catalog, the pins and the WAL listing.  A dry run shows it; a real
run deletes exactly its list (a backup pinned while the run goes is skipped and reported), and
records a ``backup_deleted`` journal record per backup plus one ``cleanup`` record for the run.
A backup is deleted manifest FIRST (the manifest is the commit point: a half-deleted backup is
never listed as good), then its data.  Backups without a manifest are inflight's business.
"""

from __future__ import annotations

import logging
import secrets
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from coldcopy.backup.files import prune_files
from coldcopy.backup.inflight import marker_key
from coldcopy.changes.retention import apply_changes_plan, plan_changes
from coldcopy.config import Settings
from coldcopy.context import Context, settings_key
from coldcopy.core.lsn import WAL_PREFIX
from coldcopy.core.manifest import Manifest, manifest_key
from coldcopy.core.retention import (
    Backup,
    RetentionPlan,
    RetentionPolicy,
    WalFile,
    plan_retention,
)
from coldcopy.core.times import iso
from coldcopy.errors import ColdCopyError, ConflictError, NotFoundError
from coldcopy.ops import queue as jobs
from coldcopy.ops.pins import get_pin, read_pins
from coldcopy.storage.catalog_store import CatalogStore
from coldcopy.storage.s3 import open_store
from coldcopy.storage.store import ObjectStore
from coldcopy.stream.crypto import MasterKey

log = logging.getLogger(__name__)
#: Keys a base backup's manifest.extra may carry its first needed WAL segment under.
WAL_START_KEYS = ("start_wal_segment", "start_wal_file", "wal_start")


@dataclass
class Inputs:
    backups: list[Backup]
    pins: dict[str, str]
    verifications: dict[str, bool]
    unreadable: dict[str, str]
    wal: list[WalFile]


def _wal_start(m: Manifest) -> str | None:
    for key in WAL_START_KEYS:
        value = m.extra.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def _read_manifest(catalog: CatalogStore, name: str) -> Manifest | str | None:
    """The manifest, why it cannot be read, or None when it is gone."""
    try:
        return catalog.manifest(name)
    except NotFoundError:
        return None
    except ColdCopyError as exc:
        return exc.message
    except (ValueError, TypeError, AttributeError, KeyError) as exc:  # e.g. JSON that is not an object
        return f"{type(exc).__name__}: {str(exc)[:200]}"


def gather(catalog: CatalogStore) -> tuple[Inputs, list[str]]:
    """The plan's inputs, each catalog backup's manifest read afresh; and the half-deleted backups.

    Half-deleted: the catalog lists it, or the journal says it was deleted, yet objects remain under
    ``backups/<name>/`` with no manifest and no in-flight marker (a cleanup stopped between the
    manifest and the data).  A backup still being written has a marker and is not in the catalog.
    """
    storage = catalog.storage
    cat = catalog.read()
    names = [e.name for e in cat.entries()]
    with ThreadPoolExecutor(max_workers=16) as pool:
        manifests = dict(zip(names, pool.map(lambda n: _read_manifest(catalog, n), names), strict=True))
    unreadable = dict(cat.unreadable)
    backups: list[Backup] = []
    gone = set()
    for name, m in manifests.items():
        if isinstance(m, Manifest):
            backups.append(Backup.from_name(name, _wal_start(m) if m.kind == "base" else None))
        elif isinstance(m, str):
            unreadable[name] = m
        else:
            gone.add(name)
    stored = {p.split("/")[1] for p in storage.list_prefixes("backups/")}
    gone |= {n for n in stored & set(cat.deleted) if n not in cat.backups and n not in unreadable}
    half_deleted = sorted(
        n for n in gone if not storage.exists(manifest_key(n)) and not storage.exists(marker_key(n))
    )
    verifications = {n: v.get("ok") is True for n, v in cat.verifications.items()}
    wal = [WalFile(o.key, o.last_modified) for o in storage.list(WAL_PREFIX)]
    return Inputs(backups, read_pins(storage), verifications, unreadable, wal), half_deleted


def plan_cleanup(catalog: CatalogStore, policy: RetentionPolicy, now: datetime) -> RetentionPlan:
    i, half_deleted = gather(catalog)
    plan = plan_retention(i.backups, i.pins, i.verifications, i.unreadable, i.wal, policy, now)
    for name in half_deleted:
        if name in i.pins:
            plan.reported.append(f"{name} is pinned but its manifest is gone: left as it is")
        else:
            plan.delete.append((name, "finishing an interrupted deletion (its manifest is already gone)"))
    return plan


def delete_backup(storage: ObjectStore, catalog: CatalogStore, name: str, reason: str, run_id: str) -> int:
    """Manifest first, then the journal record, then every object and upload under backups/<name>/."""
    storage.delete([manifest_key(name)])
    catalog.record("backup_deleted", name, {"name": name, "reason": reason, "cleanup_run": run_id})
    prefix = f"backups/{name}/"
    for key, upload_id, _ in storage.incomplete_uploads(prefix):
        storage.abort_upload(key, upload_id)
    keys = [o.key for o in storage.list(prefix)]
    if keys:
        storage.delete(keys)
    return len(keys) + 1


def _plan_dict(plan: RetentionPlan, policy: RetentionPolicy, now: datetime, dry_run: bool) -> dict[str, Any]:
    return {
        "dry_run": dry_run,
        "now": iso(now),
        "policy": asdict(policy),
        "plan_id": plan.plan_id,
        "delete": [{"name": n, "reason": r} for n, r in plan.delete],
        "keep": [{"name": n, "reasons": r} for n, r in plan.keep],
        "wal_delete": [{"key": k, "reason": r} for k, r in plan.wal_delete],
        "reported": plan.reported,
    }


def run_cleanup(
    settings: Settings,
    *,
    dry_run: bool,
    now: datetime | None = None,
    expect: str | None = None,
    policy: RetentionPolicy | None = None,
    storage: ObjectStore | None = None,
) -> dict[str, Any]:
    """Plan, and unless ``dry_run`` delete exactly the plan; ``expect``: refuse unless it is this plan id."""
    storage = storage or open_store(settings)
    catalog = CatalogStore(storage)
    policy = policy or settings.retention
    now = now or datetime.now(UTC).replace(microsecond=0)
    plan = plan_cleanup(catalog, policy, now)
    out = _plan_dict(plan, policy, now, dry_run)
    # Housekeeping, outside the plan id (no backup or WAL): job records older than the history.
    records = jobs.prunable(storage, now - timedelta(days=settings.job_history_days))
    out["job_records_delete"] = [{"key": k, "reason": r} for k, r in records]
    if expect is not None and expect != plan.plan_id:
        raise ConflictError(
            f"the cleanup plan is {plan.plan_id}, not {expect}: backups, pins or WAL changed since",
            "run `coldcopy cleanup --dry-run` again, review it, and pass its plan id",
        )
    # The change archive: batches no kept dump needs, volumes of killed drains (outside the plan id,
    # like the files: a drain adds batches between a dry run and the real one).
    changes = plan_changes(
        storage, [n for n, _ in plan.keep], now, timedelta(seconds=settings.stale_upload_seconds)
    )
    out["changes"] = changes.to_dict()
    if dry_run:
        out["files"] = _prune_files(settings, storage, plan, now, dry_run=True)
        return out
    run_id = f"{now.strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(4)}"
    deleted: list[str] = []
    skipped: list[dict[str, str]] = []
    wal_deleted: list[str] = []
    error: str | None = None
    try:
        for name, reason in plan.delete:
            pinned = get_pin(storage, name)
            if pinned is not None:  # pinned after the plan was made: the pin wins
                skipped.append({"name": name, "reason": f"pinned while cleanup ran: {pinned.get('reason')}"})
                continue
            delete_backup(storage, catalog, name, reason, run_id)
            deleted.append(name)
            log.info("deleted %s: %s", name, reason)
        keys = [k for k, _ in plan.wal_delete]
        for i in range(0, len(keys), 1000):
            storage.delete(keys[i : i + 1000])
            wal_deleted.extend(keys[i : i + 1000])
        old_records = [k for k, _ in records]
        for i in range(0, len(old_records), 1000):
            storage.delete(old_records[i : i + 1000])
        out["job_records_deleted"] = len(old_records)
        out["files"] = _prune_files(settings, storage, plan, now, dry_run=False)
        # Planned again with what is kept now: a backup pinned while cleanup ran keeps its batches.
        retained = [n for n, _ in plan.keep] + [s["name"] for s in skipped]
        changes = plan_changes(storage, retained, now, timedelta(seconds=settings.stale_upload_seconds))
        out["changes"] = changes.to_dict()
        out["changes_deleted"] = apply_changes_plan(storage, changes)
    except ColdCopyError as exc:
        error = exc.message
        raise
    finally:
        out.update(run_id=run_id, deleted=deleted, skipped=skipped, wal_deleted=wal_deleted, error=error)
        summary = {k: v for k, v in out.items() if k not in ("keep", "job_records_delete")}
        summary["kept"] = [k["name"] for k in out["keep"]]
        out["record"] = catalog.record("cleanup", run_id, summary)
        catalog.refresh()
    return out


def _prune_files(
    settings: Settings, storage: ObjectStore, plan: RetentionPlan, now: datetime, *, dry_run: bool
) -> dict[str, Any]:
    """Files snapshots go with their backups; contents go when no remaining snapshot needs them."""

    def key() -> MasterKey | None:
        return settings_key(settings)

    return prune_files(
        storage,
        key,
        [name for name, _ in plan.keep],
        now=now,
        days=settings.retention.full_days,
        stale=timedelta(seconds=settings.stale_upload_seconds),
        dry_run=dry_run,
    )


def cleanup_job(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    """The worker's `cleanup` job (params: {"dry_run": bool})."""
    out = run_cleanup(ctx.settings, dry_run=bool(params.get("dry_run", False)), storage=ctx.storage)
    return {
        k: out.get(k)
        for k in (
            "dry_run",
            "plan_id",
            "deleted",
            "wal_deleted",
            "skipped",
            "reported",
            "run_id",
            "job_records_deleted",
            "files",
            "changes_deleted",
        )
        if k in out
    } | {"kept": len(out["keep"])}
