"""Commands for physical backups and point-in-time recovery: `basebackup`, `wal-sweep`,
`wal-status`, `restore-point`, `pitr`.  (`coldcopy verify NAME` checks base backups too.)"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from coldcopy.backup.base import run_basebackup
from coldcopy.changes.points import write_restore_point
from coldcopy.cli.common import now, settings_for
from coldcopy.cli.output import present
from coldcopy.config import DB, STORAGE
from coldcopy.context import Context, open_context
from coldcopy.core.archive_report import ArchiveReport, summarize
from coldcopy.core.changes import BATCHES_PREFIX
from coldcopy.core.humanize import human_bytes
from coldcopy.core.recovery_plan import RecoveryRefused, Target, parse_target
from coldcopy.core.replay import LogicalPlan
from coldcopy.errors import ColdCopyError
from coldcopy.postgres.client import Postgres
from coldcopy.restore.pitr import PitrResult, base_manifests, run_pitr
from coldcopy.restore.replay import LogicalPitrResult, run_logical_pitr
from coldcopy.wal.archive import archived_names
from coldcopy.wal.sweep import run_sweep


def cmd_basebackup(args: argparse.Namespace) -> int:
    m = run_basebackup(settings_for(args, (DB, STORAGE)))
    out: dict[str, Any] = {
        "name": m.name,
        "kind": m.kind,
        "size_bytes": m.stored_size,
        "raw_size_bytes": m.raw_size,
        "duration_seconds": m.duration_seconds,
        **m.extra,
    }
    e = m.extra
    present(
        args,
        out,
        f"base backup {m.name} stored: {human_bytes(m.stored_size)} ({human_bytes(m.raw_size)} tar) in "
        f"{m.duration_seconds:.1f} s; WAL {e['start_lsn']} .. {e['stop_lsn']} on timeline {e['timeline']}, "
        f"first segment {e['start_wal_segment']}",
    )
    return 0


def cmd_wal_sweep(args: argparse.Namespace) -> int:
    r = run_sweep(settings_for(args, (DB, STORAGE)), Path(args.dir) if args.dir else None, args.slot)
    present(
        args,
        r.to_dict(),
        f"streamed up to {r.end_lsn} from slot {r.slot}: {len(r.pushed)} files archived"
        + (f", {r.partial} waits for the next sweep" if r.partial else ""),
    )
    return 0


def erased_text(erased: dict[str, Any]) -> str:
    """The erasure ledger's line of a recovery's report."""
    return (
        f"erasures re-applied before use: {erased.get('erasures_applied', 0)} "
        f"({erased.get('erased_rows_removed', 0)} rows changed); subjects remaining: 0"
    )


def _pitr_text(r: PitrResult) -> str:
    lines = [
        f"physical archive: {r.backup} extracted into {r.target_dir} for recovery to {r.target} "
        f"(WAL {r.first_segment} .. {r.last_segment})"
    ]
    if r.promoted:
        lines.append(f"recovered and promoted on port {r.port}; {r.reached}")
        lines.append(erased_text(r.erased))
        lines.append(f"delete {r.env_file} now: it holds the storage secrets that recovery needed")
    else:
        lines.append("to run the recovery:")
        lines += [f"  {i}. {step}" for i, step in enumerate(r.steps, 1)]
    return "\n".join(lines)


def _logical_text(r: LogicalPitrResult) -> str:
    p = r.replay
    last = (
        f"last replayed: transaction {p.last_xid}, committed {p.last_commit_at} (LSN {p.last_commit_lsn})"
        if p.last_xid is not None
        else "no transaction after the backup was needed"
    )
    return "\n".join(
        [
            f"logical archive: {r.backup} restored into {r.target_db} and the change archive replayed "
            f"to {r.target}",
            f"  restore {r.restore_seconds:.1f} s; replay {p.transactions} transactions ({p.rows} rows, "
            f"{p.ddl} DDL) in {p.seconds:.1f} s ({p.per_second}/s); {p.skipped_in_dump} in the backup",
            f"  {last}",
            f"  sequences raised: {len(p.sequences_set)}; heartbeat at {r.heartbeat_at or '-'}",
            "  " + erased_text(r.erased),
        ]
    )


def _which_archive(args: argparse.Namespace, ctx: Context) -> str:
    if args.archive != "auto":
        return str(args.archive)
    if args.target_db:
        return "logical"
    if base_manifests(ctx):
        return "physical"  # a server with base backups keeps physical PITR
    has_changes = any(True for _ in ctx.storage.list(BATCHES_PREFIX))
    return "logical" if has_changes else "physical"


def _logical_pitr(args: argparse.Namespace, target: Target) -> int:
    for flag, given in (
        ("--target-dir", args.target_dir),
        ("--start", args.start),
        ("--backup", args.backup),
    ):
        if given:
            raise RecoveryRefused(
                f"{flag} is for physical PITR; the change archive restores into a database",
                "use --target-db NAME (or none: the project's database DB_NAME)",
            )
    s = settings_for(args, (DB, STORAGE))

    def announce(plan: LogicalPlan) -> None:
        if not args.json:
            print(plan.describe(), flush=True)

    r = run_logical_pitr(s, target, args.target_db, on_plan=announce)
    present(args, r.to_dict(), lambda: _logical_text(r))
    return 0


def cmd_pitr(args: argparse.Namespace) -> int:
    s = settings_for(args, (STORAGE,))
    target = parse_target(
        args.target_time, args.target_lsn, args.target_name, args.target == "immediate", args.target_xid
    )
    if _which_archive(args, open_context(s)) == "logical":
        return _logical_pitr(args, target)
    if args.target_db:
        raise RecoveryRefused(
            "--target-db is for PITR from the change archive", "physical PITR writes a --target-dir"
        )
    target_dir = Path(args.target_dir or f"coldcopy-pitr-{now().strftime('%Y%m%d_%H%M%S')}")
    r = run_pitr(
        s,
        target,
        target_dir.absolute(),
        port=args.port,
        start=args.start,
        backup=args.backup,
        command=args.coldcopy_command,
        timeout=args.timeout,
    )
    present(args, {"archive": "physical", **r.to_dict()}, lambda: _pitr_text(r))
    return 0


def _wal_status_text(st: ArchiveReport) -> str:
    lines = []
    if not st.timelines:
        lines.append("the WAL archive is empty: set archive_command = 'python -m coldcopy wal-push %p'")
    for t in st.timelines:
        span = f"{t.count} segments {t.first} .. {t.last}"
        lines.append(f"timeline {t.timeline}: {span}, newest stored {t.newest_archived_at}")
        lines += [f"  ! gap: {a}" + ("" if a == b else f" .. {b}") for a, b in t.gaps]
    for w in st.backups:
        if w.ok:
            lines.append(f"{w.name}: recoverable from {w.recoverable_from} to about {w.recoverable_to_time}")
        else:
            lines.append(f"{w.name}: NOT recoverable: the WAL from {w.start_wal_segment} is missing")
    return "\n".join(lines)


def cmd_wal_status(args: argparse.Namespace) -> int:
    ctx = open_context(settings_for(args, (STORAGE,)))
    st = summarize(archived_names(ctx), base_manifests(ctx))
    present(args, st.to_dict(), lambda: _wal_status_text(st))
    return 0 if st.ok else 1


def cmd_restore_point(args: argparse.Namespace) -> int:
    if not 1 <= len(args.name) <= 63:
        raise ColdCopyError("a restore point name has 1 to 63 characters", "choose a shorter name")
    pg = Postgres(settings_for(args, (DB,)))
    with pg.session() as conn:
        out = write_restore_point(conn, args.name)
    lines = []
    if out["change_archive"]:
        lines.append(
            f"restore point {args.name!r} written into the change archive's stream "
            f"(transaction {out['xid']}, {out['at']})"
        )
    if out["lsn"]:
        lines.append(
            f"restore point {args.name!r} at LSN {out['lsn']} in the WAL"
            + (
                ""
                if out["wal_switched"]
                else " (could not switch WAL: it is archived at the next segment switch)"
            )
        )
    present(args, out, "\n".join(lines))
    return 0
