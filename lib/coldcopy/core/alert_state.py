"""The alert notifier's memory: which alerts were announced, what is still to send.  Pure: no I/O.

One small JSON object, ``alerts/state.json`` in the bucket, that the tick's alert check rewrites
only when something changes (Spaces limits writes to one object):

* ``active``: the alerts seen on the last check, by id, with when they were first seen;
* ``pending``: notifications not delivered yet, oldest first: ``{"event": "start"|"resolve",
  "alert": {...}, "at": …}``;
* ``last_error``: why the last delivery failed and since when (None once one succeeds).

:func:`advance` turns the previous state and the alerts active now into the next state: an alert
that appears queues one "start" notification, one that disappears queues one "resolve"; an alert
that goes on queues nothing.  An alert that resolves before its start was ever delivered queues
nothing at all (both are dropped: there is nothing left to act on).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from coldcopy.core.alerts import WARNING, Alert, alert
from coldcopy.core.times import iso

STATE_KEY = "alerts/state.json"
STATE_FORMAT = "coldcopy-alert-state/1"
MAX_PENDING = 100
START, RESOLVE = "start", "resolve"


def empty_state() -> dict[str, Any]:
    """A state that remembers nothing: no alert seen, nothing to send."""
    return {"format": STATE_FORMAT, "active": {}, "pending": [], "last_error": None, "last_delivery_at": None}


def parse_state(raw: Any) -> dict[str, Any]:
    """A stored state, or an empty one when it is missing or not ours (it is only a memory)."""
    if not isinstance(raw, dict) or raw.get("format") != STATE_FORMAT:
        return empty_state()
    state = empty_state()
    state["active"] = {str(k): v for k, v in (raw.get("active") or {}).items() if isinstance(v, dict)}
    state["pending"] = [p for p in raw.get("pending") or [] if isinstance(p, dict) and "alert" in p]
    state["last_error"] = raw.get("last_error") if isinstance(raw.get("last_error"), dict) else None
    state["last_delivery_at"] = raw.get("last_delivery_at")
    return state


def advance(state: dict[str, Any], alerts: Sequence[Alert], now: datetime, *, notify: bool) -> dict[str, Any]:
    """The next state.  ``notify`` False (email not configured): track alerts, queue nothing."""
    new = copy.deepcopy(state)
    active: dict[str, Any] = new["active"]
    pending: list[dict[str, Any]] = new["pending"]
    at = iso(now)
    current = {a.id: a for a in alerts}
    for a in alerts:
        if a.id in active:
            continue
        record = {**a.to_dict(), "since": a.since or at, "first_seen": at}
        active[a.id] = record
        if notify:
            pending.append({"event": START, "alert": record, "at": at})
    for gone in sorted(set(active) - set(current)):
        record = active.pop(gone)
        unsent = [p for p in pending if p["event"] == START and p["alert"].get("id") == gone]
        if unsent:
            pending[:] = [p for p in pending if p not in unsent]
        elif notify:
            pending.append({"event": RESOLVE, "alert": record, "at": at})
    del pending[:-MAX_PENDING]
    if not pending:
        new["last_error"] = None
    return new


def delivered(state: dict[str, Any], count: int, now: datetime) -> dict[str, Any]:
    """The state after the first ``count`` pending notifications were sent."""
    new = copy.deepcopy(state)
    del new["pending"][:count]
    if count:
        new["last_delivery_at"] = iso(now)
    if not new["pending"]:
        new["last_error"] = None
    return new


def failed(state: dict[str, Any], message: str, now: datetime) -> dict[str, Any]:
    """Delivery failed: keep what is pending; remember why (and since when, unchanged while it lasts)."""
    new = copy.deepcopy(state)
    previous = new.get("last_error") or {}
    new["last_error"] = {"since": previous.get("since") or iso(now), "message": message}
    return new


def delivery_alert(state: dict[str, Any]) -> Alert | None:
    """An alert of its own while alert emails cannot be delivered."""
    err = state.get("last_error")
    if not err:
        return None
    waiting = len(state.get("pending") or [])
    message = (
        f"alert emails cannot be sent since {err.get('since')}: {err.get('message')}; "
        f"{waiting} notification(s) wait for the next tick"
    )
    return alert("email-failing", WARNING, str(err.get("since")), message)
