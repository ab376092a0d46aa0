"""Where a point-in-time recovery can go, decided before anything is written.  Pure: no I/O.

A target (time, LSN, transaction, restore point, or the end of the backup) and what is stored (the
base backups' manifests, the archived WAL names with their storage times, the timeline histories)
in; a ``RecoveryPlan`` (which backup, the timeline, the WAL from its first segment to the target, what
recovery will ask ``restore_command`` for) or ``RecoveryRefused`` with the reason out.

How far the archive "reaches" for a time target: PostgreSQL knows it has passed a time only when
it replays a commit after it, so we need an archived segment stored at or after the target time;
the segments up to the first such one must be continuous.  Timeline switches (recovering across an
earlier PITR): the archived history files give the path from the backup's timeline to the newest
timeline reachable from it (what 'latest' would follow, minus timelines that branched before the
backup ended); continuity is checked along it, and that timeline is written as
recovery_target_timeline.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from datetime import UTC, datetime

from coldcopy.core.lsn import (
    DEFAULT_SEGMENT_SIZE,
    Segment,
    format_lsn,
    gaps,
    parse_lsn,
    parse_segment,
    segment_of,
)
from coldcopy.core.manifest import Manifest
from coldcopy.core.times import parse_iso
from coldcopy.errors import ColdCopyError


class RecoveryRefused(ColdCopyError):
    """The requested target cannot be reached from what is stored; nothing was written."""

    exit_code = 8


@dataclass(frozen=True)
class Target:
    """Where a recovery stops: a time, an LSN, a transaction, a restore point, or the backup's end."""

    kind: str  # time | lsn | xid | name | immediate
    time: datetime | None = None
    lsn: int | None = None
    name: str = ""
    xid: int | None = None

    def describe(self) -> str:
        if self.kind == "time" and self.time:
            return f"time {self.time.isoformat()}"
        if self.kind == "lsn" and self.lsn is not None:
            return f"LSN {format_lsn(self.lsn)}"
        if self.kind == "name":
            return f"restore point {self.name!r}"
        if self.kind == "xid":
            return f"the commit of transaction {self.xid}"
        return "the end of the base backup (immediate)"

    def settings(self) -> dict[str, str]:
        if self.kind == "time" and self.time:
            return {"recovery_target_time": self.time.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f+00")}
        if self.kind == "lsn" and self.lsn is not None:
            return {"recovery_target_lsn": format_lsn(self.lsn)}
        if self.kind == "name":
            return {"recovery_target_name": self.name}
        if self.kind == "xid":
            return {"recovery_target_xid": str(self.xid)}
        return {"recovery_target": "immediate"}


@dataclass(frozen=True)
class RecoveryPlan:
    """How a recovery to a target goes: the base backup, the timeline, the WAL it reads."""

    backup: str
    timeline: int
    first_segment: str
    last_segment: str  # the last segment the recovery is expected to need
    segment_size: int
    backup_stop_time: str
    notes: list[str] = field(default_factory=list)
    server_major: int = 0  # of the server the backup came from: recovery needs the same major
    # What recovery will ask restore_command for, in order (the WAL feeder's list): the archived
    # history files of the timelines it probes, the ones it will find absent, the segments.
    histories: tuple[str, ...] = ()
    absent_histories: tuple[str, ...] = ()
    segments: tuple[str, ...] = ()


def parse_target(
    time_: datetime | None, lsn: str | None, name: str | None, immediate: bool, xid: str | None = None
) -> Target:
    """The one target the command line gives; RecoveryRefused for none, two, or a malformed one."""
    given = [x for x in (time_, lsn, name, immediate or None, xid) if x is not None]
    if len(given) != 1:
        raise RecoveryRefused(
            "give exactly one target: --target-time, --target-lsn, --target-xid, --target-name "
            "or --target immediate"
        )
    if xid is not None:
        if not xid.isdigit() or not 3 <= int(xid) < 1 << 63:
            raise RecoveryRefused(
                f"{xid[:30]!r} is not a transaction id", "use the number txid_current() gave"
            )
        return Target("xid", xid=int(xid))
    if time_ is not None:
        return Target("time", time=time_)
    if lsn is not None:
        try:
            return Target("lsn", lsn=parse_lsn(lsn))
        except ValueError as exc:
            raise RecoveryRefused(str(exc)) from None
    if name is not None:
        if not name or len(name) > 63:
            raise RecoveryRefused("a restore point name has 1 to 63 characters")
        return Target("name", name=name)
    return Target("immediate")


def parse_history(text: str) -> list[tuple[int, int]]:
    """A timeline history file as (ancestor timeline, LSN where it was left) lines, oldest first."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].isdigit():
            with contextlib.suppress(ValueError):
                out.append((int(parts[0]), parse_lsn(parts[1])))
    return out


@dataclass(frozen=True)
class Leg:
    """One timeline of the recovery path: its segments from ``lo`` to ``hi`` (None: open-ended)."""

    timeline: int
    lo: int
    hi: int | None


def timeline_legs(
    tli: int, stop_lsn: int, histories: dict[int, list[tuple[int, int]]], size: int
) -> list[Leg]:
    """The path recovery follows from a backup on ``tli`` to the newest timeline reachable from it.

    The newest timeline whose history passes through ``tli`` after the backup's end; on a switch
    from A to B at LSN x, the segment holding x and later ones are read from B.
    """
    best = None
    for t, hist in histories.items():
        left = dict(hist)
        if t > tli and tli in left and left[tli] >= stop_lsn and (best is None or t > best):
            best = t
    if best is None:
        return [Leg(tli, 0, None)]
    legs, lo = [], 0
    for parent, switch in histories[best]:
        if parent < tli:
            continue
        hi = segment_of(switch, parent, size).segno
        legs.append(Leg(parent, lo, hi - 1))
        lo = hi
    legs.append(Leg(best, lo, None))
    return legs


def plan_recovery(
    manifests: list[Manifest],
    archive: list[tuple[str, float]],
    target: Target,
    backup: str | None = None,
    histories: dict[int, list[tuple[int, int]]] | None = None,
) -> RecoveryPlan:
    """Pick the base backup and the WAL range for ``target``; RecoveryRefused with the reason otherwise.

    Pure: ``manifests`` are the base backups, ``archive`` the archived file names with the time
    each was stored.
    """
    m = _choose_backup(manifests, target, backup)
    e = m.extra
    size = int(e.get("wal_segment_size", DEFAULT_SEGMENT_SIZE))
    tli = int(e["timeline"])
    legs = _legs(m, histories)
    segs = sorted((seg.segno, at) for seg, at in _on_path(legs, archive, size))
    first = parse_segment(e["start_wal_segment"], size)
    stop = parse_segment(e["stop_wal_segment"], size)
    if not segs:
        raise RecoveryRefused(
            f"the WAL archive has no segment of timeline {tli}",
            "check archive_command (`coldcopy wal-push %p`) and pg_stat_archiver on the server",
        )
    newest = segs[-1][0]
    last = _last_needed(target, segs, stop.segno, tli, size)
    if stop.segno > newest:
        raise RecoveryRefused(
            f"the WAL that makes {m.name} consistent (up to {stop.name(size)}) is not archived",
            "check the archiver on the server (pg_stat_archiver)",
        )
    _check_continuity(legs, archive, size, first, last)
    return _build_plan(m, target, legs, archive, first, last)


def _choose_backup(manifests: list[Manifest], target: Target, backup: str | None) -> Manifest:
    """The base backup to recover from: the newest (or the one named) that ends before ``target``."""
    if not manifests:
        raise RecoveryRefused("there is no base backup", "run `coldcopy basebackup` first")
    if backup:
        chosen = [m for m in manifests if m.name == backup]
        if not chosen:
            raise RecoveryRefused(f"{backup} is not a base backup", "run `coldcopy list-backups --kind base`")
        candidates = chosen
    else:
        candidates = manifests
    if target.kind == "time":
        assert target.time is not None
        fits = [m for m in candidates if parse_iso(m.extra["stop_time"]) <= target.time]
        if not fits:
            raise RecoveryRefused(
                f"the target {target.describe()} is before the end of the oldest usable base backup "
                f"({candidates[0].name}, consistent from {candidates[0].extra['stop_time']})",
                "choose a later target; a base backup can only be rolled forward",
            )
    elif target.kind == "lsn":
        assert target.lsn is not None
        lsn = target.lsn
        fits = [m for m in candidates if parse_lsn(m.extra["stop_lsn"]) <= lsn]
        if not fits:
            raise RecoveryRefused(
                f"the target {target.describe()} is before the end of the oldest usable base backup "
                f"({candidates[0].name}, consistent from LSN {candidates[0].extra['stop_lsn']})",
                "choose a later target; a base backup can only be rolled forward",
            )
    else:
        fits = candidates
    return fits[-1]


def _last_needed(target: Target, segs: list[tuple[int, float]], stop: int, tli: int, size: int) -> int:
    """The number of the last segment recovery to ``target`` needs; RecoveryRefused if not archived.

    ``segs`` are the archived segments on the path as (number, time stored), oldest first; ``stop``
    is the number of the segment that makes the backup consistent.
    """
    newest = segs[-1][0]
    if target.kind == "time":
        assert target.time is not None
        when = target.time.timestamp()
        after = [no for no, at in segs if at >= when and no >= stop]
        if not after:
            last_at = datetime.fromtimestamp(max(at for _, at in segs), UTC).isoformat()
            raise RecoveryRefused(
                f"the WAL archive does not reach {target.describe()}: "
                f"the newest segment was stored at {last_at}",
                "choose an earlier target, or wait until the WAL holding the target is archived "
                "(SELECT pg_switch_wal() on the server closes the current segment)",
            )
        return after[0]
    if target.kind == "lsn":
        assert target.lsn is not None
        last = max(segment_of(target.lsn, tli, size).segno, stop)  # segno does not depend on tli
        if last > newest:
            raise RecoveryRefused(
                f"the WAL archive does not reach {target.describe()}: "
                f"the newest archived segment on timeline {tli} ends at LSN "
                f"{format_lsn((newest + 1) * size)}",
                "choose an earlier target, or wait until that WAL is archived",
            )
        return last
    if target.kind == "immediate":
        return stop
    return newest


def _check_continuity(
    legs: list[Leg], archive: list[tuple[str, float]], size: int, first: Segment, last: int
) -> None:
    """RecoveryRefused if the archive has a gap from ``first`` to segment number ``last`` along ``legs``."""
    missing = []
    for leg in legs:
        lo, hi = max(leg.lo, first.segno), last if leg.hi is None else min(leg.hi, last)
        if lo <= hi:
            missing += gaps(
                (n for n, _ in archive), size, timeline=leg.timeline,
                first=Segment(leg.timeline, lo).name(size), last=Segment(leg.timeline, hi).name(size),
            )  # fmt: skip
    if missing:
        first_name = first.name(size)
        last_name = Segment(_timeline_at(legs, last), last).name(size)
        shown = ", ".join(a if a == b else f"{a}..{b}" for a, b in missing[:5])
        raise RecoveryRefused(
            f"the WAL archive has gaps between {first_name} and {last_name}: {shown}",
            "recovery would stop at the first gap; choose a target before it, or a base backup after it",
        )


def _build_plan(
    m: Manifest, target: Target, legs: list[Leg], archive: list[tuple[str, float]], first: Segment, last: int
) -> RecoveryPlan:
    """The plan for recovering ``m`` along ``legs`` from ``first`` to segment number ``last``."""
    e = m.extra
    size = int(e.get("wal_segment_size", DEFAULT_SEGMENT_SIZE))
    tli = int(e["timeline"])
    history_files, absent = _history_probes(tli, {n for n, _ in archive if n.endswith(".history")})
    first_name, last_name = first.name(size), Segment(_timeline_at(legs, last), last).name(size)
    segments = tuple(Segment(_timeline_at(legs, no), no).name(size) for no in range(first.segno, last + 1))
    notes = []
    if target.kind == "name":
        notes.append("the restore point must have been created after the chosen base backup started")
    if target.kind == "xid":
        notes.append("the transaction must have committed after the chosen base backup started")
    if len(legs) > 1:
        notes.append("follows timelines " + " → ".join(str(leg.timeline) for leg in legs))
    return RecoveryPlan(
        m.name, _timeline_at(legs, last), first_name, last_name, size, e["stop_time"], notes,
        m.server_version_num // 10000, history_files, absent, segments,
    )  # fmt: skip


def _history_probes(tli: int, archived: set[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The history files recovery from timeline ``tli`` asks for: (archived ones, absent ones).

    PostgreSQL reads the target timeline's history, then
    probes tli+1, tli+2, … up to the first one that is not archived (at the start of recovery and
    again at its end, to choose the new timeline), and at the end reads the history of the
    timeline it recovered on.
    """
    name = "{:08X}.history".format
    present = [name(tli)] if name(tli) in archived else []
    t = tli
    while name(t + 1) in archived:
        present.append(name(t + 1))
        t += 1
    absent = [name(t + 1)] + ([name(t)] if name(t) not in archived else [])
    return tuple(present), tuple(absent)


def _legs(m: Manifest, histories: dict[int, list[tuple[int, int]]] | None) -> list[Leg]:
    e = m.extra
    size = int(e.get("wal_segment_size", DEFAULT_SEGMENT_SIZE))
    return timeline_legs(int(e["timeline"]), parse_lsn(e["stop_lsn"]), histories or {}, size)


def _timeline_at(legs: list[Leg], segno: int) -> int:
    return next(leg.timeline for leg in legs if leg.hi is None or segno <= leg.hi)


def _on_path(legs: list[Leg], archive: list[tuple[str, float]], size: int) -> list[tuple[Segment, float]]:
    """The archived segments recovery along ``legs`` would read, with the time each was stored."""
    segs = [(parse_segment(n, size), at) for n, at in archive if len(n) == 24]
    return [
        (s, at)
        for s, at in segs
        if any(
            leg.timeline == s.timeline and leg.lo <= s.segno and (leg.hi is None or s.segno <= leg.hi)
            for leg in legs
        )
    ]


def reachable_segments(
    m: Manifest, archive: list[tuple[str, float]], histories: dict[int, list[tuple[int, int]]] | None = None
) -> list[str]:
    """The segments recovery from base backup ``m`` replays without a gap, oldest first.

    From the backup's first segment along the planned timeline path (``timeline_legs``), up to
    the last one before a gap or the end of the archive; empty when the WAL that makes the backup
    consistent is incomplete.  Pure.
    """
    e = m.extra
    size = int(e.get("wal_segment_size", DEFAULT_SEGMENT_SIZE))
    legs = _legs(m, histories)
    have = {(seg.timeline, seg.segno) for seg, _ in _on_path(legs, archive, size)}
    segno = parse_segment(e["start_wal_segment"], size).segno
    out = []
    while (_timeline_at(legs, segno), segno) in have:
        out.append(Segment(_timeline_at(legs, segno), segno).name(size))
        segno += 1
    return out if segno > parse_segment(e["stop_wal_segment"], size).segno else []
