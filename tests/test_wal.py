"""WAL arithmetic (coldcopy.core.lsn): pure, property-tested."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coldcopy.core import lsn as wal

SIZES = st.sampled_from([1 << 20, 16 << 20, 64 << 20, 1 << 30])
LSNS = st.integers(min_value=0, max_value=wal.MAX_LSN)
TLIS = st.integers(min_value=1, max_value=0xFFFFFFFF)


def test_known_values() -> None:
    assert wal.parse_lsn("0/16B3748") == 0x16B3748
    assert wal.format_lsn(0x16B3748) == "0/16B3748"
    assert wal.parse_lsn("1/0") == 1 << 32
    assert wal.segment_name_of(wal.parse_lsn("0/16B3748"), 1) == "000000010000000000000001"
    assert wal.segment_name_of(wal.parse_lsn("1/FF000000"), 2) == "0000000200000001000000FF"
    assert wal.parse_segment("0000000100000001000000FF").next().name() == "000000010000000200000000"
    assert wal.parse_segment("0000000300000002000000A0") == wal.Segment(3, 2 * 0x100 + 0xA0)
    assert wal.last_segment_needed(wal.parse_lsn("0/3000000"), 1).name() == "000000010000000000000002"
    assert wal.last_segment_needed(wal.parse_lsn("0/3000001"), 1).name() == "000000010000000000000003"
    assert wal.timeline_of("00000002.history") == 2
    assert wal.timeline_of("000000010000000000000002.00000028.backup") == 1


@pytest.mark.parametrize("bad", ["", "0/", "/1", "0/123456789", "g/1", "0-1", "1/2/3"])
def test_bad_lsn(bad: str) -> None:
    with pytest.raises(ValueError):
        wal.parse_lsn(bad)


@pytest.mark.parametrize(
    "bad", ["00000001000000000000000", "0000000100000000000001000", "000000000000000000000001", "x" * 24]
)
def test_bad_segment(bad: str) -> None:
    with pytest.raises(ValueError):
        wal.parse_segment(bad)


@pytest.mark.parametrize("bad", ["../../etc/passwd", "00000001.history.x", "000000010000000000000001/x", ""])
def test_bad_archive_names(bad: str) -> None:
    with pytest.raises(ValueError):
        wal.timeline_of(bad)


@given(LSNS)
def test_lsn_round_trip(lsn: int) -> None:
    text = wal.format_lsn(lsn)
    assert wal.parse_lsn(text) == lsn
    assert wal.parse_lsn(text.lower()) == lsn


@given(LSNS, TLIS, SIZES)
def test_segment_contains_lsn(lsn: int, tli: int, size: int) -> None:
    seg = wal.segment_of(lsn, tli, size)
    assert seg.start_lsn(size) <= lsn < seg.start_lsn(size) + size
    name = seg.name(size)
    assert len(name) == 24 and name == name.upper()
    assert wal.parse_segment(name, size) == seg
    t, log, no = int(name[:8], 16), int(name[8:16], 16), int(name[16:], 16)  # the name's three fields
    assert (t, log * ((1 << 32) // size) + no) == (tli, seg.segno)


@given(st.floats(min_value=0, max_value=1, allow_nan=False), TLIS, SIZES)
def test_next_segment_is_next_in_name_order(frac: float, tli: int, size: int) -> None:
    last = (wal.MAX_LSN + 1) // size - 1  # the last segment of the 64-bit WAL space
    seg = wal.Segment(tli, min(int(frac * last), last - 1))
    segno = seg.segno
    assert seg.name(size) < seg.next().name(size)
    assert wal.parse_segment(seg.next().name(size), size).segno == segno + 1


@given(st.sets(st.integers(min_value=0, max_value=300), min_size=1), st.sampled_from([1, 2]))
def test_gaps_cover_exactly_the_missing(present: set[int], tli: int) -> None:
    names = [wal.Segment(tli, n).name() for n in present] + ["00000002.history", "junk"]
    found = wal.gaps(names)
    missing: set[int] = set()
    for first, last in found:
        a, b = wal.parse_segment(first).segno, wal.parse_segment(last).segno
        assert a <= b
        missing |= set(range(a, b + 1))
    assert missing == set(range(min(present), max(present) + 1)) - present
    assert found == sorted(found)


def test_no_segment_beyond_the_wal_space() -> None:
    last = wal.segment_of(wal.MAX_LSN, 1)
    assert last.name() == "00000001FFFFFFFF000000FF"
    with pytest.raises(ValueError):
        last.next().name()


def test_gaps_with_bounds_and_timelines() -> None:
    names = [wal.Segment(1, n).name() for n in (3, 4, 6)] + [wal.Segment(2, n).name() for n in (6, 9)]
    assert wal.gaps(names) == [
        ("000000010000000000000005", "000000010000000000000005"),
        ("000000020000000000000007", "000000020000000000000008"),
    ]
    first, last = wal.Segment(1, 2).name(), wal.Segment(1, 8).name()
    assert wal.gaps(names, first=first, last=last) == [
        (first, first),
        ("000000010000000000000005", "000000010000000000000005"),
        ("000000010000000000000007", last),
    ]
    assert wal.gaps(names, timeline=1, first=wal.Segment(1, 3).name(), last=wal.Segment(1, 4).name()) == []
    assert wal.gaps([], timeline=3) == []
