"""What the monitor's views need from the catalog, in a size that does not grow with the history.
Pure: no I/O.

``/metrics``, ``/status`` and ``/alerts`` used to walk every backup of the catalog on each call
(counts, sizes, the newest per kind, the duration histogram): CPU and, cold, a parse of the whole
``catalog.json``, both linear in the history.  A :class:`CatalogDigest` holds the same answers,
aggregated once: counters per (kind, database), bucket counts of the durations, the newest backup
per key and per kind, the failures (the catalog keeps the newest 200), the failed verifications,
the sizes the backup-size rule compares, and what a recovery-time estimate reads
(``core.recovery_inputs``: the newest restore measurements, the backup a restore would use, the
base backups of the last ``BASES_KEPT_FOR``).  Its size grows with the kinds and databases (and the
base backups taken in about a week), not with the backups.

``digest(cat)`` is the only way one is made, and ``metrics.render``, ``views.status_view``,
``alerts.evaluate`` and ``recovery_time.estimate_from`` compute their answers from one (the
catalog's own, made on the spot, or the one stored beside ``catalog.json`` by every writer:
``storage.catalog_store``), so the stored and the computed answers are the same by construction,
as of the digest's ``watermark``.  A reader that finds journal records the digest has not applied
(a writer between its record and its catalog save, or one that died in between) reads the catalog
instead.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import lru_cache
from typing import Any

from coldcopy.core.catalog import Catalog, merge_beside_entries
from coldcopy.core.names import KINDS, parse_name
from coldcopy.core.recovery_inputs import BASES_KEPT_FOR, RecoveryInputs, parse_inputs, recovery_inputs
from coldcopy.core.times import parse_iso
from coldcopy.errors import InvalidNameError

DIGEST_KEY = "state/catalog-digest.json"
DIGEST_FORMAT = "coldcopy-catalog-digest/2"  # /2: with the recovery-time inputs
DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800)
# The backup-size rule compares the newest backup of a (kind, database) with the median of up to
# ``ALERT_SIZE_SAMPLE`` before it; the digest keeps this many sizes per group (a larger setting
# makes the readers use the catalog itself).
SIZE_SAMPLE_KEPT = 100
Key = tuple[str, str]  # (kind, database)


@lru_cache(maxsize=1 << 18)  # names never change meaning: a rebuilt digest parses none of them again
def name_key(name: str, kind: str | None = None) -> Key:
    """(kind, database) from a backup name; what the record says when the name does not parse."""
    try:
        n = parse_name(name)
        return n.kind, n.database
    except InvalidNameError:
        return kind or "unknown", "unknown"


@dataclass(frozen=True)
class Histogram:
    """The durations of one (kind, database)'s backups: how many are <= each of DURATION_BUCKETS,
    how many in all (NaN included, in no bucket but +Inf) and their sum."""

    buckets: tuple[int, ...]
    count: int
    total: float


@dataclass(frozen=True)
class SizeGroup:
    """A (kind, database) by the entries' own fields, for the backup-size rule: its newest backup
    and the sizes before it, newest first (up to SIZE_SAMPLE_KEPT)."""

    newest_name: str
    newest_size: int
    newest_finished_at: str
    previous_sizes: tuple[int, ...]


@dataclass(frozen=True)
class CatalogDigest:
    """The catalog in aggregate, as of ``watermark`` (with the journal keys it has ``applied``)."""

    watermark: str | None = None
    applied: frozenset[str] = frozenset()
    size_sample_kept: int = SIZE_SAMPLE_KEPT  # previous sizes kept per size group (at most)
    # status
    backup_count: int = 0
    last_backup: dict[str, Any] | None = None  # the newest entry (by created_at, then name)
    counts_by_kind: dict[str, int] = field(default_factory=dict)  # first seen newest first
    total_size_bytes: int = 0
    failures: tuple[dict[str, Any], ...] = ()  # newest last, as the catalog keeps them
    unreadable: dict[str, str] = field(default_factory=dict)
    failed_verifications: dict[str, dict[str, Any]] = field(default_factory=dict)  # of live backups
    # alerts
    last_finished_at: str | None = None  # the latest finished_at (as written)
    oldest_finished_at: str | None = None
    newest_ok_verification_at: str | None = None
    size_groups: dict[Key, SizeGroup] = field(default_factory=dict)
    # metrics
    counters: dict[Key, tuple[int, int]] = field(default_factory=dict)  # (successes, failures)
    by_kind: dict[str, tuple[int, int]] = field(default_factory=dict)  # (backups, stored bytes)
    newest: dict[Key, tuple[int, float]] = field(default_factory=dict)  # (size, finished_at ts)
    last_by_kind: dict[str, float] = field(default_factory=dict)  # finished_at ts of the newest
    durations: dict[Key, Histogram] = field(default_factory=dict)
    verification: dict[str, Any] = field(default_factory=dict)  # newest_ts, newest_ok, ok_ts, failed
    # recovery time
    recovery: RecoveryInputs = RecoveryInputs()
    # files snapshots of the project's Storage (``files_facts``)
    files: dict[str, Any] = field(default_factory=dict)

    @property
    def last_failure(self) -> dict[str, Any] | None:
        return self.failures[-1] if self.failures else None

    def to_dict(self) -> dict[str, Any]:
        def keyed(d: dict[Key, Any]) -> list[list[Any]]:
            return [[k, db, v] for (k, db), v in sorted(d.items())]

        return {
            "format": DIGEST_FORMAT,
            "watermark": self.watermark,
            "applied": sorted(self.applied),
            "size_sample_kept": self.size_sample_kept,
            "backup_count": self.backup_count,
            "last_backup": self.last_backup,
            "counts_by_kind": self.counts_by_kind,
            "total_size_bytes": self.total_size_bytes,
            "failures": list(self.failures),
            "unreadable": self.unreadable,
            "failed_verifications": self.failed_verifications,
            "last_finished_at": self.last_finished_at,
            "oldest_finished_at": self.oldest_finished_at,
            "newest_ok_verification_at": self.newest_ok_verification_at,
            "size_groups": keyed({k: list(_size_group_row(g)) for k, g in self.size_groups.items()}),
            "counters": keyed({k: list(v) for k, v in self.counters.items()}),
            "by_kind": {k: list(v) for k, v in self.by_kind.items()},
            "newest": keyed({k: list(v) for k, v in self.newest.items()}),
            "last_by_kind": self.last_by_kind,
            "durations": keyed({k: [list(h.buckets), h.count, h.total] for k, h in self.durations.items()}),
            "verification": self.verification,
            "recovery": self.recovery.to_dict(),
            "files": self.files,
        }


def _size_group_row(g: SizeGroup) -> tuple[Any, ...]:
    return g.newest_name, g.newest_size, g.newest_finished_at, list(g.previous_sizes)


def parse_digest(raw: Any) -> CatalogDigest | None:
    """A stored digest; None when it is not one this version reads (the reader uses the catalog)."""
    if not isinstance(raw, dict) or raw.get("format") != DIGEST_FORMAT:
        return None
    try:
        return CatalogDigest(
            watermark=raw["watermark"],
            applied=frozenset(raw["applied"]),
            size_sample_kept=int(raw["size_sample_kept"]),
            backup_count=int(raw["backup_count"]),
            last_backup=raw["last_backup"],
            counts_by_kind={str(k): int(v) for k, v in raw["counts_by_kind"].items()},
            total_size_bytes=int(raw["total_size_bytes"]),
            failures=tuple(raw["failures"]),
            unreadable=dict(raw["unreadable"]),
            failed_verifications=dict(raw["failed_verifications"]),
            last_finished_at=raw["last_finished_at"],
            oldest_finished_at=raw["oldest_finished_at"],
            newest_ok_verification_at=raw["newest_ok_verification_at"],
            size_groups={
                (k, db): SizeGroup(str(n), int(s), str(f), tuple(int(x) for x in p))
                for k, db, (n, s, f, p) in raw["size_groups"]
            },
            counters={(k, db): (int(s), int(f)) for k, db, (s, f) in raw["counters"]},
            by_kind={str(k): (int(n), int(s)) for k, (n, s) in raw["by_kind"].items()},
            newest={(k, db): (int(s), float(t)) for k, db, (s, t) in raw["newest"]},
            last_by_kind={str(k): float(t) for k, t in raw["last_by_kind"].items()},
            durations={
                (k, db): Histogram(tuple(int(b) for b in bs), int(n), float(t))
                for k, db, (bs, n, t) in raw["durations"]
            },
            verification=dict(raw["verification"]),
            recovery=parse_inputs(raw["recovery"]),
            files=dict(raw.get("files") or {}),  # absent in a digest stored before files snapshots
        )
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


def digest(cat: Catalog, size_sample: int = SIZE_SAMPLE_KEPT) -> CatalogDigest:
    """The catalog's digest: one pass over its backups (newest first), deletions and verifications;
    ``size_sample`` previous sizes kept per size group (a larger ALERT_SIZE_SAMPLE needs more)."""
    kept = max(size_sample, SIZE_SAMPLE_KEPT)
    entries = cat.entries()  # newest first
    counts_by_kind: dict[str, int] = {}
    by_kind = {k: (0, 0) for k in KINDS}
    success: dict[Key, int] = {}
    newest: dict[Key, tuple[int, float]] = {}
    last_by_kind: dict[str, float] = {}
    durations: dict[Key, list[float]] = {}
    groups: dict[Key, list[tuple[str, int, str]]] = {}
    latest = oldest = None
    for e in entries:
        counts_by_kind[e.kind] = counts_by_kind.get(e.kind, 0) + 1
        n, s = by_kind.get(e.kind, (0, 0))
        by_kind[e.kind] = (n + 1, s + e.size_bytes)
        key = name_key(e.name, e.kind)
        success[key] = success.get(key, 0) + 1
        durations.setdefault(key, []).append(float(e.duration_seconds))
        finished = parse_iso(e.finished_at)
        if key not in newest:
            newest[key] = (e.size_bytes, finished.timestamp())
        if e.kind not in last_by_kind:
            last_by_kind[e.kind] = finished.timestamp()
        group = groups.setdefault((e.kind, e.database), [])
        if len(group) <= kept:
            group.append((e.name, e.size_bytes, e.finished_at))
        if latest is None or finished > latest[0]:
            latest = (finished, e.finished_at)
        if oldest is None or finished < oldest[0]:
            oldest = (finished, e.finished_at)
    for name in cat.deleted:
        key = name_key(name)
        success[key] = success.get(key, 0) + 1
    return CatalogDigest(
        watermark=cat.watermark,
        applied=frozenset(cat.applied),
        size_sample_kept=kept,
        backup_count=len(entries),
        last_backup=entries[0].to_dict() if entries else None,
        counts_by_kind=counts_by_kind,
        total_size_bytes=sum(e.size_bytes for e in entries),
        failures=tuple(cat.failures),
        unreadable=dict(cat.unreadable),
        failed_verifications={
            n: v for n, v in cat.verifications.items() if not v.get("ok") and n in cat.backups
        },
        last_finished_at=None if latest is None else latest[1],
        oldest_finished_at=None if oldest is None else oldest[1],
        newest_ok_verification_at=_newest_ok(cat),
        size_groups={
            k: SizeGroup(g[0][0], g[0][1], g[0][2], tuple(s for _, s, _ in g[1:])) for k, g in groups.items()
        },
        counters=_counters(success, cat.failures),
        by_kind=by_kind,
        newest=newest,
        last_by_kind=last_by_kind,
        durations={k: _histogram(v) for k, v in durations.items()},
        verification=_verification_facts(cat),
        recovery=recovery_inputs(cat, None if latest is None else latest[0] - BASES_KEPT_FOR),
        files=files_facts(cat),
    )


def files_facts(cat: Catalog) -> dict[str, Any]:
    """What the status, metrics and alerts say of the files snapshots: how many are kept, the
    newest (its record: objects, sizes, the storage.objects check), the failed attempts and the
    newest, and the newest backup whose snapshot was queued (``awaiting``: with its finish time,
    and the snapshot taken with it, None until there is one)."""
    newest = cat.files[max(cat.files)] if cat.files else None
    failure = cat.files_failures[-1] if cat.files_failures else None
    due = [(at, n) for n, at in cat.files_due.items() if n in cat.backups]
    awaiting = None
    if due:
        _, name = max(due)
        paired = cat.files_by_backup().get(name)
        awaiting = {
            "backup": name,
            "finished_at": cat.backups[name].finished_at,
            "snapshot": paired.get("snapshot") if paired else None,
            "snapshot_at": paired.get("created_at") if paired else None,
        }
    return {
        "snapshots": len(cat.files),
        "newest": newest,
        "failures": len(cat.files_failures),
        "last_failure": failure,
        "awaiting": awaiting,
    }


def _counters(success: dict[Key, int], failures: Sequence[dict[str, Any]]) -> dict[Key, tuple[int, int]]:
    """(successes, failures) per (kind, database): ``success`` counted, the failures the catalog kept."""
    failed: dict[Key, int] = {}
    for f in failures:
        key = name_key(str(f.get("name", "")), str(f.get("kind") or "") or None)
        failed[key] = failed.get(key, 0) + 1
    return {k: (success.get(k, 0), failed.get(k, 0)) for k in {*success, *failed}}


def advance(
    d: CatalogDigest, records: list[tuple[str, dict[str, Any]]], now: datetime
) -> CatalogDigest | None:
    """``d`` with journal records it has not applied, without the catalog: what ``digest`` makes of
    the catalog they are merged into, when none changes a backup, deletion or verification (a job's
    run record, a failure, a pin: what the tick finds after a job, whose writer saves no catalog);
    None otherwise (the caller reads the catalog)."""
    merged = merge_beside_entries(d.watermark, d.applied, d.failures, records, now)
    if merged is None:
        return None
    success = {k: s for k, (s, _) in d.counters.items() if s}
    return replace(
        d,
        watermark=merged.watermark,
        applied=frozenset(merged.applied),
        failures=tuple(merged.failures),
        counters=_counters(success, merged.failures),
    )


def _histogram(values: list[float]) -> Histogram:
    ordered = sorted(v for v in values if v == v)  # NaN is in no bucket but +Inf
    buckets = tuple(bisect_right(ordered, bound) for bound in DURATION_BUCKETS)  # how many <= bound
    return Histogram(buckets, len(values), float(sum(values)))


def _newest_ok(cat: Catalog) -> str | None:
    """The ``at`` of the latest successful verification (the verification-overdue rule's)."""
    best = None
    for v in cat.verifications.values():
        if v.get("ok") and v.get("at"):
            at = parse_iso(str(v["at"]))
            if best is None or at > best[0]:
                best = (at, str(v["at"]))
    return None if best is None else best[1]


def _verification_facts(cat: Catalog) -> dict[str, Any]:
    """The verification metrics' inputs: the newest verification's time and result, the newest
    successful one's time, and how many live backups' latest verification failed."""
    out: dict[str, Any] = {"newest_ts": None, "newest_ok": None, "ok_ts": None}
    done = [v for v in cat.verifications.values() if isinstance(v.get("at"), str)]
    if done:
        newest = max(done, key=lambda v: str(v["at"]))
        out["newest_ts"] = parse_iso(str(newest["at"])).timestamp()
        out["newest_ok"] = 1 if newest.get("ok") else 0
    ok = [parse_iso(str(v["at"])).timestamp() for v in done if v.get("ok")]
    if ok:
        out["ok_ts"] = max(ok)
    out["failed"] = sum(1 for n, v in cat.verifications.items() if not v.get("ok") and n in cat.backups)
    return out
