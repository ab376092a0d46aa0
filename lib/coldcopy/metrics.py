"""Prometheus text exposition (format 0.0.4) of the catalog.  Pure: no I/O.

A first, small set of metrics; the monitoring work grows it here.  Every metric has HELP and TYPE
lines, label values are escaped, and timestamps are Unix seconds.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from .catalog import Catalog
from .manifest import parse_iso
from .names import KINDS


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(value: float) -> str:
    return repr(float(value)) if isinstance(value, float) else str(value)


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def metric(
        self, name: str, kind: str, help_: str, samples: Iterable[tuple[dict[str, str], float]]
    ) -> None:
        self.lines.append(f"# HELP {name} {help_}")
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            shown = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
            self.lines.append(f"{name}{{{shown}}} {_num(value)}" if shown else f"{name} {_num(value)}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def render(cat: Catalog, now: datetime) -> str:
    """The exposition text; ``now`` is for metrics that will need it (ages are left to PromQL)."""
    entries = cat.entries()
    w = _Writer()
    counts = {k: 0 for k in KINDS}
    sizes = {k: 0 for k in KINDS}
    last_finished: dict[str, float] = {}
    for e in entries:
        counts[e.kind] = counts.get(e.kind, 0) + 1
        sizes[e.kind] = sizes.get(e.kind, 0) + e.size_bytes
        if e.kind not in last_finished:  # entries are newest first
            last_finished[e.kind] = parse_iso(e.finished_at).timestamp()
    w.metric(
        "coldcopy_backup_count",
        "gauge",
        "Backups in the catalog, by kind.",
        [({"kind": k}, n) for k, n in sorted(counts.items())],
    )
    w.metric(
        "coldcopy_backup_stored_bytes",
        "gauge",
        "Bytes stored by the backups in the catalog, by kind.",
        [({"kind": k}, n) for k, n in sorted(sizes.items())],
    )
    w.metric(
        "coldcopy_last_backup_timestamp_seconds",
        "gauge",
        "When the newest backup of each kind finished (Unix time).",
        [({"kind": k}, t) for k, t in sorted(last_finished.items())],
    )
    if entries:
        newest = entries[0]
        w.metric(
            "coldcopy_last_backup_duration_seconds",
            "gauge",
            "How long the newest backup took.",
            [({"kind": newest.kind}, float(newest.duration_seconds))],
        )
    failed = sum(1 for n, v in cat.verifications.items() if not v.get("ok") and n in cat.backups)
    w.metric(
        "coldcopy_verification_failed_backups",
        "gauge",
        "Backups whose latest verification failed.",
        [({}, failed)],
    )
    w.metric(
        "coldcopy_backup_failures_recorded",
        "gauge",
        "Failed backup attempts kept in the catalog (the newest 200).",
        [({}, len(cat.failures))],
    )
    return w.text()
