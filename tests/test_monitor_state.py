"""The tick's monitor state: /metrics and /alerts answer from it exactly what computing everything
from the records answers, with a number of S3 requests that does not grow with the history, and
say how old it is.  moto's S3 server over HTTP; the clock is injected everywhere."""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

import catalog_walk
import recovery_walk
from cli_helpers import web_call
from coldcopy.alerting.email import EmailError
from coldcopy.alerting.notify import alerts_report, check_alerts, gather, load_state, recent_runs
from coldcopy.config import Settings, SmtpConfig, load_settings
from coldcopy.core.alert_state import delivery_alert
from coldcopy.core.alerts import evaluate
from coldcopy.core.archive_report import WalHealth
from coldcopy.core.catalog import SKEW, Catalog, journal_key
from coldcopy.core.catalog_digest import DIGEST_KEY, advance, digest, parse_digest
from coldcopy.core.catalog_pages import INDEX_KEY, advance_index, parse_index
from coldcopy.core.catalog_pages import build as build_pages
from coldcopy.core.changes import STATUS_KEY, ChangesHealth
from coldcopy.core.jobs import FAILED, RUNNING, SUCCEEDED, Run, new_run_id, run_key
from coldcopy.core.keys import KEYS_STATE_KEY, keys_state
from coldcopy.core.manifest import CatalogEntry
from coldcopy.core.monitor_state import STALE_AFTER, STATE_KEY, parse
from coldcopy.core.recovery_inputs import MIN_REPLAY_BYTES
from coldcopy.core.recovery_time import estimate_from
from coldcopy.core.times import iso
from coldcopy.functions import web
from coldcopy.localstack.s3server import S3Server
from coldcopy.storage import s3 as s3_module
from coldcopy.storage.catalog_store import CatalogStore
from coldcopy.storage.memory import MemoryStore
from coldcopy.storage.s3 import S3Store, open_store
from coldcopy.storage.state_store import load_monitor_state
from coldcopy.storage.store import ObjectStore
from coldcopy.wal import monitor as wal_monitor

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
TOKEN = "monitor-token-for-state-tests"
STATE_METRIC = "coldcopy_monitor_state_timestamp_seconds"


@pytest.fixture
def settings(s3_server: S3Server, bucket: str) -> Settings:
    env = {
        **s3_server.spaces_env(bucket),
        "MONITOR_TOKEN": TOKEN,
        "COLDCOPY_LAUNCHER": "none",
        "COLDCOPY_METRICS_LEGACY_GB": "true",
        # Email configured, but the sender below always fails: the email-failing alert is on.
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": "2525",
        "SMTP_SECURITY": "none",
        "SMTP_FROM": "coldcopy@example.org",
        "ALERT_EMAIL": "ops@example.org",
    }
    return load_settings(env, env_file=Path(os.devnull))


@pytest.fixture
def storage(settings: Settings) -> S3Store:
    return open_store(settings)


def failing_sender(cfg: SmtpConfig, messages: Sequence[EmailMessage]) -> int:
    raise EmailError("connection refused by 127.0.0.1:2525")


def entry(when: datetime, size: int = 1000, kind: str = "full", db: str = "app") -> CatalogEntry:
    return CatalogEntry(
        name=f"{kind}_backup_{db}_{when:%Y%m%d_%H%M%S}",
        kind=kind,
        database=db,
        created_at=iso(when),
        finished_at=iso(when + timedelta(seconds=60)),
        duration_seconds=60.0,
        size_bytes=size,
        raw_size_bytes=size * 3,
        encrypted=True,
        key_id="k1",
        server_version="15.18",
    )


def put_run(storage: ObjectStore, run: Run) -> None:
    storage.put_json(run_key(run.run_id), run.to_dict())


def seed(storage: ObjectStore, *, backups: int, runs: int, start: int = 0) -> None:
    """A history that makes most rules fire: a failure after the last success, a failed
    verification, a much smaller newest backup, an unreadable manifest, a job whose heartbeat
    stopped, a stale WAL archive with a gap; ``runs`` finished runs besides."""
    store = CatalogStore(storage)
    cat = store.read()
    for i in range(start, start + backups):
        e = entry(NOW - timedelta(days=30) + timedelta(hours=6 * i), size=1000 + i)
        cat.backups[e.name] = e
    small = entry(NOW - timedelta(hours=30), size=10)
    cat.backups[small.name] = small
    cat.failures = [
        {"name": "full_backup_app_20261124_020000", "kind": "full", "at": iso(NOW - timedelta(hours=10))}
    ]
    cat.verifications[small.name] = {"ok": False, "at": iso(NOW - timedelta(hours=20)), "checks": []}
    cat.unreadable["full_backup_app_20261001_000000"] = "unknown manifest format"
    store.save(cat)
    for i in range(start, start + runs):  # inside the tick's 8-day window
        when = NOW - timedelta(days=7) + timedelta(minutes=15 * i)
        put_run(storage, Run(new_run_id(when), "verify", state=SUCCEEDED, enqueued_at=iso(when)))
    late = NOW - timedelta(minutes=40)
    put_run(
        storage,
        Run(
            new_run_id(late, "stale"),
            "backup-full",
            state=RUNNING,
            enqueued_at=iso(late),
            started_at=iso(late),
            heartbeat_at=iso(late + timedelta(minutes=5)),
        ),
    )
    failed = NOW - timedelta(hours=3)
    put_run(storage, Run(new_run_id(failed, "old"), "backup-full", state=FAILED, enqueued_at=iso(failed)))
    wal = WalHealth(
        iso(NOW - timedelta(hours=2)), "000000010000000000000042", (), iso(NOW - timedelta(days=2)), iso(NOW)
    )
    storage.put_json(wal_monitor.STATE_KEY, {"wal": asdict(wal)})


def from_the_records(settings: Settings, storage: ObjectStore, now: datetime) -> tuple[str, list[Any]]:
    """What /metrics and /alerts computed before the tick stored its state and the catalog its
    digest: every input read from the records at the call (the run listing, the WAL summary, the
    notifier's state), the metrics and the catalog's alerts by walking every backup (the oracle)."""
    cat = CatalogStore(storage).read()
    wal = wal_monitor.load(storage)
    alerts = evaluate(cat, recent_runs(storage, now)[0], wal, settings.thresholds, now)
    catalog_rules = {a.rule for a in catalog_walk.catalog_alerts(cat, settings.thresholds, now)}
    assert [a for a in alerts if a.rule in catalog_rules] == catalog_walk.catalog_alerts(
        cat, settings.thresholds, now
    )
    failing = delivery_alert(load_state(storage))
    alerts = alerts if failing is None else [*alerts, failing]
    text = catalog_walk.render(cat, now, alerts=alerts, legacy_gb=settings.metrics_legacy_gb, wal=wal)
    return text, [a.to_dict() for a in alerts]


def status_from_the_records(settings: Settings, storage: ObjectStore, now: datetime) -> dict[str, Any]:
    """What /status answered by walking every backup of the catalog (the oracle), WAL as stored."""
    cat = CatalogStore(storage).read()
    th = settings.thresholds
    wal = wal_monitor.load(storage)
    view = catalog_walk.status_view(cat, now, encrypted=settings.encrypted, wal=wal, thresholds=th)
    # The change archive's and the files' sections came after the reference: with no archive set up
    # and no files snapshot in these catalogs, both are None.
    assert not cat.files and not cat.files_due and not cat.files_failures
    return {**json.loads(json.dumps(view)), "changes": None, "files": None}


def call(settings: Settings, function: str, now: datetime) -> dict[str, Any]:
    return web_call(settings, function, TOKEN, lambda: now)


CHANGES_METRICS = ("coldcopy_changes_", "# HELP coldcopy_changes_", "# TYPE coldcopy_changes_")


def without_state_metric(text: str) -> str:
    """The text without the state's timestamp and the change archive's gauges (the reference walk
    predates both; the archive is never set up here: its one gauge is checked on its own)."""
    return "\n".join(
        line
        for line in text.splitlines()
        if STATE_METRIC not in line and not line.startswith(CHANGES_METRICS)
    )


@pytest.fixture
def s3_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The S3 operations the web functions' storage client makes (its open_store is wrapped)."""
    calls: list[str] = []
    real = s3_module.open_store

    def counting(settings: Settings) -> S3Store:
        store = real(settings)
        store.client.meta.events.register("before-call.s3", lambda model, **_: calls.append(model.name))
        return store

    monkeypatch.setattr(s3_module, "open_store", counting)
    yield calls


def test_metrics_and_alerts_from_the_tick_state_equal_those_from_the_records(
    settings: Settings, storage: S3Store
) -> None:
    seed(storage, backups=12, runs=40)
    out = check_alerts(settings, storage, NOW, sender=failing_sender)
    assert out["email_error"] and out["active"] >= 6
    stored = storage.get_json(STATE_KEY)
    assert stored["computed_at"] == iso(NOW)
    assert [r["kind"] for r in stored["runs"]] == ["backup-full", "verify"]  # the newest of each kind
    # Answered later than the tick: the time-dependent values move the same way in both.
    for later in (timedelta(0), timedelta(minutes=3)):
        now = NOW + later
        text, alerts = from_the_records(settings, storage, now)
        metrics = call(settings, "metrics", now)["body"]
        assert without_state_metric(metrics) == without_state_metric(text)
        assert f"{STATE_METRIC} {NOW.timestamp():.0f}" in metrics.splitlines()
        assert [x for x in metrics.splitlines() if x.startswith("coldcopy_changes_")] == [
            "coldcopy_changes_set_up 0"
        ]
        report = json.loads(call(settings, "alerts", now)["body"])
        assert report["alerts"] == alerts
        assert report["state"] == {
            "source": "tick",
            "computed_at": iso(NOW),
            "age_seconds": later.total_seconds(),
            "stale": False,
        }
        status = json.loads(call(settings, "status", now)["body"])
        assert {k: v for k, v in status.items() if k != "state"} == status_from_the_records(
            settings, storage, now
        )
    rules = {a["rule"] for a in alerts}
    assert {"stale-job", "email-failing", "last-backup-failed", "verification-failed"} <= rules
    assert {"backup-size", "manifest-unreadable"} <= rules
    assert 'coldcopy_alerts_active{severity="warning"}' in metrics


def test_the_requests_per_call_do_not_grow_with_the_history(
    settings: Settings, storage: S3Store, s3_calls: list[str]
) -> None:
    def per_call() -> dict[str, list[str]]:
        out = {}
        headers = {"authorization": f"Bearer {TOKEN}"}
        for function in ("metrics", "alerts", "status", "recovery-time", "backups", "health"):
            web.use_settings(settings, clock=lambda: NOW)  # a fresh process: cold caches
            try:
                for _ in range(2):  # the second call is warm
                    s3_calls.clear()
                    r = web.handle(function, {"http": {"method": "GET", "path": "", "headers": headers}})
                    assert r["statusCode"] == 200, r
            finally:
                web.use_settings(None)
            out[function] = sorted(s3_calls)
        return out

    seed(storage, backups=5, runs=5)
    check_alerts(settings, storage, NOW, sender=failing_sender)
    small = per_call()
    seed(storage, backups=300, runs=600, start=5)  # 60 times the runs, 60 times the backups
    check_alerts(settings, storage, NOW, sender=failing_sender)
    assert per_call() == small
    state = ["GetObject", "GetObject", "ListObjectsV2"]  # catalog.json (conditional), monitor state, journal
    assert small == {
        "metrics": state,
        "alerts": state,
        "status": state,
        "recovery-time": state,
        "backups": ["GetObject", "ListObjectsV2"],
        "health": ["GetObject", "ListObjectsV2"],  # the digest (conditional), a journal page
    }


def test_answers_say_how_old_the_tick_state_is_and_when_it_is_stale(
    settings: Settings, storage: S3Store
) -> None:
    seed(storage, backups=3, runs=3)
    check_alerts(settings, storage, NOW, sender=failing_sender)
    late = NOW + STALE_AFTER + timedelta(seconds=1)
    for function in ("alerts", "status", "recovery-time"):
        state = json.loads(call(settings, function, late)["body"])["state"]
        assert state == {
            "source": "tick",
            "computed_at": iso(NOW),
            "age_seconds": STALE_AFTER.total_seconds() + 1,
            "stale": True,
        }, function
    fresh = json.loads(call(settings, "status", NOW + timedelta(minutes=4))["body"])["state"]
    assert fresh["stale"] is False and fresh["age_seconds"] == 240


def test_before_the_first_tick_the_answers_are_computed_at_the_call(
    settings: Settings, storage: S3Store
) -> None:
    seed(storage, backups=3, runs=3)
    text, alerts = from_the_records(settings, storage, NOW)
    report = json.loads(call(settings, "alerts", NOW)["body"])
    assert report["alerts"] == alerts and any(a["rule"] == "stale-job" for a in alerts)
    assert report["state"]["source"] == "computed now"
    metrics = call(settings, "metrics", NOW)["body"]
    assert without_state_metric(metrics) == without_state_metric(text)
    status = json.loads(call(settings, "status", NOW)["body"])
    assert status["state"]["source"].startswith("WAL summary") and status["wal"]["last_segment"]


def test_the_tick_still_emails_what_it_did_and_stores_the_state_each_time(
    settings: Settings, storage: S3Store
) -> None:
    seed(storage, backups=3, runs=3)
    sent: list[list[str]] = []

    def sender(cfg: SmtpConfig, messages: list[EmailMessage]) -> int:
        sent.append([str(m["Subject"]) for m in messages])
        return len(messages)

    first = check_alerts(settings, storage, NOW, sender=sender)
    assert first["sent"] == len(first["started"]) == first["active"] > 0 and len(sent) == 1
    again = check_alerts(settings, storage, NOW + timedelta(minutes=5), sender=sender)
    assert again["sent"] == 0 and len(sent) == 1  # nothing new: no email
    assert storage.get_json(STATE_KEY)["computed_at"] == iso(NOW + timedelta(minutes=5))
    assert storage.get_json(STATE_KEY)["alert_state"]["pending"] == []
    assert len(sent[0]) == len(first["started"])  # one email per alert that started


def test_a_digest_does_not_grow_with_the_backups_and_reads_back_as_written() -> None:
    def catalog(n: int) -> Catalog:
        cat = Catalog()
        for i in range(n):
            for kind, db in (("full", "app"), ("compliance", "app"), ("full", "billing")):
                e = entry(
                    NOW - timedelta(days=400) + timedelta(hours=i), size=5000 + i % 97, kind=kind, db=db
                )
                cat.backups[e.name] = e
        old = (entry(NOW - timedelta(days=900) + timedelta(hours=i)).name for i in range(n))
        cat.deleted = dict.fromkeys(old, iso(NOW))
        return cat

    small, big = digest(catalog(200)), digest(catalog(2000))
    assert big.backup_count == 6000 and big.counters[("full", "app")][0] == 4000  # 2000 live + deleted
    small_size, big_size = len(json.dumps(small.to_dict())), len(json.dumps(big.to_dict()))
    assert big_size < small_size * 1.1, (small_size, big_size)
    assert parse_digest(json.loads(json.dumps(big.to_dict()))) == big
    assert parse_digest({"format": "something else"}) is None


def keys_read(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The object keys the web functions' storage client GETs (its open_store is wrapped)."""
    keys: list[str] = []
    real = s3_module.open_store

    def counting(settings: Settings) -> S3Store:
        store = real(settings)
        store.client.meta.events.register(
            "before-parameter-build.s3.GetObject", lambda params, **_: keys.append(str(params.get("Key")))
        )
        return store

    monkeypatch.setattr(s3_module, "open_store", counting)
    return keys


def test_writers_store_the_digest_and_readers_use_the_catalog_until_it_applies_the_journal(
    settings: Settings, storage: S3Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = keys_read(monkeypatch)
    seed(storage, backups=20, runs=3)
    store = CatalogStore(storage)
    # A writer's path: journal records, then a refresh (which saves catalog.json and its digest).
    second_db = entry(NOW - timedelta(hours=5), kind="compliance", db="billing")
    store.record("backup", second_db.name, {"name": second_db.name, "entry": second_db.to_dict()}, NOW)
    gone = sorted(store.read().backups)[0]
    store.record("backup_deleted", gone, {"name": gone}, NOW)
    store.record("backup_failed", "x", {"name": second_db.name, "kind": "compliance", "error": "disk"}, NOW)
    store.refresh()
    assert parse_digest(storage.get_json(DIGEST_KEY)) == digest(store.read())
    check_alerts(settings, storage, NOW, sender=failing_sender)

    def same_as_the_oracle() -> list[str]:
        keys.clear()
        text, alerts = from_the_records(settings, storage, NOW)
        assert without_state_metric(call(settings, "metrics", NOW)["body"]) == without_state_metric(text)
        assert json.loads(call(settings, "alerts", NOW)["body"])["alerts"] == alerts
        status = json.loads(call(settings, "status", NOW)["body"])
        assert {k: v for k, v in status.items() if k != "state"} == status_from_the_records(
            settings, storage, NOW
        )
        return keys

    read = same_as_the_oracle()
    assert not [k for k in read if k.endswith("catalog.json")] and any(k.endswith(DIGEST_KEY) for k in read)
    # A record no save has applied yet (a writer between its record and its save, or one that
    # died): the readers read the catalog instead, and answer what the records say.
    late = entry(NOW - timedelta(hours=1), size=10_000, db="billing")
    store.record("backup", late.name, {"name": late.name, "entry": late.to_dict()}, NOW)
    read = same_as_the_oracle()
    assert [k for k in read if k.endswith("catalog.json")]
    # The next tick stores the digest of the catalog with that record: the digest again.
    check_alerts(settings, storage, NOW, sender=failing_sender)
    read = same_as_the_oracle()
    assert not [k for k in read if k.endswith("catalog.json")]
    # 20 + the small one seeded, + second_db - gone + late.
    assert json.loads(call(settings, "status", NOW)["body"])["backup_count"] == 22


def test_the_key_count_reaches_the_alert_through_the_tick_state(settings: Settings, storage: S3Store) -> None:
    """``key status`` stores ``state/keys.json``; the tick carries the key ids no setting held into
    the monitor state, and ``/alerts`` raises key-unheld from it until a new count holds them."""
    seed(storage, backups=3, runs=3)
    census = {"aaaa": {"backup": 4, "wal": 2}, "bbbb": {"change": 1}, "none": {"wal": 1}}
    storage.put_json(KEYS_STATE_KEY, keys_state(iso(NOW - timedelta(hours=1)), census, ["aaaa"]))
    check_alerts(settings, storage, NOW, sender=failing_sender)
    stored = load_monitor_state(storage)
    assert stored is not None
    assert stored.unheld_keys == {"bbbb": 1} and stored.keys_counted_at == iso(NOW - timedelta(hours=1))
    assert parse(stored.to_dict()) == stored
    alerts = alerts_report(settings, Catalog(), stored, NOW, from_tick=True)["alerts"]
    assert [a["id"] for a in alerts if a["rule"] == "key-unheld"] == ["key-unheld:bbbb"]

    storage.put_json(KEYS_STATE_KEY, keys_state(iso(NOW), census, ["aaaa", "bbbb"]))  # PREVIOUS set
    check_alerts(settings, storage, NOW + timedelta(minutes=5), sender=failing_sender)
    again = load_monitor_state(storage)
    assert again is not None and again.unheld_keys == {}
    alerts = alerts_report(settings, Catalog(), again, NOW, from_tick=True)["alerts"]
    assert not [a for a in alerts if a["rule"] == "key-unheld"]


def proof(at: datetime, raw: int, seconds: float, **extra: Any) -> dict[str, Any]:
    """A verification record whose test restore (or base-backup drill) succeeded and was measured."""
    m = {"raw_bytes": raw, "restore_seconds": seconds, **extra}
    return {"at": iso(at), "ok": True, "restore_proof": {"at": iso(at), "ok": True, "measurement": m}}


def seed_recovery(storage: ObjectStore) -> WalHealth:
    """A year of daily base backups and dumps, measured restores and drills (more than the estimate
    uses, some too small to count), and a WAL window of ten days; returns the window."""
    store = CatalogStore(storage)
    cat = store.read()
    for day in range(365):
        when = NOW - timedelta(days=365 - day, hours=3)
        for kind, size in (("full", 1000 + day), ("base", 5000 + day), ("compliance", 700)):
            e = entry(when, size=size, kind=kind)
            cat.backups[e.name] = e
            if day % 9 == 0 and kind != "compliance":
                drill = {"replay_bytes": MIN_REPLAY_BYTES * (1 + day % 3) - day % 2, "replay_seconds": 7.5}
                extra = {"kind": "base", "promoted": True, **drill} if kind == "base" else {}
                cat.verifications[e.name] = proof(
                    when + timedelta(hours=1), size << 20, 2.0 + day % 7, **extra
                )
    store.save(cat)
    start, end = iso(NOW - timedelta(days=10)), iso(NOW)
    wal = WalHealth(iso(NOW - timedelta(minutes=5)), "000000010000000000000042", (), start, end)
    storage.put_json(wal_monitor.STATE_KEY, {"wal": asdict(wal)})
    return wal


def test_recovery_time_from_the_digest_equals_the_catalog_walk(
    settings: Settings, storage: S3Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = keys_read(monkeypatch)
    wal = seed_recovery(storage)
    check_alerts(settings, storage, NOW, sender=failing_sender)
    kept = parse_digest(storage.get_json(DIGEST_KEY))
    assert kept is not None and 8 <= len(kept.recovery.base_backups) <= 10  # of 365

    def same_as_the_walk(now: datetime) -> list[str]:
        keys.clear()
        answer = json.loads(call(settings, "recovery-time", now)["body"])
        expected = recovery_walk.estimate(CatalogStore(storage).read(), now, wal)
        assert {k: v for k, v in answer.items() if k != "state"} == json.loads(json.dumps(expected))
        assert answer["estimated"] and answer["replay"]["measured"]
        return [k for k in keys if k.endswith("catalog.json")]

    for later in (timedelta(0), timedelta(minutes=3), timedelta(days=2)):
        assert same_as_the_walk(NOW + later) == []  # from the digest
    answer = json.loads(call(settings, "recovery-time", NOW)["body"])
    assert [s["available"] for s in answer["scenarios"]] == [True, True, True, True]
    # A clock (or WAL archive) far behind the backups: the week-ago target needs a base backup
    # older than those the digest keeps, so the answer comes from the catalog (the same one).
    assert same_as_the_walk(NOW - timedelta(days=5)) != []
    # A record no save has applied: the catalog again, and what the records say.
    late = entry(NOW - timedelta(hours=1), size=90_000)
    CatalogStore(storage).record("backup", late.name, {"name": late.name, "entry": late.to_dict()}, NOW)
    assert same_as_the_walk(NOW) != []


def test_recovery_inputs_in_the_digest_give_the_walks_answer_at_every_kind_of_catalog() -> None:
    wal = WalHealth(iso(NOW), "000000010000000000000042", (), iso(NOW - timedelta(days=30)), iso(NOW))
    base_only, bare = Catalog(), Catalog()
    for i in range(40):
        e = entry(NOW - timedelta(days=i, hours=1), kind="base")
        base_only.backups[e.name] = e
    small = entry(NOW - timedelta(days=2), size=10, kind="compliance")
    base_only.backups[small.name] = small
    base_only.verifications[small.name] = proof(NOW - timedelta(days=1), 40 << 20, 3.0)
    for cat in (bare, base_only):
        for w in (None, wal):
            d = parse_digest(json.loads(json.dumps(digest(cat).to_dict())))
            assert d is not None
            for now in (NOW, NOW + timedelta(days=3)):
                assert estimate_from(d.recovery, now, w) == recovery_walk.estimate(cat, now, w)
    assert estimate_from(digest(base_only).recovery, NOW - timedelta(days=3), wal) is None  # kept too few
    assert len(digest(base_only).recovery.base_backups) < 40


def test_health_reads_neither_the_catalog_nor_anything_that_grows(
    settings: Settings, storage: S3Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = keys_read(monkeypatch)
    body = json.loads(call(settings, "health", NOW)["body"])  # an empty bucket: reachable
    assert body["catalog_reachable"] is True and body["ok"] is True
    seed(storage, backups=50, runs=3)
    keys.clear()
    body = json.loads(call(settings, "health", NOW)["body"])
    assert body["catalog_reachable"] is True and body["ok"] is True
    assert keys and not [k for k in keys if k.endswith("catalog.json")]


def test_recovery_time_from_the_tick_state_includes_pitr_from_the_change_archive(
    settings: Settings, storage: S3Store
) -> None:
    """The tick keeps the change archive's health in its state: /recovery-time reads it from there
    (no request more) and adds the change archive's scenario, as `coldcopy recovery-time` does."""
    seed_recovery(storage)
    start = iso(NOW - timedelta(days=1))
    health = ChangesHealth("coldcopy_changes_x", iso(NOW), window_start=start, window_end=iso(NOW))
    storage.put_json(STATUS_KEY, health.to_dict())
    check_alerts(settings, storage, NOW, sender=failing_sender)
    answer = json.loads(call(settings, "recovery-time", NOW)["body"])
    (logical,) = [s for s in answer["scenarios"] if s["scenario"] == "pitr-logical-now"]
    assert logical["available"] and logical["target"] == iso(NOW) and not logical["replay_measured"]
    assert answer["logical_replay"]["measured"] is False and "ASSUMED" in answer["logical_replay"]["basis"]


# -- the tick's own requests follow what changed, not the history ---------------------------------
def tick_requests(settings: Settings, backups: int, runs: int) -> list[tuple[str, str]]:
    """The S3 requests (operation, key or prefix under the cluster's) of a tick that finds nothing
    new, after a first tick over ``backups`` backups and ``runs`` runs."""
    storage = open_store(settings)
    seed(storage, backups=backups, runs=runs)
    check_alerts(settings, storage, NOW, sender=failing_sender)  # the first lists the whole window
    calls: list[tuple[str, str]] = []

    def seen(model: Any, params: dict[str, Any], **_: Any) -> None:
        key = str(params.get("Key", params.get("Prefix", "")))
        calls.append((model.name, key.removeprefix(settings.prefix)))

    def listed(parsed: dict[str, Any], **_: Any) -> None:  # how many keys a listing returned
        prefix = str(parsed.get("Prefix", "")).removeprefix(settings.prefix)
        calls.append((f"listed {prefix}", str(len(parsed.get("Contents", [])))))

    storage.client.meta.events.register("before-parameter-build.s3", seen)
    storage.client.meta.events.register("after-call.s3.ListObjectsV2", listed)
    check_alerts(settings, storage, NOW + timedelta(minutes=5), sender=failing_sender)
    return sorted(calls)


def test_a_tick_with_nothing_new_makes_the_same_few_requests_whatever_the_history(
    s3_server: S3Server, bucket: str, settings: Settings
) -> None:
    def cluster(name: str) -> Settings:
        env = {**s3_server.spaces_env(bucket), "COLDCOPY_CLUSTER": name, "COLDCOPY_LAUNCHER": "none"}
        return load_settings(env, env_file=Path(os.devnull))

    small = tick_requests(cluster("small"), backups=5, runs=5)
    large = tick_requests(cluster("large"), backups=400, runs=600)  # 80 and 120 times more
    months = {"small": 2, "large": 5}  # the pages: one a month (backups every 6 hours)
    assert ("listed catalog/pages/", str(months["small"])) in small
    assert ("listed catalog/pages/", str(months["large"])) in large
    small.remove(("listed catalog/pages/", str(months["small"])))
    large.remove(("listed catalog/pages/", str(months["large"])))
    assert small == large  # the same requests, and the other listings return as many keys
    assert not [c for c in small if c[1] == "catalog.json" or c[1].startswith("journal/2")]
    lists = sorted(key for op, key in small if op == "ListObjectsV2")
    # the journal after the caches' watermark, the pages, the restore intents, the runs made lately
    assert lists == ["catalog/pages/", "journal/", "runs/", "state/restore-intents/"]
    assert len(small) <= 16, small


def test_a_tick_after_jobs_reads_what_they_wrote_and_stores_what_the_catalog_gives(
    settings: Settings, storage: S3Store
) -> None:
    seed(storage, backups=12, runs=40)
    check_alerts(settings, storage, NOW, sender=failing_sender)
    store = CatalogStore(storage)
    later = NOW + timedelta(minutes=5)
    done = Run(new_run_id(later - timedelta(minutes=2)), "verify", enqueued_at=iso(later)).outcome(
        ok=False, at=later - timedelta(minutes=1), error="disk full"
    )
    put_run(storage, done)  # what a finished job leaves: its record, its journal record, no catalog save
    store.record("run", done.run_id, done.journal_entry(), when=later - timedelta(minutes=1))
    failed = "full_backup_app_20261124_115500"
    store.record("backup_failed", failed, {"name": failed, "kind": "full", "error": "x"}, when=later)
    gets: list[str] = []
    storage.client.meta.events.register(
        "before-parameter-build.s3.GetObject", lambda params, **_: gets.append(str(params["Key"]))
    )
    check_alerts(settings, storage, later, sender=failing_sender)
    assert f"{settings.prefix}catalog.json" not in gets
    cat = store.read()
    assert parse_digest(storage.get_json(DIGEST_KEY)) == digest(cat, settings.thresholds.size_sample)
    assert parse_index(storage.get_json(INDEX_KEY)) == build_pages(cat)[0]
    assert store.read_digest() is not None and store.read_index() is not None  # current for the endpoints
    state = load_monitor_state(storage)
    assert state is not None and state.runs == gather(storage, later).runs  # as listing the whole window
    assert [a["rule"] for a in json.loads(call(settings, "alerts", later)["body"])["alerts"]] == [
        a["rule"] for a in from_the_records(settings, storage, later)[1]
    ]


def test_the_runs_a_tick_reads_since_the_last_give_what_listing_the_window_gives() -> None:
    """Ticks every 5 minutes over runs enqueued late (slot ids up to the grace behind), running
    ones that finish or go silent, kinds that stop, more than MAX_RUNS in the window: each tick's
    newest runs, from the last tick's state and the runs made since, are the whole window's."""
    rng = random.Random(18)
    storage = MemoryStore()
    lag = timedelta(minutes=60) + SKEW
    kinds = ["backup-full", "verify", "cleanup", "wal-sweep"]
    running: list[Run] = []
    previous = None
    now = NOW - timedelta(days=9)
    for tick in range(400):
        now += timedelta(minutes=5 if tick % 50 else 600)  # now and then a tick missed for hours
        for run in list(running):
            if rng.random() < 0.3:
                running.remove(run)
                put_run(storage, run.outcome(ok=rng.random() < 0.7, at=now))
        for _ in range(rng.choice([0, 0, 1, 2, 3])):
            at = now - timedelta(minutes=rng.choice([0, 1, 30, 60]))
            kind = kinds[0 if tick > 300 else rng.randrange(len(kinds))]
            run = Run(new_run_id(at), kind, state=RUNNING, enqueued_at=iso(at), started_at=iso(at))
            put_run(storage, run)
            if rng.random() < 0.5:
                running.append(run)
            else:
                put_run(storage, run.outcome(ok=True, at=now))
        inputs = gather(storage, now, previous, lag)
        assert inputs.runs == gather(storage, now).runs, tick
        previous = parse(inputs.to_dict())  # as stored


def test_a_digest_and_index_advanced_over_records_are_those_of_the_merged_catalog() -> None:
    """Run records, failures past the 200 the catalog keeps (a key's failed count drops), pins,
    unknown and damaged records: advancing the digest and the page index over them gives what the
    merged catalog gives; a record that changes a backup, a deletion or a verification needs it."""
    rng = random.Random(7)
    cat = Catalog()
    for i in range(60):
        e = entry(NOW - timedelta(hours=7 * i), size=1000 + i, kind=rng.choice(["full", "compliance"]))
        cat.backups[e.name] = e
    at = NOW - timedelta(days=3)
    cat.merge(
        [(journal_key("backup_failed", "x", at), {"type": "backup_failed", "name": "x", "at": iso(at)})]
    )
    records: list[tuple[str, dict[str, Any]]] = []
    for i in range(260):
        at = NOW + timedelta(minutes=i)
        db = "app" if i < 30 else "other"  # app's failures fall out of the newest 200
        name = f"full_backup_{db}_{at:%Y%m%d_%H%M%S}"
        kind = "backup_failed" if i < 230 else rng.choice(["run", "backup_pinned", "cleanup", "new-kind"])
        body: Any = {"type": kind, "name": name, "kind": "full", "at": iso(at), "error": "x"}
        records.append((journal_key(kind, name, at), body if i != 5 else "damaged"))  # type: ignore[arg-type]
    before, index = digest(cat), build_pages(cat)[0]
    later = NOW + timedelta(days=1)  # the tick's clock, after every record
    cat.merge(records, later)
    advanced = advance(before, records, later)
    assert advanced == digest(cat) and advanced != before
    app_failures = sum(1 for _, r in records[:30] if isinstance(r, dict) and r["type"] == "backup_failed")
    assert app_failures and advanced.counters[("full", "app")][1] < app_failures  # fell out of the 200
    assert advance_index(index, records, later) == build_pages(cat)[0]
    for kind in ("backup", "backup_deleted", "verification"):
        one = [(journal_key(kind, "y", NOW), {"type": kind, "name": "y"})]
        assert advance(before, one, later) is None and advance_index(index, one, later) is None
