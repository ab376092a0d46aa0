"""Commands for physical backups and point-in-time recovery: `basebackup`, `wal-sweep`,
`wal-status`, `restore-point`, `pitr`.  (`coldcopy verify NAME` checks base backups too.)"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from coldcopy.backup.base import run_basebackup
from coldcopy.cli.common import now, settings_for
from coldcopy.cli.output import present
from coldcopy.config import DB, STORAGE
from coldcopy.context import open_context
from coldcopy.core.archive_report import ArchiveReport, summarize
from coldcopy.core.humanize import human_bytes
from coldcopy.core.recovery_plan import parse_target
from coldcopy.errors import ColdCopyError
from coldcopy.postgres.client import Postgres
from coldcopy.restore.pitr import PitrResult, base_manifests, run_pitr
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


def _pitr_text(r: PitrResult) -> str:
    lines = [
        f"{r.backup} extracted into {r.target_dir} for recovery to {r.target} "
        f"(WAL {r.first_segment} .. {r.last_segment})"
    ]
    if r.promoted:
        lines.append(f"recovered and promoted on port {r.port}; {r.reached}")
        lines.append(f"delete {r.env_file} now: it holds the storage secrets that recovery needed")
    else:
        lines.append("to run the recovery:")
        lines += [f"  {i}. {step}" for i, step in enumerate(r.steps, 1)]
    return "\n".join(lines)


def cmd_pitr(args: argparse.Namespace) -> int:
    s = settings_for(args, (STORAGE,))
    target = parse_target(
        args.target_time, args.target_lsn, args.target_name, args.target == "immediate", args.target_xid
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
    present(args, r.to_dict(), lambda: _pitr_text(r))
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
        raise ColdCopyError("a restore point name has 1 to 63 characters")
    pg = Postgres(settings_for(args, (DB,)))
    with pg.session() as conn:
        lsn = str(conn.run("SELECT pg_create_restore_point(:n)::text", n=args.name)[0][0])
        # Close the segment so the restore point reaches the archive now, not at the next switch.
        switched = True
        try:
            conn.run("SELECT pg_switch_wal()")
        except Exception:  # noqa: BLE001 - needs a privilege the role may lack; archive_timeout does it later
            switched = False
    present(
        args,
        {"name": args.name, "lsn": lsn, "wal_switched": switched},
        f"restore point {args.name!r} at LSN {lsn}"
        + ("" if switched else " (could not switch WAL: it is archived at the next segment switch)"),
    )
    return 0
