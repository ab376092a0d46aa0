"""The logical PITR drill: the change archive recovered to a random time, into a scratch database.

The weekly verification and ``POST /restore-test`` run it when a change archive exists:

1. Aim.  The batch records and the logical backups' snapshots give the window (the oldest dump the
   stream extends .. the newest archived commit); the target is a random time in it
   (:func:`coldcopy.core.pitr_drill.choose_time`, the random source injected).
2. Recover.  ``coldcopy pitr``'s own entry point (:func:`coldcopy.restore.replay.run_logical_pitr`)
   restores the dump and replays the archive into a new scratch database (``cc_verify_…``) on the
   scratch target of the test restores (``VERIFY_DB_*``, else a throwaway local cluster): nothing
   else is written, and the scratch database is dropped whatever happens.
3. Check, against a second pass over the archive (:class:`coldcopy.core.pitr_drill.Tally`): the
   heartbeat row is the one the last drain before the target wrote; every table's row count is
   the dump's exact count moved on by the rows the applied transactions inserted, deleted and
   truncated; the shape the dump recorded holds (when no DDL was replayed).
4. Record.  The measurement (the target, the dump, restore seconds, transactions replayed and
   their rate, the history covered per second of replay) goes into the verification record of the
   dump that was restored, at level ``pitr``, and is carried forward (``pitr_drill``) for
   :mod:`coldcopy.core.recovery_time`.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import replace
from typing import Any

from coldcopy.config import Settings, redact
from coldcopy.context import Context, open_context
from coldcopy.core.manifest import Manifest
from coldcopy.core.pitr_drill import (
    Tally,
    aim_drill,
    count_differences,
    expected_counts,
    replay_figures,
)
from coldcopy.core.replay import LogicalPlan
from coldcopy.core.times import iso, parse_iso
from coldcopy.core.verification import PITR_LEVEL, VerifyResult
from coldcopy.errors import ColdCopyError, EnvironmentProblem, StorageError
from coldcopy.postgres.client import Postgres
from coldcopy.restore.logical import shape_problems
from coldcopy.restore.replay import (
    LogicalPitrResult,
    batch_lines,
    batch_records,
    logical_dumps,
    run_logical_pitr,
)
from coldcopy.verify.record import record_result
from coldcopy.verify.scratch_restore import Scratch, scratch_database

log = logging.getLogger(__name__)


def run_pitr_drill(
    settings: Settings, *, rng: random.Random | None = None, ctx: Context | None = None
) -> VerifyResult | None:
    """Drill the change archive (None when there is none, or no window yet: nothing to prove)."""
    t0 = time.monotonic()
    ctx = ctx or open_context(settings)
    records = batch_records(ctx)
    if not records:
        return None
    batches = [b for b, _ in records]
    dumps = logical_dumps(ctx)
    aim = aim_drill(batches, dumps, rng or random.Random())
    if aim is None:
        log.info("the change archive has no window yet (no logical backup it extends): no drill")
        return None
    plan, window, unreachable = aim
    result = VerifyResult(plan.dump.name, PITR_LEVEL)
    target = plan.target
    assert target.time is not None
    result.add(
        "the window reaches the newest archived commit",
        unreachable is None,
        unreachable[:500] if unreachable else f"up to {iso(window.window_end)}",
    )
    result.add(
        "recovery target",
        True,
        f"{iso(target.time)}, at random in the window {iso(window.window_start)} .. "
        f"{iso(window.window_end)}; dump {plan.dump.name} and {len(plan.batches)} batch(es)",
    )
    result.measurement = {
        "kind": "logical-pitr",
        "recovery_target_time": iso(target.time),
        "window_start": iso(window.window_start),
        "window_end": iso(window.window_end),
        "backup": plan.dump.name,
        "batches": len(plan.batches),
    }
    try:
        _drill(ctx, settings, plan, {b.key: r for b, r in records}, result)
    except ColdCopyError as exc:
        result.add("pitr drill", False, exc.message[:500], storage=isinstance(exc, StorageError))
    except Exception as exc:  # a drill that breaks is a failed drill, recorded, not a crash
        result.add("pitr drill", False, redact(f"{type(exc).__name__}: {exc}", settings)[:500])
    result.duration_seconds = round(time.monotonic() - t0, 3)
    record_result(ctx, result)
    return result


def _drill(
    ctx: Context,
    settings: Settings,
    plan: LogicalPlan,
    records: dict[str, dict[str, Any]],
    result: VerifyResult,
) -> None:
    scratch: Scratch | None = None
    try:
        with scratch_database(settings, create=False) as scratch:
            result.add("scratch database named", True, f"{scratch.dbname} on {scratch.where}")
            _recover_and_check(ctx, settings, plan, records, result, scratch)
    except EnvironmentProblem as exc:
        result.add("scratch target", False, exc.message[:500], environment=True)
    if scratch is not None:
        result.add(
            "scratch database dropped",
            scratch.dropped,
            scratch.dbname + ("" if scratch.dropped else f": {scratch.drop_error}"),
        )


def _recover_and_check(
    ctx: Context,
    settings: Settings,
    plan: LogicalPlan,
    records: dict[str, dict[str, Any]],
    result: VerifyResult,
    scratch: Scratch,
) -> None:
    # The archive's prefix stays the protected database's, whatever the scratch is called.
    here = replace(scratch.settings, cluster=settings.cluster_label)
    counts: dict[str, int] = {}  # the tables as replayed, before the erasure ledger removes rows
    try:
        done = run_logical_pitr(
            here,
            plan.target,
            scratch.dbname,
            scratch=True,
            on_replayed=lambda conn: counts.update(Postgres.table_row_counts(conn)),
        )
    except ColdCopyError as exc:
        result.add(
            "restored and replayed into the scratch database",
            False,
            exc.message[:500],
            storage=isinstance(exc, StorageError),
        )
        return
    _recovered(result, done, plan)
    tally = Tally(plan.dump.visibility, plan.target)
    for batch in plan.batches:
        for line in batch_lines(ctx, records[batch.key]):
            tally.feed(line)
            if tally.done:
                break
        if tally.done:
            break
    manifest = ctx.catalog.manifest(plan.dump.name)
    _check_heartbeat(result, done, tally, plan)
    _check_counts(result, counts, manifest, tally)
    _check_shape(result, scratch, manifest, tally)


def _recovered(result: VerifyResult, done: LogicalPitrResult, plan: LogicalPlan) -> None:
    """The restore and the replay, measured."""
    r = done.replay
    assert plan.target.time is not None
    history = (plan.target.time - plan.dump.started_at).total_seconds()
    figures = replay_figures(r.transactions, r.seconds, history)
    assert result.measurement is not None
    result.measurement.update(
        restore_seconds=done.restore_seconds,
        replay_transactions=r.transactions,
        replay_rows=r.rows,
        replay_ddl=r.ddl,
        replay_seconds=r.seconds,
        last_replayed_commit_at=r.last_commit_at,
        heartbeat_at=done.heartbeat_at,
        **figures,
    )
    result.add(
        "restored and replayed into the scratch database",
        True,
        f"restore {done.restore_seconds:.2f} s; {r.transactions} transactions ({r.rows} rows, {r.ddl} DDL) "
        f"replayed in {r.seconds:.2f} s = {figures['replay_transactions_per_second']} transactions/s",
    )


def _check_heartbeat(result: VerifyResult, done: LogicalPitrResult, tally: Tally, plan: LogicalPlan) -> None:
    got = parse_iso(done.heartbeat_at) if done.heartbeat_at else None
    if tally.heartbeat is not None:
        ok = got == tally.heartbeat
        detail = (
            f"the heartbeat reads {iso(got) if got else 'nothing'}; the last drain before the target wrote "
            f"{iso(tally.heartbeat)} (committed {iso(tally.heartbeat_commit or tally.heartbeat)})"
        )
    else:  # no drain between the dump and the target: the dump's own heartbeat stays
        ok = got is None or got <= plan.dump.started_at
        detail = (
            "no drain between the dump and the target; the heartbeat reads "
            f"{iso(got) if got else 'nothing'}, the dump started {iso(plan.dump.started_at)}"
        )
    result.add("the heartbeat ends at the last drain before the target", ok, detail)


def _check_counts(result: VerifyResult, got: dict[str, int], manifest: Manifest, tally: Tally) -> None:
    """``got``: the tables' counts in the replay's transaction, before the erasure ledger."""
    name = "every table's row count equals the count at the target"
    if manifest.row_counts != "exact":
        result.skip(name, "the dump recorded estimated row counts: no exact count to move on from")
        return
    expected = expected_counts(manifest.tables, tally)
    wrong = count_differences(expected, got, ddl=bool(tally.ddl))
    result.add(
        name,
        not wrong,
        "; ".join(wrong[:5])
        if wrong
        else f"{len(got)} tables, {sum(got.values())} rows: the dump's counts plus {tally.transactions} "
        "transactions' inserts, deletes and truncates",
    )


def _check_shape(result: VerifyResult, scratch: Scratch, manifest: Manifest, tally: Tally) -> None:
    name = "the shape the dump recorded holds"
    if tally.ddl:
        result.skip(name, f"{tally.ddl} DDL statement(s) replayed: the shape changed since the dump")
        return
    differs = shape_problems(scratch.pg, scratch.dbname, manifest.shape, ("grants", "roles"))
    result.add(name, not differs, "; ".join(differs)[:500])
