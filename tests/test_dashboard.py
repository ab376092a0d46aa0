"""The dashboard in headless Chromium against the local host with real backups, and /metrics through
the same host checked by promtool.

Chromium is driven from the command line: ``--dump-dom`` after the page's own requests settle
(``--virtual-time-budget``) gives the rendered DOM, ``--screenshot`` the picture (kept in
test-artifacts/), and ``--enable-logging=stderr`` prints every console message as a ``CONSOLE`` line:
the page logs nothing on success, so any such line is a failure.  The token reaches the page the
way an operator's bookmark can carry it: a one-time ``#token=…`` fragment (never sent to a
server) that the page moves into sessionStorage and strips from the address.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests

from cli_helpers import run_cli
from coldcopy.config import load_settings
from coldcopy.core.changes import STATUS_KEY, ChangesHealth, torn_down
from coldcopy.functions import web
from coldcopy.localstack.functions_host import LocalHost, make_server
from coldcopy.storage.s3 import open_store
from test_metrics import assert_clean

TOKEN = "dashboard-test-token-0123456789"


@dataclass
class Host:
    server: LocalHost
    url: str
    backups: list[str]
    env: dict[str, str]


@pytest.fixture
def host(coldcopy_env: dict[str, str]) -> Iterator[Host]:
    env = {
        **coldcopy_env,
        "MONITOR_TOKEN": TOKEN,
        "COLDCOPY_LAUNCHER": "none",
        "COLDCOPY_ENV_FILE": os.devnull,
    }
    names = []
    for _ in range(2):
        r = run_cli(env, "backup", "--json")
        assert r.rc == 0, r.err
        names.append(json.loads(r.out)["name"])
    v = run_cli(env, "verify", names[0])
    assert v.rc == 0, v.err
    server = make_server(load_settings(env, env_file=Path(os.devnull)), port=0)
    # A short poll: shutdown() waits for it, after every test.
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.02}, name="coldcopy-serve", daemon=True
    )
    thread.start()
    try:
        yield Host(server, server.url, names, env)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
        web.use_settings(None)


def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.fail("chromium is not installed: run scripts/bootstrap.sh --dev (Debian's chromium package)")
    return exe


def browse(url: str, profile: Path, *extra: str, size: str = "1280,1500") -> tuple[str, list[str]]:
    """The DOM after the page settled, and the console lines it printed."""
    r = subprocess.run(
        [
            chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--no-first-run",
            "--disable-dev-shm-usage",
            f"--user-data-dir={profile}",
            f"--window-size={size}",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=20000",
            *extra,
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    console = [line for line in r.stderr.splitlines() if ":CONSOLE" in line]
    return r.stdout, console


def test_the_dashboard_renders_table_and_charts_without_console_errors(
    host: Host, tmp_path: Path, artifacts_dir: Path
) -> None:
    page = requests.get(host.url + "/", timeout=10)  # no token needed for the page itself
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page.text), (
        "the page must fetch nothing outside"
    )

    dom, console = browse(f"{host.url}/#token={TOKEN}", tmp_path / "p1", "--dump-dom")
    assert console == [], console
    assert 'data-state="ready"' in dom, dom[-3000:]
    rows = re.findall(r"<tr><td>((?:full|compliance)_backup_[^<]+)</td>", dom)
    assert sorted(rows) == sorted(host.backups)
    assert "passed" in dom  # the verified backup's column
    for chart in ("chart-size", "chart-duration"):
        svg = re.search(rf'<svg id="{chart}".*?</svg>', dom, re.S)
        assert svg is not None and svg.group(0).count("<circle") == 2 and "<polyline" in svg.group(0), chart
    assert TOKEN not in dom  # stripped from the address, never written into the page
    # The change archive is optional: never set up here, its panel says so (and nothing is wrong).
    assert re.search(r'<div id="changes-state" class="big">not set up</div>', dom), dom[-3000:]
    assert re.search(r'<table id="changes" hidden=""', dom)

    # Deployed, the page is the `dashboard` function and reads its sibling functions.
    dom, console = browse(
        f"{host.url}/api/v1/web/fn-test/monitor/dashboard#token={TOKEN}", tmp_path / "p2", "--dump-dom"
    )
    assert console == [] and 'data-state="ready"' in dom
    assert sorted(re.findall(r"<tr><td>((?:full|compliance)_backup_[^<]+)</td>", dom)) == sorted(host.backups)

    shots = (
        ("dashboard-wide.png", "1600,1400"),
        ("dashboard-phone.png", "390,1600"),
        ("dashboard-wall.png", "2560,1440"),
    )
    for name, size in shots:
        shot = artifacts_dir / name
        _, console = browse(f"{host.url}/#token={TOKEN}", tmp_path / name, f"--screenshot={shot}", size=size)
        assert console == [], console
        assert shot.stat().st_size > 5000


def test_without_a_token_the_page_asks_for_one(host: Host, tmp_path: Path) -> None:
    dom, console = browse(f"{host.url}/", tmp_path / "p", "--dump-dom")
    assert console == [] and 'data-state="login"' in dom
    assert re.search(r'<form id="login"[^>]*>', dom) and 'hidden=""' not in re.search(
        r'<form id="login"[^>]*>', dom
    ).group(0)  # type: ignore[union-attr]
    dom, console = browse(f"{host.url}/#token=wrong-token", tmp_path / "q", "--dump-dom")
    assert 'data-state="login"' in dom and "The token was refused." in dom


def test_metrics_through_the_local_host_pass_promtool(host: Host) -> None:
    r = requests.get(host.url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert_clean(r.text)
    db = host.env["DB_NAME"]
    assert f'coldcopy_backups_total{{database="{db}",kind="full"}} 2' in r.text.splitlines()
    assert 'coldcopy_alerts_active{severity="critical"} 0' in r.text.splitlines()
    assert "coldcopy_last_successful_verification_timestamp_seconds " in r.text


CLOCK = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def test_the_dashboard_shows_the_change_archive_and_its_teardown(host: Host, tmp_path: Path) -> None:
    settings = load_settings(host.env, env_file=Path(os.devnull))
    web.use_settings(settings, lambda: CLOCK)  # the server's clock: the rules' ages are fixed
    storage = open_store(settings)
    failing = ChangesHealth(
        "coldcopy_changes_dash",
        "2026-12-02T11:59:30Z",
        lag_bytes=123_456_789,
        max_keep_bytes=4 << 30,
        last_drain_at="2026-12-02T11:58:00Z",
        newest_commit_at="2026-12-02T11:57:59Z",
        window_start="2026-12-02T03:00:00Z",
        window_end="2026-12-02T11:58:00Z",
        left_out=["public.loose"],
        last_error="could not connect to the database",
        last_error_at="2026-12-02T11:59:30Z",
        failing_since="2026-12-02T11:59:00Z",
        consecutive_failures=3,
    )
    storage.put_json(STATUS_KEY, failing.to_dict())  # as the drain stores it (no tick yet: read as is)

    dom, console = browse(f"{host.url}/#token={TOKEN}", tmp_path / "p", "--dump-dom")

    assert console == [] and 'data-state="ready"' in dom, dom[-3000:]
    assert '<div id="changes-state" class="big bad">failing</div>' in dom
    cells = dict(re.findall(r'<td id="(ch-[a-z-]+)"[^>]*>([^<]*)</td>', dom))
    assert cells["ch-slot"] == "coldcopy_changes_dash"
    assert cells["ch-lag"] == "123.5 MB of 4.3 GB (max_slot_wal_keep_size)"
    assert cells["ch-commit"] == "2026-12-02 11:57:59"
    assert cells["ch-window"] == "2026-12-02 03:00:00 → 2026-12-02 11:58:00"
    assert cells["ch-left-out"] == "public.loose"
    assert cells["ch-error"] == "could not connect to the database (3 failed in a row)"
    assert "draining the change archive fails since 2026-12-02T11:59:00Z" in dom  # the alert, listed

    storage.put_json(STATUS_KEY, torn_down("coldcopy_changes_dash", "2026-12-02T11:30:00Z").to_dict())
    dom, console = browse(f"{host.url}/#token={TOKEN}", tmp_path / "q", "--dump-dom")

    assert console == [] and '<div id="changes-state" class="big">not set up</div>' in dom
    assert "torn down at 2026-12-02 11:30:00 (coldcopy changes teardown)" in dom
    assert "change archive fails" not in dom and "replication slot" not in dom  # no alert after a teardown
