"""One view, one answer: `coldcopy status` and ``GET /status`` agree, because both are
``core.views.status_view`` of the same catalog and WAL archive; settings come from ``--env-file``."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from cli_helpers import run_cli, web_get
from coldcopy.config import Settings, load_settings
from coldcopy.core.times import Clock, utc_now
from coldcopy.functions.tick import tick
from coldcopy.storage.s3 import open_store

TOKEN = "views-test-token"
LATER = timedelta(hours=2)  # the newest WAL segment is this old when the status is asked for


def settings_of(env: dict[str, str]) -> Settings:
    return load_settings(env, env_file=Path(os.devnull))


def api_status(s: Settings, clock: Clock) -> dict[str, Any]:
    return web_get(s, "status", TOKEN, clock)


@pytest.fixture
def archived(coldcopy_env: dict[str, str]) -> Iterator[dict[str, str]]:
    """A bucket whose WAL archive holds three segments, stored now, and a tick's summary of it."""
    env = {**coldcopy_env, "MONITOR_TOKEN": TOKEN, "COLDCOPY_LAUNCHER": "none"}
    s = settings_of(env)
    storage = open_store(s)
    for n in (1, 2, 3):
        storage.put_bytes(f"wal/00000001/0000000100000000000000{n:02X}", b"segment")
    tick(s, utc_now(), storage=storage, wake_runner=False)  # stores the archive's health for the API
    yield env


def test_with_wal_archiving_stalled_the_cli_and_the_api_agree(
    archived: dict[str, str], cli_clock: Callable[[datetime], None]
) -> None:
    later = utc_now() + LATER
    cli_clock(later)
    r = run_cli(archived, "status", "--json")
    cli = json.loads(r.out)
    api = api_status(settings_of(archived), lambda: later)
    assert r.rc == 1 and cli["ok"] is False and api["ok"] is False
    assert any("no WAL archived since" in p for p in cli["problems"])
    assert api["problems"] == cli["problems"]
    assert api["wal"]["last_segment"] == cli["wal"]["last_segment"] == "000000010000000000000003"
    # "state": the age of the tick's stored state the API answered from (the CLI computes live).
    assert api["state"]["source"] == "tick" and "state" not in cli
    drop = ("checked_at", "last_backup_age_seconds", "state")
    assert {k: v for k, v in api.items() if k not in (*drop, "wal")} == {
        k: v for k, v in cli.items() if k not in (*drop, "wal")
    }


def test_status_reads_the_wal_thresholds_from_the_env_file_it_was_given(
    archived: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    cli_clock: Callable[[datetime], None],
) -> None:
    cli_clock(utc_now() + LATER)
    monkeypatch.chdir(tmp_path)
    Path(".env").write_text("ALERT_WAL_MAX_AGE_MINUTES=1\n")  # ./.env: 2 hours is far too old
    patient = tmp_path / "patient.env"
    patient.write_text("ALERT_WAL_MAX_AGE_MINUTES=1000\n")  # --env-file: 2 hours is fine
    env = {k: v for k, v in archived.items() if k != "COLDCOPY_ENV_FILE"}
    stale = json.loads(run_cli({**env, "COLDCOPY_ENV_FILE": ".env"}, "status", "--json").out)
    assert any("no WAL archived since" in p for p in stale["problems"])
    # The environment still names ./.env, but --env-file wins for every setting, thresholds included.
    fine = json.loads(
        run_cli({**env, "COLDCOPY_ENV_FILE": ".env"}, "--env-file", str(patient), "status", "--json").out
    )
    assert not any("WAL" in p for p in fine["problems"]), fine["problems"]
