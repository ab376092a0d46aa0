"""The cron table, due slots, heartbeat staleness and run ids — pure, no servers."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coldcopy.config import Settings, load_settings
from coldcopy.core.jobs import (
    Job,
    Run,
    check_params,
    new_run_id,
    queue_key,
    run_id_time,
    slot_key,
    validate_run_id,
)
from coldcopy.core.schedule import (
    Slot,
    due_slots,
    latest_slot,
    parse_slot_time,
    schedule_table,
    slot_time,
)
from coldcopy.errors import ColdCopyError, InvalidNameError

GRACE = timedelta(minutes=60)
DEFAULTS = schedule_table(Settings())
UTC_TIMES = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# -- the table -------------------------------------------------------------------------------------
def test_default_table() -> None:
    assert DEFAULTS == {
        "backup-full": "0 2 * * *",
        "verify": "0 3 * * 0",
        "cleanup": "0 4 * * *",
        "backup-compliance": "0 1 1 * *",
    }


def test_table_follows_configuration() -> None:
    s = load_settings(
        {"COLDCOPY_SCHEDULE_FULL": "30 */6 * * *", "COLDCOPY_SCHEDULE_VERIFY": "15 5 * * 1"},
        env_file=Path(os.devnull),
    )
    table = schedule_table(s)
    assert table["backup-full"] == "30 */6 * * *"
    assert table["verify"] == "15 5 * * 1"
    assert due_slots(table, at("2026-11-24T12:31"), GRACE) == [Slot("backup-full", at("2026-11-24T12:30"))]


def test_wal_sweep_is_off_unless_configured() -> None:
    assert "wal-sweep" not in DEFAULTS
    empty = load_settings({"COLDCOPY_SCHEDULE_WAL_SWEEP": ""}, env_file=Path(os.devnull))
    assert "wal-sweep" not in schedule_table(empty)


def test_any_schedule_can_be_off() -> None:
    env = {"COLDCOPY_SCHEDULE_WAL_SWEEP": "off", "COLDCOPY_SCHEDULE_COMPLIANCE": "OFF"}
    s = load_settings(env, env_file=Path(os.devnull))
    table = schedule_table(s)
    assert "wal-sweep" not in table and "backup-compliance" not in table
    assert table == {k: v for k, v in DEFAULTS.items() if k != "backup-compliance"}
    assert all(slot.kind != "backup-compliance" for slot in due_slots(table, at("2026-12-01T01:02"), GRACE))


def test_wal_sweep_schedule_when_configured() -> None:
    s = load_settings({"COLDCOPY_SCHEDULE_WAL_SWEEP": "*/15 * * * *"}, env_file=Path(os.devnull))
    table = schedule_table(s)
    assert table == {**DEFAULTS, "wal-sweep": "*/15 * * * *"}
    # every quarter hour; at 02:00 it is due together with the full backup, after it
    assert due_slots(table, at("2026-11-24T12:16"), GRACE) == [Slot("wal-sweep", at("2026-11-24T12:15"))]
    assert due_slots(table, at("2026-11-24T02:03"), GRACE) == [
        Slot("backup-full", at("2026-11-24T02:00")),
        Slot("wal-sweep", at("2026-11-24T02:00")),
    ]


def test_bad_wal_sweep_schedule_refused() -> None:
    with pytest.raises(ColdCopyError, match="COLDCOPY_SCHEDULE_WAL_SWEEP"):
        load_settings({"COLDCOPY_SCHEDULE_WAL_SWEEP": "every 5 minutes"}, env_file=Path(os.devnull))


# -- due slots -------------------------------------------------------------------------------------
def test_daily_full_backup_due_at_its_minute() -> None:
    # 2026-11-24 is a Tuesday: only the daily full backup is due at 02:00.
    slots = due_slots(DEFAULTS, at("2026-11-24T02:00"), GRACE)
    assert slots == [Slot("backup-full", at("2026-11-24T02:00"))]
    assert slots[0].id == "backup-full/2026-11-24T02:00Z"


def test_nothing_due_just_before_a_slot() -> None:
    assert due_slots(DEFAULTS, at("2026-11-24T01:59:59.999"), timedelta(minutes=5)) == []


@pytest.mark.parametrize("minutes_late", [1, 30, 59])
def test_missed_slot_within_grace_is_due(minutes_late: int) -> None:
    now = at("2026-11-24T02:00") + timedelta(minutes=minutes_late)
    assert due_slots(DEFAULTS, now, GRACE) == [Slot("backup-full", at("2026-11-24T02:00"))]


@pytest.mark.parametrize("minutes_late", [60, 61, 300])
def test_missed_slot_outside_grace_is_not_due(minutes_late: int) -> None:
    now = at("2026-11-24T02:00") + timedelta(minutes=minutes_late)
    assert [s for s in due_slots(DEFAULTS, now, GRACE) if s.kind == "backup-full"] == []


def test_weekly_verification_on_sunday_only() -> None:
    sunday = due_slots(DEFAULTS, at("2026-11-29T03:05"), GRACE)
    assert Slot("verify", at("2026-11-29T03:00")) in sunday
    assert [s for s in due_slots(DEFAULTS, at("2026-11-28T03:05"), GRACE) if s.kind == "verify"] == []


def test_compliance_on_the_first_of_the_month_across_boundaries() -> None:
    # Month end → first, including a year boundary and a leap February.
    for first in ("2026-12-01T01:00", "2027-01-01T01:00", "2028-03-01T01:00"):
        got = due_slots(DEFAULTS, at(first) + timedelta(minutes=10), GRACE)
        assert Slot("backup-compliance", at(first)) in got
    assert latest_slot("0 1 1 * *", at("2028-02-29T23:59")) == at("2028-02-01T01:00")
    assert latest_slot("0 1 1 * *", at("2027-01-01T00:59")) == at("2026-12-01T01:00")
    not_first = due_slots(DEFAULTS, at("2026-11-30T01:10"), GRACE)
    assert [s for s in not_first if s.kind == "backup-compliance"] == []


def test_only_the_newest_missed_slot_runs() -> None:
    # Every 5 minutes, ticks missing for 40 minutes: one run for the newest slot, not eight.
    slots = due_slots({"backup-full": "*/5 * * * *"}, at("2026-11-24T02:43"), GRACE)
    assert slots == [Slot("backup-full", at("2026-11-24T02:40"))]


def test_utc_has_no_dst_gaps() -> None:
    # 2026-03-29 is when Europe skips 02:00-03:00 and 2026-03-08 the US does: UTC has no such gap.
    for day in ("2026-03-08", "2026-03-29", "2026-10-25", "2026-11-01"):
        assert due_slots({"backup-full": "30 2 * * *"}, at(f"{day}T02:30"), GRACE) == [
            Slot("backup-full", at(f"{day}T02:30"))
        ]


def test_aware_times_in_other_zones_are_converted() -> None:
    from datetime import timezone

    plus2 = datetime(2026, 11, 24, 4, 10, tzinfo=timezone(timedelta(hours=2)))
    assert due_slots(DEFAULTS, plus2, GRACE) == [Slot("backup-full", at("2026-11-24T02:00"))]
    with pytest.raises(ValueError):
        due_slots(DEFAULTS, datetime(2026, 11, 24, 2, 0), GRACE)  # naive


def test_bad_cron_refused() -> None:
    with pytest.raises(ValueError):
        due_slots({"backup-full": "0 2 * *"}, at("2026-11-24T02:00"), GRACE)


def test_simultaneous_slots_are_ordered() -> None:
    # 2026-11-01 is a Sunday, the 1st: compliance 01:00, full 02:00, verify 03:00, cleanup 04:00.
    slots = due_slots(DEFAULTS, at("2026-11-01T04:00"), timedelta(hours=4))
    assert [s.kind for s in slots] == ["backup-compliance", "backup-full", "verify", "cleanup"]


@given(now=UTC_TIMES, grace_minutes=st.integers(min_value=1, max_value=7 * 1440))
def test_due_slots_lie_in_the_window_and_match_the_cron(now: datetime, grace_minutes: int) -> None:
    grace = timedelta(minutes=grace_minutes)
    for slot in due_slots(DEFAULTS, now, grace):
        assert now - grace < slot.at <= now
        assert slot.at.second == 0 and slot.at.microsecond == 0
        assert latest_slot(DEFAULTS[slot.kind], slot.at) == slot.at
        assert parse_slot_time(slot_time(slot.at)) == slot.at


@given(now=UTC_TIMES)
def test_a_daily_slot_is_due_for_exactly_the_grace_window(now: datetime) -> None:
    # Ticks every 5 minutes with a 60-minute grace: each daily slot is due in 12 consecutive ticks.
    slot = latest_slot("0 2 * * *", now)
    ticks = [slot + timedelta(minutes=5 * i) for i in range(-3, 20)]
    due = [t for t in ticks if due_slots({"backup-full": "0 2 * * *"}, t, GRACE)]
    assert due == [slot + timedelta(minutes=5 * i) for i in range(12)]


# -- staleness -------------------------------------------------------------------------------------
NOW = at("2026-11-24T03:00")
STALE = timedelta(minutes=10)


@pytest.mark.parametrize(
    ("run", "stale"),
    [
        ({"state": "running", "heartbeat_at": "2026-11-24T02:49:59Z"}, True),
        ({"state": "running", "heartbeat_at": "2026-11-24T02:50:01Z"}, False),
        ({"state": "running", "heartbeat_at": None, "started_at": "2026-11-24T01:00:00Z"}, True),
        ({"state": "running", "heartbeat_at": None, "started_at": "2026-11-24T02:59:00Z"}, False),
        ({"state": "running"}, True),
        ({"state": "running", "heartbeat_at": "garbage"}, True),
        ({"state": "queued", "heartbeat_at": None}, False),
        ({"state": "succeeded", "heartbeat_at": "2026-11-20T00:00:00Z"}, False),
        ({"state": "failed", "heartbeat_at": "2026-11-20T00:00:00Z"}, False),
    ],
)
def test_is_stale(run: dict[str, object], stale: bool) -> None:
    assert Run.from_dict({"run_id": "r", "kind": "verify", **run}).is_stale(NOW, STALE) is stale


# -- run ids and keys ------------------------------------------------------------------------------
def test_run_ids_sort_by_time_and_round_trip() -> None:
    t1, t2 = at("2026-11-24T02:00"), at("2026-11-24T02:00:00.001")
    a, b = new_run_id(t1), new_run_id(t2)
    assert len(a) == 26 and validate_run_id(a) == a
    assert a < b
    assert run_id_time(a) == t1 and run_id_time(b) == t2
    assert new_run_id(t1) != new_run_id(t1)  # random part
    assert new_run_id(t1, seed="backup-full/x") == new_run_id(t1, seed="backup-full/x")
    assert new_run_id(t1, seed="backup-full/x") != new_run_id(t1, seed="verify/x")
    assert queue_key(a) == f"jobs/queue/20261124T020000Z-{a}.json"


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "../../catalog",
        "ABCDEFGHJKMNPQRSTVWXYZ0123",
        "a" * 25,
        "a" * 27,
        "0123456789abcdefghjkmnpqr/",
        "0123456789abcdefghjkmnpq\n",
        None,
        42,
    ],
)
def test_bad_run_ids_refused(bad: object) -> None:
    with pytest.raises(InvalidNameError):
        validate_run_id(bad)


def test_slot_keys_and_params_are_checked() -> None:
    assert slot_key("backup-full/2026-11-24T02:00Z") == "jobs/slots/backup-full/2026-11-24T02:00Z.json"
    for bad in ("backup-full/../../x", "Backup/2026-11-24T02:00Z", "backup-full/2026-11-24"):
        with pytest.raises((ValueError, InvalidNameError)):
            slot_key(bad)
    name = "full_backup_db_20261124_020000"
    assert check_params({"name": name}) == {"name": name}
    with pytest.raises(InvalidNameError):
        check_params({"name": "../../catalog.json"})
    with pytest.raises(InvalidNameError):
        check_params({"blob": "x" * 5000})


def test_job_from_dict_refuses_junk() -> None:
    good = Job(new_run_id(NOW), "verify", {}, "2026-11-24T03:00:00Z", None)
    assert Job.from_dict(good.to_dict()) == good
    junks: list[object] = [
        [],
        {"run_id": "x", "kind": "verify"},
        {**good.to_dict(), "kind": "../x"},
        {**good.to_dict(), "params": []},
    ]
    for junk in junks:
        with pytest.raises((ValueError, InvalidNameError)):
            Job.from_dict(junk)
