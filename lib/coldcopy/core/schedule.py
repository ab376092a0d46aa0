"""The cron table and heartbeat staleness: which job slots are due now.  Pure: no I/O.

One scheduler tick (every few minutes) asks :func:`due_slots` which slots are due and enqueues
each one create-only, so a slot runs once however many ticks overlap, repeat or arrive late.
All times are UTC; there is no daylight-saving time to get wrong.

A slot is due when its time lies in ``(now - grace, now]``.  Only the NEWEST such slot of each
job kind is due: after an outage, a schedule that fired several times while nobody was looking
runs once, not once per missed slot (three back-to-back full backups help nobody).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import NamedTuple, Protocol

# Job kinds the schedule drives, in the order they are enqueued when due together.
SCHEDULED_KINDS = ("backup-compliance", "backup-full", "verify", "cleanup", "wal-sweep")
SLOT_FORMAT = "%Y-%m-%dT%H:%MZ"


class Slot(NamedTuple):
    """One firing of a job kind's schedule: enqueued at most once."""

    kind: str
    at: datetime  # UTC, on a whole minute

    @property
    def id(self) -> str:
        """``backup-full/2026-11-24T02:00Z``: the identity that is enqueued at most once."""
        return f"{self.kind}/{slot_time(self.at)}"


def slot_time(at: datetime) -> str:
    """``2026-11-24T02:00Z``: a slot's time as its key writes it."""
    return at.astimezone(UTC).strftime(SLOT_FORMAT)


def parse_slot_time(text: str) -> datetime:
    """The inverse of :func:`slot_time`; ValueError for anything else."""
    return datetime.strptime(text, SLOT_FORMAT).replace(tzinfo=UTC)


class _ScheduleSettings(Protocol):
    @property
    def schedule_full(self) -> str: ...
    @property
    def schedule_verify(self) -> str: ...
    @property
    def schedule_cleanup(self) -> str: ...
    @property
    def schedule_compliance(self) -> str: ...
    @property
    def schedule_wal_sweep(self) -> str: ...


def schedule_table(settings: _ScheduleSettings) -> dict[str, str]:
    """Job kind -> cron expression (UTC), from configuration; a schedule set to ``off`` (or empty)
    leaves its kind out.

    ``wal-sweep`` is off unless ``COLDCOPY_SCHEDULE_WAL_SWEEP`` is set: it is for servers that
    allow a replication connection but no archive_command, and its interval (plus the tick's
    5 minutes) is then the data-loss window.
    """
    table = {
        "backup-full": settings.schedule_full,
        "verify": settings.schedule_verify,
        "cleanup": settings.schedule_cleanup,
        "backup-compliance": settings.schedule_compliance,
        "wal-sweep": settings.schedule_wal_sweep,
    }
    return {kind: cron for kind, cron in table.items() if cron and cron != "off"}


def _utc(now: datetime) -> datetime:
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware (UTC)")
    return now.astimezone(UTC)


def latest_slot(cron: str, now: datetime) -> datetime:
    """The newest time at or before ``now`` that ``cron`` fires."""
    from croniter import croniter  # imported here: the tick function keeps its import cost small

    if len(cron.split()) != 5 or not croniter.is_valid(cron):
        raise ValueError(f"not a 5-field cron expression: {cron!r}")
    now = _utc(now)
    # croniter's get_prev is strictly before its start; start one minute past now's minute.
    start = now.replace(second=0, microsecond=0) + timedelta(minutes=1)
    prev: datetime = croniter(cron, start).get_prev(datetime)
    return prev.astimezone(UTC)


def due_slots(table: dict[str, str], now: datetime, grace: timedelta) -> list[Slot]:
    """The slots due at ``now``: per kind, the newest slot in ``(now - grace, now]``."""
    now = _utc(now)
    order = {k: i for i, k in enumerate(SCHEDULED_KINDS)}
    out = []
    for kind, cron in table.items():
        at = latest_slot(cron, now)
        if now - grace < at <= now:
            out.append(Slot(kind, at))
    return sorted(out, key=lambda s: (s.at, order.get(s.kind, len(order)), s.kind))
