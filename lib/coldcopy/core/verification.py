"""What a verification finds and what it remembers.  Pure: no I/O.

A :class:`VerifyResult` is a list of named checks, each ok or not with a detail, plus the
measurement of a test restore or drill.  The catalog keeps only a backup's latest verification
record, so each record carries forward the latest test restore (:func:`restore_proof`), which
recovery-time estimates and the weekly selection (:func:`schedule_selection`) read.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from coldcopy.core.manifest import CatalogEntry
from coldcopy.core.names import LOGICAL_KINDS

LEVELS = ("checksum", "full", "restore")
TEST_RESTORE_LEVELS = ("full", "restore")
DRILLED_KINDS = (*LOGICAL_KINDS, "base")  # what the weekly job test-restores (base: a PITR drill)
PITR_LEVEL = "pitr"  # a logical PITR drill's record (verify.pitr_drill), kept under the dump it restored


@dataclass
class Check:
    """One check of a verification: its name, whether it passed, and what it found."""

    name: str
    ok: bool
    detail: str = ""
    skipped: bool = False  # not run (printed as "skip", never as ok)
    environment: bool = False  # failed for want of something on the machine, not the backup
    storage: bool = False  # failed because the storage could not be read, not because of the backup


@dataclass
class VerifyResult:
    """A verification: its checks, its duration, and a test restore's or drill's measurement."""

    name: str
    level: str
    checks: list[Check] = field(default_factory=list)
    duration_seconds: float = 0.0
    measurement: dict[str, Any] | None = None  # test restores: time and throughput

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    def add(
        self, name: str, ok: bool, detail: str = "", *, environment: bool = False, storage: bool = False
    ) -> bool:
        self.checks.append(
            Check(name, ok, detail, environment=environment and not ok, storage=storage and not ok)
        )
        return ok

    def skip(self, name: str, why: str) -> None:
        """A check that could not run here: it does not fail the verification, nor pass as ok."""
        self.checks.append(Check(name, True, why, skipped=True))

    @property
    def exit_code(self) -> int:
        """0 verified; 6 the storage could not be read (and nothing found the backup damaged); 9 only
        the environment failed (the backup may be fine); 4 otherwise: the backup is damaged."""
        failed = [c for c in self.checks if not c.ok]
        if not failed:
            return 0
        if any(not (c.environment or c.storage) for c in failed):
            return 4
        return 6 if any(c.storage for c in failed) else 9

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "level": self.level,
            "ok": self.ok,
            "duration_seconds": self.duration_seconds,
            "checks": [c.__dict__ for c in self.checks],
            "measurement": self.measurement,
        }


def storage_failure(record: Mapping[str, Any]) -> bool:
    """Whether a stored verification record failed only because the storage (or the machine) let it
    down: no check found the backup damaged, and at least one could not read the storage."""
    failed = [c for c in record.get("checks") or [] if isinstance(c, dict) and not c.get("ok")]
    return (
        not record.get("ok")
        and any(c.get("storage") for c in failed)
        and all(c.get("storage") or c.get("environment") for c in failed)
    )


def restore_proof(record: dict[str, Any], at: str, prev: dict[str, Any] | None) -> dict[str, Any] | None:
    """The latest test restore of a backup, carried forward by records that did not restore it.

    The catalog keeps only a backup's latest verification record, so each record repeats what the
    test restores proved: ``{at, level, ok, measurement, restore_level_at}``."""
    before = (prev or {}).get("restore_proof")
    if record.get("level") not in TEST_RESTORE_LEVELS or (
        record.get("ok") is False and not record.get("measurement")
    ):
        # Nothing was restored (a checksum pass, or the restore never got going: no scratch target,
        # unreadable manifest, pg_restore broke): the last real test restore still stands.
        return before if isinstance(before, dict) else None
    level_at = at if record.get("level") == "restore" else (before or {}).get("restore_level_at")
    return {
        "at": at,
        "level": record.get("level"),
        "ok": bool(record.get("ok")),
        "measurement": record.get("measurement"),
        "restore_level_at": level_at,
    }


def drill_proof(record: dict[str, Any], at: str, prev: dict[str, Any] | None) -> dict[str, Any] | None:
    """The latest successful logical PITR drill from this backup, carried forward by the records
    that did not drill (``{at, measurement}``): what recovery-time estimates read its replay from."""
    m = record.get("measurement")
    if record.get("level") == PITR_LEVEL and record.get("ok") and isinstance(m, dict):
        return {"at": at, "measurement": m}
    before = (prev or {}).get("pitr_drill")
    return before if isinstance(before, dict) else None


def week_seed(now: datetime) -> str:
    """``2026-W48``: the seed of the week's random sample (the same all week, new each week)."""
    year, week, _ = now.astimezone(UTC).isocalendar()
    return f"{year}-W{week:02d}"


def schedule_selection(
    entries: list[CatalogEntry], verifications: dict[str, dict[str, Any]], sample: int, seed: str
) -> tuple[list[str], list[str]]:
    """(new, sampled): backups never test-restored at level ``restore``, and a seeded random sample
    of ``sample`` older ones.  Both newest first.  Base backups are drilled (restored and recovered
    to a random time) like dumps are test-restored."""
    logical = [e for e in sorted(entries, key=lambda e: (e.created_at, e.name), reverse=True)]
    logical = [e for e in logical if e.kind in DRILLED_KINDS]

    def proven(name: str) -> bool:
        proof = (verifications.get(name) or {}).get("restore_proof") or {}
        return bool(proof.get("restore_level_at"))

    new = [e.name for e in logical if not proven(e.name)]
    older = [e.name for e in logical if proven(e.name)]
    picked = set(random.Random(seed).sample(older, min(sample, len(older))))
    return new, [n for n in older if n in picked]
