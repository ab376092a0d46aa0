"""Disaster-recovery plans generated from a prepared bucket: the right backup, the right commands."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from cli_helpers import run_cli
from coldcopy.config import load_settings
from coldcopy.core.alerts import PLANS
from coldcopy.core.archive_report import WalGap
from coldcopy.core.catalog import Catalog
from coldcopy.core.manifest import CatalogEntry
from coldcopy.core.plan_names import ALIASES
from coldcopy.core.runbooks import Facts, build_plan
from coldcopy.core.times import iso
from coldcopy.storage.s3 import open_store
from coldcopy.wal.monitor import STATE_KEY
from test_recovery_time import MB, base, catalog, drill, entry, prepare_bucket, window

NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture(autouse=True)
def _commands_take_now_as_now(cli_clock: Callable[[datetime], None]) -> None:
    cli_clock(NOW)  # the plans' windows are measured from NOW, however long the suite has run


@pytest.fixture
def prepared(coldcopy_env: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """M: compliance, 40 days old · A: 10 days · B: 3 days (checksum-verified) · C: 1 day (test-restored,
    the measured drill: 100 MB in 10 s) · D: 2 hours, its test restore FAILED."""
    names = prepare_bucket(
        coldcopy_env,
        backups=[
            ("compliance", NOW - timedelta(days=40), 50 * MB),
            ("full", NOW - timedelta(days=10), 90 * MB),
            ("full", NOW - timedelta(days=3), 100 * MB),
            ("full", NOW - timedelta(days=1), 100 * MB),
            ("full", NOW - timedelta(hours=2), 120 * MB),
        ],
        drills=[
            (2, NOW - timedelta(days=2), 100 * MB, 10.0, True, "checksum"),
            (3, NOW - timedelta(hours=20), 100 * MB, 10.0, True, "restore"),
            (4, NOW - timedelta(hours=1), 120 * MB, 10.0, False, "restore"),
        ],
    )
    return coldcopy_env, names


def plan(env: dict[str, str], *args: str) -> tuple[int, dict[str, Any]]:
    r = run_cli(env, "plan", *args, "--json")
    assert r.rc in (0, 1), r.err
    return r.rc, json.loads(r.out)


def test_corruption_restores_the_newest_verified_backup_beside_the_live_database(
    prepared: tuple[dict[str, str], list[str]],
) -> None:
    env, (m, a, b, c, d) = prepared
    rc, p = plan(env, "corruption")
    db = env["DB_NAME"]
    assert rc == 0 and p["ok"] is True and p["backup"]["name"] == c, "D's test restore failed; C passed"
    assert p["commands"][0] == f"coldcopy verify {c} --level restore"
    assert p["commands"][1].startswith(f"coldcopy restore --backup-name {c} --target-db {db}_restored_")
    assert p["commands"][-1] == f"coldcopy restore --backup-name {c}"
    assert p["estimate"]["measured"] is True and p["estimate"]["seconds"] == 10.0  # 100 MB at 10 MB/s
    assert 23.9 * 3600 <= p["data_loss"]["seconds"] <= 24.1 * 3600 + 60
    assert any("WAL archive" in r for r in p["risks"]) and p["first"]
    text = run_cli(env, "plan", "corruption")
    assert (
        text.rc == 0 and f"coldcopy restore --backup-name {c}" in text.out and "data-loss window" in text.out
    )


def test_deletion_uses_the_newest_backup_taken_before_the_given_time(
    prepared: tuple[dict[str, str], list[str]],
) -> None:
    env, (m, a, b, c, d) = prepared
    before = NOW - timedelta(days=2)
    rc, p = plan(env, "deletion", "--before", before.strftime("%Y-%m-%dT%H:%M:%SZ"))
    assert rc == 0 and p["backup"]["name"] == b
    assert p["commands"][1].startswith(
        f"coldcopy restore --backup-name {b} --target-db {env['DB_NAME']}_before_"
    )
    assert any(cmd.startswith("pg_dump --data-only --table=<table>") for cmd in p["commands"])
    assert round(p["data_loss"]["seconds"] / 3600) == 24 and "cannot be recovered" in p["data_loss"]["text"]
    assert any("was verified at level checksum" in r for r in p["risks"])
    assert "not available: no base backups/WAL archive" in " ".join(p["first"])
    rc, p = plan(env, "deletion")
    assert rc == 1 and any("--before" in x for x in p["blockers"])
    assert run_cli(env, "plan", "deletion", "--before", "yesterday").rc == 2


def test_disaster_adds_provisioning_and_names_the_new_server_steps(
    prepared: tuple[dict[str, str], list[str]],
) -> None:
    env, (m, a, b, c, d) = prepared
    rc, p = plan(env, "disaster")
    assert rc == 0 and p["backup"]["name"] == c
    assert p["commands"] == [
        f"coldcopy verify {c} --level restore",
        f"coldcopy restore --backup-name {c}",
        "coldcopy backup",
        "coldcopy status",
    ]
    assert p["estimate"]["seconds"] > 1800 and "provision" in p["estimate"]["basis"]
    assert any("roles" in step for step in p["first"])


def test_compliance_finds_the_backup_covering_a_date_within_retention(
    prepared: tuple[dict[str, str], list[str]],
) -> None:
    env, (m, a, b, c, d) = prepared
    day = (NOW - timedelta(days=35)).date()
    rc, p = plan(env, "compliance", "--date", day.isoformat())
    assert rc == 0 and p["backup"]["name"] == m and p["backup"]["kind"] == "compliance"
    side = f"compliance_{day.strftime('%Y%m%d')}"
    assert f"coldcopy restore --backup-name {m} --target-db {side}" in p["commands"]
    assert p["after"][0].startswith("the erasure ledger is empty")
    rc, p = plan(env, "compliance", "--date", (NOW - timedelta(days=5)).date().isoformat())
    assert rc == 0 and p["backup"]["name"] == a
    rc, p = plan(env, "compliance", "--date", (NOW - timedelta(days=400)).date().isoformat())
    assert rc == 1 and any("outside the compliance retention of 365 days" in x for x in p["blockers"])


def test_every_plan_checks_the_erasure_ledger_was_re_applied() -> None:
    cat, b, full = _pitr_catalog()
    for scenario in ("corruption", "deletion", "disaster", "compliance"):
        p = build_plan(scenario, cat, Facts("app", None, erasures=3), NOW, before=NOW, on_date=NOW.date())
        assert "erasures re-applied before use: 3" in p.after[0] and "subjects remaining: 0" in p.after[0]


def test_a_missing_or_different_key_makes_the_plan_fail(prepared: tuple[dict[str, str], list[str]]) -> None:
    env, names = prepared
    other = {**env, "BACKUP_ENCRYPTION_KEY": secrets.token_urlsafe(32)}
    rc, p = plan(other, "disaster")
    assert rc == 1 and any("key id" in x for x in p["blockers"])
    unset = {k: v for k, v in env.items() if k != "BACKUP_ENCRYPTION_KEY"}
    rc, p = plan(unset, "disaster")
    assert rc == 1 and any("BACKUP_ENCRYPTION_KEY is not set" in x for x in p["blockers"])
    assert "THIS PLAN CANNOT WORK" in run_cli(unset, "plan", "disaster").out


def test_an_empty_bucket_has_no_plan_that_works(coldcopy_env: dict[str, str]) -> None:
    rc, p = plan(coldcopy_env, "disaster")
    assert rc == 1 and p["backup"] is None and "no backup fits" in p["blockers"][0]


def test_every_alert_plan_name_maps_onto_a_runbook() -> None:
    named = {cmd.removeprefix("coldcopy plan ") for cmd in PLANS.values() if cmd.startswith("coldcopy plan ")}
    assert len(named) >= 8
    assert named <= set(ALIASES), named - set(ALIASES)
    facts = Facts("app", None)
    for alias, (runbook, hint) in ALIASES.items():
        p = build_plan(alias, Catalog(), facts, NOW)
        assert p.scenario == runbook and p.alert == alias and p.first[0] == hint
    with pytest.raises(ValueError):
        build_plan("nonsense", Catalog(), facts, NOW)


def _pitr_catalog() -> tuple[Catalog, CatalogEntry, CatalogEntry]:
    b = base(NOW - timedelta(days=3), 400 * MB)
    day_ago = NOW - timedelta(days=1)
    full = entry(f"full_backup_app_{day_ago:%Y%m%d_%H%M%S}", day_ago, 100 * MB)
    cat = catalog([b, full], {full.name: drill(NOW - timedelta(hours=20), 100 * MB, 10)})
    return cat, b, full


def test_deletion_inside_the_wal_window_is_undone_by_pitr_to_just_before_it() -> None:
    cat, b, full = _pitr_catalog()
    facts = Facts("app", "k")
    wal = window(NOW - timedelta(days=3), NOW - timedelta(minutes=3))
    t = NOW - timedelta(hours=5)
    p = build_plan("deletion", cat, facts, NOW, before=t, wal=wal)
    assert p.ok, p.blockers
    assert p.backup is not None and p.backup["name"] == b.name, "the base backup, not the newer dump"
    target = iso(t - timedelta(seconds=1))
    pitr = next(c for c in p.commands if c.startswith("coldcopy pitr"))
    assert f"--target-time {target} " in pitr and "--target-dir ./coldcopy-pitr-" in pitr
    assert "--port 5433" in pitr and f"--backup {b.name}" in pitr
    assert p.commands[0] == "coldcopy wal-status"
    assert any("marker queries" in a for a in p.after) and any("wal-status" in a for a in p.after)
    assert p.data_loss["seconds"] == 0 and p.data_loss["text"].startswith(f"none before {iso(t)}")
    assert "re-applied by hand" in p.data_loss["text"]
    assert "ASSUMED" in p.estimate["basis"] and p.estimate["seconds"] > 40.0  # 400 MB at 10 MB/s + replay
    assert not any("point-in-time recovery is not available" in r for r in p.risks)

    # A gap after the base backup: the window ends before the deletion, so PITR cannot reach it.
    gap = WalGap("000000010000000000000010", "000000010000000000000013", iso(NOW))
    gapped = window(NOW - timedelta(days=3), NOW - timedelta(days=2), (gap,))
    p = build_plan("deletion", cat, facts, NOW, before=t, wal=gapped)
    assert not p.ok
    assert any("WAL gap" in x and gap.after in x and gap.before in x and full.name in x for x in p.blockers)

    # Before the window (or without one): today's dump plan.
    p = build_plan("deletion", cat, facts, NOW, before=NOW - timedelta(days=4), wal=wal)
    assert "outside the WAL archive's recoverable window" in p.first[1]
    assert not any(c.startswith("coldcopy pitr") for c in p.commands)
    p = build_plan("deletion", cat, facts, NOW, before=t)
    assert p.backup is not None and p.backup["name"] == full.name
    assert any("point-in-time recovery is not available" in r for r in p.risks)


def test_corruption_and_disaster_name_pitr_to_now_when_the_window_reaches_now() -> None:
    cat, b, full = _pitr_catalog()
    facts = Facts("app", "k")
    fresh = window(NOW - timedelta(days=3), NOW - timedelta(minutes=3))
    for scenario in ("corruption", "disaster"):
        p = build_plan(scenario, cat, facts, NOW, wal=fresh)
        hint = [x for x in p.first if x.startswith("Smallest data loss: point-in-time recovery")]
        assert hint and "coldcopy pitr --target-time" in hint[0] and b.name in hint[0], p.first
        assert p.backup is not None and p.backup["name"] == full.name  # the dump restore stays below
        assert not any("point-in-time recovery is not available" in r for r in p.risks)
    stale = window(NOW - timedelta(days=3), NOW - timedelta(hours=5))
    p = build_plan("disaster", cat, facts, NOW, wal=stale)
    assert not any(x.startswith("Smallest data loss") for x in p.first)
    assert any("would not reach now" in r for r in p.risks)
    p = build_plan("disaster", cat, facts, NOW)
    assert not any(x.startswith("Smallest data loss") for x in p.first)


def test_plan_command_reads_the_stored_wal_status(prepared: tuple[dict[str, str], list[str]]) -> None:
    env, names = prepared
    storage = open_store(load_settings(env, env_file=Path(os.devnull)))
    base_name = prepare_bucket(env, backups=[("base", NOW - timedelta(days=4), 200 * MB)], drills=[])[0]
    wal = window(NOW - timedelta(days=4), NOW - timedelta(minutes=1))
    storage.put_json(STATE_KEY, {"wal": asdict(wal)})
    t = (NOW - timedelta(hours=6)).replace(second=0)
    rc, p = plan(env, "deletion", "--before", iso(t))
    assert rc == 0 and p["ok"], p["blockers"]
    assert p["backup"]["name"] == base_name
    assert any(f"--target-time {iso(t - timedelta(seconds=1))}" in c for c in p["commands"])
    text = run_cli(env, "plan", "deletion", "--before", iso(t))
    assert "coldcopy pitr --target-time" in text.out and "data-loss window: none before" in text.out
