"""Prometheus text exposition (format 0.0.4) of the catalog and the active alerts.  Pure: no I/O.

Every metric has HELP and TYPE lines and at least one sample (a family with nothing to say is left
out rather than rendered empty, so whatever a scrape lists has a series), label values are escaped,
timestamps are Unix seconds, and the output passes ``promtool check metrics`` with no lint
(tests/test_metrics.py runs it).

The names our users already scrape are kept: ``coldcopy_backups_total`` (a counter: attempts
recorded), ``coldcopy_backups_success``, ``coldcopy_backups_failed``, ``coldcopy_backup_size_bytes``
(the newest backup), ``coldcopy_backup_duration_seconds`` (a histogram over the recorded backups),
``coldcopy_last_backup_timestamp``, ``coldcopy_backup_count`` (the ``_count`` of a summary: a gauge
of that name fails promtool's lint).  ``coldcopy_total_backup_size_gb``
fails promtool's lint (an abbreviated unit), so it is only rendered on request (``legacy_gb``,
``COLDCOPY_METRICS_LEGACY_GB=true``); ``coldcopy_total_backup_size_bytes`` is its lint-clean twin.

Per-backup series carry ``kind`` and ``database`` labels (the database as it appears in backup
names, so live, deleted and failed backups of one database share a label value).  Counts include
backups that retention has since deleted (the catalog remembers deletions); failed attempts are
the newest 200 the catalog keeps.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

from coldcopy.core.alerts import SEVERITIES, Alert, counts_by_severity
from coldcopy.core.archive_report import WalHealth
from coldcopy.core.catalog import Catalog
from coldcopy.core.catalog_digest import DURATION_BUCKETS, CatalogDigest, Histogram, Key, digest
from coldcopy.core.changes import ChangesHealth, lag_ratio
from coldcopy.core.times import parse_iso

__all__ = ["DURATION_BUCKETS", "render", "render_digest"]
Labels = dict[str, str]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(value: float) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value)) if isinstance(value, float) else str(value)


def _labels(labels: Labels) -> str:
    shown = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
    return f"{{{shown}}}" if shown else ""


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def metric(self, name: str, kind: str, help_: str, samples: Iterable[tuple[Labels, float]]) -> None:
        """A family with its samples; none at all leaves the family out (a family of only HELP and
        TYPE lines gives a scraper no series: "no data" where a dashboard expects a value)."""
        samples = list(samples)
        if not samples:
            return
        self.lines.append(f"# HELP {name} {help_}")
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            self.lines.append(f"{name}{_labels(labels)} {_num(value)}")

    def histogram(self, name: str, help_: str, series: dict[Key, Histogram]) -> None:
        if not series:
            return
        self.lines.append(f"# HELP {name} {help_}")
        self.lines.append(f"# TYPE {name} histogram")
        for (kind, db), h in sorted(series.items()):
            base = {"kind": kind, "database": db}
            for bound, count in zip(DURATION_BUCKETS, h.buckets, strict=True):
                self.lines.append(f"{name}_bucket{_labels({**base, 'le': str(bound)})} {count}")
            self.lines.append(f"{name}_bucket{_labels({**base, 'le': '+Inf'})} {h.count}")
            self.lines.append(f"{name}_sum{_labels(base)} {_num(h.total)}")
            self.lines.append(f"{name}_count{_labels(base)} {h.count}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _by_key(values: dict[Key, float]) -> list[tuple[Labels, float]]:
    return [({"kind": k, "database": d}, v) for (k, d), v in sorted(values.items())]


def _counts_by_key(values: dict[Key, float]) -> list[tuple[Labels, float]]:
    """Like ``_by_key``; no key at all is one unlabelled 0 (nothing recorded yet is a count of 0)."""
    return _by_key(values) if values else [({}, 0)]


def render(
    cat: Catalog,
    now: datetime,
    *,
    alerts: Sequence[Alert] | None = None,
    wal: WalHealth | None = None,
    legacy_gb: bool = False,
    computed_at: str | None = None,
) -> str:
    """The exposition text of the catalog (its digest, made now: ``render_digest``)."""
    d = digest(cat)
    return render_digest(d, now, alerts=alerts, wal=wal, legacy_gb=legacy_gb, computed_at=computed_at)


def render_digest(
    d: CatalogDigest,
    now: datetime,
    *,
    alerts: Sequence[Alert] | None = None,
    wal: WalHealth | None = None,
    legacy_gb: bool = False,
    computed_at: str | None = None,
    changes: ChangesHealth | None = None,
    changes_known: bool = False,
) -> str:
    """The exposition text from the catalog's digest: work that does not grow with the history.
    ``alerts`` None: the alert gauges are left out (nothing evaluated them).  ``computed_at``: when
    the tick gathered the run and WAL inputs (a gauge of its own).  ``changes_known``: the change
    archive's health was read (``changes``; None: never set up), so its gauges are rendered."""
    w = _Writer()
    _backup_counters(w, d)
    _size_metrics(w, d, legacy_gb)
    _newest_backup_metrics(w, d)
    _verification_metrics(w, d)
    if wal is not None:
        _wal_metrics(w, wal, now)
    if changes_known:
        _changes_metrics(w, changes, now)
    _files_metrics(w, d, now)
    w.metric(
        "coldcopy_manifests_unreadable",
        "gauge",
        "Backups whose manifest cannot be read.",
        [({}, len(d.unreadable))],
    )
    if alerts is not None:
        _alert_metrics(w, alerts)
    if computed_at is not None:
        w.metric(
            "coldcopy_monitor_state_timestamp_seconds",
            "gauge",
            "When the scheduler tick last gathered the run records and WAL summary behind these "
            "metrics (Unix time).",
            [({}, parse_iso(computed_at).timestamp())],
        )
    return w.text()


def _backup_counters(w: _Writer, d: CatalogDigest) -> None:
    """Attempts, successes (deleted backups included) and failures, by kind and database."""
    # The three share their series, so each has a sample from the first scrape: a database that
    # never failed answers coldcopy_backups_failed 0, and a bucket without any backup 0 unlabelled.
    success: dict[Key, float] = {k: s for k, (s, _) in d.counters.items()}
    failed: dict[Key, float] = {k: f for k, (_, f) in d.counters.items()}
    attempts = {k: success[k] + failed[k] for k in d.counters}
    w.metric(
        "coldcopy_backups_total",
        "counter",
        "Backup attempts recorded (successful and failed).",
        _counts_by_key(attempts),
    )
    w.metric(
        "coldcopy_backups_success",
        "gauge",
        "Successful backups recorded, including those retention has deleted since.",
        _counts_by_key(success),
    )
    w.metric(
        "coldcopy_backups_failed",
        "gauge",
        "Failed backup attempts recorded (the newest 200).",
        _counts_by_key(failed),
    )


def _size_metrics(w: _Writer, d: CatalogDigest, legacy_gb: bool) -> None:
    """How many backups the catalog holds and the bytes they store, by kind and in total."""
    counts = {k: n for k, (n, _) in d.by_kind.items()}
    sizes = {k: s for k, (_, s) in d.by_kind.items()}
    # A summary of stored sizes: its ``_count`` series is the ``coldcopy_backup_count`` users scrape
    # (as a gauge, promtool would reject the ``_count`` suffix).
    w.lines += [
        "# HELP coldcopy_backup Backups in the catalog by kind: _count how many, _sum their stored bytes.",
        "# TYPE coldcopy_backup summary",
    ]
    for k in sorted(counts):
        w.lines += [
            f'coldcopy_backup_sum{{kind="{k}"}} {sizes[k]}',
            f'coldcopy_backup_count{{kind="{k}"}} {counts[k]}',
        ]
    w.metric(
        "coldcopy_backup_stored_bytes",
        "gauge",
        "Bytes stored by the backups in the catalog, by kind.",
        [({"kind": k}, n) for k, n in sorted(sizes.items())],
    )
    total = sum(sizes.values())
    w.metric(
        "coldcopy_total_backup_size_bytes",
        "gauge",
        "Bytes stored by all the backups in the catalog.",
        [({}, total)],
    )
    if legacy_gb:
        w.metric(
            "coldcopy_total_backup_size_gb",
            "gauge",
            "Gigabytes (10^9 bytes) stored by all the backups (legacy name).",
            [({}, total / 1e9)],
        )


def _newest_backup_metrics(w: _Writer, d: CatalogDigest) -> None:
    """The newest backup's size and finish time, and the histogram of backup durations."""
    newest_size: dict[Key, float] = {k: s for k, (s, _) in d.newest.items()}
    newest_time = {k: t for k, (_, t) in d.newest.items()}
    w.metric("coldcopy_backup_size_bytes", "gauge", "Stored size of the newest backup.", _by_key(newest_size))
    w.histogram("coldcopy_backup_duration_seconds", "How long the backups in the catalog took.", d.durations)
    w.metric(
        "coldcopy_last_backup_timestamp",
        "gauge",
        "When the newest backup finished (Unix time).",
        _by_key(newest_time),
    )
    w.metric(
        "coldcopy_last_backup_timestamp_seconds",
        "gauge",
        "When the newest backup of each kind finished (Unix time).",
        [({"kind": k}, t) for k, t in sorted(d.last_by_kind.items())],
    )


def _alert_metrics(w: _Writer, alerts: Sequence[Alert]) -> None:
    counts_sev = counts_by_severity(alerts)
    w.metric(
        "coldcopy_alerts_active",
        "gauge",
        "Active alerts, by severity.",
        [({"severity": s}, counts_sev.get(s, 0)) for s in SEVERITIES],
    )


def _verification_metrics(w: _Writer, d: CatalogDigest) -> None:
    v = d.verification
    if v.get("newest_ts") is not None:
        w.metric(
            "coldcopy_last_verification_timestamp_seconds",
            "gauge",
            "When the newest verification finished (Unix time), whatever its result.",
            [({}, float(v["newest_ts"]))],
        )
        w.metric(
            "coldcopy_last_verification_success",
            "gauge",
            "1 if the newest verification succeeded, 0 if it failed.",
            [({}, int(v["newest_ok"]))],
        )
    if v.get("ok_ts") is not None:
        w.metric(
            "coldcopy_last_successful_verification_timestamp_seconds",
            "gauge",
            "When the newest successful verification finished (Unix time).",
            [({}, float(v["ok_ts"]))],
        )
    w.metric(
        "coldcopy_verification_failed_backups",
        "gauge",
        "Backups whose latest verification failed.",
        [({}, int(v.get("failed", 0)))],
    )


def _files_metrics(w: _Writer, d: CatalogDigest, now: datetime) -> None:
    """The files snapshots of the project's Storage: the counts always (0 before the first), the
    newest snapshot's time, size and storage.objects check once there is one."""
    f = d.files
    w.metric(
        "coldcopy_files_snapshots",
        "gauge",
        "Complete files snapshots of the project's Storage kept in the bucket.",
        [({}, int(f.get("snapshots", 0)))],
    )
    w.metric(
        "coldcopy_files_snapshot_failures_total",
        "counter",
        "Failed files snapshot attempts recorded (the catalog keeps the newest 200).",
        [({}, int(f.get("failures", 0)))],
    )
    awaiting = f.get("awaiting")
    behind = 0.0
    if awaiting and awaiting.get("snapshot") is None:
        behind = max(0.0, (now - parse_iso(str(awaiting["finished_at"]))).total_seconds())
    w.metric(
        "coldcopy_files_snapshot_behind_seconds",
        "gauge",
        "Seconds since the newest scheduled backup finished while its files snapshot is still "
        "missing (0 when every queued snapshot is taken).",
        [({}, behind)],
    )
    newest = f.get("newest")
    if not newest:
        return
    w.metric(
        "coldcopy_files_last_snapshot_timestamp_seconds",
        "gauge",
        "When the newest complete files snapshot was taken (Unix time).",
        [({}, parse_iso(str(newest["created_at"])).timestamp())],
    )
    w.metric(
        "coldcopy_files_last_snapshot_objects",
        "gauge",
        "Objects in the newest files snapshot.",
        [({}, int(newest.get("objects") or 0))],
    )
    w.metric(
        "coldcopy_files_last_snapshot_bytes",
        "gauge",
        "Bytes of the objects in the newest files snapshot.",
        [({}, int(newest.get("bytes") or 0))],
    )
    if newest.get("rows_checked") is not None:
        w.metric(
            "coldcopy_files_rows_without_file",
            "gauge",
            "storage.objects rows with no file in the newest files snapshot.",
            [({}, int(newest.get("rows_without_file") or 0))],
        )
        w.metric(
            "coldcopy_files_without_row",
            "gauge",
            "Files in the newest files snapshot with no storage.objects row.",
            [({}, int(newest.get("files_without_row") or 0))],
        )


def _wal_metrics(w: _Writer, wal: WalHealth, now: datetime) -> None:
    if wal.last_archived_at is not None:
        last = parse_iso(wal.last_archived_at)
        w.metric(
            "coldcopy_wal_last_archived_timestamp_seconds",
            "gauge",
            "When the newest WAL segment was archived (Unix time).",
            [({}, last.timestamp())],
        )
        w.metric(
            "coldcopy_wal_archive_age_seconds",
            "gauge",
            "Age of the newest archived WAL segment.",
            [({}, max(0.0, round((now - last).total_seconds(), 3)))],
        )
    w.metric("coldcopy_wal_gaps", "gauge", "Gaps found in the WAL archive.", [({}, len(wal.gaps))])
    if wal.window_start is not None and wal.window_end is not None:
        w.metric(
            "coldcopy_recovery_window_start_timestamp_seconds",
            "gauge",
            "Earliest time the database can be recovered to (Unix time).",
            [({}, parse_iso(wal.window_start).timestamp())],
        )
        w.metric(
            "coldcopy_recovery_window_end_timestamp_seconds",
            "gauge",
            "Latest time the database can be recovered to (Unix time).",
            [({}, parse_iso(wal.window_end).timestamp())],
        )


def _changes_metrics(w: _Writer, h: ChangesHealth | None, now: datetime) -> None:
    """The change archive (its health as the last drain stored it): ``coldcopy_changes_set_up`` from
    the first scrape (0 when never set up or torn down), the rest while it is in use."""
    in_use = h is not None and h.in_use
    w.metric(
        "coldcopy_changes_set_up",
        "gauge",
        "1 if the change archive (logical slot drained into the bucket) is in use, 0 if it was "
        "never set up or was torn down.",
        [({}, int(in_use))],
    )
    if h is not None and h.torn_down_at:
        w.metric(
            "coldcopy_changes_torn_down_timestamp_seconds",
            "gauge",
            "When `coldcopy changes teardown` removed the change archive (Unix time).",
            [({}, parse_iso(h.torn_down_at).timestamp())],
        )
    if h is None or not in_use:
        return
    gauges: list[tuple[str, str, float]] = [
        ("slot_lag_bytes", "WAL the change archive's slot holds back on the server.", h.lag_bytes),
        ("slot_lost", "1 if the slot is missing or invalidated, or the stream has a gap.", int(h.slot_lost)),
        (
            "tables_left_out",
            "Tables left out of the change archive (no replayable identity).",
            len(h.left_out),
        ),
        (
            "drain_consecutive_failures",
            "Change drains that failed since the last one that succeeded.",
            h.consecutive_failures,
        ),
        (
            "large_objects",
            "Large objects in the database (logical decoding does not carry them).",
            h.large_objects,
        ),
        ("untracked_ddl", "Schema changes seen without a captured DDL command.", len(h.untracked_ddl)),
    ]
    for name, help_, value in gauges:
        w.metric(f"coldcopy_changes_{name}", "gauge", help_, [({}, value)])
    ratio = lag_ratio(h)
    if ratio is not None:
        w.metric(
            "coldcopy_changes_slot_lag_ratio",
            "gauge",
            "The slot's lag as a fraction of max_slot_wal_keep_size (at 1 the server invalidates it).",
            [({}, round(ratio, 6))],
        )
    stamps = (
        (
            "last_archived",
            "When the last drain archived everything committed before it (Unix time).",
            h.last_drain_at,
        ),
        ("newest_commit", "Commit time of the newest archived transaction (Unix time).", h.newest_commit_at),
        (
            "window_start",
            "Start of the change window: the oldest dump it extends (Unix time).",
            h.window_start,
        ),
        ("window_end", "End of the change window: the newest archived change (Unix time).", h.window_end),
    )
    for name, help_, at in stamps:
        if at:
            w.metric(
                f"coldcopy_changes_{name}_timestamp_seconds",
                "gauge",
                help_,
                [({}, parse_iso(at).timestamp())],
            )
    if h.last_drain_at:
        w.metric(
            "coldcopy_changes_archive_age_seconds",
            "gauge",
            "Age of the newest archived change (since the last drain that succeeded).",
            [({}, max(0.0, round((now - parse_iso(h.last_drain_at)).total_seconds(), 3)))],
        )
