"""Pure core: names, configuration, catalog merging — no servers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coldcopy.config import Secret, load_settings, redact
from coldcopy.core.catalog import SKEW, Catalog, journal_key, start_after
from coldcopy.core.manifest import CatalogEntry
from coldcopy.core.names import make_name, parse_name, validate_db_identifier, validate_name
from coldcopy.core.thresholds import Thresholds
from coldcopy.core.times import iso
from coldcopy.core.views import status_view
from coldcopy.errors import ConfigError, InvalidNameError

T0 = datetime(2026, 11, 24, 2, 0, tzinfo=UTC)


# -- names ------------------------------------------------------------------------------------------
def test_name_round_trip() -> None:
    n = make_name("full", "postgres", T0)
    assert str(n) == "full_backup_postgres_20261124_020000"
    assert parse_name(str(n)) == n
    assert str(make_name("compliance", "my app.db", T0)) == "compliance_backup_my-app-db_20261124_020000"


@pytest.mark.parametrize(
    "bad",
    [
        "../etc/passwd",
        "full_backup_a/b_20260101_000000",
        "full_backup_..%2f_20260101_000000",
        "full_backup_db_20260101_000000/../x",
        "full_backup_db_2026010_000000",
        "full_backup_db_20261301_000000",
        "weekly_backup_db_20260101_000000",
        "",
        "full_backup__20260101_000000",
        "full_backup_db_20260101_000000\n",
    ],
)
def test_bad_names_refused(bad: str) -> None:
    with pytest.raises(InvalidNameError) as err:
        validate_name(bad)
    assert "full_backup_<db>" in str(err.value)


@given(st.text(max_size=80))
def test_only_grammar_names_pass(text: str) -> None:
    try:
        name = validate_name(text)
    except InvalidNameError:
        return
    assert "/" not in name and ".." not in name and name == text


def test_db_identifier() -> None:
    assert validate_db_identifier("app_copy") == "app_copy"
    for bad in ('x"; drop', "a/b", "", "1abc", "x" * 64):
        with pytest.raises(InvalidNameError):
            validate_db_identifier(bad)


# -- configuration --------------------------------------------------------------------------------
def test_config_reports_every_problem_at_once(tmp_path) -> None:  # type: ignore[no-untyped-def]
    env = {"DB_PORT": "not-a-port", "DO_SPACES_ENDPOINT": "ftp://x", "DO_SPACES_SECRET": "s3cr3t-value!"}
    with pytest.raises(ConfigError) as err:
        load_settings(env, need=("db", "storage"), env_file=tmp_path / "none")
    text = str(err.value)
    for var in (
        "DB_HOST",
        "DB_NAME",
        "DB_USER",
        "DB_PORT",
        "DO_SPACES_KEY",
        "DO_SPACES_BUCKET",
        "DO_SPACES_ENDPOINT",
    ):
        assert var in text
    assert "DO_SPACES_SECRET" not in text  # it is set
    assert err.value.exit_code == 2


def test_config_defaults_and_env_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / ".env"
    f.write_text(
        "DB_HOST=h\nDB_NAME=app\nDB_USER=u\nDB_PASSWORD=pw-from-file\nDO_SPACES_KEY=k\n"
        "DO_SPACES_SECRET=spaces-zq9-secret\nDO_SPACES_BUCKET=my-bucket\n"
    )
    s = load_settings({"DB_NAME": "override"}, need=("db", "storage"), env_file=f)
    assert s.db_name == "override" and s.db_port == 5432 and s.spaces_region == "nyc3"
    assert s.spaces_endpoint == "https://nyc3.digitaloceanspaces.com"
    assert s.prefix == "coldcopy/override/"
    assert "pw-from-file" not in repr(s) and "spaces-zq9-secret" not in repr(s)
    assert redact("password pw-from-file here", s) == "password *** here"


def test_malformed_secret_not_echoed() -> None:
    with pytest.raises(ConfigError) as err:
        load_settings({"DB_PORT": "99999999"}, need=())
    assert "99999999" in str(err.value)  # not a secret: shown to help
    assert repr(Secret("hunter2")) == "Secret('***')"


# -- catalog ----------------------------------------------------------------------------------------
def _entry(name: str, when: datetime, size: int = 100) -> CatalogEntry:
    return CatalogEntry(
        name=name,
        kind=parse_name(name).kind,
        database="db",
        created_at=iso(when),
        finished_at=iso(when + timedelta(seconds=5)),
        duration_seconds=5.0,
        size_bytes=size,
        raw_size_bytes=size * 3,
        encrypted=True,
        key_id="abc",
        server_version="15",
    )


def _backup_record(when: datetime) -> tuple[str, dict]:  # type: ignore[type-arg]
    name = str(make_name("full", "db", when))
    return journal_key("backup", name, when), {
        "type": "backup",
        "name": name,
        "entry": _entry(name, when).to_dict(),
    }


def test_merge_is_idempotent_and_ordered() -> None:
    recs = [_backup_record(T0 + timedelta(hours=i)) for i in range(5)]
    a = Catalog()
    a.merge(recs)
    b = Catalog()
    b.merge(list(reversed(recs)) + recs[:2])
    assert [e.name for e in a.entries()] == [e.name for e in b.entries()]
    assert a.entries()[0].name.endswith("060000")
    assert a.watermark == max(k for k, _ in recs)


def test_stale_snapshot_still_sees_late_records() -> None:
    """A record whose key sorts just before the watermark (a lagging writer) is still merged."""
    early = _backup_record(T0)
    late = _backup_record(T0 + timedelta(minutes=30))
    snap = Catalog()
    snap.merge([late])
    restored = Catalog.from_dict(snap.to_dict())
    listing_from = start_after(restored.watermark)
    assert listing_from is not None
    lagging = _backup_record(T0 + timedelta(minutes=30) - SKEW / 2)
    assert lagging[0] > listing_from  # inside the window a reader lists
    restored.merge([lagging, late])
    assert len(restored.backups) == 2
    assert early[0] < listing_from


def test_deletion_and_failures_and_summary() -> None:
    recs = [_backup_record(T0 + timedelta(hours=i)) for i in range(3)]
    cat = Catalog()
    cat.merge(recs)
    gone = recs[0][1]["name"]
    when = T0 + timedelta(hours=5)
    cat.merge(
        [
            (
                journal_key("backup_deleted", gone, when),
                {"type": "backup_deleted", "name": gone, "at": iso(when)},
            ),
            (
                journal_key("backup_failed", "x", when),
                {
                    "type": "backup_failed",
                    "name": "x",
                    "at": iso(when),
                    "kind": "full",
                    "error": "pg_dump failed",
                },
            ),
        ]
    )
    assert gone not in cat.backups
    s = status_view(cat, T0 + timedelta(hours=6), encrypted=True, wal=None, thresholds=Thresholds())
    assert s["backup_count"] == 2 and s["total_size_bytes"] == 200
    assert any("failed" in p for p in s["problems"]) and not s["ok"]
    s_old = status_view(cat, T0 + timedelta(days=3), encrypted=True, wal=None, thresholds=Thresholds())
    assert any("more than 26 hours" in p for p in s_old["problems"])


def test_a_damaged_journal_record_never_breaks_reading() -> None:
    cat = Catalog()
    good = _backup_record(T0)
    cat.merge(
        [
            good,
            (
                journal_key("backup", "full_backup_db_20261124_030000", T0),
                {"type": "backup", "name": "full_backup_db_20261124_030000", "entry": {"oops": 1}},
            ),
            (journal_key("backup", "x", T0), ["not", "an", "object"]),
        ]
    )  # type: ignore[list-item]
    assert list(cat.backups) == [good[1]["name"]]
    assert "full_backup_db_20261124_030000" in cat.unreadable


def test_a_clock_running_ahead_does_not_move_the_watermark() -> None:
    now = T0 + timedelta(hours=1)
    honest = _backup_record(now)
    ahead = _backup_record(now + timedelta(hours=3))  # a writer whose clock is 3 h fast
    cat = Catalog()
    cat.merge([honest, ahead], now=now)
    assert len(cat.backups) == 2
    assert cat.watermark == honest[0]  # not the future key
    late = _backup_record(now - timedelta(minutes=2))  # written just after, by an honest writer
    listing_from = start_after(cat.watermark)
    assert listing_from is not None and late[0] > listing_from


def test_feature_settings_are_checked_with_the_rest(tmp_path) -> None:  # type: ignore[no-untyped-def]
    env = {"ALERT_EMAIL": "not-an-address", "COLDCOPY_KEEP_DAILY": "-1", "ALERT_SIZE_SAMPLE": "x"}
    with pytest.raises(ConfigError) as err:
        load_settings(env, need=("db",), env_file=tmp_path / "none")
    text = str(err.value)
    for var in ("DB_HOST", "ALERT_EMAIL", "COLDCOPY_KEEP_DAILY", "ALERT_SIZE_SAMPLE"):
        assert var in text


@given(
    st.from_regex(r"\A\d{8}_\d{6}\Z")
    | st.sampled_from(
        [
            "20261301_000000",
            "20260230_120000",
            "00000101_000000",
            "20261124_236060",
            "20261124_000060",
            "20240229_235959",
            "00010\u066101_000000",  # an Arabic-Indic digit: \d matches it, strptime does not
        ]
    )
)
def test_a_names_timestamp_is_read_as_strptime_reads_it(ts: str) -> None:
    try:
        expected: datetime | None = datetime.strptime(ts, "%Y%m%d_%H%M%S").replace(tzinfo=UTC)
    except ValueError:
        expected = None
    try:
        got: datetime | None = parse_name(f"full_backup_app_{ts}").created_at
    except InvalidNameError:
        got = None
    assert got == expected
