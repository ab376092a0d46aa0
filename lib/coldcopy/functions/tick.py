"""The scheduler tick: one scheduled DigitalOcean function (``web: false``) that drives every schedule.

Each tick enqueues the due slots of the cron table (create-only, so each slot runs once however
many ticks overlap), marks runs whose heartbeat went stale as failed, and wakes the runner when
unclaimed jobs wait in the queue.  It must never raise to the platform: any error becomes an
``{"error": …}`` summary and a log line, without a traceback or a secret.

Imports stay light (no PostgreSQL driver, compression or crypto): this runs as a small function.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coldcopy.config import STORAGE, Settings, environment, load_settings, redact
from coldcopy.core.schedule import due_slots, schedule_table
from coldcopy.errors import ColdCopyError
from coldcopy.ops.queue import enqueue, iso, mark_stale, pending
from coldcopy.storage.s3 import Storage

if TYPE_CHECKING:
    from coldcopy.ops.launchers import Launcher

log = logging.getLogger("coldcopy.tick")

# Variables a runner started by the docker launcher needs (it does not inherit our environment).
_RUNNER_ENV_PREFIXES = (
    "DB_",
    "DO_SPACES_",
    "COLDCOPY_",
    "BACKUP_",
    "PG_BIN_DIR",
    "FULL_RETENTION_",
    "COMPLIANCE_RETENTION_",
    "WAL_RETENTION_",
    "VERIFY_DB_",
    "SMTP_",
    "ALERT_",
)


def runner_env(env: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith(_RUNNER_ENV_PREFIXES)}


def launcher_for(settings: Settings, env_file: str | None = None) -> Launcher | None:
    """The launcher configured by COLDCOPY_LAUNCHER (None for ``none``: something else runs workers).

    ``env_file`` is the settings file this process was given, so that the runner reads the same one.
    """
    from coldcopy.ops.launchers import launcher_from_settings

    kind = settings.launcher
    if kind == "none":
        return None
    if kind == "app-platform":
        return launcher_from_settings(
            kind,
            token=settings.do_api_token.reveal(),
            app_id=settings.runner_app_id,
            base_url=settings.do_api_url,
        )
    if kind == "docker":  # a container inherits nothing: hand it the settings themselves
        source = environment(None, Path(env_file) if env_file else None)
        return launcher_from_settings(kind, image=settings.runner_image, env=runner_env(source))
    return launcher_from_settings(kind, env={"COLDCOPY_ENV_FILE": env_file} if env_file else {})


def wake(
    settings: Settings, launcher: Launcher | None = None, *, env_file: str | None = None
) -> dict[str, Any] | None:
    """Wake the runner; a summary of what happened (None when no launcher is configured)."""
    try:
        launcher = launcher or launcher_for(settings, env_file)
        if launcher is None:
            return None
        r = launcher.wake()
    except ColdCopyError as exc:
        log.error("could not wake the runner: %s", redact(str(exc), settings))
        return {"started": False, "error": redact(exc.message, settings)}
    log.info("runner wake (%s): %s", launcher.name, r.detail)
    return {"launcher": launcher.name, "started": r.started, "detail": redact(r.detail, settings), "id": r.id}


def tick(
    settings: Settings,
    now: datetime | None = None,
    *,
    launcher: Launcher | None = None,
    storage: Storage | None = None,
    wake_runner: bool = True,
    env_file: str | None = None,
) -> dict[str, Any]:
    """Enqueue due slots, mark stale runs failed, and wake the runner if work is waiting."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    storage = storage or Storage(settings)
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
        summary["stale"] = mark_stale(storage, now, timedelta(seconds=settings.heartbeat_stale_seconds))
    except ColdCopyError as exc:
        log.error("could not check for stale runs: %s", exc.message)
        summary["errors"].append({"stale": True, "message": redact(exc.message, settings)})
    try:  # the WAL archive's summary for /metrics and /alerts (PITR)
        from coldcopy.wal.monitor import refresh

        refresh(storage)
    except ColdCopyError as exc:
        log.error("could not summarise the WAL archive: %s", redact(exc.message, settings))
        summary["errors"].append({"wal": True, "message": redact(exc.message, settings)})
    try:  # after the stale check, so a run it just failed is seen; an SMTP failure is not an error here
        from coldcopy.alerting.notify import check_alerts

        summary["alerts"] = check_alerts(settings, storage, now, env_file=env_file)
    except ColdCopyError as exc:
        log.error("the alert check failed: %s", redact(exc.message, settings))
        summary["errors"].append({"alerts": True, "message": redact(exc.message, settings)})
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
