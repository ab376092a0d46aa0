"""What the CLI, the monitor API and the job runner show, each computed by one function.  Pure.

``status_view`` is `coldcopy status --json` and ``GET /status``; ``listing_row`` one row of
`coldcopy list-backups --json` and ``GET /backups``; ``backup_summary`` what `coldcopy backup`
prints and a backup job's run records.  Callers bring the inputs (the catalog, the WAL archive's
health, the settings' thresholds); the views decide what is wrong the same way everywhere.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict
from datetime import datetime
from typing import Any

from coldcopy.core.alerts import CRITICAL, changes_alerts, files_alerts, wal_alerts
from coldcopy.core.archive_report import WalHealth
from coldcopy.core.catalog import Catalog
from coldcopy.core.catalog_digest import CatalogDigest, digest
from coldcopy.core.changes import ChangesHealth
from coldcopy.core.manifest import CatalogEntry, Manifest
from coldcopy.core.thresholds import Thresholds
from coldcopy.core.times import iso, parse_iso
from coldcopy.core.verification import storage_failure

# The seed's rule for `status`: a backup older than this is a problem.  (The alert of the same name
# has its own setting, ALERT_BACKUP_MAX_AGE_HOURS; `status` has always said 26 hours.)
STATUS_MAX_AGE_HOURS = 26


def listing_row(
    entry: CatalogEntry, verification: Mapping[str, Any] | None, files: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """A backup in a listing: its catalog entry plus its last verification and the files snapshot
    taken with it (``files``: its record in the catalog, ``Catalog.files_by_backup``)."""
    return {
        **entry.to_dict(),
        "last_verification": verification.get("at") if verification else None,
        "verification_ok": verification.get("ok") if verification else None,
        "verification_level": verification.get("level") if verification else None,
        "files_snapshot": files.get("snapshot") if files else None,
    }


def listing_rows(cat: Catalog, entries: Sequence[CatalogEntry]) -> list[dict[str, Any]]:
    """``listing_row`` of each of ``entries`` (backups of ``cat``)."""
    files = cat.files_by_backup()
    return [listing_row(e, cat.verifications.get(e.name), files.get(e.name)) for e in entries]


def backup_summary(m: Manifest, *, encrypted: bool) -> dict[str, Any]:
    """A backup just taken, in brief."""
    return {
        "name": m.name,
        "kind": m.kind,
        "database": m.database,
        "size_bytes": m.stored_size,
        "raw_size_bytes": m.raw_size,
        "duration_seconds": m.duration_seconds,
        "encrypted": encrypted,
        "tables": len(m.tables),
        "roles_saved": m.globals is not None,
        "created_at": m.started_at,
    }


def wal_view(wal: WalHealth, th: Thresholds, now: datetime) -> dict[str, Any]:
    """The WAL archive as the status shows it: its health, the newest segment's age, and the WAL
    alert rules' findings (critical ones are problems that fail the status, the others warnings)."""
    out: dict[str, Any] = asdict(wal)
    last = wal.last_archived_at
    out["last_archived_age_seconds"] = (now - parse_iso(last)).total_seconds() if last else None
    found = wal_alerts(wal, th, now)
    out["problems"] = [a.message for a in found if a.severity == CRITICAL]
    out["warnings"] = [a.message for a in found if a.severity != CRITICAL]
    return out


def changes_view(h: ChangesHealth, th: Thresholds, now: datetime) -> dict[str, Any]:
    """The change archive as the status shows it: the slot and its lag on the server, the newest
    archived change's age (the last drain's heartbeat: the archive is complete up to it) and the
    newest commit's, the window, and the change rules' findings (critical ones are problems)."""

    def age(at: str | None) -> float | None:
        return (now - parse_iso(at)).total_seconds() if at else None

    found = changes_alerts(h, th, now)
    return {
        "set_up": h.in_use,
        "torn_down_at": h.torn_down_at,
        "slot": h.slot,
        "slot_exists": h.slot_exists,
        "slot_invalidated": h.slot_invalidated,
        "slot_lag_bytes": h.lag_bytes,
        "max_slot_wal_keep_bytes": h.max_keep_bytes,
        "archived_through": h.last_drain_at,
        "newest_change_age_seconds": age(h.last_drain_at),
        "newest_commit_at": h.newest_commit_at,
        "newest_commit_age_seconds": age(h.newest_commit_at),
        "window_start": h.window_start,
        "window_end": h.window_end,
        "tables_left_out": list(h.left_out),
        "last_error": h.last_error or None,
        "consecutive_failures": h.consecutive_failures,
        "large_objects": h.large_objects,
        "untracked_ddl": list(h.untracked_ddl),
        "problems": [a.message for a in found if a.severity == CRITICAL],
        "warnings": [a.message for a in found if a.severity != CRITICAL],
    }


def files_view(facts: Mapping[str, Any], th: Thresholds, now: datetime) -> dict[str, Any] | None:
    """The files snapshots as the status shows them (None when none was ever taken or queued): the
    newest with its age and the storage.objects check, the backup awaiting one, and the files
    rules' findings (critical ones are problems)."""
    if not (facts.get("snapshots") or facts.get("failures") or facts.get("awaiting")):
        return None
    newest = facts.get("newest")
    found = files_alerts(facts, th, now)
    return {
        "snapshots": facts.get("snapshots", 0),
        "newest": newest,
        "newest_age_seconds": (now - parse_iso(str(newest["created_at"]))).total_seconds()
        if newest
        else None,
        "awaiting": facts.get("awaiting"),
        "last_failure": facts.get("last_failure"),
        "problems": [a.message for a in found if a.severity == CRITICAL],
        "warnings": [a.message for a in found if a.severity != CRITICAL],
    }


def status_view(
    cat: Catalog,
    now: datetime,
    *,
    encrypted: bool,
    wal: WalHealth | None,
    thresholds: Thresholds,
    changes: ChangesHealth | None = None,
) -> dict[str, Any]:
    """The last backup, its age, counts, total size, the WAL archive (None without PITR), the change
    archive (None when it was never drained) and every problem; ``ok`` when there is none.
    ``thresholds`` are the WAL and change rules' (the alerts' settings)."""
    return status_from_digest(
        digest(cat), now, encrypted=encrypted, wal=wal, thresholds=thresholds, changes=changes
    )


def status_from_digest(
    d: CatalogDigest,
    now: datetime,
    *,
    encrypted: bool,
    wal: WalHealth | None,
    thresholds: Thresholds,
    changes: ChangesHealth | None = None,
) -> dict[str, Any]:
    """``status_view`` from the catalog's digest (``GET /status``: work that does not grow with the
    history)."""
    last = d.last_backup
    problems: list[str] = []
    age = None
    if last is None:
        problems.append("no backup has completed yet")
    else:
        age = (now - parse_iso(last["finished_at"])).total_seconds()
        limit = STATUS_MAX_AGE_HOURS
        if age > limit * 3600:
            problems.append(f"the last backup finished {age / 3600:.1f} hours ago (more than {limit} hours)")
        if not last["encrypted"]:
            problems.append(
                f"the last backup {last['name']} is NOT encrypted (BACKUP_ENCRYPTION_KEY was not set)"
            )
    failure = d.last_failure
    if failure and (last is None or str(failure.get("at")) > last["finished_at"]):
        problems.append(f"the last backup attempt failed at {failure.get('at')}: {failure.get('error')}")
    for name, why in sorted(d.unreadable.items()):
        problems.append(f"manifest of {name} cannot be read: {why}")
    for name, v in sorted(d.failed_verifications.items()):
        if storage_failure(v):
            problems.append(f"verification of {name} could not read the storage; run it again")
        else:
            problems.append(f"verification of {name} failed")
    if not encrypted:
        problems.append("BACKUP_ENCRYPTION_KEY is not set: new backups are stored unencrypted")
    wal_part = None if wal is None else wal_view(wal, thresholds, now)
    if wal_part is not None:
        problems += wal_part["problems"]
    changes_part = None if changes is None else changes_view(changes, thresholds, now)
    if changes_part is not None:
        problems += changes_part["problems"]
    files_part = files_view(d.files, thresholds, now)
    if files_part is not None:
        problems += files_part["problems"]
    return {
        "last_backup": dict(last) if last else None,
        "last_backup_age_seconds": age,
        "backup_count": d.backup_count,
        "counts_by_kind": dict(d.counts_by_kind),
        "total_size_bytes": d.total_size_bytes,
        "last_failure": failure,
        "wal": wal_part,
        "changes": changes_part,
        "files": files_part,
        "problems": problems,
        "ok": not problems,
        "encryption_configured": encrypted,
        "checked_at": iso(now),
    }
