"""What the scheduler tick computes once for the monitor's reads.  Pure: no I/O.

The alert rules need inputs besides the catalog: the newest run of each job kind (the stale-job
rule), the WAL archive's summary, the alert notifier's memory (the email-failing alert), the
change archive's health, the intent records of interrupted restores, and the key ids with stored
streams that no setting held at the last count (``state/keys.json``, the key-unheld alert).
Gathering the first means listing days of run records, which grows with the history; so the tick
gathers them once, after its alert check, into one small object (``state/monitor.json``,
rewritten each tick: a few kilobytes, one writer).  ``/metrics``, ``/alerts``, ``/status`` and
``/recovery-time`` read that object with one GET, and the catalog (which they read fresh anyway)
with the usual conditional GET and journal listing, then apply the same rules to the same inputs:
the same answer as computing everything on the spot, as of the tick's ``computed_at``.

How stale: the run records and the WAL summary are as old as the last tick (every
:data:`TICK_INTERVAL`, so normally under 5 minutes plus the tick's run time); the catalog is read at
each call.  Answers carry ``computed_at`` and the age; an age over :data:`STALE_AFTER` (three ticks
missed) is flagged as stale.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from coldcopy.core.alert_state import parse_state
from coldcopy.core.archive_report import WalGap, WalHealth
from coldcopy.core.changes import ChangesHealth
from coldcopy.core.jobs import Run
from coldcopy.core.keys import unheld_at_count
from coldcopy.core.times import iso, parse_iso

STATE_KEY = "state/monitor.json"
STATE_FORMAT = "coldcopy-monitor-state/1"
TICK_INTERVAL = timedelta(minutes=5)  # project.yml's coldcopy-tick trigger: "*/5 * * * *"
STALE_AFTER = 3 * TICK_INTERVAL


@dataclass(frozen=True)
class MonitorState:
    """The tick's inputs to the alert rules, as of ``computed_at``."""

    computed_at: str
    runs: tuple[Run, ...] = ()  # the newest run of each job kind
    wal: WalHealth | None = None
    alert_state: dict[str, Any] = field(default_factory=lambda: parse_state(None))
    changes: ChangesHealth | None = None  # the change archive's health, once it was drained
    interrupted: tuple[dict[str, Any], ...] = ()  # intent records of restores killed mid-swap
    unheld_keys: dict[str, int] = field(default_factory=dict)  # key id -> streams no setting held
    keys_counted_at: str | None = None  # when ``key status`` or ``key rotate`` counted them

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "computed_at": self.computed_at,
            "runs": [r.to_dict() for r in self.runs],
            "wal": None if self.wal is None else asdict(self.wal),
            "alert_state": self.alert_state,
            "changes": None if self.changes is None else self.changes.to_dict(),
            "interrupted": list(self.interrupted),
            "unheld_keys": dict(self.unheld_keys),
            "keys_counted_at": self.keys_counted_at,
        }


def newest_runs(runs: Sequence[Run]) -> tuple[Run, ...]:
    """The newest run of each job kind, by kind: all the stale-job rule looks at."""
    newest: dict[str, Run] = {}
    for run in sorted(runs, key=lambda r: r.run_id, reverse=True):
        newest.setdefault(run.kind, run)
    return tuple(newest[k] for k in sorted(newest))


def build(
    now: datetime,
    runs: Sequence[Run],
    wal: WalHealth | None,
    alert_state: Mapping[str, Any],
    changes: ChangesHealth | None = None,
    interrupted: Sequence[Mapping[str, Any]] = (),
    keys: Mapping[str, Any] | None = None,
) -> MonitorState:
    """The state to store after a tick's alert check at ``now`` (``keys``: the stored count of
    streams per key id, ``core/keys.py``)."""
    records = tuple(dict(r) for r in interrupted)
    return MonitorState(
        iso(now),
        newest_runs(runs),
        wal,
        parse_state(dict(alert_state)),
        changes,
        records,
        unheld_at_count(keys),
        str(keys["at"]) if keys is not None and keys.get("at") else None,
    )


def wal_of(raw: Any) -> WalHealth | None:
    """A stored WAL summary (``asdict`` of a WalHealth); None when absent or not one."""
    if not isinstance(raw, dict):
        return None
    try:
        gaps = tuple(WalGap(**g) for g in raw.get("gaps", ()))
        return WalHealth(**{**raw, "gaps": gaps})
    except TypeError:
        return None


def parse(raw: Any) -> MonitorState | None:
    """A stored state; None when it is missing, not ours or unreadable (the caller computes live)."""
    if not isinstance(raw, dict) or raw.get("format") != STATE_FORMAT:
        return None
    try:
        computed_at = str(raw["computed_at"])
        parse_iso(computed_at)
    except (KeyError, ValueError, TypeError):
        return None
    runs = tuple(Run.from_dict(r) for r in raw.get("runs") or [] if isinstance(r, dict))
    changes = raw.get("changes")
    return MonitorState(
        computed_at,
        runs,
        wal_of(raw.get("wal")),
        parse_state(raw.get("alert_state")),
        ChangesHealth.from_dict(changes) if isinstance(changes, dict) else None,
        tuple(r for r in raw.get("interrupted") or [] if isinstance(r, dict)),
        _counts(raw.get("unheld_keys")),
        str(raw["keys_counted_at"]) if raw.get("keys_counted_at") else None,
    )


def _counts(raw: Any) -> dict[str, int]:
    if not isinstance(raw, dict):
        return {}
    return {str(k): int(v) for k, v in raw.items() if isinstance(v, int)}


def freshness(computed_at: str | None, now: datetime) -> dict[str, Any]:
    """How old an answer's tick-computed part is: ``computed_at``, ``age_seconds``, ``stale``.

    ``computed_at`` None: there was no stored state and the answer was computed at this call."""
    if computed_at is None:
        return {"source": "computed now", "computed_at": iso(now), "age_seconds": 0.0, "stale": False}
    age = (now - parse_iso(computed_at)).total_seconds()
    return {
        "source": "tick",
        "computed_at": computed_at,
        "age_seconds": round(age, 3),
        "stale": age > STALE_AFTER.total_seconds(),
    }
