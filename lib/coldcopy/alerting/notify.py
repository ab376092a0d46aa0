"""The alert check and the alert views (the I/O half of ``core.alerts`` and ``core.alert_state``).

``check_alerts`` runs inside the scheduler tick: it evaluates the rules, advances the notifier's
state in the bucket and sends what is pending (``alerting.email``), one email per alert that starts
and one per alert that resolves.  An SMTP failure keeps the notifications pending for the next
tick and shows up in ``/alerts`` (and the metrics) as an ``email-failing`` alert.
After the check it stores what it gathered (the newest runs, the WAL summary, the notifier's
state: ``core.monitor_state``) so that the web functions apply the same rules without listing the
run records.  ``alerts_report`` is what ``GET /alerts`` and ``coldcopy alerts`` answer;
``metrics_text`` what ``GET /metrics`` answers; both take those inputs, stored by the tick (the web)
or gathered now (the CLI, and the web before the first tick), and the catalog or its digest
(``core.catalog_digest``: the web reads the stored one, so no call walks every backup).  The tick
keeps the catalog's digest, pages and index current (``CatalogStore.upkeep``) and lists only the
runs made since the last tick (``recent_runs``), so its own requests and CPU follow what changed
since, not the history.

Imports stay light (no PostgreSQL driver, compression or crypto): this runs in small functions.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from email.message import EmailMessage
from typing import Any

from coldcopy.alerting.email import EmailError, build_message, send
from coldcopy.changes.health import load_health
from coldcopy.config import Settings, SmtpConfig
from coldcopy.core.alert_state import STATE_KEY, advance, delivered, delivery_alert, failed, parse_state
from coldcopy.core.alerts import Alert, counts_by_severity, evaluate_digest
from coldcopy.core.catalog import SKEW, Catalog
from coldcopy.core.catalog_digest import CatalogDigest, digest
from coldcopy.core.jobs import RUNS, Run, run_id_of, run_ids_after
from coldcopy.core.metrics import render_digest
from coldcopy.core.monitor_state import MonitorState, Seen, build, freshness, listing_start
from coldcopy.core.times import iso
from coldcopy.errors import ColdCopyError, NotFoundError
from coldcopy.ops.queue import get_run
from coldcopy.storage.catalog_store import CatalogStore
from coldcopy.storage.state_store import (
    load_keys_state,
    load_monitor_state,
    pending_intents,
    save_monitor_state,
)
from coldcopy.storage.store import ObjectStore
from coldcopy.wal.monitor import load

log = logging.getLogger(__name__)
RUNS_WINDOW = timedelta(days=8)
MAX_RUNS = 50


# -- reading the records --------------------------------------------------------------------------
_runs_lock = threading.Lock()
_finished_runs: dict[str, Run] = {}  # run records that can no longer change


def recent_runs(
    storage: ObjectStore, now: datetime, previous: MonitorState | None = None, lag: timedelta = timedelta(0)
) -> tuple[list[Run], tuple[Seen, ...]]:
    """Run records among the newest MAX_RUNS of the last RUNS_WINDOW, with the newest of each kind
    (all the rules read), and those ids with their kinds once finished (for the next tick).

    With ``previous``, the last tick's state, only the runs made since it (less ``lag``) are listed,
    and a run it saw finished is read again only if it is now the newest of its kind and not among
    its stored runs: the requests follow the runs made and still running, not the history."""
    start, seen = listing_start(previous, now, RUNS_WINDOW, lag)
    floor = run_ids_after(now - RUNS_WINDOW)
    known = {run_id: kind for run_id, kind in seen if run_id > floor}
    stored = {r.run_id: r for r in previous.runs if r.finished} if previous is not None and seen else {}
    after = f"{RUNS}{run_ids_after(start)}"
    listed = {i for o in storage.list(RUNS, start_after=after) if (i := run_id_of(o.key, RUNS))}
    out: list[Run] = []
    kinds: set[str] = set()
    now_seen: list[Seen] = []
    for run_id in sorted({*known, *listed}, reverse=True)[:MAX_RUNS]:
        kind = known.get(run_id)
        if kind is not None and kind in kinds:  # finished, and a newer run of its kind was read
            now_seen.append((run_id, kind))
            continue
        run = (stored.get(run_id) if kind is not None else None) or _read_run(storage, run_id)
        now_seen.append((run_id, run.kind if run is not None and run.finished else None))
        if run is not None:
            kinds.add(run.kind)
            out.append(run)
    return out, tuple(now_seen)


def _read_run(storage: ObjectStore, run_id: str) -> Run | None:
    """A run record (a finished one is fetched once per process); None when missing or unreadable."""
    key = f"{storage.bucket}/{storage.prefix}{run_id}"
    with _runs_lock:
        run = _finished_runs.get(key)
    if run is not None:
        return run
    try:
        run = get_run(storage, run_id)
    except ColdCopyError:
        return None
    if run is not None and run.finished:
        with _runs_lock:
            _finished_runs[key] = run
    return run


def load_state(storage: ObjectStore) -> dict[str, Any]:
    try:
        return parse_state(storage.get_json(STATE_KEY))
    except NotFoundError:
        return parse_state(None)
    except ValueError:
        log.warning("%s is unreadable; starting the alert state afresh", STATE_KEY)
        return parse_state(None)


def gather(
    storage: ObjectStore, now: datetime, previous: MonitorState | None = None, lag: timedelta = timedelta(0)
) -> MonitorState:
    """The rules' inputs besides the catalog, read from the records now (the tick, the CLI): the
    recent run records (``recent_runs``: from ``previous``, the last tick's state, and the runs
    made since, when given), the stored WAL summary, the notifier's state, the change archive's
    health, the interrupted restores and the last count of streams per key id."""
    runs, seen = recent_runs(storage, now, previous, lag)
    return build(
        now,
        runs,
        load(storage),
        load_state(storage),
        load_health(storage),
        pending_intents(storage),
        load_keys_state(storage),
        seen,
    )


def stored_or_gathered(storage: ObjectStore, now: datetime) -> tuple[MonitorState, bool]:
    """The tick's stored state (one GET), or, before the first tick, the same gathered now;
    True when it came from the tick."""
    state = load_monitor_state(storage)
    return (state, True) if state is not None else (gather(storage, now), False)


def digest_of(settings: Settings, cat: Catalog | CatalogDigest) -> CatalogDigest:
    """The catalog's digest (made now from a Catalog; a digest that kept too few sizes for
    ALERT_SIZE_SAMPLE is the caller's mistake: ``CatalogStore.current_digest`` never gives one)."""
    return cat if isinstance(cat, CatalogDigest) else digest(cat, settings.thresholds.size_sample)


def active_alerts(
    settings: Settings, cat: Catalog | CatalogDigest, inputs: MonitorState, now: datetime
) -> list[Alert]:
    """The rules' alerts now (WAL rules from the tick's stored archive summary, when PITR is in use)."""
    d = digest_of(settings, cat)
    return evaluate_digest(
        d,
        inputs.runs,
        inputs.wal,
        settings.thresholds,
        now,
        inputs.changes,
        inputs.interrupted,
        inputs.unheld_keys,
        inputs.keys_counted_at,
    )


# -- the tick's check and the views ---------------------------------------------------------------
Sender = Callable[[SmtpConfig, Sequence[EmailMessage]], int]


def check_alerts(
    settings: Settings, storage: ObjectStore, now: datetime, *, sender: Sender = send
) -> dict[str, Any]:
    """Evaluate, advance the state, send what is pending; a summary for the tick."""
    cfg = settings.smtp
    lag = timedelta(minutes=settings.schedule_grace_minutes) + SKEW  # how late a run id can be listed
    inputs = gather(storage, now, load_monitor_state(storage), lag)
    cat_digest = CatalogStore(storage).upkeep(now, settings.thresholds.size_sample)
    alerts = active_alerts(settings, cat_digest, inputs, now)
    before = inputs.alert_state
    state = advance(before, alerts, now, notify=cfg.configured)
    started = sorted(set(state["active"]) - set(before["active"]))
    resolved = sorted(set(before["active"]) - set(state["active"]))
    sent = 0
    if cfg.configured and state["pending"]:
        cluster = settings.cluster_label
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
    # What /metrics, /alerts, /status and /recovery-time read instead of the records (the catalog's
    # digest, pages and index were kept current above: the endpoints read the catalog until then).
    save_monitor_state(storage, replace(inputs, alert_state=state))
    return {
        "active": len(alerts),
        "started": started,
        "resolved": resolved,
        "sent": sent,
        "pending": len(state["pending"]),
        "email_configured": cfg.configured,
        "email_error": (state["last_error"] or {}).get("message"),
    }


def _with_delivery(alerts: list[Alert], state: dict[str, Any]) -> list[Alert]:
    failing = delivery_alert(state)
    return alerts if failing is None else [*alerts, failing]


def alerts_report(
    settings: Settings, cat: Catalog | CatalogDigest, inputs: MonitorState, now: datetime, *, from_tick: bool
) -> dict[str, Any]:
    """What ``GET /alerts`` and ``coldcopy alerts`` answer; ``from_tick``: ``inputs`` is the tick's
    stored state (its age is in the answer), else gathered now."""
    state = inputs.alert_state
    alerts = _with_delivery(active_alerts(settings, cat, inputs, now), state)
    return {
        "alerts": [a.to_dict() for a in alerts],
        "counts": counts_by_severity(alerts),
        "ok": not alerts,
        "checked_at": iso(now),
        "email": {
            "configured": settings.smtp.configured,
            "pending": len(state["pending"]),
            "last_error": state["last_error"],
            "last_delivery_at": state["last_delivery_at"],
        },
        "state": freshness(inputs.computed_at if from_tick else None, now),
    }


def metrics_text(
    settings: Settings, cat: Catalog | CatalogDigest, inputs: MonitorState, now: datetime
) -> str:
    """What ``GET /metrics`` answers: the catalog's metrics (from its digest) with the active alerts
    by severity, and when ``inputs`` were computed."""
    d = digest_of(settings, cat)
    alerts = _with_delivery(active_alerts(settings, d, inputs, now), inputs.alert_state)
    return render_digest(
        d,
        now,
        alerts=alerts,
        legacy_gb=settings.metrics_legacy_gb,
        wal=inputs.wal,
        computed_at=inputs.computed_at,
        changes=inputs.changes,
        changes_known=True,
    )
