"""Disaster-recovery plans generated from a prepared bucket: the right backup, the right commands."""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from cli_helpers import run_cli
from coldcopy.alerts import PLANS
from coldcopy.catalog import Catalog
from coldcopy.plans import ALIASES, Facts, build_plan
from test_recovery_time import MB, prepare_bucket

NOW = datetime.now(UTC).replace(microsecond=0)


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
    rc, p = plan(env, "compliance", "--date", (NOW - timedelta(days=5)).date().isoformat())
    assert rc == 0 and p["backup"]["name"] == a
    rc, p = plan(env, "compliance", "--date", (NOW - timedelta(days=400)).date().isoformat())
    assert rc == 1 and any("outside the compliance retention of 365 days" in x for x in p["blockers"])


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
