"""Every alert rule on prepared histories: raised when it should be, resolved when it no longer holds."""

from __future__ import annotations

import os
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from coldcopy.config import load_settings
from coldcopy.core.alerts import PLANS, Alert, counts_by_severity, evaluate
from coldcopy.core.archive_report import WalGap, WalHealth
from coldcopy.core.catalog import Catalog
from coldcopy.core.jobs import Run
from coldcopy.core.manifest import CatalogEntry
from coldcopy.core.thresholds import Thresholds
from coldcopy.core.times import iso
from coldcopy.errors import ConfigError

NO_FILE = Path(os.devnull)
NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
TH = Thresholds()


def entry(when: datetime, size: int = 1_000_000, kind: str = "full", db: str = "app") -> CatalogEntry:
    return CatalogEntry(
        name=f"{kind}_backup_{db}_{when:%Y%m%d_%H%M%S}",
        kind=kind,
        database=db,
        created_at=iso(when),
        finished_at=iso(when + timedelta(minutes=5)),
        duration_seconds=300.0,
        size_bytes=size,
        raw_size_bytes=size * 4,
        encrypted=True,
        key_id="k1",
        server_version="17.2",
    )


def catalog(*entries: CatalogEntry, verified_ok_at: datetime | None = None) -> Catalog:
    cat = Catalog(backups={e.name: e for e in entries})
    if verified_ok_at is not None and entries:
        cat.verifications[entries[0].name] = {"name": entries[0].name, "ok": True, "at": iso(verified_ok_at)}
    return cat


def daily(n: int, size: int = 1_000_000, end: datetime = NOW - timedelta(hours=10)) -> list[CatalogEntry]:
    return [entry(end - timedelta(days=i), size) for i in range(n)]


def ids(alerts: list[Alert]) -> list[str]:
    return [a.id for a in alerts]


def check(
    cat: Catalog,
    runs: list[Run] | None = None,
    wal: WalHealth | None = None,
    th: Thresholds = TH,
    now: datetime = NOW,
) -> list[Alert]:
    return evaluate(cat, runs or [], wal, th, now)


def healthy() -> Catalog:
    return catalog(*daily(5), verified_ok_at=NOW - timedelta(days=1))


def test_a_healthy_history_raises_nothing() -> None:
    assert check(healthy()) == []


def test_no_backup_at_all_is_critical() -> None:
    [a] = check(Catalog())
    assert (a.id, a.severity, a.since) == ("no-recent-backup", "critical", None)
    assert a.plan_command == PLANS["no-recent-backup"]


def test_no_recent_backup_raised_after_26_hours_and_resolved_by_a_new_backup() -> None:
    last = entry(NOW - timedelta(hours=27))
    cat = catalog(last, verified_ok_at=NOW - timedelta(days=1))
    [a] = check(cat)
    assert a.id == "no-recent-backup" and a.severity == "critical"
    assert a.since == iso(NOW - timedelta(hours=27) + timedelta(minutes=5) + timedelta(hours=26))
    assert "since" in a.message and "26 hours" in a.message
    # Still within the threshold an hour earlier: nothing.
    assert check(cat, now=NOW - timedelta(hours=2)) == []
    # Configurable.
    assert check(cat, th=Thresholds(backup_max_age_hours=48)) == []
    fresh = entry(NOW - timedelta(hours=1))
    cat.backups[fresh.name] = fresh
    assert check(cat) == []


def test_a_failed_last_backup_is_raised_and_resolved_by_the_next_success() -> None:
    cat = healthy()
    cat.failures += [
        {
            "name": "full_backup_app_20261124_100000",
            "kind": "full",
            "at": iso(NOW - timedelta(hours=2)),
            "error": "pg_dump: connection refused",
        },
        {
            "name": "full_backup_app_20261124_110000",
            "kind": "full",
            "at": iso(NOW - timedelta(hours=1)),
            "error": "pg_dump: connection refused again",
        },
    ]
    [a] = check(cat)
    assert a.id == "last-backup-failed" and a.severity == "critical"
    assert a.since == iso(NOW - timedelta(hours=2))  # the start of the failing streak
    assert "again" in a.message and "2 failed attempts" in a.message
    after = entry(NOW - timedelta(minutes=30))
    cat.backups[after.name] = after
    assert check(cat) == []


def test_an_old_failure_before_the_last_success_does_not_alert() -> None:
    cat = healthy()
    cat.failures.append({"name": "x", "kind": "full", "at": iso(NOW - timedelta(days=3)), "error": "boom"})
    assert check(cat) == []


def test_a_failed_verification_is_raised_and_resolved() -> None:
    cat = healthy()
    name = cat.entries()[1].name
    cat.verifications[name] = {
        "name": name,
        "ok": False,
        "at": iso(NOW - timedelta(hours=3)),
        "checks": [{"name": "checksum", "ok": False, "detail": "sha256 mismatch"}],
    }
    [a] = check(cat)
    assert a.id == f"verification-failed:{name}" and a.severity == "critical"
    assert "sha256 mismatch" in a.message and a.since == iso(NOW - timedelta(hours=3))
    cat.verifications[name] = {"name": name, "ok": True, "at": iso(NOW - timedelta(hours=1))}
    assert check(cat) == []
    # A failed verification of a backup that retention removed no longer alerts either.
    cat.verifications["full_backup_gone_20200101_000000"] = {"ok": False, "at": iso(NOW)}
    assert check(cat) == []


def test_no_verification_within_8_days_is_raised_and_resolved() -> None:
    cat = catalog(*daily(12), verified_ok_at=NOW - timedelta(days=9))
    [a] = check(cat)
    assert a.id == "verification-overdue" and a.severity == "warning"
    assert a.since == iso(NOW - timedelta(days=1))
    cat.verifications["other"] = {"ok": True, "at": iso(NOW - timedelta(hours=1))}
    assert check(cat) == []


def test_never_verified_alerts_only_once_the_oldest_backup_is_8_days_old() -> None:
    assert check(catalog(*daily(5))) == []
    [a] = check(catalog(*daily(10)))
    assert a.id == "verification-overdue" and "verified yet" in a.message


def wal_ok(**kw: Any) -> WalHealth:
    base: dict[str, Any] = {
        "last_archived_at": iso(NOW - timedelta(minutes=5)),
        "last_segment": "000000010000000000000042",
        "window_start": iso(NOW - timedelta(days=7)),
        "window_end": iso(NOW - timedelta(minutes=5)),
    }
    return WalHealth(**{**base, **kw})


def test_without_pitr_the_wal_rules_do_not_fire() -> None:
    assert check(healthy(), wal=None) == []
    assert check(healthy(), wal=wal_ok()) == []


def test_stale_wal_archive_is_raised_and_resolved() -> None:
    [a] = check(healthy(), wal=wal_ok(last_archived_at=iso(NOW - timedelta(hours=2))))
    assert a.id == "wal-archive-stale" and a.severity == "critical"
    assert a.since == iso(NOW - timedelta(hours=1)) and "000000010000000000000042" in a.message
    assert (
        check(
            healthy(),
            wal=wal_ok(last_archived_at=iso(NOW - timedelta(hours=2))),
            th=Thresholds(wal_max_age_minutes=180),
        )
        == []
    )
    [never] = check(healthy(), wal=wal_ok(last_archived_at=None))
    assert never.id == "wal-archive-stale"


def test_a_wal_gap_is_raised_and_resolved() -> None:
    gaps = (
        WalGap("000000010000000000000040", "000000010000000000000042", iso(NOW - timedelta(hours=4))),
        WalGap("000000010000000000000050", "000000010000000000000052", iso(NOW - timedelta(hours=1))),
    )
    [a] = check(healthy(), wal=wal_ok(gaps=gaps))
    assert a.id == "wal-gap" and a.since == iso(NOW - timedelta(hours=4)) and "1 more" in a.message
    assert check(healthy(), wal=wal_ok(gaps=())) == []


def test_a_short_recoverable_window_is_raised_and_resolved() -> None:
    short = wal_ok(window_start=iso(NOW - timedelta(hours=6)))
    [a] = check(healthy(), wal=short)
    assert a.id == "recovery-window-short" and a.severity == "warning" and "5.9 hours" in a.message
    assert check(healthy(), wal=short, th=Thresholds(min_recovery_window_hours=5)) == []
    [none] = check(healthy(), wal=wal_ok(window_start=None, window_end=None))
    assert none.id == "recovery-window-short"
    assert check(healthy(), wal=wal_ok()) == []


@pytest.mark.parametrize(("size", "word"), [(100_000, "smaller"), (5_000_000, "larger")])
def test_a_backup_much_smaller_or_larger_than_usual(size: int, word: str) -> None:
    history = daily(6)
    odd = entry(NOW - timedelta(hours=1), size)
    cat = catalog(odd, *history, verified_ok_at=NOW - timedelta(days=1))
    [a] = check(cat)
    assert a.id == "backup-size:full:app" and a.severity == "warning" and word in a.message
    assert a.since == odd.finished_at
    # Resolved by the next backup of a usual size.
    normal = entry(NOW - timedelta(minutes=10), 1_050_000)
    cat.backups[normal.name] = normal
    assert check(cat) == []


def test_size_rule_needs_enough_history_and_compares_within_kind_and_database() -> None:
    few = catalog(entry(NOW - timedelta(hours=1), 10), *daily(2), verified_ok_at=NOW)
    assert check(few) == []
    other_db = catalog(entry(NOW - timedelta(hours=1), 10, db="tiny"), *daily(6), verified_ok_at=NOW)
    assert check(other_db) == []


def run(kind: str, state: str, heartbeat: datetime | None, run_id: str, error: str | None = None) -> Run:
    return Run(
        run_id,
        kind,
        state=state,
        started_at=iso(NOW - timedelta(hours=1)),
        heartbeat_at=iso(heartbeat) if heartbeat else None,
        error=error,
    )


def test_a_stale_job_is_raised_and_resolved_by_a_newer_run() -> None:
    stale = run("backup-full", "running", NOW - timedelta(minutes=30), "01aaaaaaaaaaaaaaaaaaaaaaaa")
    [a] = check(healthy(), runs=[stale])
    assert a.id == "stale-job:backup-full" and a.since == iso(NOW - timedelta(minutes=30))
    # The tick marks it failed: still alerting (the job did not happen) ...
    died = replace(stale, state="failed", error="no heartbeat since 2026-11-24T11:30:00Z (more than 10 min)")
    [b] = check(healthy(), runs=[died])
    assert b.id == a.id and "marked failed" in b.message
    # ... until a newer run of the same kind is alive or done.
    newer = run("backup-full", "succeeded", NOW, "01bbbbbbbbbbbbbbbbbbbbbbbb")
    assert check(healthy(), runs=[died, newer]) == []
    fresh = run("backup-full", "running", NOW - timedelta(minutes=1), "01aaaaaaaaaaaaaaaaaaaaaaaa")
    assert check(healthy(), runs=[fresh]) == []
    plain_failure = replace(stale, state="failed", error="pg_dump failed")
    assert check(healthy(), runs=[plain_failure]) == []


def test_an_unreadable_manifest_is_raised_and_resolved() -> None:
    cat = healthy()
    cat.unreadable["full_backup_app_20261101_020000"] = "unknown manifest format 'x'"
    [a] = check(cat)
    assert a.id == "manifest-unreadable:full_backup_app_20261101_020000" and a.severity == "critical"
    del cat.unreadable["full_backup_app_20261101_020000"]
    assert check(cat) == []


def test_order_counts_and_serialisation() -> None:
    cat = catalog(*daily(12, end=NOW - timedelta(days=2)))
    cat.unreadable["full_backup_app_20261101_020000"] = "bad"
    alerts = check(cat)
    assert [a.severity for a in alerts] == ["critical", "critical", "warning"]
    assert counts_by_severity(alerts) == {"critical": 2, "warning": 1}
    d = alerts[-1].to_dict()
    assert d["rule"] == "verification-overdue" and set(d) == {
        "id",
        "severity",
        "since",
        "message",
        "plan_command",
        "rule",
    }
    # Stable from one evaluation to the next (the notifier relies on it).
    assert check(cat, now=NOW + timedelta(minutes=5)) == check(cat)


def test_thresholds_from_the_environment() -> None:
    th = load_settings(
        {"ALERT_BACKUP_MAX_AGE_HOURS": "30", "ALERT_SIZE_SAMPLE": "5"}, env_file=NO_FILE
    ).thresholds
    assert th.backup_max_age_hours == 30 and th.size_sample == 5 and th.verify_max_age_days == 8
    with pytest.raises(ConfigError) as exc:
        load_settings(
            {"ALERT_BACKUP_MAX_AGE_HOURS": "soon", "ALERT_SIZE_HIGH_RATIO": "0.5"}, env_file=NO_FILE
        )
    assert len(exc.value.problems) == 2


def test_streams_under_a_key_no_setting_held_raise_a_critical_alert_until_recounted() -> None:
    counted = iso(NOW - timedelta(hours=2))
    raised = evaluate(
        healthy(), [], None, TH, NOW, unheld_keys={"0123abcd": 7, "empty": 0}, keys_counted_at=counted
    )
    assert ids(raised) == ["key-unheld:0123abcd"]
    (a,) = raised
    assert a.severity == "critical" and a.since == counted
    assert a.plan_command == PLANS["key-unheld"] == "coldcopy plan key-rotation"
    assert "7 stored streams" in a.message and "BACKUP_ENCRYPTION_KEY_PREVIOUS" in a.message
    assert evaluate(healthy(), [], None, TH, NOW, unheld_keys={}, keys_counted_at=counted) == []
