"""What a recovery-time estimate reads from the catalog, in a size that does not grow with the
history.  Pure: no I/O.

``core.recovery_time`` estimates from the newest measured test restores (dumps and base backups),
the newest base-backup drills' WAL replay, the backup a restore would use and the base backup each
point-in-time target would start from.  :class:`RecoveryInputs` holds exactly those, picked from
the catalog once (``recovery_inputs``); the catalog's digest (``core.catalog_digest``) carries them,
so ``/recovery-time`` answers without reading ``catalog.json``.  This module is small and imports
no estimate logic: every reader of the digest loads it.

The base backups are the one list that could grow with the history: the digest keeps those that
finished within ``BASES_KEPT_FOR`` of the catalog's newest backup, plus the newest one before
(``keep_bases_after``), which answers every target an estimate asks about (now, a week ago) unless
the reader's clock or the WAL archive is more than a day behind the backups.  ``answers`` says
whether it does; when not, the reader estimates from the catalog itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from coldcopy.core.catalog import Catalog
from coldcopy.core.names import LOGICAL_KINDS, parse_name
from coldcopy.core.times import parse_iso
from coldcopy.errors import InvalidNameError

MAX_MEASUREMENTS = 5
MIN_REPLAY_BYTES = 64 << 20  # a drill that replayed less measures the server's start-up, not replay
# ``finished_at`` is when a base backup's manifest was committed, moments after the stop time
# recovery can start from; window ends are storage times in whole seconds.
FINISH_SLACK = timedelta(seconds=2)
WEEK = timedelta(days=7)
BASES_KEPT_FOR = WEEK + timedelta(days=1)  # the week-ago target, and a day for clocks and lag


@dataclass(frozen=True)
class Measurement:
    """One measured restore (or WAL replay): how many bytes in how many seconds, and when."""

    name: str
    at: str
    raw_bytes: int
    seconds: float

    @property
    def throughput(self) -> float:
        return self.raw_bytes / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class ReplayDrill:
    """One logical PITR drill's replay: transactions in seconds, covering seconds of history."""

    name: str
    at: str
    transactions: int
    seconds: float
    history_seconds: float


@dataclass(frozen=True)
class BackupRef:
    """A backup as an estimate needs it: its name, when it finished and its dump's raw size."""

    name: str
    finished_at: str
    raw_size_bytes: int


@dataclass(frozen=True)
class RecoveryInputs:
    """Everything ``core.recovery_time.estimate_from`` reads (see the module docstring)."""

    dumps: tuple[Measurement, ...] = ()  # the newest MAX_MEASUREMENTS measured dump restores
    bases: tuple[Measurement, ...] = ()  # the newest MAX_MEASUREMENTS measured base-backup restores
    drills: tuple[Measurement, ...] = ()  # the newest MAX_MEASUREMENTS drills replaying >= MIN_REPLAY_BYTES
    drill_count: int = 0  # every drill with a replay measurement, however little it replayed
    latest: BackupRef | None = None  # the newest full backup, else the newest logical one
    base_backups: tuple[BackupRef, ...] = ()  # newest first
    all_bases: bool = True  # whether ``base_backups`` holds every base backup of the catalog
    pitr_drills: tuple[ReplayDrill, ...] = ()  # the newest MAX_MEASUREMENTS logical PITR drills

    def base_for(self, target: datetime) -> BackupRef | None:
        """The newest base backup that finished before ``target`` (with FINISH_SLACK)."""
        for b in self.base_backups:
            if parse_iso(b.finished_at) <= target + FINISH_SLACK:
                return b
        return None

    def answers(self, target: datetime) -> bool:
        """Whether ``base_for(target)`` is the catalog's answer (not cut short by the kept list)."""
        return self.all_bases or self.base_for(target) is not None

    def to_dict(self) -> dict[str, Any]:
        def rows(ms: tuple[Measurement, ...]) -> list[list[Any]]:
            return [[m.name, m.at, m.raw_bytes, m.seconds] for m in ms]

        def ref(b: BackupRef) -> list[Any]:
            return [b.name, b.finished_at, b.raw_size_bytes]

        return {
            "dumps": rows(self.dumps),
            "bases": rows(self.bases),
            "drills": rows(self.drills),
            "drill_count": self.drill_count,
            "latest": None if self.latest is None else ref(self.latest),
            "base_backups": [ref(b) for b in self.base_backups],
            "all_bases": self.all_bases,
            "pitr_drills": [
                [d.name, d.at, d.transactions, d.seconds, d.history_seconds] for d in self.pitr_drills
            ],
        }


def parse_inputs(raw: dict[str, Any]) -> RecoveryInputs:
    """``RecoveryInputs.to_dict`` read back; KeyError, TypeError or ValueError when it is not one."""

    def rows(items: list[Any]) -> tuple[Measurement, ...]:
        return tuple(Measurement(str(n), str(a), int(b), float(s)) for n, a, b, s in items)

    def ref(item: list[Any]) -> BackupRef:
        n, f, r = item
        return BackupRef(str(n), str(f), int(r))

    return RecoveryInputs(
        dumps=rows(raw["dumps"]),
        bases=rows(raw["bases"]),
        drills=rows(raw["drills"]),
        drill_count=int(raw["drill_count"]),
        latest=None if raw["latest"] is None else ref(raw["latest"]),
        base_backups=tuple(ref(b) for b in raw["base_backups"]),
        all_bases=bool(raw["all_bases"]),
        pitr_drills=tuple(
            ReplayDrill(str(n), str(a), int(t), float(s), float(h))
            for n, a, t, s, h in raw.get("pitr_drills", [])
        ),
    )


def _is_base(name: str, measurement: dict[str, Any]) -> bool:
    if measurement.get("kind") == "base":
        return True
    try:
        return parse_name(name).kind == "base"
    except InvalidNameError:
        return False


def _proofs(cat: Catalog) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(backup, proof, measurement) of every backup whose latest test restore succeeded."""
    for name, record in cat.verifications.items():
        proof = record.get("restore_proof") or {}
        m = proof.get("measurement")
        if proof.get("ok") and isinstance(m, dict):
            yield name, proof, m


def measurements(cat: Catalog, base: bool = False) -> list[Measurement]:
    """Successful test restores with a measurement, newest first (one per backup: its latest).

    Dumps (pg_restore) and base backups (tar extraction) restore at very different speeds, so
    ``base`` picks one or the other, never both."""
    out = []
    for name, proof, m in _proofs(cat):
        if _is_base(name, m) != base:
            continue
        try:
            raw, seconds = int(m["raw_bytes"]), float(m["restore_seconds"])
        except (KeyError, TypeError, ValueError):
            continue
        if raw > 0 and seconds > 0:
            out.append(Measurement(name, str(proof.get("at")), raw, seconds))
    return sorted(out, key=lambda m: (m.at, m.name), reverse=True)


def replay_measurements(cat: Catalog) -> list[Measurement]:
    """WAL replayed by successful base-backup drills, newest first."""
    out = []
    for name, proof, m in _proofs(cat):
        try:
            replayed, seconds = int(m["replay_bytes"]), float(m["replay_seconds"])
        except (KeyError, TypeError, ValueError):
            continue
        if m.get("promoted") and replayed > 0 and seconds > 0:
            out.append(Measurement(name, str(proof.get("at")), replayed, seconds))
    return sorted(out, key=lambda m: (m.at, m.name), reverse=True)


def pitr_drills(cat: Catalog) -> list[ReplayDrill]:
    """The replay of each backup's latest successful logical PITR drill that replayed a transaction,
    newest first."""
    out = []
    for name, record in cat.verifications.items():
        proof = record.get("pitr_drill") or {}
        m = proof.get("measurement") if isinstance(proof, dict) else None
        if not isinstance(m, dict):
            continue
        try:
            drill = ReplayDrill(
                name,
                str(proof.get("at")),
                int(m["replay_transactions"]),
                float(m["replay_seconds"]),
                float(m["history_seconds"]),
            )
        except (KeyError, TypeError, ValueError):
            continue
        if drill.transactions > 0 and drill.seconds > 0 and drill.history_seconds > 0:  # replayed something
            out.append(drill)
    return sorted(out, key=lambda d: (d.at, d.name), reverse=True)


def recovery_inputs(cat: Catalog, keep_bases_after: datetime | None = None) -> RecoveryInputs:
    """The estimate's inputs from the catalog; every base backup, or (``keep_bases_after``) those
    that finished after it plus the newest one that did not."""
    drills = replay_measurements(cat)
    logical = [e for e in cat.entries() if e.kind in LOGICAL_KINDS]
    chosen = [e for e in logical if e.kind == "full"] or logical
    latest = BackupRef(chosen[0].name, chosen[0].finished_at, chosen[0].raw_size_bytes) if chosen else None
    bases = [BackupRef(e.name, e.finished_at, e.raw_size_bytes) for e in cat.entries("base")]
    kept = bases
    if keep_bases_after is not None:
        kept = []
        for b in bases:
            kept.append(b)
            if parse_iso(b.finished_at) <= keep_bases_after:
                break
    return RecoveryInputs(
        dumps=tuple(measurements(cat)[:MAX_MEASUREMENTS]),
        bases=tuple(measurements(cat, base=True)[:MAX_MEASUREMENTS]),
        drills=tuple([m for m in drills if m.raw_bytes >= MIN_REPLAY_BYTES][:MAX_MEASUREMENTS]),
        drill_count=len(drills),
        latest=latest,
        base_backups=tuple(kept),
        all_bases=len(kept) == len(bases),
        pitr_drills=tuple(pitr_drills(cat)[:MAX_MEASUREMENTS]),
    )
