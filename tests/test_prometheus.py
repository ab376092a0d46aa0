"""A real Prometheus server (Debian's ``prometheus`` package) scrapes a real ``coldcopy serve``
process: the scrape succeeds, and every metric the seed's users chart has a stored series from
the first scrape (``coldcopy_backups_failed`` 0 while nothing failed, not "no data")."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from cli_helpers import spawn_serve
from coldcopy.alerting.notify import check_alerts
from coldcopy.config import load_settings
from coldcopy.core.catalog import Catalog
from coldcopy.core.manifest import CatalogEntry
from coldcopy.core.times import iso
from coldcopy.localstack.s3server import S3Server
from coldcopy.loopback import free_port, wait_until
from coldcopy.storage.catalog_store import CatalogStore
from coldcopy.storage.s3 import open_store

REPO = Path(__file__).resolve().parents[1]
TOKEN = "monitor-token-for-prometheus"
T0 = datetime(2026, 11, 20, 2, 0, tzinfo=UTC)
# The names the seed exposed, which users' dashboards query (histograms and summaries are stored
# by Prometheus under their series names).
SEED_SERIES = (
    "coldcopy_backups_total",
    "coldcopy_backups_success",
    "coldcopy_backups_failed",
    "coldcopy_backup_size_bytes",
    "coldcopy_backup_duration_seconds_count",
    "coldcopy_last_backup_timestamp",
    "coldcopy_backup_count",
    "coldcopy_total_backup_size_gb",
)


def get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def answers(port: int, path: str) -> bool:
    try:
        return get(port, path)[0] == 200
    except OSError:
        return False


def entry(when: datetime, kind: str = "full") -> CatalogEntry:
    return CatalogEntry(
        name=f"{kind}_backup_app_{when:%Y%m%d_%H%M%S}",
        kind=kind,
        database="app",
        created_at=iso(when),
        finished_at=iso(when + timedelta(seconds=80)),
        duration_seconds=80.0,
        size_bytes=5_000_000,
        raw_size_bytes=15_000_000,
        encrypted=True,
        key_id="k1",
        server_version="15.18",
    )


@pytest.fixture
def serve(s3_server: S3Server, bucket: str, tmp_path: Path) -> Iterator[int]:
    """`coldcopy serve` on a bucket with four backups, none failed, and the tick's state."""
    env = {
        **s3_server.spaces_env(bucket),
        "MONITOR_TOKEN": TOKEN,
        "COLDCOPY_LAUNCHER": "none",
        "COLDCOPY_ENV_FILE": os.devnull,
        "COLDCOPY_METRICS_LEGACY_GB": "true",
        "HOME": os.environ.get("HOME", "/root"),
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", os.defpath)]),
    }
    settings = load_settings(env, env_file=Path(os.devnull))
    storage = open_store(settings)
    backups = [entry(T0 + timedelta(days=i)) for i in range(3)] + [entry(T0, "compliance")]
    CatalogStore(storage).save(Catalog(backups={e.name: e for e in backups}))
    check_alerts(settings, storage, T0 + timedelta(days=3))  # the tick's state (no email configured)
    port = free_port()
    log = tmp_path / "serve.log"
    proc = spawn_serve(env, port, log, REPO)
    try:
        assert wait_until(lambda: answers(port, "/health"), 30), log.read_text()
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def prometheus(serve: int, tmp_path: Path) -> Iterator[int]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail(
            "prometheus is not installed: run scripts/bootstrap.sh --dev (Debian's prometheus package)"
        )
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n"
        "  scrape_interval: 1s\n"
        "  scrape_timeout: 1s\n"
        "scrape_configs:\n"
        "  - job_name: coldcopy\n"
        "    metrics_path: /metrics\n"
        "    authorization:\n"
        "      type: Bearer\n"
        f"      credentials: {TOKEN}\n"
        "    static_configs:\n"
        f"      - targets: ['127.0.0.1:{serve}']\n"
    )
    port = free_port()
    log = tmp_path / "prometheus.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        assert wait_until(lambda: answers(port, "/-/ready"), 60, interval=0.1), log.read_text()
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def api(port: int, path: str) -> Any:
    status, body = get(port, path)
    assert status == 200, body[:500]
    answer = json.loads(body)
    assert answer["status"] == "success", answer
    return answer["data"]


def query(port: int, promql: str) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = api(port, "/api/v1/query?query=" + quote(promql))["result"]
    return result


def stored_names(port: int) -> set[str]:
    return {r["metric"]["__name__"] for r in query(port, 'count by (__name__) ({__name__=~"coldcopy_.+"})')}


def test_prometheus_scrapes_coldcopy_serve_and_stores_every_metric(serve: int, prometheus: int) -> None:
    def scraped() -> bool:
        targets = api(prometheus, "/api/v1/targets")["activeTargets"]
        return bool(targets) and targets[0]["health"] == "up"

    assert wait_until(scraped, 60, interval=0.2), api(prometheus, "/api/v1/targets")
    target = api(prometheus, "/api/v1/targets")["activeTargets"][0]
    assert target["lastError"] == "" and target["labels"]["instance"] == f"127.0.0.1:{serve}"

    # Every series name the scrape offers (what coldcopy serve answers right now).
    status, body = get(serve, "/metrics", {"Authorization": f"Bearer {TOKEN}"})
    assert status == 200
    offered = {
        re.split(r"[{ ]", line, maxsplit=1)[0]
        for line in body.decode().splitlines()
        if not line.startswith("#")
    }
    assert set(SEED_SERIES) <= offered
    # One successful scrape stores all of them: poll with a deadline for the query to see it.
    assert wait_until(lambda: offered <= stored_names(prometheus), 30, interval=0.2), offered - stored_names(
        prometheus
    )
    for name in SEED_SERIES:
        assert query(prometheus, name), name
    failed = query(prometheus, "coldcopy_backups_failed")
    assert {(r["metric"]["kind"], r["value"][1]) for r in failed} == {("full", "0"), ("compliance", "0")}
    count = query(prometheus, 'coldcopy_backup_count{kind="full"}')
    assert [r["value"][1] for r in count] == ["3"]
    assert query(prometheus, "coldcopy_monitor_state_timestamp_seconds")[0]["value"][1] == str(
        int((T0 + timedelta(days=3)).timestamp())
    )
