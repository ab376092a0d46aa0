"""Point-in-time recovery from the change archive, its pure parts: which dump and batches reach a
target, and which transactions of the stream a replay applies (the SQL it sends:
:mod:`coldcopy.core.replay_sql`).

The stream is wal2json's format-version 2, one JSON line per row, with ``B`` and ``C`` lines around
each transaction.  Both carry the transaction's xid, its commit time and the LSN of its commit
record (``lsn``), so whether a transaction is applied is decided at its ``B`` line:

* skipped when the dump already contains it (:meth:`SnapshotVisibility.visible`);
* applied when it committed at or before the target; the first commit after the target ends the
  replay (commits arrive in commit order), as PostgreSQL's own recovery stops.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from coldcopy.core.changes import RESTORE_POINTS, SCHEMA, Batch, SnapshotVisibility, continuity_gaps
from coldcopy.core.lsn import format_lsn, parse_lsn
from coldcopy.core.recovery_plan import RecoveryRefused, Target
from coldcopy.core.times import parse_iso


def stream_time(text: str) -> datetime:
    """A wal2json timestamp (``2026-12-02 06:24:53.402895+00``) as an aware datetime."""
    return parse_iso(text.replace(" ", "T", 1))


_DECODER = json.JSONDecoder(parse_int=str, parse_float=str)


def parse_line(line: str) -> dict[str, Any]:
    """One stream line; numbers stay text (exact numerics, and the server parses them)."""
    row: dict[str, Any] = _DECODER.raw_decode(line)[0]  # a line has no surrounding blanks
    return row


@dataclass(frozen=True)
class Commit:
    """A transaction of the stream, as its ``B`` line describes it."""

    xid: int
    lsn: int  # its commit record
    at: datetime

    @classmethod
    def of(cls, row: dict[str, Any]) -> Commit:
        """From a ``B`` (or ``C``) line."""
        return cls(int(row["xid"]), parse_lsn(str(row["lsn"])), stream_time(str(row["timestamp"])))


def within(target: Target, commit: Commit) -> bool:
    """Whether ``commit`` is at or before ``target`` (a time or an LSN: xid and restore-point
    targets are resolved to their commit's LSN first, :func:`resolved`)."""
    if target.kind == "time" and target.time is not None:
        return commit.at <= target.time
    if target.kind == "lsn" and target.lsn is not None:
        return commit.lsn <= target.lsn
    raise ValueError(f"replay needs a time or LSN target, not {target.kind}")


def resolved(target: Target, commit: Commit) -> Target:
    """An xid or restore-point target as the LSN of the commit that reaches it (inclusive)."""
    return Target("lsn", lsn=commit.lsn, name=target.name, xid=target.xid)


def restore_point_name(row: dict[str, Any]) -> str | None:
    """The name a row records when it is the insert of a restore point, else None."""
    if row.get("action") != "I" or row.get("schema") != SCHEMA or row.get("table") != RESTORE_POINTS:
        return None
    return next((str(c["value"]) for c in row.get("columns") or [] if c["name"] == "name"), None)


# -- choosing the dump and the batches -------------------------------------------------------------
@dataclass(frozen=True)
class Dump:
    """A logical backup as a recovery from the change archive sees it."""

    name: str
    started_at: datetime
    finished_at: datetime
    visibility: SnapshotVisibility


@dataclass(frozen=True)
class LogicalPlan:
    """The dump to restore and the batches to replay on top of it, up to the target."""

    dump: Dump
    batches: tuple[Batch, ...]
    target: Target  # time or LSN
    window_start: datetime  # the oldest dump this run of the stream extends
    window_end: datetime  # the newest archived commit of this run

    def describe(self) -> str:
        """One line for the output: what is restored and replayed."""
        first = self.batches[0].start_lsn if self.batches else "-"
        last = self.batches[-1].end_lsn if self.batches else "-"
        return (
            f"logical archive: dump {self.dump.name}, then {len(self.batches)} batch(es) of the change "
            f"archive ({first} .. {last}); window {self.window_start.isoformat()} .. "
            f"{self.window_end.isoformat()}"
        )


@dataclass
class _Run:
    batches: list[Batch] = field(default_factory=list)

    @property
    def start(self) -> int:
        return parse_lsn(self.batches[0].start_lsn)

    @property
    def end(self) -> int:
        return parse_lsn(self.batches[-1].end_lsn)

    def newest_commit(self) -> datetime | None:
        times = [stream_time(b.last_commit_at) for b in self.batches if b.last_commit_at]
        return max(times) if times else None


def runs(batches: Sequence[Batch]) -> list[list[Batch]]:
    """The batches cut into continuous runs (a gap: a missing batch, or the slot re-created)."""
    ordered = sorted(batches, key=lambda b: parse_lsn(b.start_lsn))
    gap_starts = {parse_lsn(nxt) for _, nxt in continuity_gaps(ordered)}
    out: list[list[Batch]] = []
    for b in ordered:
        if not out or parse_lsn(b.start_lsn) in gap_starts:
            out.append([])
        out[-1].append(b)
    return out


def _dumps_in(run: _Run, dumps: Sequence[Dump]) -> list[Dump]:
    """Dumps this run extends: their snapshot lies inside it (oldest first)."""
    fit = [
        d
        for d in dumps
        if d.visibility.wal_lsn_before and run.start <= parse_lsn(d.visibility.wal_lsn_before) < run.end
    ]
    return sorted(fit, key=lambda d: d.started_at)


def _reaches(target: Target, run: _Run) -> bool:
    if target.kind == "time" and target.time is not None:
        newest = run.newest_commit()
        return newest is not None and target.time <= newest
    return target.lsn is not None and target.lsn <= run.end


def _before(target: Target, dump: Dump) -> bool:
    if target.kind == "time" and target.time is not None:
        return dump.started_at <= target.time
    return target.lsn is not None and parse_lsn(dump.visibility.wal_lsn_before) <= target.lsn


def plan_logical(target: Target, dumps: Sequence[Dump], batches: Sequence[Batch]) -> LogicalPlan:
    """The newest dump before ``target`` (time or LSN) and the batches from its snapshot to the
    target; RecoveryRefused (nothing written) when no run of the stream reaches it from a dump."""
    if target.kind not in ("time", "lsn"):
        raise ValueError("resolve xid and restore-point targets first")
    all_runs = [_Run(r) for r in runs(batches)]
    if not all_runs:
        raise RecoveryRefused(
            "the change archive is empty", "run `coldcopy changes setup`, a backup, and drains first"
        )
    usable = [(r, _dumps_in(r, dumps)) for r in all_runs]
    usable = [(r, ds) for r, ds in usable if ds]
    if not usable:
        raise RecoveryRefused(
            "no logical backup was taken while the change archive was running, so nothing can be "
            "replayed onto one",
            "take a backup (coldcopy backup) now: the window starts there",
        )
    newest = max((t for r in all_runs if (t := r.newest_commit()) is not None), default=None)
    newest_lsn = max(r.end for r in all_runs)
    oldest = min((ds[0] for _, ds in usable), key=lambda d: d.started_at)
    if (target.kind == "time" and (newest is None or target.time is None or target.time > newest)) or (
        target.kind == "lsn" and (target.lsn or 0) > newest_lsn
    ):
        end = newest.isoformat() if newest else "-"
        raise RecoveryRefused(
            f"{target.describe()} is after the newest archived commit ({end}, LSN {format_lsn(newest_lsn)})",
            "run `coldcopy changes drain` first, or choose an earlier target",
        )
    if not _before(target, oldest):
        raise RecoveryRefused(
            f"{target.describe()} is before the oldest usable logical backup ({oldest.name}, "
            f"started {oldest.started_at.isoformat()})",
            "choose a later target: the change window starts at that backup",
        )
    for run, ds in reversed(usable):
        if not _reaches(target, run):
            continue
        before = [d for d in ds if _before(target, d)]
        if not before:
            continue
        dump = before[-1]
        chosen = [b for b in replay_batches(run.batches, dump.visibility) if _batch_needed(target, b)]
        window_end = run.newest_commit() or ds[-1].finished_at
        return LogicalPlan(dump, tuple(chosen), target, ds[0].started_at, window_end)
    raise RecoveryRefused(
        f"{target.describe()} falls in a gap of the change archive (a missing batch, or the "
        "replication slot was lost or re-created, with no backup after it before the target)",
        "choose a target inside the window `coldcopy changes status` shows",
    )


def replay_batches(batches: Sequence[Batch], visibility: SnapshotVisibility) -> list[Batch]:
    """The batches (stream order) that may hold a transaction the dump lacks: every one ending after
    its ``wal_lsn_before``, and before it every one listing an xid its snapshot does not see (a
    transaction whose commit record precedes ``wal_lsn_before`` may still be in progress in the
    snapshot: it leaves the proc array after its commit record).  A record from before batches
    listed their xids cannot be decided: the newest batch ending before ``wal_lsn_before`` is
    taken too when it lacks them (retention keeps it for the same reason: ``needless_prefix``).
    The replay skips what the dump already has, so a batch taken too many costs only its reading."""
    start = parse_lsn(visibility.wal_lsn_before)
    before = [b for b in batches if parse_lsn(b.end_lsn) <= start]
    undecided = before[-1].key if before and before[-1].xids is None else None
    return [
        b
        for b in batches
        if parse_lsn(b.end_lsn) > start
        or b.key == undecided
        or (b.xids is not None and not visibility.sees_all(b.xids))
    ]


def _batch_needed(target: Target, b: Batch) -> bool:
    """Whether the batch may hold a transaction at or before the target."""
    if target.kind == "lsn" and target.lsn is not None:
        return parse_lsn(b.start_lsn) <= target.lsn
    if target.time is not None and b.first_commit_at:
        return stream_time(b.first_commit_at) <= target.time
    return True


def sequence_floor(captured: dict[str, int], used: dict[str, int]) -> dict[str, int]:
    """Where each sequence must be at least after a replay: its captured position, and never
    below a value the replayed rows use (``used``: the largest value in the column it feeds)."""
    out = dict(captured)
    for seq, value in used.items():
        out[seq] = max(out.get(seq, value), value)
    return out
