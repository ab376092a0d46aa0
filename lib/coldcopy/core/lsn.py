"""WAL arithmetic: LSNs, segment names, and the continuity of an archive.  Pure: no I/O.

A WAL segment name is ``TTTTTTTTLLLLLLLLSSSSSSSS`` (timeline, "log" and segment within the log, in
upper-case hex).  With a segment size of ``size`` bytes there are ``2**32 // size`` segments per
log, so the segment number ``segno = lsn // size`` is written as ``(segno // per_log,
segno % per_log)``.  An LSN prints as ``X/Y``: the high and low 32 bits in hex.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from coldcopy.errors import InvalidNameError

DEFAULT_SEGMENT_SIZE = 16 * 1024 * 1024
_LSN_RE = re.compile(r"^([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})$")
_SEGMENT_RE = re.compile(r"^([0-9A-Fa-f]{8})([0-9A-Fa-f]{8})([0-9A-Fa-f]{8})$")
#: Every file name PostgreSQL hands to archive_command / restore_command that we store.
ARCHIVE_NAME_RE = re.compile(r"^(?:[0-9A-F]{24}(?:\.partial|\.[0-9A-F]{8}\.backup)?|[0-9A-F]{8}\.history)$")
MAX_LSN = (1 << 64) - 1
WAL_PREFIX = "wal/"  # the archive's keys: wal/<timeline>/<file name>


def parse_lsn(text: str) -> int:
    """``"0/16B3748"`` → 23803720; ValueError for anything else."""
    m = _LSN_RE.match(text.strip()) if isinstance(text, str) else None
    if not m:
        raise ValueError(f"not an LSN: {str(text)[:40]!r} (expected the form 0/16B3748)")
    return (int(m[1], 16) << 32) | int(m[2], 16)


def format_lsn(lsn: int) -> str:
    """``23803720`` → ``"0/16B3748"``."""
    if not 0 <= lsn <= MAX_LSN:
        raise ValueError(f"LSN out of range: {lsn}")
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def _per_log(segment_size: int) -> int:
    if segment_size <= 0 or segment_size & (segment_size - 1) or not 1 << 20 <= segment_size <= 1 << 30:
        raise ValueError(f"WAL segment size must be a power of two from 1 MB to 1 GB, not {segment_size}")
    return (1 << 32) // segment_size


@dataclass(frozen=True, order=True)
class Segment:
    """One WAL segment: its timeline and its absolute number (``lsn // segment_size``)."""

    timeline: int
    segno: int  # absolute segment number: lsn // segment_size

    def name(self, segment_size: int = DEFAULT_SEGMENT_SIZE) -> str:
        per_log = _per_log(segment_size)
        if not 0 <= self.segno < (MAX_LSN + 1) // segment_size or not 0 < self.timeline <= 0xFFFFFFFF:
            raise ValueError(f"segment {self.segno} of timeline {self.timeline} is outside the WAL space")
        return f"{self.timeline:08X}{self.segno // per_log:08X}{self.segno % per_log:08X}"

    def next(self) -> Segment:
        return Segment(self.timeline, self.segno + 1)

    def start_lsn(self, segment_size: int = DEFAULT_SEGMENT_SIZE) -> int:
        return self.segno * segment_size


def parse_segment(name: str, segment_size: int = DEFAULT_SEGMENT_SIZE) -> Segment:
    """A 24-hex-digit segment name → Segment; ValueError when it is not one."""
    m = _SEGMENT_RE.match(name) if isinstance(name, str) else None
    per_log = _per_log(segment_size)
    if not m:
        raise ValueError(f"not a WAL segment name: {str(name)[:40]!r}")
    timeline, log, seg = int(m[1], 16), int(m[2], 16), int(m[3], 16)
    if timeline == 0 or seg >= per_log:
        raise ValueError(f"not a WAL segment name: {name!r} (timeline 0 or segment out of range)")
    return Segment(timeline, log * per_log + seg)


def segment_of(lsn: int, timeline: int, segment_size: int = DEFAULT_SEGMENT_SIZE) -> Segment:
    """The segment holding the byte at ``lsn``."""
    _per_log(segment_size)
    if not 0 <= lsn <= MAX_LSN:
        raise ValueError(f"LSN out of range: {lsn}")
    return Segment(timeline, lsn // segment_size)


def segment_name_of(lsn: int, timeline: int, segment_size: int = DEFAULT_SEGMENT_SIZE) -> str:
    """The name of the segment holding the byte at ``lsn``."""
    return segment_of(lsn, timeline, segment_size).name(segment_size)


def last_segment_needed(stop_lsn: int, timeline: int, segment_size: int = DEFAULT_SEGMENT_SIZE) -> Segment:
    """The last segment whose WAL a backup ending at ``stop_lsn`` needs (an end exactly on a segment
    boundary needs only the previous segment, as PostgreSQL's XLByteToPrevSeg)."""
    return segment_of(max(stop_lsn - 1, 0), timeline, segment_size)


def timeline_of(archive_name: str) -> int:
    """The timeline an archived file belongs to (its first 8 hex digits)."""
    if not ARCHIVE_NAME_RE.match(archive_name):
        raise ValueError(f"not a WAL archive file name: {archive_name[:60]!r}")
    return int(archive_name[:8], 16)


def segments_by_timeline(
    names: Iterable[str], segment_size: int = DEFAULT_SEGMENT_SIZE
) -> dict[int, list[int]]:
    """Segment numbers per timeline, sorted, of the plain segment names among ``names`` (others ignored)."""
    out: dict[int, set[int]] = {}
    for name in names:
        try:
            s = parse_segment(name, segment_size)
        except ValueError:
            continue
        out.setdefault(s.timeline, set()).add(s.segno)
    return {tli: sorted(nos) for tli, nos in out.items()}


def gaps(
    names: Iterable[str],
    segment_size: int = DEFAULT_SEGMENT_SIZE,
    *,
    timeline: int | None = None,
    first: str | None = None,
    last: str | None = None,
) -> list[tuple[str, str]]:
    """Missing runs as (first missing, last missing) segment names, per timeline, oldest first.

    Without ``first``/``last`` a timeline is checked between its oldest and newest archived segment;
    with them (segment names), between those, inclusive: a segment missing at either end counts.
    """
    by_tli = segments_by_timeline(names, segment_size)
    bounds_tli = {parse_segment(x, segment_size).timeline for x in (first, last) if x}
    if timeline is not None:
        wanted = [timeline]
    elif bounds_tli:
        wanted = sorted(bounds_tli)
    else:
        wanted = sorted(by_tli)
    out: list[tuple[str, str]] = []
    for tli in wanted:
        have = by_tli.get(tli, [])
        lo = parse_segment(first, segment_size).segno if first else (have[0] if have else None)
        hi = parse_segment(last, segment_size).segno if last else (have[-1] if have else None)
        if lo is None or hi is None or hi < lo:
            continue
        expect = lo
        for no in have:
            if no < lo:
                continue
            if no > hi:
                break
            if no > expect:
                out.append((Segment(tli, expect).name(segment_size), Segment(tli, no - 1).name(segment_size)))
            expect = no + 1
        if expect <= hi:
            out.append((Segment(tli, expect).name(segment_size), Segment(tli, hi).name(segment_size)))
    return out


def check_archive_name(name: str) -> str:
    """A file name PostgreSQL hands to archive_command / restore_command; InvalidNameError otherwise."""
    if not isinstance(name, str) or not ARCHIVE_NAME_RE.match(name):
        raise InvalidNameError(
            f"{str(name)[:60]!r} is not a WAL file name",
            "expected a segment (24 hex digits), a timeline history (00000002.history) "
            "or a backup history file",
        )
    return name


def wal_key(name: str) -> str:
    """``wal/<timeline>/<name>`` for a validated archive file name."""
    check_archive_name(name)
    return f"{WAL_PREFIX}{timeline_of(name):08X}/{name}"
