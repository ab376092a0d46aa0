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

from .alerts import WalGap, WalStatus
from .catalog_store import CatalogStore
from .errors import ColdCopyError, NotFoundError
from .storage import Storage
from .wal import ARCHIVE_NAME_RE, DEFAULT_SEGMENT_SIZE, Segment, parse_segment
from .walstatus import WalStatus as ArchiveStatus
from .walstatus import summarize

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
    return WalStatus(
        last_archived_at=newest.newest_archived_at,
        last_segment=newest.last,
        gaps=tuple(found),
        window_start=min((b.recoverable_from for b in usable), default=None),
        window_end=max((b.recoverable_to_time for b in usable), default=None),
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
