"""The logical PITR drill's pure parts: where it aims and what it expects to find.  No I/O.

The drill (:mod:`coldcopy.verify.pitr_drill`) recovers the change archive to a random time in its
window into a scratch database with ``coldcopy pitr``'s own code, then checks the result against
what it reads from the archive by itself, independently of the replay:

* :func:`choose_time`: a random time in the window, never inside a dump's run (the dump chosen for
  a target while it ran may already hold a commit after the target, and the recovery refuses it);
* :class:`Tally`: a second pass over the same stream, deciding per transaction exactly as a recovery
  must (skipped when the dump has it, stopped at the first commit after the target), that keeps the
  heartbeat the last applied drain wrote and each table's rows inserted, deleted and truncated;
* :func:`expected_counts`: the dump's exact row counts moved on by that tally: the count of every
  table at the target;
* :func:`replay_figures`: the measured replay rate (transactions per second) and how many seconds
  of the archive's history one second of replay covers.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from coldcopy.core.changes import SCHEMA, Batch, SnapshotVisibility
from coldcopy.core.lsn import parse_lsn
from coldcopy.core.recovery_plan import RecoveryRefused, Target
from coldcopy.core.replay import Commit, Dump, LogicalPlan, parse_line, plan_logical, stream_time, within

HEARTBEAT_TABLE = "heartbeat"


def choose_time(start: datetime, end: datetime, dumps: Sequence[Dump], rng: random.Random) -> datetime:
    """A random time in [start, end]; one that falls while a dump ran moves to that dump's end (or
    to ``end`` when the dump finished after the newest archived commit)."""
    span = max((end - start) // timedelta(microseconds=1), 0)
    when = start + timedelta(microseconds=int(rng.random() * span))
    for d in dumps:
        if d.started_at <= when < d.finished_at:
            when = min(d.finished_at, end)
    return when


@dataclass
class Tally:
    """What the stream says the database holds at ``target`` on top of the dump (``visibility``).

    ``feed`` every line of the batches the recovery replays, in order."""

    visibility: SnapshotVisibility
    target: Target
    transactions: int = 0
    ddl: int = 0
    done: bool = False
    heartbeat: datetime | None = None  # what the newest applied heartbeat row says
    heartbeat_commit: datetime | None = None  # when that heartbeat committed
    net: dict[str, int] = field(default_factory=dict)  # schema.table -> inserted - deleted
    truncated: set[str] = field(default_factory=set)  # counted from 0 (``net`` since the truncate)
    _applying: bool = False
    _commit: Commit | None = None

    def feed(self, line: str) -> None:
        if self.done:
            return
        head = line[:16]
        if head.startswith('{"action":"B"'):
            self._commit = Commit.of(parse_line(line))
            if not within(self.target, self._commit):
                self.done = True
                return
            self._applying = not self.visibility.visible(self._commit.xid)
            self.transactions += self._applying
            return
        if not self._applying or head.startswith('{"action":"C"'):
            return
        self._row(parse_line(line))

    def _row(self, row: dict[str, Any]) -> None:
        action, table = row.get("action"), f"{row.get('schema')}.{row.get('table')}"
        if action == "I":
            self.net[table] = self.net.get(table, 0) + 1
            if row.get("schema") == SCHEMA and row.get("table") == "ddl_log":
                self.ddl += 1
        elif action == "D":
            self.net[table] = self.net.get(table, 0) - 1
        elif action == "T":
            self.net[table] = 0
            self.truncated.add(table)
        elif action == "U" and row.get("schema") == SCHEMA and row.get("table") == HEARTBEAT_TABLE:
            at = next((c.get("value") for c in row.get("columns") or [] if c.get("name") == "at"), None)
            if at is not None and self._commit is not None:
                self.heartbeat, self.heartbeat_commit = stream_time(str(at)), self._commit.at


def expected_counts(dumped: dict[str, int], tally: Tally) -> dict[str, int]:
    """Every table's row count at the target: the dump's exact count, less what was truncated,
    plus the rows the applied transactions inserted and less those they deleted."""
    out = dict(dumped)
    for table, delta in tally.net.items():
        out[table] = (0 if table in tally.truncated else out.get(table, 0)) + delta
    return out


def count_differences(expected: dict[str, int], got: dict[str, int], *, ddl: bool) -> list[str]:
    """``table: expected N, found M`` for each table that differs.  After replayed DDL a table may
    have been created, renamed or dropped: only the tables both sides know are compared then."""
    names = sorted(set(expected) & set(got)) if ddl else sorted(set(expected) | set(got))
    return [
        f"{t}: expected {expected.get(t, 'no table')}, found {got.get(t, 'no table')}"
        for t in names
        if expected.get(t) != got.get(t)
    ]


def replay_figures(transactions: int, replay_seconds: float, history_seconds: float) -> dict[str, float]:
    """The replay rate in transactions per second, and ``history_per_replay_second``: how many
    seconds of the archive's history (from the dump's start to the target) one second of replay
    covered, which an estimate divides the history to replay by."""
    seconds = max(replay_seconds, 1e-6)
    return {
        "replay_transactions_per_second": round(transactions / seconds, 1),
        "history_seconds": round(max(history_seconds, 0.0), 3),
        "history_per_replay_second": round(max(history_seconds, 0.0) / seconds, 2),
    }


def run_ends(batches: list[Batch]) -> list[datetime]:
    """The newest commit of each continuous run of the stream (split where a batch does not start
    where the previous ended), newest first: a window can only end at one of them."""
    ends: list[datetime] = []
    newest: datetime | None = None
    previous: Batch | None = None
    for b in sorted(batches, key=lambda b: parse_lsn(b.start_lsn)):
        if previous is not None and parse_lsn(b.start_lsn) != parse_lsn(previous.end_lsn) and newest:
            ends.append(newest)
            newest = None
        if b.last_commit_at:
            at = stream_time(b.last_commit_at)
            newest = at if newest is None else max(newest, at)
        previous = b
    if newest is not None:
        ends.append(newest)
    return sorted(ends, reverse=True)


def aim_drill(
    batches: list[Batch], dumps: list[Dump], rng: random.Random
) -> tuple[LogicalPlan, LogicalPlan, str | None] | None:
    """(the plan to a random time in the window, the plan to the window's end, why the newest
    archived commit cannot be reached or None).  When the newest commit is refused (a gap: a lost
    batch, a slot re-created before the next dump), the window is the newest one that can be
    recovered, and the reason fails the drill; None when no commit can be recovered (no dump the
    stream extends yet: nothing to prove)."""
    unreachable: str | None = None
    for newest in run_ends(batches):
        try:
            window = plan_logical(Target("time", time=newest), dumps, batches)
        except RecoveryRefused as exc:
            unreachable = unreachable or exc.message
            continue
        inside = [d for d in dumps if window.window_start <= d.started_at]
        when = choose_time(window.window_start, window.window_end, inside, rng)
        return plan_logical(Target("time", time=when), dumps, batches), window, unreachable
    return None
