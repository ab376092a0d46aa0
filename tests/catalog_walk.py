"""The oracle: what /metrics, /status and the catalog's alert rules computed before the catalog
digest, by walking every backup of the catalog on each call (main's code of issue 18's start, kept
verbatim in substance), and what /backups answered before the catalog's pages, by cutting its page
from every backup.  tests/test_monitor_state.py compares the digest's answers with these,
tests/test_catalog_pages.py the pages' listings."""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from statistics import median
from typing import Any

from coldcopy.core.alerts import CRITICAL, SEVERITIES, WARNING, Alert, alert, counts_by_severity
from coldcopy.core.archive_report import WalHealth
from coldcopy.core.catalog import Catalog
from coldcopy.core.manifest import CatalogEntry
from coldcopy.core.names import KINDS, parse_name
from coldcopy.core.thresholds import Thresholds
from coldcopy.core.times import iso, parse_iso
from coldcopy.core.verification import storage_failure
from coldcopy.core.views import STATUS_MAX_AGE_HOURS, wal_view
from coldcopy.errors import InvalidNameError

DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800)
Labels = dict[str, str]
Key = tuple[str, str]  # (kind, database)


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

    def histogram(self, name: str, help_: str, series: dict[Key, list[float]]) -> None:
        if not series:
            return
        self.lines.append(f"# HELP {name} {help_}")
        self.lines.append(f"# TYPE {name} histogram")
        for (kind, db), values in sorted(series.items()):
            base = {"kind": kind, "database": db}
            ordered = sorted(v for v in values if v == v)  # NaN is in no bucket but +Inf
            for bound in DURATION_BUCKETS:
                count = bisect_right(ordered, bound)  # how many are <= bound
                self.lines.append(f"{name}_bucket{_labels({**base, 'le': str(bound)})} {count}")
            self.lines.append(f"{name}_bucket{_labels({**base, 'le': '+Inf'})} {len(values)}")
            self.lines.append(f"{name}_sum{_labels(base)} {_num(float(sum(values)))}")
            self.lines.append(f"{name}_count{_labels(base)} {len(values)}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _key(name: str, kind: str | None = None) -> Key:
    """(kind, database) from a backup name; what the record says when the name does not parse."""
    try:
        n = parse_name(name)
        return n.kind, n.database
    except InvalidNameError:
        return kind or "unknown", "unknown"


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
    """The exposition text.  ``alerts`` None: the alert gauges are left out (nothing evaluated them).
    ``computed_at``: when the tick gathered the run and WAL inputs (a gauge of its own)."""
    entries = cat.entries()  # newest first
    w = _Writer()
    _backup_counters(w, cat, entries)
    _size_metrics(w, entries, legacy_gb)
    _newest_backup_metrics(w, entries)
    _verification_metrics(w, cat)
    if wal is not None:
        _wal_metrics(w, wal, now)
    _files_metrics(w, cat, now)
    w.metric(
        "coldcopy_manifests_unreadable",
        "gauge",
        "Backups whose manifest cannot be read.",
        [({}, len(cat.unreadable))],
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


def _files_metrics(w: _Writer, cat: Catalog, now: datetime) -> None:
    """The files snapshots (added with them, issue 16), straight from the catalog's records."""
    w.metric(
        "coldcopy_files_snapshots",
        "gauge",
        "Complete files snapshots of the project's Storage kept in the bucket.",
        [({}, len(cat.files))],
    )
    w.metric(
        "coldcopy_files_snapshot_failures_total",
        "counter",
        "Failed files snapshot attempts recorded (the catalog keeps the newest 200).",
        [({}, len(cat.files_failures))],
    )
    behind = 0.0
    due = sorted((at, n) for n, at in cat.files_due.items() if n in cat.backups)
    if due:
        name = due[-1][1]
        if not any(r.get("backup") == name for r in cat.files.values()):
            behind = max(0.0, (now - parse_iso(cat.backups[name].finished_at)).total_seconds())
    w.metric(
        "coldcopy_files_snapshot_behind_seconds",
        "gauge",
        "Seconds since the newest scheduled backup finished while its files snapshot is still "
        "missing (0 when every queued snapshot is taken).",
        [({}, behind)],
    )
    if not cat.files:
        return
    newest = cat.files[max(cat.files)]
    w.metric(
        "coldcopy_files_last_snapshot_timestamp_seconds",
        "gauge",
        "When the newest complete files snapshot was taken (Unix time).",
        [({}, parse_iso(newest["created_at"]).timestamp())],
    )
    w.metric(
        "coldcopy_files_last_snapshot_objects",
        "gauge",
        "Objects in the newest files snapshot.",
        [({}, newest["objects"])],
    )
    w.metric(
        "coldcopy_files_last_snapshot_bytes",
        "gauge",
        "Bytes of the objects in the newest files snapshot.",
        [({}, newest["bytes"])],
    )
    if newest.get("rows_checked") is not None:
        w.metric(
            "coldcopy_files_rows_without_file",
            "gauge",
            "storage.objects rows with no file in the newest files snapshot.",
            [({}, newest["rows_without_file"])],
        )
        w.metric(
            "coldcopy_files_without_row",
            "gauge",
            "Files in the newest files snapshot with no storage.objects row.",
            [({}, newest["files_without_row"])],
        )


def _backup_counters(w: _Writer, cat: Catalog, entries: list[CatalogEntry]) -> None:
    """Attempts, successes (deleted backups included) and failures, by kind and database."""
    success: dict[Key, float] = {}
    failed: dict[Key, float] = {}
    for e in entries:
        key = _key(e.name, e.kind)
        success[key] = success.get(key, 0) + 1
    for name in cat.deleted:
        key = _key(name)
        success[key] = success.get(key, 0) + 1
    for f in cat.failures:
        key = _key(str(f.get("name", "")), str(f.get("kind") or "") or None)
        failed[key] = failed.get(key, 0) + 1
    # The three share their series, so each has a sample from the first scrape: a database that
    # never failed answers coldcopy_backups_failed 0, and a bucket without any backup 0 unlabelled.
    keys = {*success, *failed}
    success = {k: success.get(k, 0) for k in keys}
    failed = {k: failed.get(k, 0) for k in keys}
    attempts = {k: success[k] + failed[k] for k in keys}
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


def _size_metrics(w: _Writer, entries: list[CatalogEntry], legacy_gb: bool) -> None:
    """How many backups the catalog holds and the bytes they store, by kind and in total."""
    counts = dict.fromkeys(KINDS, 0)
    sizes = dict.fromkeys(KINDS, 0)
    for e in entries:
        counts[e.kind] = counts.get(e.kind, 0) + 1
        sizes[e.kind] = sizes.get(e.kind, 0) + e.size_bytes
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


def _newest_backup_metrics(w: _Writer, entries: list[CatalogEntry]) -> None:
    """The newest backup's size and finish time, and the histogram of backup durations."""
    newest_size: dict[Key, float] = {}
    newest_time: dict[Key, float] = {}
    durations: dict[Key, list[float]] = {}
    last_by_kind: dict[str, float] = {}
    for e in entries:
        key = _key(e.name, e.kind)
        durations.setdefault(key, []).append(float(e.duration_seconds))
        if key not in newest_size:
            newest_size[key] = e.size_bytes
            newest_time[key] = parse_iso(e.finished_at).timestamp()
        if e.kind not in last_by_kind:
            last_by_kind[e.kind] = parse_iso(e.finished_at).timestamp()
    w.metric("coldcopy_backup_size_bytes", "gauge", "Stored size of the newest backup.", _by_key(newest_size))
    w.histogram("coldcopy_backup_duration_seconds", "How long the backups in the catalog took.", durations)
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
        [({"kind": k}, t) for k, t in sorted(last_by_kind.items())],
    )


def _alert_metrics(w: _Writer, alerts: Sequence[Alert]) -> None:
    counts_sev = counts_by_severity(alerts)
    w.metric(
        "coldcopy_alerts_active",
        "gauge",
        "Active alerts, by severity.",
        [({"severity": s}, counts_sev.get(s, 0)) for s in SEVERITIES],
    )


def _verification_metrics(w: _Writer, cat: Catalog) -> None:
    done = [v for v in cat.verifications.values() if isinstance(v.get("at"), str)]
    if done:
        newest = max(done, key=lambda v: str(v["at"]))
        w.metric(
            "coldcopy_last_verification_timestamp_seconds",
            "gauge",
            "When the newest verification finished (Unix time), whatever its result.",
            [({}, parse_iso(str(newest["at"])).timestamp())],
        )
        w.metric(
            "coldcopy_last_verification_success",
            "gauge",
            "1 if the newest verification succeeded, 0 if it failed.",
            [({}, 1 if newest.get("ok") else 0)],
        )
    ok = [parse_iso(str(v["at"])).timestamp() for v in done if v.get("ok")]
    if ok:
        w.metric(
            "coldcopy_last_successful_verification_timestamp_seconds",
            "gauge",
            "When the newest successful verification finished (Unix time).",
            [({}, max(ok))],
        )
    failed = sum(1 for n, v in cat.verifications.items() if not v.get("ok") and n in cat.backups)
    w.metric(
        "coldcopy_verification_failed_backups",
        "gauge",
        "Backups whose latest verification failed.",
        [({}, failed)],
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


# -- the catalog's alert rules, walking every backup ---------------------------------------------
def catalog_alerts(cat: Catalog, th: Thresholds, now: datetime) -> list[Alert]:
    """The alerts ``evaluate`` drew from the catalog alone (no runs, WAL or change archive)."""
    entries = cat.entries()
    last = _last_success(entries)
    out = [
        *_backup_age(cat, last, th, now),
        *_failed_backup(cat, last),
        *_verification(cat, entries, th, now),
        *_sizes(entries, th),
        *_unreadable(cat),
    ]
    return sorted(out, key=lambda a: (SEVERITIES.index(a.severity), a.since or "", a.id))


def _last_success(entries: Sequence[CatalogEntry]) -> datetime | None:
    return max((parse_iso(e.finished_at) for e in entries), default=None)


def _backup_age(cat: Catalog, last: datetime | None, th: Thresholds, now: datetime) -> list[Alert]:
    limit = timedelta(hours=th.backup_max_age_hours)
    if last is None:
        first_failure = cat.failures[0].get("at") if cat.failures else None
        return [alert("no-recent-backup", CRITICAL, first_failure, "no backup has completed yet")]
    if now - last <= limit:
        return []
    return [
        alert(
            "no-recent-backup",
            CRITICAL,
            last + limit,
            f"no successful backup since {iso(last)} (more than {th.backup_max_age_hours:g} hours)",
        )
    ]


def _failed_backup(cat: Catalog, last: datetime | None) -> list[Alert]:
    streak = [f for f in cat.failures if last is None or parse_iso(str(f.get("at"))) > last]
    if not streak:
        return []
    newest = streak[-1]
    count = f" ({len(streak)} failed attempts in a row)" if len(streak) > 1 else ""
    return [
        alert(
            "last-backup-failed",
            CRITICAL,
            str(streak[0].get("at")),
            f"the last {newest.get('kind') or ''} backup attempt failed at {newest.get('at')}{count}: "
            f"{str(newest.get('error') or 'no error recorded')[:300]}",
        )
    ]


def _verification(cat: Catalog, entries: list[CatalogEntry], th: Thresholds, now: datetime) -> list[Alert]:
    out = []
    for name, v in sorted(cat.verifications.items()):
        if v.get("ok") or name not in cat.backups or storage_failure(v):
            continue  # a verification the storage interrupted says nothing about the backup
        failed = [c for c in v.get("checks") or [] if isinstance(c, dict) and not c.get("ok")]
        detail = f": {failed[0].get('name')}: {str(failed[0].get('detail', ''))[:200]}" if failed else ""
        out.append(
            alert(
                "verification-failed",
                CRITICAL,
                str(v.get("at")),
                f"verification of {name} failed at {v.get('at')}{detail}",
                name,
            )
        )
    limit = timedelta(days=th.verify_max_age_days)
    ok_times = [parse_iso(str(v["at"])) for v in cat.verifications.values() if v.get("ok") and v.get("at")]
    if ok_times:
        last = max(ok_times)
        if now - last > limit:
            message = (
                f"no successful verification since {iso(last)} (more than {th.verify_max_age_days:g} days)"
            )
            out.append(alert("verification-overdue", WARNING, last + limit, message))
    elif entries:
        oldest = min(parse_iso(e.finished_at) for e in entries)
        if now - oldest > limit:
            message = (
                f"no backup has been verified yet; the oldest finished at {iso(oldest)} "
                f"(more than {th.verify_max_age_days:g} days ago)"
            )
            out.append(alert("verification-overdue", WARNING, oldest + limit, message))
    return out


def _sizes(entries: list[CatalogEntry], th: Thresholds) -> list[Alert]:
    groups: dict[tuple[str, str], list[CatalogEntry]] = {}
    for e in entries:  # newest first
        groups.setdefault((e.kind, e.database), []).append(e)
    out = []
    for (kind, db), group in sorted(groups.items()):
        newest, previous = group[0], group[1 : 1 + th.size_sample]
        if len(previous) < th.size_min_samples:
            continue
        usual = median(e.size_bytes for e in previous)
        if usual <= 0:
            continue
        ratio = newest.size_bytes / usual
        if th.size_low_ratio <= ratio <= th.size_high_ratio:
            continue
        word = "smaller" if ratio < 1 else "larger"
        message = (
            f"{newest.name} is {newest.size_bytes:,} bytes, {ratio:.2f}× the median of the previous "
            f"{len(previous)} {kind} backups of {db} ({usual:,.0f} bytes): much {word} than usual"
        )
        out.append(alert("backup-size", WARNING, newest.finished_at, message, f"{kind}:{db}"))
    return out


def _unreadable(cat: Catalog) -> list[Alert]:
    return [
        alert(
            "manifest-unreadable", CRITICAL, None, f"the manifest of {name} cannot be read: {why[:300]}", name
        )
        for name, why in sorted(cat.unreadable.items())
    ]


# -- the status, walking every backup ------------------------------------------------------------
def status_view(
    cat: Catalog, now: datetime, *, encrypted: bool, wal: WalHealth | None, thresholds: Thresholds
) -> dict[str, Any]:
    """The last backup, its age, counts, total size, the WAL archive (None without PITR), and every
    problem; ``ok`` when there is none.  ``thresholds`` are the WAL rules' (the alerts' settings)."""
    entries = cat.entries()
    by_kind: dict[str, int] = {}
    for e in entries:
        by_kind[e.kind] = by_kind.get(e.kind, 0) + 1
    last = entries[0] if entries else None
    problems: list[str] = []
    age = None
    if last is None:
        problems.append("no backup has completed yet")
    else:
        age = (now - parse_iso(last.finished_at)).total_seconds()
        limit = STATUS_MAX_AGE_HOURS
        if age > limit * 3600:
            problems.append(f"the last backup finished {age / 3600:.1f} hours ago (more than {limit} hours)")
        if not last.encrypted:
            problems.append(
                f"the last backup {last.name} is NOT encrypted (BACKUP_ENCRYPTION_KEY was not set)"
            )
    failure = cat.last_failure()
    if failure and (last is None or str(failure.get("at")) > last.finished_at):
        problems.append(f"the last backup attempt failed at {failure.get('at')}: {failure.get('error')}")
    for name, why in sorted(cat.unreadable.items()):
        problems.append(f"manifest of {name} cannot be read: {why}")
    failed_verifications = [n for n, v in cat.verifications.items() if not v.get("ok") and n in cat.backups]
    for name in sorted(failed_verifications):
        if storage_failure(cat.verifications[name]):
            problems.append(f"verification of {name} could not read the storage; run it again")
        else:
            problems.append(f"verification of {name} failed")
    if not encrypted:
        problems.append("BACKUP_ENCRYPTION_KEY is not set: new backups are stored unencrypted")
    wal_part = None if wal is None else wal_view(wal, thresholds, now)
    if wal_part is not None:
        problems += wal_part["problems"]
    return {
        "last_backup": last.to_dict() if last else None,
        "last_backup_age_seconds": age,
        "backup_count": len(entries),
        "counts_by_kind": by_kind,
        "total_size_bytes": sum(e.size_bytes for e in entries),
        "last_failure": failure,
        "wal": wal_part,
        "problems": problems,
        "ok": not problems,
        "encryption_configured": encrypted,
        "checked_at": iso(now),
    }


# -- GET /backups (before the catalog's pages) ----------------------------------------------------
SortKey = tuple[str, str]


def _sort_key(entry: CatalogEntry) -> SortKey:
    return entry.created_at, entry.name


def _paginate(
    entries: Sequence[CatalogEntry], limit: int, after: SortKey | None
) -> tuple[list[CatalogEntry], SortKey | None]:
    start = 0
    if after is not None:
        ascending = [_sort_key(e) for e in reversed(entries)]
        start = len(entries) - bisect_left(ascending, after)
    page = list(entries[start : start + limit])
    more = start + limit < len(entries)
    return page, (_sort_key(page[-1]) if more and page else None)


def backups_page(
    cat: Catalog, kind: str | None, limit: int, after: SortKey | None
) -> tuple[list[tuple[CatalogEntry, Any]], int, SortKey | None]:
    """The rows (each backup with its latest verification), the total and the next cursor's key of
    one /backups page, cut from the whole catalog."""
    entries = cat.entries(kind)
    rows, next_key = _paginate(entries, limit, after)
    return [(e, cat.verifications.get(e.name)) for e in rows], len(entries), next_key
