"""Alert emails through a real SMTP server (aiosmtpd): plain, STARTTLS, implicit TLS, AUTH, a server
that refuses and one that is down; one email when an alert starts and one when it resolves."""

from __future__ import annotations

import json
import logging
import os
import socket
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session

from cli_helpers import run_cli, web_get
from coldcopy.alerting.notify import check_alerts
from coldcopy.config import Settings, load_settings
from coldcopy.core.alert_state import STATE_KEY
from coldcopy.core.catalog import Catalog
from coldcopy.core.manifest import CatalogEntry
from coldcopy.core.times import iso
from coldcopy.functions import tick as tick_fn
from coldcopy.localstack.s3server import S3Server
from coldcopy.storage.catalog_store import CatalogStore
from coldcopy.storage.s3 import S3Store, open_store
from coldcopy.storage.store import ObjectStore

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
USER, PASSWORD = "alerts@example.org", "s3cret-smtp-pässword"
TOKEN = "monitor-token-for-email-tests"


# -- a real SMTP server ---------------------------------------------------------------------------
@dataclass
class Inbox:
    messages: list[EmailMessage] = field(default_factory=list)
    sessions: list[dict[str, Any]] = field(default_factory=list)
    refuse: str | None = None  # answer DATA with this (e.g. "550 …")

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:  # noqa: N802
        if self.refuse:
            return self.refuse
        assert isinstance(envelope.content, bytes)
        self.messages.append(message_from_bytes(envelope.content, policy=policy.default))
        self.sessions.append(
            {"tls": session.ssl is not None, "auth": session.authenticated, "rcpt": list(envelope.rcpt_tos)}
        )
        return "250 OK"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def authenticator(server: Any, session: Session, envelope: Envelope, mechanism: str, data: Any) -> AuthResult:
    ok = (
        isinstance(data, LoginPassword) and data.login == USER.encode() and data.password == PASSWORD.encode()
    )
    return AuthResult(success=ok, handled=False)


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("smtp-cert")
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(d / "key.pem"),
            "-out",
            str(d / "cert.pem"),
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return d / "cert.pem", d / "key.pem"


def server_tls(cert: tuple[Path, Path]) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    return ctx


@dataclass
class Smtp:
    inbox: Inbox
    port: int
    controller: Controller


def start_smtp(port: int | None = None, **kw: Any) -> Smtp:
    inbox = Inbox()
    port = port or free_port()
    c = Controller(inbox, hostname="127.0.0.1", port=port, **kw)
    c.start()
    return Smtp(inbox, port, c)


@pytest.fixture
def smtp() -> Iterator[Smtp]:
    s = start_smtp()
    yield s
    s.controller.stop()


# -- the bucket -----------------------------------------------------------------------------------
@pytest.fixture
def s3_env(s3_server: S3Server, bucket: str) -> dict[str, str]:
    return {
        **s3_server.spaces_env(bucket),
        "COLDCOPY_CLUSTER": "prod-eu",
        "MONITOR_TOKEN": TOKEN,
        "COLDCOPY_LAUNCHER": "none",
    }


def settings_of(env: dict[str, str]) -> Settings:
    return load_settings(env, env_file=Path(os.devnull))


def entry(when: datetime) -> CatalogEntry:
    return CatalogEntry(
        name=f"full_backup_app_{when:%Y%m%d_%H%M%S}",
        kind="full",
        database="app",
        created_at=iso(when),
        finished_at=iso(when + timedelta(minutes=2)),
        duration_seconds=120.0,
        size_bytes=1000,
        raw_size_bytes=4000,
        encrypted=True,
        key_id="k",
        server_version="17.2",
    )


def seed_old_backup(storage: ObjectStore) -> CatalogStore:
    """One backup 30 hours old: exactly one alert (no-recent-backup) is active at NOW."""
    store = CatalogStore(storage)
    old = entry(NOW - timedelta(hours=30))
    cat = Catalog(backups={old.name: old})
    cat.verifications[old.name] = {"ok": True, "at": iso(NOW - timedelta(hours=29))}
    store.save(cat)
    return store


def add_fresh_backup(store: CatalogStore) -> None:
    e = entry(NOW)
    store.record("backup", e.name, {"name": e.name, "entry": e.to_dict()}, when=NOW)


def smtp_env(port: int, **extra: str) -> dict[str, str]:
    return {
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(port),
        "SMTP_SECURITY": "none",
        "SMTP_FROM": "coldcopy@example.org",
        "ALERT_EMAIL": "ops@example.org, dba@example.org",
        **extra,
    }


class CountingStorage(S3Store):
    def __init__(self, settings: Settings) -> None:
        base = open_store(settings)
        super().__init__(base.bucket, base.prefix, base.client)
        self.state_writes = 0

    def put_json(self, key: str, obj: Any, *, create_only: bool = False) -> None:
        self.state_writes += key == STATE_KEY
        super().put_json(key, obj, create_only=create_only)


def alerts_endpoint(settings: Settings, now: datetime = NOW) -> dict[str, Any]:
    return web_get(settings, "alerts", TOKEN, lambda: now)


# -- the tests ------------------------------------------------------------------------------------
def test_one_start_email_and_one_resolve_email_over_many_ticks(s3_env: dict[str, str], smtp: Smtp) -> None:
    s = settings_of(s3_env)
    storage = CountingStorage(s)
    store = seed_old_backup(storage)
    env = smtp_env(smtp.port)
    first = check_alerts(settings_of({**s3_env, **env}), storage, NOW)
    assert first["started"] == ["no-recent-backup"] and first["sent"] == 1 and first["pending"] == 0
    for minutes in (5, 10, 15):
        again = check_alerts(settings_of({**s3_env, **env}), storage, NOW + timedelta(minutes=minutes))
        assert again["started"] == [] and again["sent"] == 0 and again["active"] == 1
    assert storage.state_writes == 1  # rewritten only when something changed
    add_fresh_backup(store)
    resolved = check_alerts(settings_of({**s3_env, **env}), storage, NOW + timedelta(minutes=20))
    assert resolved["resolved"] == ["no-recent-backup"] and resolved["sent"] == 1
    check_alerts(settings_of({**s3_env, **env}), storage, NOW + timedelta(minutes=25))
    assert storage.state_writes == 2

    start, end = smtp.inbox.messages
    assert start["Subject"].startswith("[ColdCopy CRITICAL] prod-eu: no successful backup since")
    assert end["Subject"].startswith("[ColdCopy RESOLVED] prod-eu:")
    assert start["To"] == "ops@example.org, dba@example.org"
    assert smtp.inbox.sessions[0]["rcpt"] == ["ops@example.org", "dba@example.org"]
    text = start.get_body(("plain",))
    html = start.get_body(("html",))
    assert text is not None and html is not None
    plain = text.get_content()
    assert (
        "coldcopy plan missed-backup" in plain
        and f"Since:      {iso(NOW - timedelta(hours=4, minutes=-2))}" in plain
    )
    assert "coldcopy plan missed-backup" in html.get_content() and "<h2" in html.get_content()
    assert "until" in end.get_body(("plain",)).get_content()  # type: ignore[union-attr]


def test_the_scheduler_tick_runs_the_alert_check(s3_env: dict[str, str], smtp: Smtp, tmp_path: Path) -> None:
    env_file = tmp_path / "alerts.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in smtp_env(smtp.port).items()))
    s = load_settings(s3_env, env_file=env_file)  # SMTP from the file, as the tick reads its settings
    storage = open_store(s)
    seed_old_backup(storage)
    out = tick_fn.tick(s, NOW, storage=storage, wake_runner=False)
    assert out["alerts"]["started"] == ["no-recent-backup"] and out["alerts"]["sent"] == 1
    assert out["errors"] == [] and len(smtp.inbox.messages) == 1


def test_starttls_with_authentication(
    s3_env: dict[str, str], cert: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server = start_smtp(
        tls_context=server_tls(cert), require_starttls=True, auth_required=True, authenticator=authenticator
    )
    try:
        s = settings_of(s3_env)
        storage = open_store(s)
        seed_old_backup(storage)
        env = smtp_env(
            server.port,
            SMTP_SECURITY="starttls",
            SMTP_CA_FILE=str(cert[0]),
            SMTP_USER=USER,
            SMTP_PASSWORD=PASSWORD,
        )
        out = check_alerts(settings_of({**s3_env, **env}), storage, NOW)
        assert out["sent"] == 1 and out["email_error"] is None
        assert server.inbox.sessions == [
            {"tls": True, "auth": True, "rcpt": ["ops@example.org", "dba@example.org"]}
        ]
        # A wrong password: refused, kept pending, and the password appears nowhere.
        wrong = {**env, "SMTP_PASSWORD": "not-the-password"}
        add_fresh_backup(CatalogStore(storage))
        out = check_alerts(settings_of({**s3_env, **wrong}), storage, NOW + timedelta(minutes=5))
        assert out["sent"] == 0 and out["pending"] == 1 and "535" in out["email_error"]
        assert "not-the-password" not in json.dumps(storage.get_json(STATE_KEY))
        assert "not-the-password" not in caplog.text and PASSWORD not in caplog.text
    finally:
        server.controller.stop()


def test_implicit_tls(s3_env: dict[str, str], cert: tuple[Path, Path]) -> None:
    server = start_smtp(ssl_context=server_tls(cert))
    try:
        s = settings_of(s3_env)
        storage = open_store(s)
        seed_old_backup(storage)
        env = smtp_env(server.port, SMTP_SECURITY="tls", SMTP_CA_FILE=str(cert[0]))
        assert check_alerts(settings_of({**s3_env, **env}), storage, NOW)["sent"] == 1
        assert server.inbox.sessions[0]["tls"] is False  # aiosmtpd's flag is for STARTTLS only
    finally:
        server.controller.stop()


def test_a_refusing_server_keeps_the_notification_and_shows_it(s3_env: dict[str, str], smtp: Smtp) -> None:
    s = settings_of(s3_env)
    storage = open_store(s)
    seed_old_backup(storage)
    smtp.inbox.refuse = "550 5.7.1 relaying denied"
    out = check_alerts(settings_of({**s3_env, **smtp_env(smtp.port)}), storage, NOW)
    assert out["sent"] == 0 and out["pending"] == 1 and "550" in out["email_error"]
    body = alerts_endpoint(s)
    failing = [a for a in body["alerts"] if a["id"] == "email-failing"]
    assert failing and "relaying denied" in failing[0]["message"] and failing[0]["severity"] == "warning"
    assert body["email"]["pending"] == 1 and body["email"]["last_error"]["since"] == iso(NOW)
    # Another failing tick keeps "since"; the next good tick delivers the one email and clears the error.
    check_alerts(settings_of({**s3_env, **smtp_env(smtp.port)}), storage, NOW + timedelta(minutes=5))
    assert alerts_endpoint(s, NOW + timedelta(minutes=5))["email"]["last_error"]["since"] == iso(NOW)
    smtp.inbox.refuse = None
    out = check_alerts(settings_of({**s3_env, **smtp_env(smtp.port)}), storage, NOW + timedelta(minutes=10))
    assert out["sent"] == 1 and out["pending"] == 0 and out["email_error"] is None
    assert len(smtp.inbox.messages) == 1
    assert not [
        a for a in alerts_endpoint(s, NOW + timedelta(minutes=10))["alerts"] if a["id"] == "email-failing"
    ]


def test_a_down_server_keeps_the_notification_until_it_is_back(s3_env: dict[str, str]) -> None:
    s = settings_of(s3_env)
    storage = open_store(s)
    seed_old_backup(storage)
    port = free_port()  # nothing listens there yet
    env = smtp_env(port)
    out = check_alerts(settings_of({**s3_env, **env}), storage, NOW)
    assert out["sent"] == 0 and out["pending"] == 1 and "no SMTP server answers" in out["email_error"]
    assert [a["id"] for a in alerts_endpoint(s)["alerts"]] == ["no-recent-backup", "email-failing"]
    server = start_smtp(port)
    try:
        out = check_alerts(settings_of({**s3_env, **env}), storage, NOW + timedelta(minutes=5))
        assert out["sent"] == 1 and out["pending"] == 0
        assert len(server.inbox.messages) == 1  # the start email, once
        assert server.inbox.messages[0]["Subject"].startswith("[ColdCopy CRITICAL]")
    finally:
        server.controller.stop()


def test_an_alert_that_resolves_before_its_email_went_out_sends_nothing(s3_env: dict[str, str]) -> None:
    s = settings_of(s3_env)
    storage = open_store(s)
    store = seed_old_backup(storage)
    env = smtp_env(free_port())
    assert check_alerts(settings_of({**s3_env, **env}), storage, NOW)["pending"] == 1
    add_fresh_backup(store)
    out = check_alerts(settings_of({**s3_env, **env}), storage, NOW + timedelta(minutes=5))
    assert out["resolved"] == ["no-recent-backup"] and out["pending"] == 0 and out["email_error"] is None


def test_without_smtp_settings_alerts_are_tracked_and_nothing_is_sent(s3_env: dict[str, str]) -> None:
    s = settings_of(s3_env)
    storage = open_store(s)
    seed_old_backup(storage)
    out = check_alerts(s, storage, NOW)
    assert out["started"] == ["no-recent-backup"] and out["pending"] == 0 and not out["email_configured"]


def test_cli_test_email_and_alerts(s3_env: dict[str, str], smtp: Smtp) -> None:
    env = {**s3_env, **smtp_env(smtp.port), "PATH": os.environ.get("PATH", "")}
    r = run_cli(env, "alerts", "test-email")
    assert r.rc == 0, r.err
    [msg] = smtp.inbox.messages
    assert msg["Subject"] == "[ColdCopy TEST] prod-eu: alert emails work"
    r = run_cli(env, "alerts", "--json")
    assert r.rc == 1 and json.loads(r.out)["alerts"][0]["id"] == "no-recent-backup"  # an empty bucket
    r = run_cli(env, "alerts")
    assert r.rc == 1 and "coldcopy plan missed-backup" in r.out
    down = run_cli({**env, "SMTP_PORT": str(free_port())}, "alerts", "test-email")
    assert down.rc != 0 and "no SMTP server answers" in down.err


def test_a_stale_job_from_the_real_run_records_starts_an_alert(s3_env: dict[str, str], smtp: Smtp) -> None:
    from coldcopy.ops import queue as jobs

    s = settings_of(s3_env)
    storage = open_store(s)
    store = seed_old_backup(storage)
    add_fresh_backup(store)
    jobs.enqueue(storage, "backup-full", {}, now=NOW - timedelta(hours=1))
    claimed = jobs.claim_next(storage, "dead-worker", now=NOW - timedelta(hours=1))
    assert claimed is not None
    out = check_alerts(settings_of({**s3_env, **smtp_env(smtp.port)}), storage, NOW)
    assert out["started"] == ["stale-job:backup-full"] and out["sent"] == 1
    # The tick marks the run failed; the alert goes on (no second email) ...
    assert jobs.mark_stale(storage, NOW, timedelta(minutes=10)) == [claimed[0].run_id]
    out = check_alerts(settings_of({**s3_env, **smtp_env(smtp.port)}), storage, NOW + timedelta(minutes=5))
    assert out["started"] == [] and out["resolved"] == [] and out["active"] == 1
    # ... until the next run of that kind is alive.
    jobs.enqueue(storage, "backup-full", {}, now=NOW + timedelta(minutes=6))
    jobs.claim_next(storage, "live-worker", now=NOW + timedelta(minutes=6))
    out = check_alerts(settings_of({**s3_env, **smtp_env(smtp.port)}), storage, NOW + timedelta(minutes=10))
    assert out["resolved"] == ["stale-job:backup-full"] and out["sent"] == 1
    assert [m["Subject"].split("]")[0] for m in smtp.inbox.messages] == [
        "[ColdCopy WARNING",
        "[ColdCopy RESOLVED",
    ]
