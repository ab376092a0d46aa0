"""The /metrics text: the names users scrape, the right values, and `promtool check metrics` clean."""

from __future__ import annotations

import re
import shutil
import subprocess
from datetime import UTC, datetime, timedelta

import pytest

from coldcopy.core.alerts import evaluate
from coldcopy.core.archive_report import WalGap, WalHealth
from coldcopy.core.catalog import Catalog
from coldcopy.core.catalog_digest import digest
from coldcopy.core.changes import ChangesHealth, torn_down
from coldcopy.core.manifest import CatalogEntry
from coldcopy.core.metrics import render, render_digest
from coldcopy.core.thresholds import Thresholds
from coldcopy.core.times import iso

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def promtool(text: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    if tool is None:
        pytest.fail("promtool is not installed: run scripts/bootstrap.sh --dev (Debian's prometheus package)")
    return subprocess.run([tool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)


def assert_clean(text: str) -> None:
    r = promtool(text)
    assert r.returncode == 0, f"promtool: rc={r.returncode}\n{r.stdout}{r.stderr}\n---\n{text}"


def entry(when: datetime, size: int, duration: float, kind: str = "full", db: str = "app") -> CatalogEntry:
    return CatalogEntry(
        name=f"{kind}_backup_{db}_{when:%Y%m%d_%H%M%S}",
        kind=kind,
        database=db,
        created_at=iso(when),
        finished_at=iso(when + timedelta(seconds=duration)),
        duration_seconds=duration,
        size_bytes=size,
        raw_size_bytes=size * 3,
        encrypted=True,
        key_id="k1",
        server_version="17.2",
    )


def rich_catalog() -> Catalog:
    backups = [entry(NOW - timedelta(days=i), 1000 + i, 40.0 + i) for i in range(4)]
    backups.append(entry(NOW - timedelta(days=20), 5000, 700.5, kind="compliance"))
    backups.append(entry(NOW - timedelta(hours=3), 77, 2.0, db="other-db"))
    cat = Catalog(backups={e.name: e for e in backups})
    cat.deleted["full_backup_app_20200101_000000"] = iso(NOW - timedelta(days=100))
    cat.failures += [
        {
            "name": "full_backup_app_20261123_100000",
            "kind": "full",
            "at": iso(NOW - timedelta(hours=26)),
            "error": 'pg_dump: "quoted" \\ and\nnewline',
        },
        {"name": "not a name", "kind": None, "at": iso(NOW - timedelta(hours=25)), "error": "x"},
    ]
    cat.verifications[backups[1].name] = {"ok": True, "at": iso(NOW - timedelta(days=1))}
    cat.verifications[backups[2].name] = {"ok": False, "at": iso(NOW - timedelta(hours=5))}
    cat.unreadable["full_backup_app_20261001_000000"] = "unknown manifest format"
    return cat


def sample(text: str, series: str) -> float:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {series} in:\n{text}")


def test_an_empty_catalog_is_clean() -> None:
    text = render(Catalog(), NOW, alerts=[])
    assert_clean(text)
    assert 'coldcopy_backup_count{kind="full"} 0' in text.splitlines()
    assert sample(text, "coldcopy_total_backup_size_bytes") == 0


def test_a_rich_catalog_with_alerts_and_wal_is_clean_and_right() -> None:
    cat = rich_catalog()
    wal = WalHealth(
        iso(NOW - timedelta(minutes=3)),
        "000000010000000000000042",
        (WalGap("a", "b", iso(NOW)),),
        iso(NOW - timedelta(days=6)),
        iso(NOW - timedelta(minutes=3)),
    )
    alerts = evaluate(cat, [], wal, Thresholds(), NOW)
    text = render(cat, NOW, alerts=alerts, wal=wal)
    assert_clean(text)
    full_app = '{database="app",kind="full"}'
    # The names users already scrape.
    assert sample(text, f"coldcopy_backups_total{full_app}") == 4 + 1 + 1  # live + deleted + failed
    assert sample(text, f"coldcopy_backups_success{full_app}") == 5
    assert sample(text, f"coldcopy_backups_failed{full_app}") == 1
    assert sample(text, 'coldcopy_backups_failed{database="unknown",kind="unknown"}') == 1
    assert sample(text, f"coldcopy_backup_size_bytes{full_app}") == 1000  # the newest
    assert sample(text, 'coldcopy_backup_size_bytes{database="other-db",kind="full"}') == 77
    assert sample(text, 'coldcopy_backup_count{kind="full"}') == 5
    assert sample(text, "coldcopy_total_backup_size_bytes") == 1000 + 1001 + 1002 + 1003 + 5000 + 77
    assert (
        sample(text, f"coldcopy_last_backup_timestamp{full_app}") == (NOW + timedelta(seconds=40)).timestamp()
    )
    # The histogram: cumulative buckets, sum and count.
    assert sample(text, 'coldcopy_backup_duration_seconds_bucket{database="app",kind="full",le="30"}') == 0
    assert sample(text, 'coldcopy_backup_duration_seconds_bucket{database="app",kind="full",le="60"}') == 4
    assert sample(text, 'coldcopy_backup_duration_seconds_bucket{database="app",kind="full",le="+Inf"}') == 4
    assert sample(text, f"coldcopy_backup_duration_seconds_count{full_app}") == 4
    assert sample(text, f"coldcopy_backup_duration_seconds_sum{full_app}") == 40 + 41 + 42 + 43
    # What an operator needs beyond them.
    assert sample(text, "coldcopy_last_verification_success") == 0  # the newest one failed
    assert (
        sample(text, "coldcopy_last_successful_verification_timestamp_seconds")
        == (NOW - timedelta(days=1)).timestamp()
    )
    assert sample(text, "coldcopy_verification_failed_backups") == 1
    assert sample(text, "coldcopy_wal_archive_age_seconds") == 180
    assert sample(text, "coldcopy_wal_gaps") == 1
    assert (
        sample(text, "coldcopy_recovery_window_start_timestamp_seconds")
        == (NOW - timedelta(days=6)).timestamp()
    )
    assert sample(text, "coldcopy_manifests_unreadable") == 1
    critical = sum(1 for a in alerts if a.severity == "critical")
    assert critical >= 3 and sample(text, 'coldcopy_alerts_active{severity="critical"}') == critical
    # Every metric family has HELP and TYPE exactly once.
    families = re.findall(r"^# TYPE (\S+) ", text, re.M)
    assert len(families) == len(set(families)) == len(re.findall(r"^# HELP ", text, re.M))


def test_without_pitr_no_wal_metrics_and_without_alerts_no_alert_gauge() -> None:
    text = render(rich_catalog(), NOW)
    assert_clean(text)
    assert "coldcopy_wal_" not in text and "coldcopy_recovery_window" not in text
    assert "coldcopy_alerts_active" not in text


def test_the_legacy_gb_name_is_opt_in_because_promtool_lints_it() -> None:
    text = render(rich_catalog(), NOW, legacy_gb=True)
    assert sample(text, "coldcopy_total_backup_size_gb") == pytest.approx(9083 / 1e9)
    r = promtool(text)
    assert r.returncode == 3
    problems = [line for line in (r.stdout + r.stderr).splitlines() if line.strip()]
    assert problems == ["coldcopy_total_backup_size_gb metric names should not contain abbreviated units"]


def test_the_metrics_alerts_and_dashboard_path_imports_nothing_heavy() -> None:
    import sys

    code = (
        "import sys, coldcopy.functions.web, coldcopy.alerting.notify, coldcopy.core.metrics, "
        "coldcopy.api.dashboard;"
        "import coldcopy.ops.queue;"
        "coldcopy.api.dashboard.page();"
        "print([m for m in sys.modules if m.split('.')[0] in ('pg8000', 'zstandard', 'cryptography')])"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


def families_without_a_sample(text: str) -> list[str]:
    declared = re.findall(r"^# TYPE (\S+) (\S+)", text, re.M)
    sampled = {
        re.split(r"[{ ]", line, maxsplit=1)[0] for line in text.splitlines() if not line.startswith("#")
    }
    suffixes = {"histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count", "")}
    return [
        name for name, kind in declared if not any(name + s in sampled for s in suffixes.get(kind, ("",)))
    ]


@pytest.mark.parametrize(
    "cat",
    [
        Catalog(),
        Catalog(backups={e.name: e for e in [entry(NOW - timedelta(days=1), 10, 5.0)]}),
        rich_catalog(),
    ],
    ids=["empty", "one-backup-never-failed", "rich"],
)
def test_every_metric_has_a_sample_from_the_first_scrape(cat: Catalog) -> None:
    text = render(cat, NOW, alerts=[], legacy_gb=True, computed_at=iso(NOW))
    assert families_without_a_sample(text) == []
    assert sample(text, "coldcopy_monitor_state_timestamp_seconds") == NOW.timestamp()


def test_nothing_failed_is_a_zero_not_a_missing_series() -> None:
    text = render(Catalog(backups={e.name: e for e in [entry(NOW, 10, 5.0)]}), NOW)
    assert_clean(text)
    assert sample(text, 'coldcopy_backups_failed{database="app",kind="full"}') == 0
    assert sample(text, 'coldcopy_backups_total{database="app",kind="full"}') == 1
    empty = render(Catalog(), NOW)
    assert_clean(empty)
    for name in ("coldcopy_backups_total", "coldcopy_backups_success", "coldcopy_backups_failed"):
        assert sample(empty, name) == 0
    # With no backup, there is no newest one: those families are left out, not rendered empty.
    assert "coldcopy_backup_size_bytes" not in empty and "coldcopy_backup_duration_seconds" not in empty


def test_the_checker_finds_a_family_without_samples() -> None:
    assert families_without_a_sample("# HELP a x\n# TYPE a gauge\n# HELP b y\n# TYPE b gauge\nb 1\n") == ["a"]


def test_the_change_archive_has_gauges_from_the_first_scrape_and_while_in_use() -> None:

    never = render_digest(digest(Catalog()), NOW, alerts=[], changes=None, changes_known=True)
    assert_clean(never)
    assert families_without_a_sample(never) == []
    assert sample(never, "coldcopy_changes_set_up") == 0  # not set up: a sample, not a missing series
    assert "coldcopy_changes_slot_lag_bytes" not in never
    assert "coldcopy_changes" not in render(Catalog(), NOW)  # not read at all: nothing claimed

    h = ChangesHealth(
        "coldcopy_changes_app",
        iso(NOW),
        lag_bytes=3 << 30,
        max_keep_bytes=4 << 30,
        last_drain_at=iso(NOW - timedelta(seconds=42)),
        newest_commit_at=iso(NOW - timedelta(seconds=50)),
        window_start=iso(NOW - timedelta(hours=9)),
        window_end=iso(NOW - timedelta(seconds=42)),
        left_out=["public.a", "public.b"],
        last_error="boom",
        consecutive_failures=2,
        large_objects=1,
        untracked_ddl=["schema changed before the heartbeat of …"],
    )
    text = render_digest(digest(Catalog()), NOW, alerts=[], changes=h, changes_known=True)
    assert_clean(text)
    assert families_without_a_sample(text) == []
    expected = {
        "coldcopy_changes_set_up": 1,
        "coldcopy_changes_slot_lag_bytes": 3 << 30,
        "coldcopy_changes_slot_lag_ratio": 0.75,
        "coldcopy_changes_slot_lost": 0,
        "coldcopy_changes_archive_age_seconds": 42,
        "coldcopy_changes_last_archived_timestamp_seconds": (NOW - timedelta(seconds=42)).timestamp(),
        "coldcopy_changes_newest_commit_timestamp_seconds": (NOW - timedelta(seconds=50)).timestamp(),
        "coldcopy_changes_window_start_timestamp_seconds": (NOW - timedelta(hours=9)).timestamp(),
        "coldcopy_changes_window_end_timestamp_seconds": (NOW - timedelta(seconds=42)).timestamp(),
        "coldcopy_changes_tables_left_out": 2,
        "coldcopy_changes_drain_consecutive_failures": 2,
        "coldcopy_changes_large_objects": 1,
        "coldcopy_changes_untracked_ddl": 1,
    }
    assert {name: sample(text, name) for name in expected} == expected
    lost = ChangesHealth("s", iso(NOW), slot_exists=False)
    assert (
        sample(
            render_digest(digest(Catalog()), NOW, changes=lost, changes_known=True),
            "coldcopy_changes_slot_lost",
        )
        == 1
    )

    gone = render_digest(digest(Catalog()), NOW, changes=torn_down("s", iso(NOW)), changes_known=True)
    assert_clean(gone)
    assert sample(gone, "coldcopy_changes_set_up") == 0
    assert sample(gone, "coldcopy_changes_torn_down_timestamp_seconds") == NOW.timestamp()
    assert "coldcopy_changes_slot_lost" not in gone  # torn down on purpose: nothing is lost
