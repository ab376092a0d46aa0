"""`coldcopy wal-status`: what the WAL archive holds and which recovery windows it gives.

``summarize`` is pure: archived names with their storage times, and the base backups' manifests,
in; per timeline the range, count and gaps, and per base backup the window it can recover to
(from its end to the newest segment reachable without a gap), out.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from coldcopy.core.lsn import DEFAULT_SEGMENT_SIZE, Segment, gaps, parse_segment
from coldcopy.core.manifest import Manifest


@dataclass
class TimelineStatus:
    timeline: int
    first: str
    last: str
    count: int
    newest_archived_at: str
    gaps: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class BackupWindow:
    name: str
    timeline: int
    start_wal_segment: str
    recoverable_from: str  # the backup's stop time (server clock)
    recoverable_to_segment: str  # the last segment reachable from its start without a gap ("" if none)
    recoverable_to_time: str  # when that segment was stored ("" if none)
    ok: bool
    stop_wal_segment: str = ""  # the segment holding the backup's end (its window starts there)


@dataclass
class WalStatus:
    timelines: list[TimelineStatus]
    backups: list[BackupWindow]
    history_files: list[str]

    @property
    def ok(self) -> bool:
        return bool(self.timelines) and all(b.ok for b in self.backups)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ok"] = self.ok
        return d


def _ts(text: str) -> float:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def summarize(
    archive: list[tuple[str, float]], bases: list[Manifest], segment_size: int = DEFAULT_SEGMENT_SIZE
) -> WalStatus:
    by_tli: dict[int, dict[int, float]] = {}
    history: list[str] = []
    for name, at in archive:
        if name.endswith(".history"):
            history.append(name)
            continue
        if len(name) != 24:
            continue
        try:
            seg = parse_segment(name, segment_size)
        except ValueError:
            continue
        by_tli.setdefault(seg.timeline, {})[seg.segno] = at
    names = [n for n, _ in archive]
    timelines = []
    for tli in sorted(by_tli):
        nos = sorted(by_tli[tli])
        timelines.append(
            TimelineStatus(
                tli,
                Segment(tli, nos[0]).name(segment_size),
                Segment(tli, nos[-1]).name(segment_size),
                len(nos),
                _iso(max(by_tli[tli].values())),
                gaps(names, segment_size, timeline=tli),
            )
        )
    windows = []
    for m in bases:
        e = m.extra
        tli = int(e.get("timeline", 1))
        start = parse_segment(str(e["start_wal_segment"]), segment_size).segno
        stop = parse_segment(str(e.get("stop_wal_segment", e["start_wal_segment"])), segment_size).segno
        have = by_tli.get(tli, {})
        reach = start - 1
        while reach + 1 in have:
            reach += 1
        ok = reach >= stop
        windows.append(
            BackupWindow(
                m.name,
                tli,
                str(e["start_wal_segment"]),
                str(e.get("stop_time", m.finished_at)),
                Segment(tli, reach).name(segment_size) if ok else "",
                # Storage times are whole seconds: a window holding the backup's own end reaches at
                # least its stop time, even when that segment was stored within the same second.
                _iso(max(have[reach], _ts(str(e.get("stop_time", m.finished_at))))) if ok else "",
                ok,
                Segment(tli, stop).name(segment_size),
            )
        )
    return WalStatus(timelines, windows, sorted(history))
