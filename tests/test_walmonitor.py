"""WAL health for alerts and metrics: the tick stores the archive's summary, the monitor reads it."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from coldcopy.config import load_settings
from coldcopy.core.alerts import evaluate
from coldcopy.core.archive_report import BackupWindow, wal_rate
from coldcopy.core.catalog import Catalog
from coldcopy.core.lsn import Segment, parse_segment
from coldcopy.core.metrics import render
from coldcopy.core.thresholds import Thresholds
from coldcopy.core.times import iso
from coldcopy.storage.s3 import open_store
from coldcopy.wal.monitor import STATE_KEY, load, refresh


def test_no_archive_means_no_wal_status(coldcopy_env) -> None:  # type: ignore[no-untyped-def]
    storage = open_store(load_settings(coldcopy_env))
    assert load(storage) is None  # before any tick
    assert refresh(storage) is None
    assert storage.get_json(STATE_KEY) == {"wal": None}
    assert "coldcopy_wal" not in render(Catalog(), datetime.now(UTC), wal=load(storage))


def test_a_gap_in_the_archive_reaches_alerts_and_metrics(coldcopy_env) -> None:  # type: ignore[no-untyped-def]
    storage = open_store(load_settings(coldcopy_env))
    for seg in ("000000010000000000000001", "000000010000000000000002", "000000010000000000000005"):
        storage.put_bytes(f"wal/00000001/{seg}", b"x")
    refresh(storage)
    wal = load(storage)
    assert wal is not None
    assert wal.last_segment == "000000010000000000000005"
    assert [(g.after, g.before) for g in wal.gaps] == [
        ("000000010000000000000002", "000000010000000000000005")
    ]
    now = datetime.now(UTC)
    rules = {a.rule for a in evaluate(Catalog(), [], wal, Thresholds(), now)}
    assert "wal-gap" in rules
    text = render(Catalog(), now, wal=wal)
    assert "coldcopy_wal_archive_age_seconds" in text


def _window(name: str, start: str, last: str, hours: float) -> BackupWindow:
    """A backup whose own WAL (start .. stop) is 3 segments; its window runs from the stop segment."""
    t0 = datetime(2026, 11, 20, 2, 0, tzinfo=UTC)
    begin = parse_segment(start)
    return BackupWindow(
        name=name,
        timeline=1,
        start_wal_segment=Segment(1, begin.segno - 3).name(),
        recoverable_from=iso(t0),
        recoverable_to_segment=last,
        recoverable_to_time=iso(t0 + timedelta(hours=hours)),
        ok=True,
        stop_wal_segment=start,
    )


def test_the_wal_rate_is_measured_over_the_widest_window_of_an_hour_or_more() -> None:
    seg = 16 << 20
    narrow = _window("b2", "000000010000000000000070", "000000010000000000000080", 2.0)  # 17 segments
    wide = _window("b1", "000000010000000000000010", "000000010000000000000080", 7.0)  # 113 segments
    rate = wal_rate([narrow, wide], seg)
    assert rate is not None
    per_hour, basis = rate
    assert per_hour == 113 * seg / 7.0
    assert "113 segments of 16 MB in 7.0 h" in basis and "measured from the archive" in basis
    # A window shorter than an hour says more about archive_timeout than the workload: no rate.
    assert wal_rate([_window("b3", "000000010000000000000010", "000000010000000000000012", 0.5)], seg) is None
    # A window whose end is unknown (no segment reachable) is skipped, not a crash.
    assert wal_rate([_window("b4", "000000010000000000000010", "", 3.0)], seg) is None


def test_status_shows_the_wal_archive_and_fails_on_a_gap(coldcopy_env) -> None:  # type: ignore[no-untyped-def]
    from cli_helpers import run_cli

    env = coldcopy_env
    before = json.loads(run_cli(env, "status", "--json").out)
    assert before["wal"] is None  # no archive: PITR not in use, nothing about WAL
    storage = open_store(load_settings(coldcopy_env))
    for seg in ("000000010000000000000001", "000000010000000000000002", "000000010000000000000005"):
        storage.put_bytes(f"wal/00000001/{seg}", b"x")
    r = run_cli(env, "status", "--json")
    st = json.loads(r.out)
    assert st["wal"]["last_segment"] == "000000010000000000000005"
    assert 0 <= st["wal"]["last_archived_age_seconds"] < 600
    assert any(
        "gap between 000000010000000000000002 and 000000010000000000000005" in p for p in st["problems"]
    )
    assert r.rc == 1 and st["ok"] is False
    assert any("no recoverable window yet" in w for w in st["wal"]["warnings"])  # a warning, not a failure
    human = run_cli(env, "status").out
    assert "WAL archive:  newest 000000010000000000000005" in human and "1 gap(s)" in human
