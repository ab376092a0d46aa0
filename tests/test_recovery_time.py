"""Recovery-time estimates from recorded test restores (drills)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cli_helpers import run_cli
from coldcopy.config import load_settings
from coldcopy.core.archive_report import WalGap, WalHealth
from coldcopy.core.catalog import Catalog
from coldcopy.core.manifest import CatalogEntry
from coldcopy.core.names import make_name
from coldcopy.core.recovery_time import (
    ASSUMED_REPLAY_RATE,
    ASSUMED_WAL_BYTES_PER_HOUR,
    DEFAULT_THROUGHPUT,
    PITR_UNAVAILABLE,
    PROVISION_SECONDS,
    estimate,
)
from coldcopy.core.times import iso
from coldcopy.storage.catalog_store import CatalogStore
from coldcopy.storage.s3 import open_store
from coldcopy.stream.crypto import MasterKey
from coldcopy.wal.monitor import STATE_KEY, load, refresh

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
MB = 1_000_000


def entry(name: str, created: datetime, raw: int, kind: str = "full") -> CatalogEntry:
    return CatalogEntry(name, kind, "app", iso(created), iso(created), 5.0, raw // 4, raw, True, "k", "17.2")


def drill(at: datetime, raw: int, seconds: float, ok: bool = True, level: str = "restore") -> dict[str, Any]:
    m = {"raw_bytes": raw, "restore_seconds": seconds, "throughput_bytes_per_second": raw / seconds}
    proof = {"at": iso(at), "level": level, "ok": ok, "measurement": m, "restore_level_at": iso(at)}
    return {"at": iso(at), "level": level, "ok": ok, "restore_proof": proof}


def catalog(entries: list[CatalogEntry], verifications: dict[str, dict[str, Any]]) -> Catalog:
    return Catalog(backups={e.name: e for e in entries}, verifications=verifications)


Backup = tuple[str, datetime, int]  # kind, created, bytes of dump
Drill = tuple[int, datetime, int, float, bool, str]  # backup index, at, bytes, seconds, ok, level


def prepare_bucket(env: dict[str, str], backups: list[Backup], drills: list[Drill]) -> list[str]:
    """Write backup and verification journal records (as the real writers do) into env's bucket.

    Plans and estimates read only the catalog, so no payload is needed.  Returns the backup names.
    """
    s = load_settings(env, env_file=Path(os.devnull))
    store = CatalogStore(open_store(s))
    key_id = MasterKey.from_passphrase(env["BACKUP_ENCRYPTION_KEY"]).key_id
    names = []
    for kind, created, raw in backups:
        name = str(make_name(kind, s.db_name, created))
        e = CatalogEntry(
            name,
            kind,
            s.db_name,
            iso(created),
            iso(created + timedelta(seconds=30)),
            30.0,
            raw // 4,
            raw,
            True,
            key_id,
            "17.2",
        )
        store.record(
            "backup", name, {"name": name, "entry": e.to_dict()}, when=created + timedelta(seconds=30)
        )
        names.append(name)
    for index, at, raw, seconds, ok, level in drills:
        record = drill(at, raw, seconds, ok, level)
        record.pop("at")
        store.record("verification", names[index], {"name": names[index], **record}, when=at)
    return names


def scenario(est: dict[str, Any], key: str) -> dict[str, Any]:
    return next(s for s in est["scenarios"] if s["scenario"] == key)


def test_the_estimate_scales_the_median_measured_throughput_by_the_latest_backups_size() -> None:
    b1 = entry("full_backup_app_20261120_020000", NOW - timedelta(days=4), 100 * MB)
    b2 = entry("full_backup_app_20261122_020000", NOW - timedelta(days=2), 200 * MB)
    b3 = entry("full_backup_app_20261123_020000", NOW - timedelta(days=1), 300 * MB)
    latest = entry("full_backup_app_20261124_020000", NOW - timedelta(hours=10), 1000 * MB)
    comp = entry("compliance_backup_app_20261124_030000", NOW - timedelta(hours=9), 5000 * MB, "compliance")
    cat = catalog(
        [b1, b2, b3, latest, comp],
        {
            b1.name: drill(NOW - timedelta(days=3), 100 * MB, 10),  # 10 MB/s
            b2.name: drill(NOW - timedelta(days=2), 200 * MB, 10),  # 20 MB/s
            b3.name: drill(NOW - timedelta(hours=6), 300 * MB, 10),  # 30 MB/s, newest
            latest.name: drill(NOW - timedelta(hours=5), 1, 1, ok=False),  # failed: not a measurement
            comp.name: {"level": "checksum", "ok": True},  # no test restore
        },
    )
    est = estimate(cat, NOW)
    assert est["estimated"] is True and "reason" not in est
    assert est["throughput_bytes_per_second"] == 20 * MB, "median of 10, 20 and 30 MB/s"
    restore = scenario(est, "restore-latest")
    assert restore["backup"] == latest.name, "the latest FULL backup, not the newer compliance one"
    assert restore["estimate_seconds"] == 50.0 == est["estimate_seconds"]  # 1000 MB at 20 MB/s
    assert "3 newest test restore" in est["basis"] and "6.0 h old" in est["basis"]
    assert est["measured_at"] == iso(NOW - timedelta(hours=6))
    assert est["measurement_age_seconds"] == 6 * 3600
    assert [m["name"] for m in est["measurements"]] == [b3.name, b2.name, b1.name]
    disaster = scenario(est, "disaster-new-server")
    assert disaster["estimate_seconds"] == PROVISION_SECONDS + 50.0 and "assumed" in disaster["how"]
    for key in ("pitr-now", "pitr-week-ago"):
        s = scenario(est, key)
        assert s["available"] is False and s["estimate_seconds"] is None
        assert "not available: no base backups/WAL archive" in s["how"]


def test_without_measurements_it_says_so_and_gives_a_labelled_default() -> None:
    latest = entry("full_backup_app_20261124_020000", NOW - timedelta(hours=10), 500 * MB)
    est = estimate(catalog([latest], {latest.name: {"level": "checksum", "ok": True}}), NOW)
    assert est["estimated"] is False and "no test restores" in est["reason"]
    assert "assumed default" in est["basis"] and est["measured_at"] is None
    assert scenario(est, "restore-latest")["estimate_seconds"] == 500 * MB / DEFAULT_THROUGHPUT
    empty = estimate(Catalog(), NOW)
    assert empty["estimated"] is False and scenario(empty, "restore-latest")["available"] is False
    assert scenario(empty, "disaster-new-server")["estimate_seconds"] is None


def test_recovery_time_command_reads_recorded_drills_from_the_bucket(
    coldcopy_env: dict[str, str], cli_clock: Callable[[datetime], None]
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    cli_clock(now)
    env = coldcopy_env
    names = prepare_bucket(
        env,
        backups=[("full", now - timedelta(days=2), 400 * MB), ("full", now - timedelta(days=1), 800 * MB)],
        drills=[(0, now - timedelta(hours=30), 400 * MB, 20.0, True, "restore")],
    )
    r = run_cli(env, "recovery-time", "--json")
    assert r.rc == 0, r.err
    est = json.loads(r.out)
    restore = scenario(est, "restore-latest")
    assert est["estimated"] is True and restore["backup"] == names[1]
    assert restore["estimate_seconds"] == 40.0  # 800 MB at the measured 20 MB/s
    assert est["measurement_age_seconds"] == 30 * 3600
    text = run_cli(env, "recovery-time")
    assert text.rc == 0 and "restore the latest full backup" in text.out and "40 s" in text.out
    assert "not available: no base backups/WAL archive" in text.out


def base(created: datetime, raw: int) -> CatalogEntry:
    return entry(f"base_backup_app_{created:%Y%m%d_%H%M%S}", created, raw, "base")


def window(start: datetime, end: datetime, gaps: tuple[WalGap, ...] = ()) -> WalHealth:
    return WalHealth(iso(end), "000000010000000000000042", gaps, iso(start), iso(end))


def test_pitr_scenarios_restore_the_base_backup_and_replay_the_wal_at_labelled_assumed_rates() -> None:
    old = base(NOW - timedelta(days=10), 500 * MB)
    new = base(NOW - timedelta(days=2), 1000 * MB)
    full = entry("full_backup_app_20261124_020000", NOW - timedelta(hours=10), 100 * MB)
    cat = catalog([old, new, full], {full.name: drill(NOW - timedelta(hours=6), 100 * MB, 10)})  # 10 MB/s
    wal = window(NOW - timedelta(days=10), NOW - timedelta(minutes=5))
    est = estimate(cat, NOW, wal)
    now_ = scenario(est, "pitr-now")
    assert now_["available"] is True and now_["backup"] == new.name, "the newest base backup before now"
    hours = (2 * 24 * 3600 - 5 * 60) / 3600  # from its stop to the window's end
    replay = round(hours * ASSUMED_WAL_BYTES_PER_HOUR / ASSUMED_REPLAY_RATE, 1)
    assert now_["restore_seconds"] == 100.0 and now_["replay_seconds"] == replay
    assert now_["estimate_seconds"] == round(100.0 + replay, 1)
    assert now_["target"] == wal.window_end and "ASSUMED" in now_["how"] and "not measured" in now_["how"]
    week = scenario(est, "pitr-week-ago")
    assert week["available"] is True and week["backup"] == old.name, "only the old base predates it"
    assert est["wal_window"] == {"start": wal.window_start, "end": wal.window_end, "gaps": 0}

    short = estimate(cat, NOW, window(NOW - timedelta(days=2), NOW - timedelta(minutes=5)))
    week = scenario(short, "pitr-week-ago")
    assert week["available"] is False and "outside the recoverable window" in week["how"]
    assert iso(NOW - timedelta(days=2)) in week["how"]
    assert scenario(short, "pitr-now")["available"] is True

    no_bases = estimate(catalog([full], {}), NOW, wal)
    assert "no base backup in the catalog" in scenario(no_bases, "pitr-now")["how"]
    no_window = estimate(cat, NOW, WalHealth(iso(NOW), "000000010000000000000042"))
    assert "gap-free" in scenario(no_window, "pitr-now")["how"]
    assert scenario(estimate(cat, NOW), "pitr-now")["how"] == PITR_UNAVAILABLE


def test_a_wal_rate_measured_from_the_archive_replaces_the_assumed_volume() -> None:
    new = base(NOW - timedelta(days=2), 1000 * MB)
    cat = catalog([new], {})
    end = NOW - timedelta(minutes=5)
    measured = replace(
        window(NOW - timedelta(days=3), end),
        wal_bytes_per_hour=200 * MB,
        wal_rate_basis="measured from the archive: 300 segments of 16 MB in 24.0 h",
    )
    p = scenario(estimate(cat, NOW, measured), "pitr-now")
    hours = (2 * 24 * 3600 - 5 * 60) / 3600
    assert p["wal_rate_measured"] is True and p["wal_bytes"] == round(hours * 200 * MB)
    assert p["replay_seconds"] == round(p["wal_bytes"] / ASSUMED_REPLAY_RATE, 1)
    assert "measured from the archive: 300 segments" in p["how"]
    assert "ASSUMED 1 GB of WAL per hour" not in p["how"]
    assumed = scenario(estimate(cat, NOW, window(NOW - timedelta(days=3), end)), "pitr-now")
    assert assumed["wal_rate_measured"] is False and "ASSUMED 1 GB of WAL per hour" in assumed["how"]


def test_recovery_time_command_and_api_read_the_stored_wal_status(
    coldcopy_env: dict[str, str], cli_clock: Callable[[datetime], None]
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    cli_clock(now)
    env = coldcopy_env
    names = prepare_bucket(env, backups=[("base", now - timedelta(days=1), 300 * MB)], drills=[])
    storage = open_store(load_settings(env, env_file=Path(os.devnull)))
    for seg in ("000000010000000000000001", "000000010000000000000002"):
        storage.put_bytes(f"wal/00000001/{seg}", b"x")
    refresh(storage)  # no base manifest with WAL positions: an archive but no recoverable window
    est = json.loads(run_cli(env, "recovery-time", "--json").out)
    assert "gap-free" in scenario(est, "pitr-now")["how"]
    assert est["wal_window"]["start"] is None
    # The summary the tick stores when a base backup's WAL is complete (same format as refresh writes).
    wal = window(now - timedelta(days=1), now - timedelta(minutes=2))
    storage.put_json(STATE_KEY, {"wal": asdict(wal)})
    r = run_cli(env, "recovery-time", "--json")
    assert r.rc == 0, r.err
    pitr = scenario(json.loads(r.out), "pitr-now")
    assert pitr["available"] is True and pitr["backup"] == names[0]
    assert "outside the recoverable window" in scenario(json.loads(r.out), "pitr-week-ago")["how"]
    view = estimate(CatalogStore(storage).read(), now, load(storage))
    assert scenario(view, "pitr-now")["backup"] == names[0]
    text = run_cli(env, "recovery-time")
    assert text.rc == 0 and "point-in-time recovery to now" in text.out and "ASSUMED" in text.out
