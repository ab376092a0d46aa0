"""What a WAL archive holds, which recovery windows it gives, and its health.  Pure: no I/O.

``summarize`` (what `coldcopy wal-status` shows): archived names with their storage times, and the
base backups' manifests, in; per timeline the range, count and gaps, and per base backup the window
it can recover to (from its end to the newest segment reachable without a gap), out.  ``health_of``
condenses that report into what alerts, metrics, runbooks and estimates read (``WalHealth``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from coldcopy.core.lsn import DEFAULT_SEGMENT_SIZE, Segment, gaps, parse_segment
from coldcopy.core.manifest import Manifest
from coldcopy.core.times import iso_from_timestamp, parse_iso


@dataclass
class TimelineStatus:
    """One timeline of the archive: its first and last segment, how many, the newest time, gaps."""

    timeline: int
    first: str
    last: str
    count: int
    newest_archived_at: str
    gaps: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class BackupWindow:
    """What one base backup can recover to: from its end to the last segment reachable without a gap."""

    name: str
    timeline: int
    start_wal_segment: str
    recoverable_from: str  # the backup's stop time (server clock)
    recoverable_to_segment: str  # the last segment reachable from its start without a gap ("" if none)
    recoverable_to_time: str  # when that segment was stored ("" if none)
    ok: bool
    stop_wal_segment: str = ""  # the segment holding the backup's end (its window starts there)


@dataclass
class ArchiveReport:
    """What `coldcopy wal-status` shows: every timeline, every base backup's window, the histories."""

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
        return parse_iso(text).timestamp()
    except ValueError:
        return 0.0


def summarize(
    archive: list[tuple[str, float]], bases: list[Manifest], segment_size: int = DEFAULT_SEGMENT_SIZE
) -> ArchiveReport:
    """The report of an archive (names with the time each was stored) and the base backups' manifests."""
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
                iso_from_timestamp(max(by_tli[tli].values())),
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
                iso_from_timestamp(max(have[reach], _ts(str(e.get("stop_time", m.finished_at)))))
                if ok
                else "",
                ok,
                Segment(tli, stop).name(segment_size),
            )
        )
    return ArchiveReport(timelines, windows, sorted(history))


# -- the health summary ------------------------------------------------------------------------
@dataclass(frozen=True)
class WalGap:
    """A gap in the archive: the segments between ``after`` and ``before`` are missing."""

    after: str  # the last segment archived before the gap
    before: str  # the first segment archived after it
    detected_at: str


@dataclass(frozen=True)
class WalHealth:
    """The archive's health in brief (stored by the tick in ``state/wal-status.json``): what the
    alert rules, metrics, runbooks and recovery-time estimates read.  None of it without PITR."""

    last_archived_at: str | None
    last_segment: str | None = None
    gaps: tuple[WalGap, ...] = ()
    window_start: str | None = None  # the recoverable window: earliest and latest recoverable time
    window_end: str | None = None
    wal_bytes_per_hour: float | None = None  # WAL the server writes, measured from the archive
    wal_rate_basis: str | None = None  # how that rate was measured


def health_of(report: ArchiveReport, segment_size: int = DEFAULT_SEGMENT_SIZE) -> WalHealth | None:
    """What alerts, metrics, plans and estimates need of a report; None without an archive."""
    st = report
    if not st.timelines:
        return None
    newest = max(st.timelines, key=lambda t: t.newest_archived_at)
    found: list[WalGap] = []
    for t in st.timelines:
        for first, last in t.gaps:
            a, b = parse_segment(first, segment_size), parse_segment(last, segment_size)
            found.append(
                WalGap(
                    after=Segment(a.timeline, a.segno - 1).name(segment_size),
                    before=Segment(b.timeline, b.segno + 1).name(segment_size),
                    detected_at=t.newest_archived_at,
                )
            )
    usable = [b for b in st.backups if b.ok]
    rate = wal_rate(usable, segment_size)
    return WalHealth(
        last_archived_at=newest.newest_archived_at,
        last_segment=newest.last,
        gaps=tuple(found),
        window_start=min((b.recoverable_from for b in usable), default=None),
        window_end=max((b.recoverable_to_time for b in usable), default=None),
        wal_bytes_per_hour=rate[0] if rate else None,
        wal_rate_basis=rate[1] if rate else None,
    )


MIN_RATE_SPAN_HOURS = 1.0  # shorter windows say more about archive_timeout than about the workload


def wal_rate(windows: list[BackupWindow], segment_size: int) -> tuple[float, str] | None:
    """WAL written per hour over the widest backup window: its segments ÷ its duration.

    Segments closed early by archive_timeout count in full (replay reads them whole, though their
    empty tails cost little), so on a quiet server the rate errs high: estimates err long.
    """
    best: tuple[float, int, float] | None = None
    for w in windows:
        try:
            # From the segment holding the backup's end: the window's hours start at its stop time.
            first = parse_segment(w.stop_wal_segment or w.start_wal_segment, segment_size).segno
            last = parse_segment(w.recoverable_to_segment, segment_size).segno
            hours = (parse_iso(w.recoverable_to_time) - parse_iso(w.recoverable_from)).total_seconds() / 3600
        except ValueError:
            continue
        if last >= first and hours >= MIN_RATE_SPAN_HOURS and (best is None or hours > best[0]):
            best = (hours, last - first + 1, (last - first + 1) * segment_size / hours)
    if best is None:
        return None
    hours, segments, per_hour = best
    return per_hour, (
        f"measured from the archive: {segments} segments of {segment_size >> 20} MB in {hours:.1f} h "
        f"(≈ {per_hour / 1e6:.0f} MB of WAL per hour)"
    )
