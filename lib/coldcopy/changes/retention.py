"""Retention of the change archive, run by cleanup after the backups' plan is known.

A batch goes when no retained logical backup needs it.  The dumps that count are the retained
logical backups whose snapshot the stored stream can extend (``wal_lsn_before`` at or after the
oldest stored batch's start; an older dump cannot be extended, so needs no batch).  Candidates
end at or before the oldest such snapshot (``core/changes.prunable_batches``: a recovery from a
dump starts at the batch its snapshot falls in), and each candidate's record lists its
transactions' xids, so a candidate goes exactly when every counted dump sees all of them
(``core/changes.needless_prefix``: a transaction whose commit record precedes ``wal_lsn_before``
can still be in progress in that snapshot).  A batch's record is deleted first (the batch no
longer exists), then its volumes.

Volumes of drain attempts that never got a record (a drain killed between its volumes and its
record; the next drain stores the batch again under a new attempt) are orphans: deleted once older
than ``COLDCOPY_STALE_UPLOAD_SECONDS``, so that a drain still writing is never touched.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from coldcopy.core.changes import (
    BATCHES_PREFIX,
    DATA_PREFIX,
    Batch,
    SnapshotVisibility,
    batch_start,
    needless_prefix,
    prunable_batches,
)
from coldcopy.core.lsn import parse_lsn
from coldcopy.core.manifest import manifest_key
from coldcopy.core.names import LOGICAL_KINDS, parse_name
from coldcopy.errors import NotFoundError
from coldcopy.storage.store import ObjectStore


@dataclass
class ChangesPlan:
    """What cleanup deletes from the change archive, and why."""

    oldest_needed_lsn: str | None = None  # the oldest extendable retained dump's wal_lsn_before
    needed_by: str = ""  # that dump
    batches: list[Batch] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)  # volumes of attempts no kept record points to

    def to_dict(self) -> dict[str, Any]:
        return {
            "oldest_needed_lsn": self.oldest_needed_lsn,
            "needed_by": self.needed_by,
            "batches_delete": [b.key for b in self.batches],
            "orphans_delete": list(self.orphans),
        }


def extendable_dumps(
    storage: ObjectStore, kept: Iterable[str], stream_start: str | None
) -> list[tuple[str, SnapshotVisibility]]:
    """(name, visibility) of each retained logical backup that recorded its snapshot at or after
    ``stream_start`` (the oldest stored batch's start), oldest snapshot first."""
    if not stream_start:
        return []
    out = []
    for name in kept:
        try:
            if parse_name(name).kind not in LOGICAL_KINDS:
                continue
            extra = storage.get_json(manifest_key(name)).get("extra") or {}
        except (NotFoundError, ValueError):
            continue
        raw = extra.get("snapshot_visibility")
        if not isinstance(raw, dict):
            continue
        vis = SnapshotVisibility.from_dict(raw)
        if vis.wal_lsn_before and parse_lsn(vis.wal_lsn_before) >= parse_lsn(stream_start):
            out.append((name, vis))
    return sorted(out, key=lambda d: parse_lsn(d[1].wal_lsn_before))


def record_xids(storage: ObjectStore, key: str) -> list[list[int]] | None:
    """The ``xids`` a batch record lists (None: a record from before they were listed)."""
    raw = storage.get_json(key).get("xids")
    return [[int(a), int(b)] for a, b in raw] if isinstance(raw, list) else None


def stored_batches(storage: ObjectStore) -> list[Batch]:
    """Every stored batch in stream order, its end taken from the next batch's start (the slot moved
    there, so the batch ends at or before it) and read from its record only for the newest: one
    listing and one read, however long the archive."""
    keys = sorted(
        (k for k in (o.key for o in storage.list(BATCHES_PREFIX)) if batch_start(k)),
        key=lambda k: parse_lsn(batch_start(k) or "0/0"),
    )
    out = []
    nexts: list[str | None] = [*keys[1:], None] if keys else []
    for key, nxt in zip(keys, nexts, strict=True):
        start = batch_start(key) or ""
        if nxt is None:
            out.append(Batch.from_record(key, storage.get_json(key)))
        else:
            out.append(Batch(key, start, batch_start(nxt) or "", 0, None, None, 0))
    return out


def plan_changes(storage: ObjectStore, kept: Iterable[str], now: datetime, stale: timedelta) -> ChangesPlan:
    """The change archive's part of cleanup, given the backups cleanup keeps."""
    plan = ChangesPlan()
    batches = stored_batches(storage)
    dumps = extendable_dumps(storage, kept, batches[0].start_lsn if batches else None)
    if dumps:
        plan.needed_by, plan.oldest_needed_lsn = dumps[0][0], dumps[0][1].wal_lsn_before
        candidates = sorted(
            prunable_batches(batches, plan.oldest_needed_lsn), key=lambda b: parse_lsn(b.end_lsn)
        )
        xids = {b.key: record_xids(storage, b.key) for b in candidates}
        plan.batches = needless_prefix(candidates, xids, [vis for _, vis in dumps])
    records = {b.key for b in batches}
    attempts: dict[str, set[str]] = {}  # batch record -> the attempt prefixes holding volumes for it
    volumes = list(storage.list(DATA_PREFIX))
    for o in volumes:
        start, attempt = (o.key[len(DATA_PREFIX) :].split("/") + [""])[:2]
        attempts.setdefault(f"{BATCHES_PREFIX}{start}.json", set()).add(f"{DATA_PREFIX}{start}/{attempt}/")
    used: dict[str, str] = {}  # record -> the attempt it points to, read only when there is a choice
    for record, prefixes in attempts.items():
        if record in records:
            if len(prefixes) == 1:
                used[record] = next(iter(prefixes))
            else:
                data = storage.get_json(record).get("data") or {}
                used[record] = str(data.get("key", "")).rsplit("/", 1)[0] + "/"
    pruned = {b.key for b in plan.batches}
    for o in volumes:
        start = o.key[len(DATA_PREFIX) :].split("/", 1)[0]
        record = f"{BATCHES_PREFIX}{start}.json"
        if record in pruned or (record in used and o.key.startswith(used[record])):
            continue  # a stored batch's own volume, or one that goes with its pruned batch
        if now - o.last_modified >= stale:
            plan.orphans.append(o.key)
    return plan


def apply_changes_plan(storage: ObjectStore, plan: ChangesPlan) -> int:
    """Delete what ``plan`` lists, each batch's record before its volumes; the number of objects."""
    deleted = 0
    for b in plan.batches:
        storage.delete([b.key])
        volumes = [o.key for o in storage.list(f"{DATA_PREFIX}{b.key[len(BATCHES_PREFIX) : -5]}/")]
        if volumes:
            storage.delete(volumes)
        deleted += 1 + len(volumes)
    for i in range(0, len(plan.orphans), 1000):
        storage.delete(plan.orphans[i : i + 1000])
    return deleted + len(plan.orphans)
