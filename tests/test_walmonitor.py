"""WAL health for alerts and metrics: the tick stores the archive's summary, the monitor reads it."""

from __future__ import annotations

from datetime import UTC, datetime

from coldcopy.alerts import Thresholds, evaluate
from coldcopy.catalog import Catalog
from coldcopy.config import load_settings
from coldcopy.metrics import render
from coldcopy.storage import Storage
from coldcopy.walmonitor import STATE_KEY, load, refresh


def test_no_archive_means_no_wal_status(coldcopy_env) -> None:  # type: ignore[no-untyped-def]
    storage = Storage(load_settings(coldcopy_env))
    assert load(storage) is None  # before any tick
    assert refresh(storage) is None
    assert storage.get_json(STATE_KEY) == {"wal": None}
    assert "coldcopy_wal" not in render(Catalog(), datetime.now(UTC), wal=load(storage))


def test_a_gap_in_the_archive_reaches_alerts_and_metrics(coldcopy_env) -> None:  # type: ignore[no-untyped-def]
    storage = Storage(load_settings(coldcopy_env))
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
