"""The WAL archive's health for alerts and metrics, computed by the tick and read by the monitor.

Listing a month of WAL on every scrape would be slow, so the scheduler tick computes the summary
(one listing of ``wal/`` plus the base backups' manifests) and writes it to one small object,
``state/wal-status.json``, once per tick; ``/metrics`` and ``/alerts`` read that object.  With no
WAL archive (PITR not in use) the summary is None and no WAL rule or metric appears.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any

from coldcopy.core.alerts import WalGap, WalStatus
from coldcopy.core.archive_report import BackupWindow, summarize
from coldcopy.core.archive_report import WalStatus as ArchiveStatus
from coldcopy.core.lsn import ARCHIVE_NAME_RE, DEFAULT_SEGMENT_SIZE, Segment, parse_segment
from coldcopy.core.manifest import parse_iso
from coldcopy.errors import ColdCopyError, NotFoundError
from coldcopy.storage.catalog_store import CatalogStore
from coldcopy.storage.s3 import Storage

log = logging.getLogger(__name__)
STATE_KEY = "state/wal-status.json"


def for_alerts(st: ArchiveStatus, segment_size: int = DEFAULT_SEGMENT_SIZE) -> WalStatus | None:
    """The alert rules' view of an archive summary.  Pure."""
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
    return WalStatus(
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
    """WAL written per hour over the widest backup window: its segments ÷ its duration.  Pure.

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


def compute(storage: Storage) -> WalStatus | None:
    archive = [
        (o.key.rsplit("/", 1)[-1], o.last_modified.timestamp())
        for o in storage.list("wal/")
        if ARCHIVE_NAME_RE.match(o.key.rsplit("/", 1)[-1])
    ]
    if not archive:
        return None
    store = CatalogStore(storage)
    bases = []
    for entry in store.read().entries("base"):
        try:
            m = store.manifest(entry.name)
        except ColdCopyError:
            continue  # an unreadable manifest has its own alert
        if m.extra.get("start_wal_segment"):
            bases.append(m)
    bases.sort(key=lambda m: str(m.extra.get("stop_time", "")))
    return for_alerts(summarize(archive, bases))


def refresh(storage: Storage) -> WalStatus | None:
    """Compute and store the summary (the tick, every few minutes)."""
    status = compute(storage)
    storage.put_json(STATE_KEY, {"wal": None if status is None else asdict(status)})
    return status


def load(storage: Storage) -> WalStatus | None:
    """The stored summary; None without PITR (or before the first tick)."""
    try:
        raw: Any = storage.get_json(STATE_KEY).get("wal")
    except (NotFoundError, ValueError, AttributeError):
        return None
    if not isinstance(raw, dict):
        return None
    try:
        gaps = tuple(WalGap(**g) for g in raw.get("gaps", ()))
        return WalStatus(**{**raw, "gaps": gaps})
    except TypeError:
        log.warning("%s is unreadable; ignored until the next tick rewrites it", STATE_KEY)
        return None
