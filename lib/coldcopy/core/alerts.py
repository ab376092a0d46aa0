"""Alert rules: what is wrong right now, computed from the catalog and the run records.  Pure: no I/O.

``evaluate(catalog, runs, wal, thresholds, now)`` answers the active alerts.  Each has a stable
``id`` (the rule, plus what it is about: ``verification-failed:<backup>``), so the notifier can
tell an alert that starts from one that goes on, and one that resolves.  ``since`` is when the
condition began, as far as the records say (None when they cannot say: the notifier then uses
the time it first saw the alert).  Messages name times, not ages, so they stay the same from one
tick to the next.

WAL archiving (PITR) feeds the rules through an optional
:class:`coldcopy.core.archive_report.WalHealth`; without one (no PITR in use) the WAL rules do not
fire.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from statistics import median
from typing import Any

from coldcopy.core.archive_report import WalHealth
from coldcopy.core.catalog import Catalog
from coldcopy.core.catalog_digest import CatalogDigest, digest
from coldcopy.core.changes import ChangesHealth, lag_ratio, table_list
from coldcopy.core.jobs import FAILED, STALE_MARK, Run
from coldcopy.core.thresholds import Thresholds
from coldcopy.core.times import iso, parse_iso
from coldcopy.core.verification import storage_failure

CRITICAL, WARNING = "critical", "warning"
SEVERITIES = (CRITICAL, WARNING)

# Rule -> the disaster-recovery plan that says what to do.
PLANS = {
    "no-recent-backup": "coldcopy plan missed-backup",
    "last-backup-failed": "coldcopy plan failed-backup",
    "verification-failed": "coldcopy plan failed-verification",
    "verification-overdue": "coldcopy plan failed-verification",
    "wal-archive-stale": "coldcopy plan wal-archive",
    "wal-gap": "coldcopy plan wal-archive",
    "recovery-window-short": "coldcopy plan recovery-window",
    "backup-size": "coldcopy plan backup-size",
    "stale-job": "coldcopy plan stale-job",
    "manifest-unreadable": "coldcopy plan corrupt-backup",
    "email-failing": "coldcopy alerts test-email",
    "changes-drain-failing": "coldcopy plan change-archive",
    "changes-stale": "coldcopy plan change-archive",
    "changes-slot-lag": "coldcopy plan change-archive",
    "changes-slot-lost": "coldcopy plan change-archive",
    "changes-untracked": "coldcopy plan change-archive",
    "restore-interrupted": "coldcopy plan restore-interrupted",
    "key-unheld": "coldcopy plan key-rotation",
    "files-snapshot-failed": "coldcopy plan files",
    "files-snapshot-late": "coldcopy plan files",
}


@dataclass(frozen=True)
class Alert:
    """One active alert: what is wrong (``message``), since when, how bad, and the plan to follow."""

    id: str
    severity: str
    since: str | None  # ISO 8601 UTC
    message: str
    plan_command: str

    @property
    def rule(self) -> str:
        return self.id.split(":", 1)[0]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rule": self.rule}


def alert(rule: str, severity: str, since: datetime | str | None, message: str, about: str = "") -> Alert:
    """An :class:`Alert` of ``rule`` (about one thing, when ``about`` is given), with the rule's plan."""
    when = iso(since) if isinstance(since, datetime) else since
    return Alert(f"{rule}:{about}" if about else rule, severity, when, message, PLANS[rule])


# -- the rules ------------------------------------------------------------------------------------
def evaluate(
    cat: Catalog,
    runs: Sequence[Run],
    wal: WalHealth | None,
    th: Thresholds,
    now: datetime,
    changes: ChangesHealth | None = None,
    interrupted: Sequence[Mapping[str, Any]] = (),
    unheld_keys: Mapping[str, int] | None = None,
    keys_counted_at: str | None = None,
) -> list[Alert]:
    """Every active alert, critical first, then oldest first (the change archive's rules fire only
    when ``changes``, its health, is given: the archive is set up; ``interrupted``: the intent
    records of restores killed between their renames; ``unheld_keys``: stored streams per key id
    no setting held when they were counted, at ``keys_counted_at``)."""
    return evaluate_digest(
        digest(cat, th.size_sample), runs, wal, th, now, changes, interrupted, unheld_keys, keys_counted_at
    )


def evaluate_digest(
    d: CatalogDigest,
    runs: Sequence[Run],
    wal: WalHealth | None,
    th: Thresholds,
    now: datetime,
    changes: ChangesHealth | None = None,
    interrupted: Sequence[Mapping[str, Any]] = (),
    unheld_keys: Mapping[str, int] | None = None,
    keys_counted_at: str | None = None,
) -> list[Alert]:
    """``evaluate`` from the catalog's digest (one that kept at least ``th.size_sample`` sizes)."""
    last = parse_iso(d.last_finished_at) if d.last_finished_at else None
    out = [
        *_backup_age(d, last, th, now),
        *_failed_backup(d, last),
        *_verification(d, th, now),
        *_wal(wal, th, now),
        *changes_alerts(changes, th, now),
        *_sizes(d, th),
        *_stale_jobs(runs, th, now),
        *_unreadable(d),
        *_interrupted(interrupted),
        *key_alerts(unheld_keys or {}, keys_counted_at),
        *files_alerts(d.files, th, now),
    ]
    return sorted(out, key=lambda a: (SEVERITIES.index(a.severity), a.since or "", a.id))


def _interrupted(records: Sequence[Mapping[str, Any]]) -> list[Alert]:
    return [
        alert(
            "restore-interrupted",
            CRITICAL,
            str(r.get("at") or "") or None,
            f"a restore of {r.get('database')} was killed between its renames: the database may be missing "
            f"(the original is {r.get('renamed_to')}); the next backup or restore puts it back",
            str(r.get("database", "")),
        )
        for r in records
    ]


def key_alerts(unheld: Mapping[str, int], counted_at: str | None) -> list[Alert]:
    """One critical alert per key id that stored streams are under and that no setting held when
    ``key status`` or ``key rotate`` last counted them (at ``counted_at``): those streams cannot be
    read by ColdCopy as configured."""
    return [
        alert(
            "key-unheld",
            CRITICAL,
            counted_at,
            f"{n} stored streams are under key id {key_id}, which no setting held when they were counted "
            f"({counted_at}): put that passphrase in BACKUP_ENCRYPTION_KEY_PREVIOUS or finish "
            "`coldcopy key rotate`, then run `coldcopy key status`",
            key_id,
        )
        for key_id, n in sorted(unheld.items())
        if n > 0
    ]


def files_alerts(facts: Mapping[str, Any], th: Thresholds, now: datetime) -> list[Alert]:
    """The files snapshots' rules (``catalog_digest.files_facts``): the newest attempt failed; the
    newest backup whose snapshot was queued has none ``files_max_lag_hours`` after it finished."""
    out = []
    newest, failure = facts.get("newest"), facts.get("last_failure")
    if failure and (newest is None or str(failure.get("at")) > str(newest.get("created_at"))):
        out.append(
            alert(
                "files-snapshot-failed",
                CRITICAL,
                str(failure.get("at") or "") or None,
                f"the last files snapshot of the project's Storage failed at {failure.get('at')}: "
                f"{failure.get('error')}",
            )
        )
    awaiting = facts.get("awaiting")
    if awaiting and awaiting.get("snapshot") is None:
        due = parse_iso(str(awaiting["finished_at"])) + timedelta(hours=th.files_max_lag_hours)
        if now > due:
            out.append(
                alert(
                    "files-snapshot-late",
                    WARNING,
                    due,
                    f"backup {awaiting['backup']} has no files snapshot {th.files_max_lag_hours:g} hours "
                    f"after it finished ({awaiting['finished_at']}): its Storage files are not backed up",
                    str(awaiting["backup"]),
                )
            )
    return out


def _backup_age(d: CatalogDigest, last: datetime | None, th: Thresholds, now: datetime) -> list[Alert]:
    limit = timedelta(hours=th.backup_max_age_hours)
    if last is None:
        first_failure = d.failures[0].get("at") if d.failures else None
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


def _failed_backup(d: CatalogDigest, last: datetime | None) -> list[Alert]:
    streak = [f for f in d.failures if last is None or parse_iso(str(f.get("at"))) > last]
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


def _verification(d: CatalogDigest, th: Thresholds, now: datetime) -> list[Alert]:
    out = []
    for name, v in sorted(d.failed_verifications.items()):
        if storage_failure(v):
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
    if d.newest_ok_verification_at is not None:
        last = parse_iso(d.newest_ok_verification_at)
        if now - last > limit:
            message = (
                f"no successful verification since {iso(last)} (more than {th.verify_max_age_days:g} days)"
            )
            out.append(alert("verification-overdue", WARNING, last + limit, message))
    elif d.oldest_finished_at is not None:
        oldest = parse_iso(d.oldest_finished_at)
        if now - oldest > limit:
            message = (
                f"no backup has been verified yet; the oldest finished at {iso(oldest)} "
                f"(more than {th.verify_max_age_days:g} days ago)"
            )
            out.append(alert("verification-overdue", WARNING, oldest + limit, message))
    return out


def wal_alerts(wal: WalHealth | None, th: Thresholds, now: datetime) -> list[Alert]:
    """The WAL rules alone (`coldcopy status` shows them next to the catalog's problems)."""
    return _wal(wal, th, now)


def _wal(wal: WalHealth | None, th: Thresholds, now: datetime) -> list[Alert]:
    if wal is None:
        return []
    out = []
    limit = timedelta(minutes=th.wal_max_age_minutes)
    if wal.last_archived_at is None:
        out.append(alert("wal-archive-stale", CRITICAL, None, "no WAL segment has been archived yet"))
    else:
        last = parse_iso(wal.last_archived_at)
        if now - last > limit:
            segment = f" (segment {wal.last_segment})" if wal.last_segment else ""
            message = (
                f"no WAL archived since {iso(last)}{segment} (more than {th.wal_max_age_minutes:g} minutes)"
            )
            out.append(alert("wal-archive-stale", CRITICAL, last + limit, message))
    if wal.gaps:
        first = min(wal.gaps, key=lambda g: g.detected_at)
        more = f" and {len(wal.gaps) - 1} more" if len(wal.gaps) > 1 else ""
        message = f"the WAL archive has a gap between {first.after} and {first.before}{more}"
        out.append(alert("wal-gap", CRITICAL, first.detected_at, message))
    wanted = timedelta(hours=th.min_recovery_window_hours)
    if wal.window_start is None or wal.window_end is None:
        out.append(alert("recovery-window-short", WARNING, None, "there is no recoverable window yet"))
    else:
        span = parse_iso(wal.window_end) - parse_iso(wal.window_start)
        if span < wanted:
            message = (
                f"the recoverable window ({wal.window_start} to {wal.window_end}) spans "
                f"{span.total_seconds() / 3600:.1f} hours, less than {th.min_recovery_window_hours:g} hours"
            )
            out.append(alert("recovery-window-short", WARNING, None, message))
    return out


def changes_alerts(h: ChangesHealth | None, th: Thresholds, now: datetime) -> list[Alert]:
    """The change archive's rules: drain failing, stale, slot lag, slot lost, what it cannot carry.
    None (never set up) and an archive torn down deliberately (``coldcopy changes teardown``) have
    none: only a slot that vanishes without a teardown is lost."""
    if h is None or not h.in_use:
        return []
    out = []
    restart = "the change window restarts at the next logical backup; the next tick enqueues one"
    if not h.slot_exists or h.slot_invalidated:
        what = "was invalidated (it fell behind max_slot_wal_keep_size)" if h.slot_exists else "is missing"
        since = h.window_end or "the start"
        message = f"the replication slot {h.slot} {what}: changes since {since} are lost; {restart}"
        out.append(alert("changes-slot-lost", CRITICAL, h.gap_since or h.checked_at, message, h.slot))
    elif h.gap_since:
        message = f"the change stream has a gap (detected {h.gap_since}): {restart}"
        out.append(alert("changes-slot-lost", CRITICAL, h.gap_since, message, h.slot))
    if h.last_error:
        when = h.failing_since or h.last_error_at
        message = f"draining the change archive fails since {when}: {h.last_error[:300]}"
        out.append(alert("changes-drain-failing", CRITICAL, h.failing_since or h.last_error_at, message))
    limit = timedelta(minutes=th.changes_max_age_minutes)
    newest = h.last_drain_at
    set_up = parse_iso(h.checked_at) if newest is None and h.checked_at else None
    if newest is None:
        if set_up is None or now - set_up > limit:  # set up, and no drain since: nothing reads the slot
            since = f" since it was set up at {h.checked_at}" if set_up else " yet"
            message = f"no change batch has been archived{since}: nothing drains the slot {h.slot}"
            out.append(alert("changes-stale", CRITICAL, None if set_up is None else set_up + limit, message))
    elif now - parse_iso(newest) > limit:
        message = (
            f"no change batch archived since {newest} (more than {th.changes_max_age_minutes:g} minutes); "
            f"the slot holds back {h.lag_bytes:,} bytes of WAL on the server"
        )
        out.append(alert("changes-stale", CRITICAL, parse_iso(newest) + limit, message))
    ratio = lag_ratio(h)
    if ratio is not None and ratio >= th.changes_slot_lag_ratio and h.slot_exists and not h.slot_invalidated:
        message = (
            f"the slot {h.slot} holds back {h.lag_bytes:,} bytes of WAL, {ratio:.0%} of "
            f"max_slot_wal_keep_size ({h.max_keep_bytes:,} bytes): "
            "at 100 % the server invalidates it and the change window is lost"
        )
        out.append(alert("changes-slot-lag", WARNING, None, message, h.slot))
    if h.untracked_ddl:
        message = (
            f"the schema changed without a captured DDL command ({table_list(h.untracked_ddl)}): "
            "a role whose DDL the event trigger cannot see ran it; take a logical backup"
        )
        out.append(alert("changes-untracked", WARNING, None, message, "ddl"))
    if h.large_objects:
        message = f"{h.large_objects} large objects exist: logical decoding does not carry them"
        out.append(alert("changes-untracked", WARNING, None, message, "large-objects"))
    return out


def _sizes(d: CatalogDigest, th: Thresholds) -> list[Alert]:
    out = []
    for (kind, db), g in sorted(d.size_groups.items()):
        previous = g.previous_sizes[: th.size_sample]
        if len(previous) < th.size_min_samples:
            continue
        usual = median(previous)
        if usual <= 0:
            continue
        ratio = g.newest_size / usual
        if th.size_low_ratio <= ratio <= th.size_high_ratio:
            continue
        word = "smaller" if ratio < 1 else "larger"
        message = (
            f"{g.newest_name} is {g.newest_size:,} bytes, {ratio:.2f}× the median of the previous "
            f"{len(previous)} {kind} backups of {db} ({usual:,.0f} bytes): much {word} than usual"
        )
        out.append(alert("backup-size", WARNING, g.newest_finished_at, message, f"{kind}:{db}"))
    return out


def _stale_jobs(runs: Sequence[Run], th: Thresholds, now: datetime) -> list[Alert]:
    """Per job kind, its newest run: still 'running' with a stale heartbeat, or failed for one."""
    newest: dict[str, Run] = {}
    for run in sorted(runs, key=lambda r: r.run_id, reverse=True):
        newest.setdefault(run.kind, run)
    stale_after = timedelta(seconds=th.heartbeat_stale_seconds)
    out = []
    for kind, run in sorted(newest.items()):
        died = run.state == FAILED and STALE_MARK in (run.error or "")
        if not (died or run.is_stale(now, stale_after)):
            continue
        last = run.heartbeat_at or run.started_at
        what = "was marked failed" if died else "is still marked running"
        message = (
            f"the {kind} job (run {run.run_id}) stopped sending heartbeats "
            f"after {last or 'it was claimed'} and {what}"
        )
        out.append(alert("stale-job", WARNING, last, message, kind))
    return out


def _unreadable(d: CatalogDigest) -> list[Alert]:
    return [
        alert(
            "manifest-unreadable", CRITICAL, None, f"the manifest of {name} cannot be read: {why[:300]}", name
        )
        for name, why in sorted(d.unreadable.items())
    ]


def counts_by_severity(alerts: Sequence[Alert]) -> dict[str, int]:
    """How many alerts of each severity (every severity present, zero included)."""
    counts = dict.fromkeys(SEVERITIES, 0)
    for a in alerts:
        counts[a.severity] = counts.get(a.severity, 0) + 1
    return counts
