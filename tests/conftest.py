"""Shared fixtures: a throwaway PostgreSQL cluster, moto's S3 server and demo data, all on loopback.

Session-wide: ``pg`` (one cluster), ``s3_server``, ``demo_db`` (demo data at a tiny scale; read
it, never change it; copy it with ``CREATE DATABASE … TEMPLATE`` if you must).  Per test:
``fresh_db`` (an empty database), ``bucket`` (an empty bucket), ``coldcopy_env`` (the settings
for running coldcopy against those), ``api_env`` (the same, for the HTTP API: MONITOR_TOKEN is
``API_TOKEN``) and ``artifacts_dir``.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import sys
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from coldcopy.cli import common as cli_common
from coldcopy.localstack.demodata import load_demo_data
from coldcopy.localstack.s3server import S3Server
from coldcopy.postgres.cluster import PgCluster

API_TOKEN = secrets.token_urlsafe(24)  # the monitor's bearer token in ``api_env``

if TYPE_CHECKING:
    from mypy_boto3_s3.type_defs import ObjectIdentifierTypeDef

REPO = Path(__file__).resolve().parents[1]
DEMO_SCALE = 0.002  # about 2 MB of rows plus the fixed large values; loads in well under a second


def pytest_configure(config: pytest.Config) -> None:
    # `timeout` and CI runners stop pytest with SIGTERM, which skips atexit: the clusters and the S3
    # server would outlive the run.  As an interrupt, fixtures are torn down and finalizers run.
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _unique(prefix: str) -> str:
    # Letters and digits only, so the name fits any grammar (database names end up in backup names).
    return f"{prefix}{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    with S3Server() as server:
        yield server


@pytest.fixture
def bucket(s3_server: S3Server) -> Iterator[str]:
    """A new, empty bucket; emptied and deleted afterwards so moto's memory stays small."""
    name = _unique("test-")
    s3_server.create_bucket(name)
    yield name
    _delete_bucket(s3_server, name)


@pytest.fixture(scope="session")
def pg() -> Iterator[PgCluster]:
    with PgCluster() as cluster:
        yield cluster


@pytest.fixture
def fresh_db(pg: PgCluster) -> Iterator[str]:
    """A new, empty database in ``pg``; dropped afterwards (disconnecting whoever is still in it)."""
    name = _unique("db")
    pg.create_database(name)
    yield name
    pg.drop_database(name)


@pytest.fixture(scope="session")
def demo_db(pg: PgCluster) -> str:
    """A database of demo data (``load_demo_data`` at DEMO_SCALE). Tests must not modify it."""
    name = "demo"
    pg.create_database(name)
    conn = pg.connect(name)
    try:
        load_demo_data(conn, scale=DEMO_SCALE)
    finally:
        conn.close()
    return name


@pytest.fixture
def coldcopy_db(demo_db: str) -> str:
    """The database ``coldcopy_env`` points at; override this fixture in a module to change it."""
    return demo_db


@pytest.fixture
def coldcopy_env(pg: PgCluster, s3_server: S3Server, bucket: str, coldcopy_db: str) -> dict[str, str]:
    """Environment for running coldcopy against ``pg`` and ``bucket``.

    A fresh dict, so nothing from the developer's environment (AWS_*, PG*, DO_*…) leaks in; only
    PATH (with this interpreter's folder first), HOME and LANG are carried over.
    """
    env = {
        "DB_HOST": pg.host,
        "DB_PORT": str(pg.port),
        "DB_NAME": coldcopy_db,
        "DB_USER": pg.user,
        "DB_PASSWORD": pg.password,
        "DB_SSLMODE": "disable",
        **s3_server.spaces_env(bucket),
        "BACKUP_ENCRYPTION_KEY": secrets.token_urlsafe(32),
        "HOME": os.environ.get("HOME", "/root"),
        "LANG": os.environ.get("LANG", "C.UTF-8"),
    }
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", os.defpath)])
    return env


@pytest.fixture
def artifacts_dir(request: pytest.FixtureRequest) -> Path:
    """An empty folder test-artifacts/<module>.<test> in the repository (gitignored) that outlives the run."""
    module = Path(str(request.node.path)).stem
    path = REPO / "test-artifacts" / re.sub(r"[^A-Za-z0-9_.\[\]-]+", "_", f"{module}.{request.node.name}")
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def _delete_bucket(server: S3Server, name: str) -> None:
    client = server.client()
    # Best effort: a test may have left locked object versions, which is fine for a throwaway server.
    with contextlib.suppress(Exception):
        for page in client.get_paginator("list_object_versions").paginate(Bucket=name):
            objects: list[ObjectIdentifierTypeDef] = [
                {"Key": v["Key"], "VersionId": v["VersionId"]}
                for v in [*page.get("Versions", []), *page.get("DeleteMarkers", [])]
            ]
            if objects:
                client.delete_objects(
                    Bucket=name, Delete={"Objects": objects, "Quiet": True}, BypassGovernanceRetention=True
                )
        for upload in client.list_multipart_uploads(Bucket=name).get("Uploads", []):
            client.abort_multipart_upload(Bucket=name, Key=upload["Key"], UploadId=upload["UploadId"])
        client.delete_bucket(Bucket=name)


@pytest.fixture
def api_env(coldcopy_env: dict[str, str]) -> dict[str, str]:
    """``coldcopy_env`` for the HTTP API: a monitor token, no job launcher."""
    return {
        **coldcopy_env,
        "MONITOR_TOKEN": API_TOKEN,
        "COLDCOPY_LAUNCHER": "none",
        "COLDCOPY_ENV_FILE": os.devnull,
    }


@pytest.fixture
def cli_clock(monkeypatch: pytest.MonkeyPatch) -> Callable[[datetime], None]:
    """``cli_clock(t)``: the commands run in-process (``run_cli``) take ``t`` as now."""

    def set_now(when: datetime) -> None:
        monkeypatch.setattr(cli_common, "clock", lambda: when)

    return set_now


@pytest.fixture
def memory_env() -> dict[str, str]:
    """Settings for tests whose bucket is a MemoryStore: nothing listens at the endpoint, so anything
    that reached for a real bucket would fail instead of passing by accident."""
    return {
        "DO_SPACES_KEY": "memory",
        "DO_SPACES_SECRET": "memory-store-secret",
        "DO_SPACES_BUCKET": "memory",
        "DO_SPACES_ENDPOINT": "http://127.0.0.1:9",
        "COLDCOPY_CLUSTER": "memory",
        "DB_NAME": "app",
        "BACKUP_ENCRYPTION_KEY": secrets.token_urlsafe(32),
        "COLDCOPY_LAUNCHER": "none",
    }
