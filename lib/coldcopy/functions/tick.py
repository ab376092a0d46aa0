"""The scheduler tick: one scheduled DigitalOcean function (``web: false``) that drives every schedule.

Each tick enqueues the due slots of the cron table (create-only, so each slot runs once however
many ticks overlap), marks runs whose heartbeat went stale as failed, and wakes the runner when
unclaimed jobs wait in the queue.  It must never raise to the platform: any error becomes an
``{"error": …}`` summary and a log line, without a traceback or a secret.

Imports stay light (no PostgreSQL driver, compression or crypto): this runs as a small function.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from coldcopy.alerting.notify import check_alerts
from coldcopy.changes.health import load_health
from coldcopy.config import STORAGE, Settings, load_settings, redact
from coldcopy.core.changes import restart_backup_at
from coldcopy.core.schedule import Slot, due_slots, schedule_table
from coldcopy.core.times import iso, parse_iso, utc_now
from coldcopy.errors import ColdCopyError
from coldcopy.ops.launchers import Launcher, wake
from coldcopy.ops.queue import enqueue, mark_stale, pending
from coldcopy.storage.s3 import open_store
from coldcopy.storage.store import ObjectStore
from coldcopy.wal.monitor import refresh

log = logging.getLogger("coldcopy.tick")


def tick(
    settings: Settings,
    now: datetime | None = None,
    *,
    launcher: Launcher | None = None,
    storage: ObjectStore | None = None,
    wake_runner: bool = True,
    env_file: str | None = None,
) -> dict[str, Any]:
    """Enqueue due slots, mark stale runs failed, and wake the runner if work is waiting."""
    now = now or utc_now()
    storage = storage or open_store(settings)
    grace = timedelta(minutes=settings.schedule_grace_minutes)
    summary: dict[str, Any] = {
        "now": iso(now),
        "enqueued": [],
        "stale": [],
        "pending": 0,
        "woken": None,
        "errors": [],
    }
    for slot in due_slots(schedule_table(settings), now, grace):
        try:
            run_id = enqueue(storage, slot.kind, {}, slot=slot.id, now=now)
        except ColdCopyError as exc:  # one slot's trouble must not stop the others
            log.error("could not enqueue slot %s: %s", slot.id, exc.message)
            summary["errors"].append({"slot": slot.id, "message": redact(exc.message, settings)})
            continue
        if run_id is not None:
            summary["enqueued"].append({"run_id": run_id, "kind": slot.kind, "slot": slot.id})
    try:
        summary["stale"] = mark_stale(
            storage, now, timedelta(seconds=settings.thresholds.heartbeat_stale_seconds)
        )
    except ColdCopyError as exc:
        log.error("could not check for stale runs: %s", exc.message)
        summary["errors"].append({"stale": True, "message": redact(exc.message, settings)})
    try:  # the WAL archive's summary for /metrics and /alerts (PITR)
        refresh(storage)
    except ColdCopyError as exc:
        log.error("could not summarise the WAL archive: %s", redact(exc.message, settings))
        summary["errors"].append({"wal": True, "message": redact(exc.message, settings)})
    try:  # after the stale check, so a run it just failed is seen; an SMTP failure is not an error here
        summary["alerts"] = check_alerts(settings, storage, now)
    except ColdCopyError as exc:
        log.error("the alert check failed: %s", redact(exc.message, settings))
        summary["errors"].append({"alerts": True, "message": redact(exc.message, settings)})
    try:  # the change stream restarted after a lost slot: its window starts at the next backup
        restart = restart_backup_at(load_health(storage))
        if restart is not None:
            slot_id = Slot("backup-full", parse_iso(restart)).id
            run_id = enqueue(storage, "backup-full", {}, slot=slot_id, now=now)
            if run_id is not None:
                why = "the change stream restarted"
                summary["enqueued"].append(
                    {"run_id": run_id, "kind": "backup-full", "slot": slot_id, "why": why}
                )
    except ColdCopyError as exc:
        log.error(
            "could not enqueue the backup the change stream restarts at: %s", redact(exc.message, settings)
        )
        summary["errors"].append({"changes": True, "message": redact(exc.message, settings)})
    waiting = pending(storage)
    summary["pending"] = len(waiting)
    if waiting and wake_runner:
        summary["woken"] = wake(settings, launcher, env_file=env_file)
    log.info(
        "tick %s: enqueued %d, stale %d, pending %d",
        summary["now"],
        len(summary["enqueued"]),
        len(summary["stale"]),
        len(waiting),
    )
    return summary


def _setup_logging() -> None:
    root = logging.getLogger()
    if not root.handlers:  # the platform captures stdout/stderr; one line per record
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")


def run(event: Any = None, context: Any = None) -> dict[str, Any]:
    """The function entry point: ``(event, context)`` from the scheduled trigger."""
    _setup_logging()
    settings: Settings | None = None
    try:
        settings = load_settings(need=(STORAGE,))
        return tick(settings)
    except ColdCopyError as exc:
        message = redact(str(exc), settings)
        log.error("tick failed: %s", message)
        return {"error": {"code": type(exc).__name__, "message": message}}
    except Exception as exc:  # noqa: BLE001 - the platform must get a summary, never a traceback
        message = redact(f"{type(exc).__name__}: {exc}", settings)[:500]
        log.error("tick failed unexpectedly: %s", message)
        return {"error": {"code": "internal", "message": message}}
