"""Retention of the change archive, run by cleanup after the backups' plan is known.

A batch goes when no retained logical backup needs it: every transaction in it committed before
the oldest retained dump's snapshot (``core/changes.prunable_batches``), keeping the newest of those
batches as a margin (a transaction whose commit record precedes the snapshot's ``wal_lsn_before``
can still be in progress in that snapshot until it leaves the proc array).  Its record is deleted
first (the batch no longer exists), then its volumes.

Volumes of drain attempts that never got a record (a drain killed between its volumes and its
record; the next drain stores the batch again under a new attempt) are orphans: deleted once older
than ``COLDCOPY_STALE_UPLOAD_SECONDS``, so that a drain still writing is never touched.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from coldcopy.core.changes import BATCHES_PREFIX, DATA_PREFIX, Batch, batch_start, prunable_batches
from coldcopy.core.lsn import parse_lsn
from coldcopy.core.manifest import manifest_key
from coldcopy.core.names import LOGICAL_KINDS, parse_name
from coldcopy.errors import NotFoundError
from coldcopy.storage.store import ObjectStore


@dataclass
class ChangesPlan:
    """What cleanup deletes from the change archive, and why."""

    oldest_needed_lsn: str | None = None  # the oldest retained dump's wal_lsn_before
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


def oldest_needed(storage: ObjectStore, kept: Iterable[str]) -> tuple[str, str] | None:
    """(name, wal_lsn_before) of the retained logical backup whose snapshot is the oldest, among
    those that recorded one (older dumps cannot be extended by the stream, so need no batch)."""
    best: tuple[str, str] | None = None
    for name in kept:
        try:
            if parse_name(name).kind not in LOGICAL_KINDS:
                continue
            extra = storage.get_json(manifest_key(name)).get("extra") or {}
        except (NotFoundError, ValueError):
            continue
        vis = extra.get("snapshot_visibility")
        lsn = vis.get("wal_lsn_before") if isinstance(vis, dict) else None
        if isinstance(lsn, str) and lsn and (best is None or parse_lsn(lsn) < parse_lsn(best[1])):
            best = (name, lsn)
    return best


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
    needed = oldest_needed(storage, kept)
    if needed is not None:
        plan.needed_by, plan.oldest_needed_lsn = needed
        prunable = sorted(prunable_batches(batches, needed[1]), key=lambda b: parse_lsn(b.end_lsn))
        plan.batches = prunable[:-1]  # the newest stays: see the module's docstring
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
