"""The alert check and the alert views (the I/O half of ``alerts`` and ``alert_state``).

``check_alerts`` runs inside the scheduler tick: it evaluates the rules, advances the notifier's
state in the bucket and sends what is pending (``alert_email``), one email per alert that starts
and one per alert that resolves.  An SMTP failure keeps the notifications pending for the next
tick and shows up in ``/alerts`` (and the metrics) as an ``email-failing`` alert.
``alerts_report`` is what ``GET /alerts`` and ``coldcopy alerts`` answer; ``metrics_text`` what
``GET /metrics`` answers.

Imports stay light (no PostgreSQL driver, compression or crypto): this runs in small functions.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from coldcopy.alerting.email import EmailError, SmtpConfig, build_message, send, smtp_from
from coldcopy.config import Settings, environment
from coldcopy.core.alert_state import STATE_KEY, advance, delivered, delivery_alert, failed, parse_state
from coldcopy.core.alerts import Alert, Thresholds, counts_by_severity, evaluate, thresholds_from
from coldcopy.core.catalog import Catalog
from coldcopy.core.manifest import iso
from coldcopy.errors import ColdCopyError, ConfigError, NotFoundError
from coldcopy.storage.s3 import Storage

log = logging.getLogger(__name__)
RUNS_WINDOW = timedelta(days=8)
MAX_RUNS = 50


# -- reading the records --------------------------------------------------------------------------
_runs_lock = threading.Lock()
_finished_runs: dict[str, dict[str, Any]] = {}  # run records that can no longer change


def recent_runs(storage: Storage, now: datetime) -> list[dict[str, Any]]:
    """Run records of the last RUNS_WINDOW (newest MAX_RUNS); finished ones are fetched once per process."""
    from coldcopy.ops.queue import RUNS, TERMINAL, get_run, new_run_id

    after = f"{RUNS}{new_run_id(now - RUNS_WINDOW)[:10]}"
    ids = sorted(
        (o.key[len(RUNS) : -5] for o in storage.list(RUNS, start_after=after) if o.key.endswith(".json")),
        reverse=True,
    )[:MAX_RUNS]
    out = []
    for run_id in ids:
        key = f"{storage.bucket}/{storage.prefix}{run_id}"
        with _runs_lock:
            run = _finished_runs.get(key)
        if run is None:
            try:
                run = get_run(storage, run_id)
            except ColdCopyError:
                continue
            if run is None:
                continue
            if run.get("state") in TERMINAL:
                with _runs_lock:
                    _finished_runs[key] = run
        out.append(run)
    return out


def load_state(storage: Storage) -> dict[str, Any]:
    try:
        return parse_state(storage.get_json(STATE_KEY))
    except NotFoundError:
        return parse_state(None)
    except ValueError:
        log.warning("%s is unreadable; starting the alert state afresh", STATE_KEY)
        return parse_state(None)


def _thresholds(settings: Settings, env: Mapping[str, str]) -> Thresholds:
    return replace(thresholds_from(env), heartbeat_stale_seconds=settings.heartbeat_stale_seconds)


def _env(env: Mapping[str, str] | None, env_file: str | None) -> Mapping[str, str]:
    return env if env is not None else environment(None, Path(env_file) if env_file else None)


def active_alerts(
    settings: Settings, storage: Storage, cat: Catalog, now: datetime, env: Mapping[str, str]
) -> list[Alert]:
    """The rules' alerts now (WAL rules from the tick's stored archive summary, when PITR is in use)."""
    from coldcopy.wal.monitor import load

    return evaluate(cat, recent_runs(storage, now), load(storage), _thresholds(settings, env), now)


# -- the tick's check and the views ---------------------------------------------------------------
Sender = Callable[[SmtpConfig, Sequence[EmailMessage]], int]


def check_alerts(
    settings: Settings,
    storage: Storage,
    now: datetime,
    *,
    env: Mapping[str, str] | None = None,
    env_file: str | None = None,
    sender: Sender = send,
) -> dict[str, Any]:
    """Evaluate, advance the state, send what is pending; a summary for the tick."""
    from coldcopy.storage.catalog_store import CatalogStore

    values = _env(env, env_file)
    cfg = smtp_from(values)
    alerts = active_alerts(settings, storage, CatalogStore(storage).read(), now, values)
    before = load_state(storage)
    state = advance(before, alerts, now, notify=cfg.configured)
    started = sorted(set(state["active"]) - set(before["active"]))
    resolved = sorted(set(before["active"]) - set(state["active"]))
    sent = 0
    if cfg.configured and state["pending"]:
        cluster = settings.cluster or settings.db_name or "default"
        messages = [build_message(p["event"], p["alert"], cluster, cfg, p["at"]) for p in state["pending"]]
        try:
            sent = sender(cfg, messages)
            state = delivered(state, sent, now)
        except EmailError as exc:
            sent = exc.sent
            state = failed(delivered(state, sent, now), exc.message, now)
            log.error(
                "alert emails could not be sent (%d kept for the next tick): %s",
                len(state["pending"]),
                exc.message,
            )
    if state != before:
        storage.put_json(STATE_KEY, state)
    return {
        "active": len(alerts),
        "started": started,
        "resolved": resolved,
        "sent": sent,
        "pending": len(state["pending"]),
        "email_configured": cfg.configured,
        "email_error": (state["last_error"] or {}).get("message"),
    }


def alerts_report(
    settings: Settings,
    storage: Storage,
    cat: Catalog,
    now: datetime,
    *,
    env: Mapping[str, str] | None = None,
    env_file: str | None = None,
) -> dict[str, Any]:
    """What ``GET /alerts`` and ``coldcopy alerts`` answer."""
    values = _env(env, env_file)
    alerts = active_alerts(settings, storage, cat, now, values)
    state = load_state(storage)
    failing = delivery_alert(state)
    if failing is not None:
        alerts.append(failing)
    try:
        configured = smtp_from(values).configured
    except ConfigError:
        configured = False
    return {
        "alerts": [a.to_dict() for a in alerts],
        "counts": counts_by_severity(alerts),
        "ok": not alerts,
        "checked_at": iso(now),
        "email": {
            "configured": configured,
            "pending": len(state["pending"]),
            "last_error": state["last_error"],
            "last_delivery_at": state["last_delivery_at"],
        },
    }


def metrics_text(
    settings: Settings, storage: Storage, cat: Catalog, now: datetime, *, env: Mapping[str, str] | None = None
) -> str:
    """What ``GET /metrics`` answers: the catalog's metrics with the active alerts by severity."""
    from coldcopy.core.metrics import render

    values = _env(env, None)
    alerts = active_alerts(settings, storage, cat, now, values)
    failing = delivery_alert(load_state(storage))
    if failing is not None:
        alerts.append(failing)
    legacy = values.get("COLDCOPY_METRICS_LEGACY_GB", "").strip().lower() in ("1", "true", "yes")
    from coldcopy.wal.monitor import load

    return render(cat, now, alerts=alerts, legacy_gb=legacy, wal=load(storage))
