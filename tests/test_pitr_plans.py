"""Plans and recovery-time estimates with a logical change archive: PITR from it, timed at the
replay rate the logical PITR drills measured, and the data-loss window from the archive's state."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from coldcopy.core.catalog import Catalog
from coldcopy.core.changes import ChangesHealth
from coldcopy.core.recovery_inputs import parse_inputs, recovery_inputs
from coldcopy.core.recovery_time import estimate
from coldcopy.core.runbooks import Facts, build_plan
from coldcopy.core.times import iso
from test_recovery_time import MB, catalog, drill, entry

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
DUMP_AT = NOW - timedelta(hours=6)
NEWEST = NOW - timedelta(seconds=40)  # the newest archived commit
# A drill: 600 transactions in 2 s, covering an hour of history.
TX, SECONDS, HISTORY = 600, 2.0, 3600.0


def _catalog(with_drill: bool = True) -> tuple[Catalog, str]:
    e = replace(
        entry(f"full_backup_app_{DUMP_AT:%Y%m%d_%H%M%S}", DUMP_AT, 100 * MB),
        platform={"platform": "supabase"},
    )
    record: dict[str, Any] = drill(NOW - timedelta(hours=2), 100 * MB, 10)  # a test restore: 10 MB/s
    if with_drill:
        m = {"replay_transactions": TX, "replay_seconds": SECONDS, "history_seconds": HISTORY}
        record["pitr_drill"] = {"at": iso(NOW - timedelta(hours=1)), "measurement": m}
    return catalog([e], {e.name: record}), e.name


def _health(**kw: Any) -> ChangesHealth:
    values: dict[str, Any] = {
        "window_start": iso(DUMP_AT),
        "window_end": iso(NOW - timedelta(seconds=30)),
        "newest_commit_at": NEWEST.strftime("%Y-%m-%d %H:%M:%S.%f+00"),  # as wal2json writes it
        "last_drain_at": iso(NOW - timedelta(seconds=30)),
    }
    return ChangesHealth("coldcopy_changes_app", iso(NOW), **{**values, **kw})


def test_recovery_time_replays_the_change_archive_at_the_drills_measured_rate() -> None:
    cat, name = _catalog()
    est = estimate(cat, NOW, None, _health())
    sc = next(s for s in est["scenarios"] if s["scenario"] == "pitr-logical-now")
    history = (NEWEST - DUMP_AT).total_seconds()
    assert sc["available"] and sc["backup"] == name and sc["target"] == iso(NEWEST)
    assert sc["restore_seconds"] == 10.0  # 100 MB at the measured 10 MB/s
    assert sc["replay_seconds"] == round(history / (HISTORY / SECONDS), 1)
    assert sc["estimate_seconds"] == round(10.0 + sc["replay_seconds"], 1)
    assert sc["replay_measured"] and sc["replay_transactions_per_second"] == TX / SECONDS
    assert est["logical_replay"]["transactions_per_second"] == TX / SECONDS
    assert "measured replay of the 1 newest logical PITR drill" in sc["how"]
    # The digest carries the drills: the same answer from the stored inputs.
    stored = parse_inputs(recovery_inputs(cat).to_dict())
    assert stored.pitr_drills == recovery_inputs(cat).pitr_drills and len(stored.pitr_drills) == 1
    # Without a drill: a labelled assumption (as fast as it was written), never a measured claim.
    unmeasured, _ = _catalog(with_drill=False)
    sc = next(
        s
        for s in estimate(unmeasured, NOW, None, _health())["scenarios"]
        if s["scenario"] == "pitr-logical-now"
    )
    assert not sc["replay_measured"] and "ASSUMED" in sc["how"] and sc["replay_seconds"] == round(history, 1)
    # Without a change archive the scenario is not there at all.
    assert not any(s["scenario"] == "pitr-logical-now" for s in estimate(cat, NOW)["scenarios"])


def test_deletion_is_undone_by_pitr_from_the_change_archive_into_a_new_database() -> None:
    cat, name = _catalog()
    before = NOW - timedelta(hours=2)
    p = build_plan("deletion", cat, Facts("postgres", "k"), NOW, before=before, changes=_health())
    target = iso(before - timedelta(seconds=1))
    side = f"postgres_before_{before:%Y%m%d_%H%M}"
    assert p.ok, p.blockers
    assert f"coldcopy pitr --target-time {target} --target-db {side}" in p.commands
    assert f"pg_dump --data-only --table=<table> {side} | psql postgres" in p.commands
    assert any(c.startswith(f"psql -d {side} -c '\\copy (SELECT * FROM <table>") for c in p.commands)
    assert p.backup is not None and p.backup["name"] == name
    assert p.data_loss["seconds"] == 0 and p.data_loss["text"].startswith(f"none before {iso(before)}")
    history = (before - timedelta(seconds=1) - DUMP_AT).total_seconds()
    assert p.estimate["measured"] and p.estimate["seconds"] == round(10.0 + round(history / 1800, 1), 1)
    assert not any("not available" in r for r in p.risks)
    # Before the window: the dump plan, saying why PITR cannot help.
    p = build_plan(
        "deletion", cat, Facts("postgres", "k"), NOW, before=DUMP_AT - timedelta(hours=1), changes=_health()
    )
    assert "outside the change archive's window" in p.first[1]
    assert not any(c.startswith("coldcopy pitr") for c in p.commands)


def test_corruption_and_disaster_offer_pitr_to_the_newest_archived_commit() -> None:
    cat, _ = _catalog()
    lost = (NOW - NEWEST).total_seconds()
    for scenario, where in (("corruption", " --target-db postgres_pitr_"), ("disaster", "`")):
        p = build_plan(scenario, cat, Facts("postgres", "k"), NOW, changes=_health())
        hint = next(
            x for x in p.first if x.startswith("Smallest data loss: point-in-time recovery from the change")
        )
        assert f"coldcopy pitr --target-time {iso(NEWEST)}{where}" in hint, hint
        assert f"({lost:.0f} s before now" in hint and "estimated" in hint
        assert p.data_loss["with_pitr"] == {
            "to": iso(NEWEST),
            "seconds": round(lost),
            "text": f"changes committed after {iso(NEWEST)}, the newest in the change archive ({lost:.0f} s)",
        }
        assert "with point-in-time recovery from the change archive" in p.data_loss["text"]
    # The archive's actual state: a failing drain and a lost slot are risks; no window, no offer.
    p = build_plan(
        "disaster", cat, Facts("postgres", "k"), NOW, changes=_health(last_error="boom", slot_exists=False)
    )
    assert any("last drain failed (boom)" in r for r in p.risks) and any("slot is lost" in r for r in p.risks)
    p = build_plan(
        "disaster", cat, Facts("postgres", "k"), NOW, changes=_health(window_start=None, gap_since="x")
    )
    assert not any("change archive to its newest" in x for x in p.first)
    assert any("the change archive has no window" in r and "continuity at x" in r for r in p.risks)


def test_a_failed_pitr_drill_does_not_block_restoring_its_dump() -> None:
    """A damaged batch fails the drill recorded under the dump it restored: the plans warn, but the
    dump's own test restore still stands."""
    cat, name = _catalog()
    record = cat.verifications[name]
    cat.verifications[name] = {
        "at": iso(NOW - timedelta(minutes=5)),
        "level": "pitr",
        "ok": False,
        "restore_proof": record["restore_proof"],
        "pitr_drill": record["pitr_drill"],
    }
    p = build_plan("disaster", cat, Facts("postgres", "k"), NOW, changes=_health())
    assert p.ok, p.blockers
    assert any(f"the last PITR drill from {name} FAILED" in r for r in p.risks)
    assert (
        p.backup is not None
        and p.backup["verification"]["ok"]
        and p.backup["verification"]["level"] == "restore"
    )
