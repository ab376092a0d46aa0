"""`coldcopy changes setup|teardown|drain|status`: the change archive of a logical replication slot."""

from __future__ import annotations

import argparse
from typing import Any

from coldcopy.changes.health import load_health
from coldcopy.changes.monitor import archive_slot, drain_and_record, drain_loop, record_setup, record_teardown
from coldcopy.changes.slot import setup, slot_state, teardown
from coldcopy.cli.common import now, settings_for
from coldcopy.cli.output import present
from coldcopy.config import DB, STORAGE, missing
from coldcopy.context import open_context
from coldcopy.core.alerts import changes_alerts
from coldcopy.core.changes import ChangesHealth
from coldcopy.core.humanize import human_bytes
from coldcopy.postgres.client import Postgres


def cmd_changes_setup(args: argparse.Namespace) -> int:
    settings = settings_for(args, (DB,))
    with Postgres(settings).session() as conn:
        r = setup(conn, archive_slot(settings))
    lines = [f"change archive set up on slot {r.slot}"]
    if missing(settings, STORAGE):  # the slot works without the bucket; its watch does not
        lines.append(
            "WARNING: the bucket is not configured here (SPACES_*), so nothing watches the slot until "
            "the first drain stores the archive's health: run a drain, or set up with the bucket settings"
        )
    else:  # the stale alert now fires if no drain ever reads the slot
        record_setup(open_context(settings), r.slot, now())
    lines += [f"  created: {c}" for c in r.created] + [f"  already there: {c}" for c in r.existing]
    if r.left_out:
        lines.append(
            f"{len(r.left_out)} tables have no primary key and REPLICA IDENTITY DEFAULT: their changes are "
            "LEFT OUT of the archive (an UPDATE or DELETE could not be replayed exactly). To include them:"
        )
        lines += [f"  {fix}" for fix in r.fixes]
    if r.large_objects:
        lines.append(f"{r.large_objects} large objects exist: logical decoding does not carry their changes")
    lines.append(
        "the slot keeps WAL on the server until it is drained: drain it on a schedule "
        "(`coldcopy changes drain`), and run `coldcopy changes teardown` when you stop"
    )
    present(args, r.to_dict(), "\n".join(lines))
    return 0


def cmd_changes_teardown(args: argparse.Namespace) -> int:
    settings = settings_for(args, (DB, STORAGE))
    ctx = open_context(settings)
    slot = archive_slot(settings)
    # Recorded first: the scheduled drain that then finds no slot stands down instead of alerting.
    h = record_teardown(ctx, slot, now())
    with Postgres(settings).session() as conn:
        removed = teardown(conn, slot)
    present(
        args,
        {"removed": removed, "torn_down_at": h.torn_down_at},
        (
            "removed: " + ", ".join(removed)
            if removed
            else "nothing to remove: the change archive was not set up"
        )
        + f"\nrecorded as torn down at {h.torn_down_at}: "
        "no drain runs and no alert fires until setup runs again",
    )
    return 0


def cmd_changes_drain(args: argparse.Namespace) -> int:
    ctx = open_context(settings_for(args, (DB, STORAGE)))
    if args.loop:
        out = drain_loop(ctx, float(args.loop), now)
        failed = [r for r in out["drains"] if "error" in r]
        present(
            args, out, f"{len(out['drains'])} drains" + (f", failed: {failed[-1]['error']}" if failed else "")
        )
        return 1 if failed else 0
    r = drain_and_record(ctx, now)
    present(
        args,
        r.to_dict(),
        f"drained {r.transactions} transactions in {len(r.batches)} batches from {r.slot} "
        f"({human_bytes(sum(b.stored_size for b in r.batches))} stored); the slot is at {r.confirmed_lsn}, "
        f"holding {human_bytes(r.lag_bytes)} of WAL",
    )
    return 0


def status_text(h: ChangesHealth) -> str:
    lines = [
        f"slot {h.slot}: "
        + ("MISSING" if not h.slot_exists else "INVALIDATED" if h.slot_invalidated else "ok")
        + f", holds {human_bytes(h.lag_bytes)} of WAL on the server"
        + (f" (max_slot_wal_keep_size {human_bytes(h.max_keep_bytes)})" if h.max_keep_bytes else ""),
        f"archived through {h.last_drain_at or 'never'}; "
        f"newest archived commit {h.newest_commit_at or 'none'}",
        f"window: {h.window_start or 'no logical backup since the stream began'} .. {h.window_end or '-'}"
        + (f" (from {h.window_backup})" if h.window_backup else ""),
    ]
    if h.left_out:
        lines.append(f"tables left out (no replayable identity): {', '.join(h.left_out)}")
    if h.last_error:
        lines.append(f"last drain failed at {h.last_error_at}: {h.last_error}")
    return "\n".join(lines)


def cmd_changes_status(args: argparse.Namespace) -> int:
    settings = settings_for(args, (STORAGE,))
    ctx = open_context(settings)
    h = load_health(ctx.storage)
    slot = archive_slot(settings)
    if settings.db_host or settings.db_name:
        try:  # the server's own view of the slot, when the database is reachable
            with Postgres(settings).session() as conn:
                st = slot_state(conn, slot)
            h = h or ChangesHealth(slot, "")
            h.slot_exists, h.slot_invalidated, h.lag_bytes = st.exists, st.invalidated, st.lag_bytes
            h.max_keep_bytes, h.wal_status = st.max_keep_bytes, st.wal_status
        except Exception:  # noqa: BLE001 - status shows what the bucket knows
            pass
    if h is None:
        present(args, {"slot": slot, "set_up": False}, "the change archive has not been drained here yet")
        return 1
    if not h.in_use and not h.slot_exists:
        present(
            args,
            {**h.to_dict(), "set_up": False, "alerts": []},
            f"the change archive was torn down at {h.torn_down_at}: not set up (no slot {slot}); "
            "`coldcopy changes setup` starts it again",
        )
        return 0
    alerts = changes_alerts(h, settings.thresholds, now())
    out: dict[str, Any] = {**h.to_dict(), "alerts": [a.to_dict() for a in alerts]}
    present(
        args,
        out,
        lambda: status_text(h) + "".join(f"\n{a.severity.upper()}: {a.message}" for a in alerts),
    )
    return 1 if alerts else 0
