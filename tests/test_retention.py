"""The pure retention core: examples, then property-based tests over random histories (hypothesis)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coldcopy.config import load_settings
from coldcopy.core.retention import (
    Backup,
    RetentionPlan,
    RetentionPolicy,
    WalFile,
    lifecycle_problems,
    lifecycle_rules,
    plan_retention,
    wal_position,
)

NOW = datetime(2026, 11, 24, 4, 0, tzinfo=UTC)
EPOCH = datetime(2023, 1, 1, tzinfo=UTC)
SPAN = 4 * 366 * 86400  # seconds of history the strategies draw from


def b(kind: str, when: datetime, db: str = "app", wal_start: str | None = None) -> Backup:
    return Backup.from_name(f"{kind}_backup_{db}_{when.strftime('%Y%m%d_%H%M%S')}", wal_start)


def plan(
    backups: list[Backup],
    policy: RetentionPolicy | None = None,
    *,
    pins: dict[str, str] | None = None,
    verified: dict[str, bool] | None = None,
    unreadable: dict[str, str] | None = None,
    wal: list[WalFile] | None = None,
    now: datetime = NOW,
) -> RetentionPlan:
    return plan_retention(
        backups, pins or {}, verified or {}, unreadable or {}, wal or [], policy or RetentionPolicy(), now
    )


def deleted(p: RetentionPlan) -> set[str]:
    return {n for n, _ in p.delete}


def seg(tli: int, pos: int) -> str:
    return f"{tli:08X}{pos >> 8:08X}{pos & 0xFF:08X}"


# -- examples ------------------------------------------------------------------------------------------
def test_defaults_are_todays_settings() -> None:
    s = load_settings({}, env_file=Path(os.devnull)).retention  # nothing set: the documented defaults
    p = RetentionPolicy()
    assert (p.full_days, p.compliance_days, p.wal_days) == (s.full_days, s.compliance_days, s.wal_days)
    assert (s.full_days, s.compliance_days, s.wal_days) == (30, 365, 30)
    assert (p.keep_daily, p.keep_weekly, p.keep_monthly, p.keep_yearly) == (0, 0, 0, 0)


def test_day_rules_per_kind() -> None:
    newest = b("full", NOW - timedelta(hours=2))
    young = b("full", NOW - timedelta(days=29, hours=23))
    old = b("full", NOW - timedelta(days=30))
    comp_young = b("compliance", NOW - timedelta(days=364))
    comp_old = b("compliance", NOW - timedelta(days=366))
    base_old = b("base", NOW - timedelta(days=31), wal_start=seg(1, 5))
    p = plan([old, young, newest, comp_young, comp_old, base_old])
    assert [n for n, _ in p.delete] == [comp_old.name, base_old.name, old.name]  # oldest first
    assert dict(p.delete)[old.name] == "full backup older than 30 days"
    assert dict(p.keep)[young.name] == ["younger than 30 days (full)"]
    assert dict(p.keep)[newest.name] == ["newest backup of app", "younger than 30 days (full)"]
    assert p.reported == [] and p.wal_delete == []


def test_hard_rules_beat_the_policy() -> None:
    old = [b("full", NOW - timedelta(days=100 + i)) for i in range(5)]
    unreadable = {"full_backup_app_20200101_000000": "IntegrityError: bad JSON"}
    p = plan(
        old,
        pins={old[3].name: "legal hold"},
        verified={old[1].name: True, old[0].name: False, old[2].name: True},
        unreadable=unreadable,
    )
    keep = dict(p.keep)
    assert keep[old[0].name] == ["newest backup of app"]  # never leave a database with no backup
    assert keep[old[1].name] == ["newest verified backup"]  # old[0] failed its verification
    assert keep[old[3].name] == ["pinned: legal hold"]
    assert deleted(p) == {old[2].name, old[4].name}
    assert "full_backup_app_20200101_000000" not in deleted(p) | set(keep)
    assert p.reported and "cannot be read" in p.reported[0] and "bad JSON" in p.reported[0]


def test_tiers_keep_the_newest_of_each_period() -> None:
    # Two backups a day for 60 days up to Sunday 2026-11-22, all past the day rules (full_days=1).
    start = NOW - timedelta(days=62)
    backups = [b("full", start + timedelta(days=d, hours=h)) for d in range(60) for h in (1, 13)]
    policy = RetentionPolicy(full_days=1, keep_daily=3, keep_weekly=2, keep_monthly=2)
    p = plan(backups, policy)
    keep = dict(p.keep)
    last = backups[-1]
    assert keep[last.name] == ["newest backup of app", "daily 1/3", "weekly 1/2", "monthly 1/2"]
    assert keep[backups[-3].name] == ["daily 2/3"]
    assert keep[backups[-5].name] == ["daily 3/3"]
    assert backups[-2].name in deleted(p)  # the older one of the newest day
    assert len(p.keep) == 1 + 2 + 1 + 1  # newest (daily/weekly/monthly 1), 2 dailies, weekly 2, monthly 2
    assert all("not kept by any tier" in why for _, why in p.delete)


def test_wal_decision() -> None:
    base_old = b("base", NOW - timedelta(days=40), wal_start=seg(1, 0x10))
    base_new = b("base", NOW - timedelta(days=3), wal_start=seg(2, 0x30))
    wal = [
        WalFile(f"wal/{s[:8]}/{s}{suffix}", NOW - timedelta(days=age))
        for s, age, suffix in [
            (seg(1, 0x0F), 50, ".zst"),  # before base_old: goes once base_old goes
            (seg(1, 0x10), 40, ".zst"),  # base_old's start
            (seg(1, 0x2F), 35, ""),
            (seg(2, 0x30), 3, ""),
        ]
    ]
    wal.append(WalFile("wal/00000002/00000002.history", NOW - timedelta(days=90)))
    keep_both = plan([base_old, base_new], RetentionPolicy(full_days=60), wal=wal)
    assert [k for k, _ in keep_both.wal_delete] == [wal[0].key]
    drop_old = plan([base_old, base_new], wal=wal)
    assert deleted(drop_old) == {base_old.name}
    assert [k for k, _ in drop_old.wal_delete] == [wal[0].key, wal[1].key, wal[2].key]
    assert "before base_backup_app_" in drop_old.wal_delete[0][1]
    # A base backup whose start is unknown, or whose manifest is unreadable, holds all WAL.
    held = plan([base_old, b("base", NOW - timedelta(days=1))], wal=wal)
    assert held.wal_delete == [] and "no readable start WAL segment" in held.reported[0]
    held = plan([base_new], wal=wal, unreadable={"base_backup_app_20260101_000000": "bad"})
    assert held.wal_delete == [] and "no WAL deleted" in held.reported[-1]


def test_wal_names() -> None:
    assert wal_position("000000010000000A000000FF") == (1, 10, 255)
    assert wal_position("000000010000000A000000FF.00000028.backup") == (1, 10, 255)
    assert wal_position("00000002.history") is None
    assert wal_position("not-a-wal-name-at-all!!!") is None


def test_plan_id_is_what_would_be_deleted() -> None:
    backups = [b("full", NOW - timedelta(days=40 + i)) for i in range(3)]
    p1, p2 = plan(backups), plan(backups)
    assert p1.plan_id == p2.plan_id
    assert plan(backups, pins={backups[2].name: "x"}).plan_id != p1.plan_id


def test_lifecycle_rules_agree_with_the_policy() -> None:
    policy = RetentionPolicy(abort_upload_days=4)
    rules = lifecycle_rules(policy, "coldcopy/main/")
    assert rules == [
        {
            "ID": "coldcopy-abort-incomplete-uploads.coldcopy-main-",
            "Filter": {"Prefix": "coldcopy/main/"},
            "Status": "Enabled",
            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 4},
        }
    ]
    assert not any("Expiration" in r for r in rules)
    assert lifecycle_problems(rules, policy, "coldcopy/main/") == []
    short = {"ID": "tmp", "Status": "Enabled", "Filter": {"Prefix": ""}, "Expiration": {"Days": 7}}
    problems = lifecycle_problems([short], policy, "coldcopy/main/")
    assert len(problems) == 2 and "less than the policy's 365" in problems[0] and "30" in problems[1]
    other = {"ID": "logs", "Status": "Enabled", "Filter": {"Prefix": "logs/"}, "Expiration": {"Days": 1}}
    assert lifecycle_problems([other, {**short, "Status": "Disabled"}], policy, "coldcopy/main/") == []
    long = {**short, "Expiration": {"Days": 400}}
    assert "would not be protected" in lifecycle_problems([long], policy, "coldcopy/main/")[0]


# -- properties ------------------------------------------------------------------------------------------
KINDS = ("full", "compliance", "base")


@dataclass(frozen=True)
class History:
    backups: list[Backup]
    pins: dict[str, str]
    verified: dict[str, bool]
    unreadable: dict[str, str]
    policy: RetentionPolicy
    now: datetime


@st.composite
def histories(draw: st.DrawFn) -> History:
    offsets = draw(st.lists(st.integers(0, SPAN), max_size=40))
    # Some backups close together, so several share a day, a week, a month.
    offsets += [o + draw(st.integers(0, 3 * 86400)) for o in offsets[: draw(st.integers(0, len(offsets)))]]
    backups: dict[str, Backup] = {}
    for off in offsets:
        kind = draw(st.sampled_from(KINDS))
        # WAL advances with time (about 5000 segments over the span), with some jitter.
        start = seg(1, max(0, off * 5000 // SPAN - draw(st.integers(0, 50)))) if kind == "base" else None
        x = b(kind, EPOCH + timedelta(seconds=off), draw(st.sampled_from(["app", "crm"])), start)
        backups[x.name] = x
    names = sorted(backups)
    pins = {n: "pinned" for n in draw(st.lists(st.sampled_from(names), max_size=4))} if names else {}
    verified = (
        {n: draw(st.booleans()) for n in draw(st.lists(st.sampled_from(names), max_size=10))} if names else {}
    )
    unreadable = {n: "bad" for n in draw(st.lists(st.sampled_from(names), max_size=2))} if names else {}
    unreadable["full_backup_app_20240101_000000"] = "bad"

    def tier(most: int) -> int:
        return draw(st.one_of(st.just(0), st.integers(1, most)))

    policy = RetentionPolicy(
        full_days=draw(st.integers(1, 400)),
        compliance_days=draw(st.integers(1, 800)),
        wal_days=draw(st.integers(1, 60)),
        keep_daily=tier(10),
        keep_weekly=tier(6),
        keep_monthly=tier(14),
        keep_yearly=tier(3),
    )
    # Mostly after the history (the usual case), sometimes inside it (backups "from the future").
    now = EPOCH + timedelta(seconds=draw(st.integers(SPAN // 2, SPAN + 400 * 86400)))
    return History(list(backups.values()), pins, verified, unreadable, policy, now)


def _newest(group: list[Backup]) -> Backup:
    return max(group, key=lambda x: (x.created_at, x.name))


PERIODS: dict[str, Callable[[datetime], object]] = {
    "daily": lambda t: (t.year, t.month, t.day),
    "weekly": lambda t: tuple(t.isocalendar())[:2],
    "monthly": lambda t: (t.year, t.month),
    "yearly": lambda t: t.year,
}


def oracle_keep(h: History) -> set[str]:
    """What the policy says, computed another way: group, take each group's newest, rank groups."""
    policy: RetentionPolicy = h.policy
    now: datetime = h.now
    readable = [x for x in h.backups if x.name not in h.unreadable]
    keep = {x.name for x in readable if x.name in h.pins}
    days = {"full": policy.full_days, "base": policy.full_days, "compliance": policy.compliance_days}
    keep |= {x.name for x in readable if (now - x.created_at).total_seconds() < days[x.kind] * 86400}
    for db in {x.database for x in readable}:
        group = [x for x in readable if x.database == db]
        keep.add(_newest(group).name)
        ok = [x for x in group if h.verified.get(x.name) is True]
        if ok:
            keep.add(_newest(ok).name)
        for label, period in PERIODS.items():
            buckets: dict[object, list[Backup]] = {}
            for x in group:
                buckets.setdefault(period(x.created_at), []).append(x)
            heads = sorted((_newest(g) for g in buckets.values()), key=lambda x: (x.created_at, x.name))
            n = getattr(policy, f"keep_{label}")
            keep |= {x.name for x in heads[max(0, len(heads) - n) :]} if n else set()
    return keep


def run(h: History, backups: list[Backup] | None = None, wal: list[WalFile] | None = None) -> RetentionPlan:
    return plan_retention(
        backups if backups is not None else h.backups,
        h.pins,
        h.verified,
        h.unreadable,
        wal or [],
        h.policy,
        h.now,
    )


PROPS = settings(
    max_examples=600, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@PROPS
@given(histories())
def test_property_hard_rules_and_tiers(h: History) -> None:
    backups: list[Backup] = h.backups
    p = run(h)
    gone = deleted(p)
    kept = {n for n, _ in p.keep}
    readable = {x.name for x in backups if x.name not in h.unreadable}
    # Every readable backup is decided exactly once; nothing else is.
    assert gone | kept == readable and not gone & kept
    assert all(reasons for _, reasons in p.keep)
    # Hard rules.
    assert not gone & set(h.pins)
    assert not gone & set(h.unreadable)
    assert len(p.reported) >= len(h.unreadable)
    for db in {x.database for x in backups}:
        group = [x for x in backups if x.database == db and x.name in readable]
        ok = [x for x in group if h.verified.get(x.name) is True]
        if ok:
            assert _newest(ok).name not in gone
        if group:
            assert _newest(group).name not in gone
    # The result is what the policy says.
    assert gone == readable - oracle_keep(h)
    # Deletions come oldest first, and applying the plan leaves nothing more to delete.
    order = [next(x for x in backups if x.name == n).created_at for n, _ in p.delete]
    assert order == sorted(order)
    again = run(h, [x for x in backups if x.name not in gone])
    assert again.delete == []


@st.composite
def wal_histories(draw: st.DrawFn) -> tuple[History, list[WalFile]]:
    h = draw(histories())
    wal: list[WalFile] = []
    # Random segments, plus the segments right around each base backup's start (the boundary).
    starts = [wal_position(x.wal_start) for x in h.backups if x.wal_start]
    around = {(s[1] << 8 | s[2]) + d for s in starts if s for d in (-1, 0, 1)}
    positions = draw(st.lists(st.integers(0, 5200), max_size=60, unique=True))
    for pos in sorted(set(positions) | {p for p in around if p >= 0}):
        tli = draw(st.integers(1, 3))
        suffix = draw(st.sampled_from(["", "", ".zst", ".partial"]))
        # Archived about when it was written (WAL advances with time, as the base backups' starts do).
        late = timedelta(seconds=draw(st.integers(0, 3 * 86400)))
        wal.append(
            WalFile(
                f"wal/{tli:08X}/{seg(tli, pos)}{suffix}", EPOCH + pos * timedelta(seconds=SPAN / 5000) + late
            )
        )
    junk = ["wal/00000002/00000002.history", "wal/00000001/000000020000000000000001", "wal/x/y/z"]
    wal += [WalFile(k, EPOCH - timedelta(days=1)) for k in junk]
    return h, wal


@PROPS
@given(wal_histories())
def test_property_wal_never_needed_by_a_retained_base_backup(
    data: tuple[History, list[WalFile]],
) -> None:
    h, wal = data
    p = run(h, wal=wal)
    gone = {k for k, _ in p.wal_delete}
    policy: RetentionPolicy = h.policy
    cutoff = h.now - timedelta(days=policy.wal_days)
    kept = {n for n, _ in p.keep}
    starts = [wal_position(x.wal_start or "") for x in h.backups if x.kind == "base" and x.name in kept]
    by_key = {f.key: f for f in wal}
    assert gone <= set(by_key) and not gone & {f.key for f in wal[-3:]}  # junk is never deleted
    for key in gone:
        f = by_key[key]
        assert f.archived_at <= cutoff
        pos = wal_position(key.split("/")[2])
        assert pos is not None
        for start in starts:  # a retained base backup needs everything from its start on
            assert start is not None and (pos[1], pos[2]) < (start[1], start[2])
    # ... and exactly those go: old enough and before every retained start (no holds in these histories,
    # unless an unreadable manifest is a base backup's).
    held = any(n.startswith("base_") for n in h.unreadable)
    expected = (
        set()
        if held
        else {
            f.key
            for f in wal[:-3]
            if f.archived_at <= cutoff
            and all((wal_position(f.key.split("/")[2]) or (0, 0, 0))[1:] < s[1:] for s in starts if s)
        }
    )
    assert gone == expected


@pytest.mark.parametrize("day_offset", [0, 1])
def test_future_backups_are_kept(day_offset: int) -> None:
    """A clock behind the backups (skew): a backup 'from the future' is young, not deleted."""
    future = b("full", NOW + timedelta(days=day_offset, minutes=5))
    p = plan([future, b("full", NOW - timedelta(days=90))])
    assert future.name in dict(p.keep)
