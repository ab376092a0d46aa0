"""The change archive (a logical replication slot drained into the bucket), its pure parts.

Keys, under the cluster prefix:

* ``changes/batches/<start>.json``: one record per drained batch, written create-only and LAST.
  ``<start>`` is the slot's confirmed position (16 hex digits, so the listing is in stream order)
  when the batch was peeked; the record holds the whole LSN range (``start_lsn`` .. ``end_lsn``,
  the position the slot is advanced to), the volumes, the sequences, the schema's fingerprint at
  its end, and ``xids``: its transactions' 64-bit xids as sorted ``[first, last]`` runs (for
  retention; records written before it lack the field).  One key
  per start position means two drains racing on the same slot position cannot both store a batch.
* ``changes/data/<start>/<attempt>/data.NNNNNN``: the batch's stream (wal2json format-version 2
  lines, one per decoded row, compressed and encrypted like every stored object), cut into volumes.
  An attempt killed before its record leaves volumes no record points at; cleanup deletes them.
* ``state/changes-status.json``: the archive's health, written by setup, each drain and teardown
  (read by the tick, which copies it into the monitor state for ``/status``, ``/metrics``,
  ``/alerts``).

Exactness against a dump: the dump records ``pg_current_snapshot()`` of its exported snapshot
(:class:`SnapshotVisibility`); a recovery applies a transaction of the stream exactly when
``visible(xid)`` is false.  Each batch record lists its transactions' xids (``xids``: 64-bit,
``[first, last]`` runs), so retention deletes a batch ending at or before the oldest retained
dump's ``wal_lsn_before`` exactly when every retained dump sees all of them
(:func:`prunable_batches`, :func:`needless_prefix`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from coldcopy.core.lsn import format_lsn, parse_lsn

CHANGES_PREFIX = "changes/"
BATCHES_PREFIX = "changes/batches/"
DATA_PREFIX = "changes/data/"
STATUS_KEY = "state/changes-status.json"
SCHEMA = "coldcopy"  # the ColdCopy schema in the protected database (DDL log, heartbeat)
RESTORE_POINTS = "restore_points"  # its table of named restore points (`coldcopy restore-point`)
#: The schema fingerprint is a set hash: the sum of each column's 60-bit hash modulo 2^60
#: (changes/slot.FINGERPRINT_SQL), so each captured DDL command's change (after - before) adds up.
FINGERPRINT_MODULUS = 1 << 60
_BATCH_RE = re.compile(r"^changes/batches/([0-9A-F]{16})\.json$")
_ATTEMPT_RE = re.compile(r"^[0-9a-f]{8,32}$")


def lsn16(lsn: str | int) -> str:
    """An LSN as 16 upper-case hex digits: keys that sort in stream order."""
    value = parse_lsn(lsn) if isinstance(lsn, str) else lsn
    return f"{value:016X}"


def batch_key(start_lsn: str) -> str:
    """The record key of the batch that starts at ``start_lsn``."""
    return f"{BATCHES_PREFIX}{lsn16(start_lsn)}.json"


def batch_start(key: str) -> str | None:
    """The start LSN of a batch record key (text form), or None for any other key."""
    m = _BATCH_RE.match(key)
    return format_lsn(int(m.group(1), 16)) if m else None


def data_key(start_lsn: str, attempt: str) -> str:
    """Where one attempt at the batch starting at ``start_lsn`` stores its stream (volumes follow)."""
    if not _ATTEMPT_RE.match(attempt):
        raise ValueError(f"not an attempt id: {attempt!r}")
    return f"{DATA_PREFIX}{lsn16(start_lsn)}/{attempt}/data"


def slot_name(cluster: str, db_name: str) -> str:
    """The slot of this cluster's change archive (a valid slot name: ``[a-z0-9_]``, ≤ 63)."""
    base = cluster or db_name or "default"
    return ("coldcopy_changes_" + re.sub(r"[^a-z0-9_]", "_", base.lower()))[:63]


# -- snapshot visibility -------------------------------------------------------------------------
def widen_xid(xid32: int, near: int) -> int:
    """A 32-bit xid (as logical decoding reports it) as the 64-bit xid (epoch and xid) nearest
    ``near``, a 64-bit xid such as a snapshot's xmax (a live xid is within 2^31 of it)."""
    best = ((near >> 32) << 32) | (xid32 & 0xFFFFFFFF)
    for candidate in (best - (1 << 32), best + (1 << 32)):
        if candidate >= 0 and abs(candidate - near) < abs(best - near):
            best = candidate
    return best


def xid_ranges(xids: Iterable[int]) -> list[list[int]]:
    """The xids as sorted ``[first, last]`` runs of consecutive ids (a batch record's ``xids``:
    exactly its transactions, compactly, since a busy database assigns them mostly in a row)."""
    out: list[list[int]] = []
    for x in sorted(set(xids)):
        if out and x == out[-1][1] + 1:
            out[-1][1] = x
        else:
            out.append([x, x])
    return out


@dataclass(frozen=True)
class SnapshotVisibility:
    """``pg_current_snapshot()`` of a dump's snapshot: which transactions the dump contains.

    xids are 64-bit (``xid8``: epoch and xid), as ``pg_current_snapshot`` gives them.
    """

    xmin: int
    xmax: int
    xip: tuple[int, ...]
    wal_lsn_before: str = ""  # pg_current_wal_lsn() read before the snapshot was taken

    @classmethod
    def parse(cls, text: str, wal_lsn_before: str = "") -> SnapshotVisibility:
        """From ``pg_current_snapshot()::text`` (``xmin:xmax:xip,xip``)."""
        m = re.fullmatch(r"(\d+):(\d+):([\d,]*)", text.strip())
        if not m:
            raise ValueError(f"not a snapshot: {text[:80]!r}")
        xip = tuple(sorted(int(x) for x in m.group(3).split(",") if x))
        return cls(int(m.group(1)), int(m.group(2)), xip, wal_lsn_before)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SnapshotVisibility:
        """From a manifest's ``snapshot_visibility``."""
        return cls(
            int(d["xmin"]),
            int(d["xmax"]),
            tuple(int(x) for x in d.get("xip") or ()),
            str(d.get("wal_lsn_before") or ""),
        )

    def to_dict(self) -> dict[str, Any]:
        """The manifest's ``snapshot_visibility`` field."""
        return {
            "xmin": self.xmin,
            "xmax": self.xmax,
            "xip": list(self.xip),
            "wal_lsn_before": self.wal_lsn_before,
        }

    def widen(self, xid32: int) -> int:
        """A 32-bit xid (as logical decoding reports it) as the 64-bit xid nearest this snapshot."""
        return widen_xid(xid32, self.xmax)

    def sees_all(self, ranges: Iterable[Sequence[int]]) -> bool:
        """Whether the dump contains every transaction of these ``[first, last]`` runs of 64-bit
        xids (a batch record's ``xids``): each is below xmax and none is in progress (xip)."""
        return all(
            last < self.xmax and not any(first <= x <= last for x in self.xip) for first, last in ranges
        )

    def visible(self, xid: int) -> bool:
        """Whether the dump contains the effects of committed transaction ``xid`` (64-bit, or a
        32-bit xid from the stream, widened)."""
        full = xid if xid > 0xFFFFFFFF else self.widen(xid)
        if full < self.xmin:
            return True
        if full >= self.xmax:
            return False
        return full not in self.xip


# -- batches -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Batch:
    """A batch record's summary (what status, retention and a recovery need)."""

    key: str
    start_lsn: str
    end_lsn: str
    transactions: int
    first_commit_at: str | None
    last_commit_at: str | None
    stored_size: int
    # its transactions' 64-bit xids as sorted [first, last] runs (None: a record from before
    # batches listed them, or a summary that did not read the record)
    xids: tuple[tuple[int, int], ...] | None = None

    @classmethod
    def from_record(cls, key: str, rec: dict[str, Any]) -> Batch:
        """From a stored batch record."""
        raw = rec.get("xids")
        return cls(
            key,
            str(rec["start_lsn"]),
            str(rec["end_lsn"]),
            int(rec.get("transactions") or 0),
            rec.get("first_commit_at"),
            rec.get("last_commit_at"),
            int(rec.get("stored_size") or 0),
            tuple((int(a), int(b)) for a, b in raw) if isinstance(raw, list) else None,
        )


def continuity_gaps(batches: Sequence[Batch]) -> list[tuple[str, str]]:
    """Pairs (end of one batch, start of the next) where the next does not start where the
    previous ended: the slot moved without an archived batch (re-created, or advanced by hand)."""
    out = []
    ordered = sorted(batches, key=lambda b: parse_lsn(b.start_lsn))
    for prev, nxt in zip(ordered, ordered[1:], strict=False):
        if parse_lsn(nxt.start_lsn) != parse_lsn(prev.end_lsn):
            out.append((prev.end_lsn, nxt.start_lsn))
    return out


def prunable_batches(batches: Iterable[Batch], oldest_needed_lsn: str | None) -> list[Batch]:
    """Batches that no retained dump needs: every transaction in them committed at or before
    ``oldest_needed_lsn`` (the oldest retained dump's ``wal_lsn_before``), so that dump and every
    newer one contain them.  Nothing is prunable when no retained dump says where it starts."""
    if not oldest_needed_lsn:
        return []
    limit = parse_lsn(oldest_needed_lsn)
    return [b for b in batches if parse_lsn(b.end_lsn) <= limit]


def needless_prefix(
    candidates: Sequence[Batch],
    xids: Mapping[str, Sequence[Sequence[int]] | None],
    dumps: Sequence[SnapshotVisibility],
) -> list[Batch]:
    """The batches retention deletes: the leading ``candidates`` (stream order; each ends at or
    before every extendable dump's ``wal_lsn_before``: :func:`prunable_batches`) all of whose
    transactions every one of ``dumps`` sees, by the xids each record lists (``xids[key]``).

    A transaction whose commit record precedes ``wal_lsn_before`` may still be in progress in the
    snapshot (xip: it leaves the proc array after its commit record), so such a batch is needed;
    deletion stops there, so the archive left is one continuous stream.  A record from before
    batches listed their xids (None) cannot be decided: the newest such candidate stays."""
    out: list[Batch] = []
    for i, b in enumerate(candidates):
        ranges = xids.get(b.key)
        if ranges is None and i == len(candidates) - 1:
            break
        if ranges is not None and not all(d.sees_all(ranges) for d in dumps):
            break
        out.append(b)
    return out


# -- health --------------------------------------------------------------------------------------
@dataclass
class ChangesHealth:
    """The change archive's health (``state/changes-status.json``), as the last drain saw it."""

    slot: str
    checked_at: str
    slot_exists: bool = True
    slot_invalidated: bool = False
    wal_status: str = ""
    lag_bytes: int = 0
    max_keep_bytes: int | None = None  # max_slot_wal_keep_size; None when unlimited
    confirmed_lsn: str = ""
    newest_commit_at: str | None = None
    last_drain_at: str | None = None
    last_error: str = ""
    last_error_at: str | None = None
    failing_since: str | None = None
    window_start: str | None = None  # finish time of the oldest dump the stream extends
    window_end: str | None = None  # the newest archived commit
    left_out: list[str] = field(default_factory=list)
    large_objects: int = 0
    untracked_ddl: list[str] = field(default_factory=list)
    gap_since: str | None = None  # when the stream lost continuity (a new slot): restarts at the next dump
    untracked_since: str | None = None
    stream_start_lsn: str = ""  # where the current continuous stream begins
    last_end_lsn: str = ""  # the end of the newest stored batch
    window_backup: str = ""  # the oldest logical backup the stream extends
    batches_stored: int = 0  # by the last drain
    consecutive_failures: int = 0  # drains that failed since the last one that succeeded
    fingerprint: str = ""  # the schema's fingerprint at the end of the newest stored batch
    torn_down_at: str | None = None  # `coldcopy changes teardown` removed the archive deliberately

    @property
    def in_use(self) -> bool:
        """Whether the archive is set up here (not torn down deliberately)."""
        return self.torn_down_at is None

    @property
    def slot_lost(self) -> bool:
        """The slot vanished or was invalidated without a teardown, or the stream has a gap."""
        return self.in_use and (not self.slot_exists or self.slot_invalidated or bool(self.gap_since))

    def to_dict(self) -> dict[str, Any]:
        """As stored (JSON)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ChangesHealth:
        """From the stored JSON (unknown keys from newer versions are ignored)."""
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


def torn_down(slot: str, at: str) -> ChangesHealth:
    """The health ``coldcopy changes teardown`` stores: the archive was removed on purpose at
    ``at`` (no slot, no alert; a later setup starts a new stream)."""
    return ChangesHealth(slot, at, slot_exists=False, wal_status="", torn_down_at=at)


def restart_backup_at(h: ChangesHealth | None) -> str | None:
    """When the stream restarted after a lost slot (the gap's time) while no logical backup extends
    the new stream yet: the tick enqueues one backup for it (once: a job slot at that time)."""
    if h is None or not h.in_use or not h.gap_since or not h.stream_start_lsn:
        return None
    return h.gap_since if h.slot_exists and not h.slot_invalidated else None


def window_backup(
    dumps: Sequence[tuple[str, str, SnapshotVisibility]], stream_start_lsn: str
) -> tuple[str, str] | None:
    """(name, finished_at) of the oldest dump the stream extends: one whose snapshot was taken
    after the stream began (``(name, finished_at, visibility)`` of each logical backup)."""
    if not stream_start_lsn:
        return None
    start = parse_lsn(stream_start_lsn)
    fit = [
        (finished, name)
        for name, finished, vis in dumps
        if vis.wal_lsn_before and parse_lsn(vis.wal_lsn_before) >= start
    ]
    if not fit:
        return None
    finished, name = min(fit)
    return name, finished


def lag_ratio(h: ChangesHealth) -> float | None:
    """How much of max_slot_wal_keep_size the slot holds back (None when unlimited)."""
    if not h.max_keep_bytes:
        return None
    return h.lag_bytes / h.max_keep_bytes


def table_list(names: Iterable[str]) -> str:
    """Tables named in a message: the first five, then a count."""
    items = sorted(names)
    more = f" and {len(items) - 5} more" if len(items) > 5 else ""
    return ", ".join(items[:5]) + more
