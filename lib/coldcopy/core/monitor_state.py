"""What the scheduler tick computes once for the monitor's reads.  Pure: no I/O.

The alert rules need inputs besides the catalog: the newest run of each job kind (the stale-job
rule), the WAL archive's summary, the alert notifier's memory (the email-failing alert), the
change archive's health, the intent records of interrupted restores, and the key ids with stored
streams that no setting held at the last count (``state/keys.json``, the key-unheld alert).
Gathering the first means listing days of run records, which grows with the history; so the tick
gathers them once, after its alert check, into one small object (``state/monitor.json``,
rewritten each tick: a few kilobytes, one writer).  The next tick lists only the runs made since
(:func:`listing_start`, with the run ids it saw: ``seen_runs``), so its listing follows the jobs,
not the history.  ``/metrics``, ``/alerts``, ``/status`` and
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
Seen = tuple[str, str | None]  # a run id and its kind once finished


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
    # The run ids the newest runs were chosen from (the newest MAX_RUNS of the window), each with its
    # kind once finished (None: read it again); the next tick lists only the runs made since.
    seen_runs: tuple[Seen, ...] | None = None

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
            "seen_runs": None if self.seen_runs is None else [list(s) for s in self.seen_runs],
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
    seen_runs: Sequence[Seen] | None = None,
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
        None if seen_runs is None else tuple(seen_runs),
    )


def listing_start(
    previous: MonitorState | None, now: datetime, window: timedelta, lag: timedelta
) -> tuple[datetime, tuple[Seen, ...]]:
    """Where a tick's listing of the run records of the last ``window`` starts, and the run ids an
    earlier tick saw that it need not list again: ``lag`` before the ``previous`` tick (a run id can
    sort up to ``lag`` behind the newest one listed then: a scheduled slot's id is the slot's time,
    enqueued up to the schedule's grace after it), with the ids that tick saw; or the whole window
    and none (no earlier tick, one from before ``seen_runs``, or one outside the window)."""
    start = now - window
    if previous is None or previous.seen_runs is None:
        return start, ()
    since = parse_iso(previous.computed_at) - lag
    if not start < since <= now:
        return start, ()
    return since, previous.seen_runs


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
        _seen(raw.get("seen_runs")),
    )


def _seen(raw: Any) -> tuple[Seen, ...] | None:
    """Stored run ids with their kinds; None (the next tick lists the whole window) when absent
    or not that."""
    if not isinstance(raw, list):
        return None
    out = []
    for item in raw:
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)):
            return None
        out.append((item[0], item[1] if isinstance(item[1], str) else None))
    return tuple(out)


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
