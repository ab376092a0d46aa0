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

from coldcopy.core.archive_report import WalHealth, health_of, summarize
from coldcopy.core.lsn import ARCHIVE_NAME_RE
from coldcopy.core.monitor_state import wal_of
from coldcopy.errors import ColdCopyError, NotFoundError
from coldcopy.storage.catalog_store import CatalogStore
from coldcopy.storage.store import ObjectStore

log = logging.getLogger(__name__)
STATE_KEY = "state/wal-status.json"


def compute(storage: ObjectStore) -> WalHealth | None:
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
    return health_of(summarize(archive, bases))


def refresh(storage: ObjectStore) -> WalHealth | None:
    """Compute and store the summary (the tick, every few minutes)."""
    status = compute(storage)
    storage.put_json(STATE_KEY, {"wal": None if status is None else asdict(status)})
    return status


def load(storage: ObjectStore) -> WalHealth | None:
    """The stored summary; None without PITR (or before the first tick)."""
    try:
        raw: Any = storage.get_json(STATE_KEY).get("wal")
    except (NotFoundError, ValueError, AttributeError):
        return None
    wal = wal_of(raw)
    if wal is None and isinstance(raw, dict):
        log.warning("%s is unreadable; ignored until the next tick rewrites it", STATE_KEY)
    return wal
