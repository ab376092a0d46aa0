"""Commands for physical backups: `basebackup`, `wal-push`, `wal-fetch`, `wal-status`, `pitr`.

(`coldcopy verify NAME` checks base backups too.)
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

from coldcopy.cli.common import AddCommand, settings_for, utc_time
from coldcopy.cli.output import emit_json, human_bytes
from coldcopy.config import DB, STORAGE
from coldcopy.errors import ColdCopyError, NotFoundError

log = logging.getLogger("coldcopy")


def cmd_basebackup(args: argparse.Namespace) -> int:
    from coldcopy.backup.base import run_basebackup

    s = settings_for(args, (DB, STORAGE))
    m = run_basebackup(s)
    out = {
        "name": m.name,
        "kind": m.kind,
        "size_bytes": m.stored_size,
        "raw_size_bytes": m.raw_size,
        "duration_seconds": m.duration_seconds,
        **m.extra,
    }
    if args.json:
        emit_json(out)
    else:
        e = m.extra
        print(
            f"base backup {m.name} stored: {human_bytes(m.stored_size)} ({human_bytes(m.raw_size)} tar) in "
            f"{m.duration_seconds:.1f} s; WAL {e['start_lsn']} .. {e['stop_lsn']} "
            f"on timeline {e['timeline']}, "
            f"first segment {e['start_wal_segment']}"
        )
    return 0


def cmd_wal_push(args: argparse.Namespace) -> int:
    from coldcopy.backup.logical import context
    from coldcopy.wal.archive import push

    r = push(context(settings_for(args, (STORAGE,))), Path(args.path))
    log.debug("%s stored as %s (%d → %d bytes)", r.name, r.key, r.raw_size, r.stored_size)
    return 0


def cmd_wal_pushd(args: argparse.Namespace) -> int:
    from coldcopy.backup.logical import context
    from coldcopy.wal.pushd import serve

    ctx = context(settings_for(args, (STORAGE,)))
    serve(ctx, Path(args.socket).absolute())
    return 0


def cmd_wal_sweep(args: argparse.Namespace) -> int:
    from coldcopy.wal.sweep import run_sweep

    r = run_sweep(settings_for(args, (DB, STORAGE)), Path(args.dir) if args.dir else None, args.slot)
    if args.json:
        emit_json(r.to_dict())
    else:
        print(
            f"streamed up to {r.end_lsn} from slot {r.slot}: {len(r.pushed)} files archived"
            + (f", {r.partial} waits for the next sweep" if r.partial else "")
        )
    return 0


def cmd_wal_fetch(args: argparse.Namespace) -> int:
    from coldcopy.wal import spool as walspool

    spool = (Path(args.spool) if args.spool else walspool.default_spool()) if args.prefetch > 0 else None
    if spool is not None:
        tried = os.environ.pop(walspool.TRIED_ENV, "") == "1"  # the fast path waited already
        served = walspool.serve(spool, args.name, Path(args.dest), wait=not tried)
        if served is not None:
            return served  # prefetched earlier (or known not archived): no storage client, no network
        # One line per miss in the server's log (restore_command's stderr): what the spool costs.
        print(f"wal-fetch: {args.name} is not in the spool: fetching it from the archive", file=sys.stderr)
    from coldcopy.backup.logical import context
    from coldcopy.wal.archive import fetch

    try:
        ctx = context(settings_for(args, (STORAGE,)))
        fetch(ctx, args.name, Path(args.dest), prefetch=args.prefetch, spool=spool)
    except NotFoundError as exc:
        print(exc.message, file=sys.stderr)  # expected while recovery probes for history files
        return 1
    return 0


def cmd_pitr(args: argparse.Namespace) -> int:
    from coldcopy.core.recovery_plan import parse_target
    from coldcopy.restore.pitr import run_pitr

    s = settings_for(args, (STORAGE,))
    target = parse_target(
        args.target_time, args.target_lsn, args.target_name, args.target == "immediate", args.target_xid
    )
    target_dir = Path(args.target_dir or f"coldcopy-pitr-{datetime.now(UTC).strftime('%Y%m%d_%H%M%S')}")
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
    if args.json:
        emit_json(r.to_dict())
        return 0
    print(
        f"{r.backup} extracted into {r.target_dir} for recovery to {r.target} "
        f"(WAL {r.first_segment} .. {r.last_segment})"
    )
    if r.promoted:
        print(f"recovered and promoted on port {r.port}; {r.reached}")
        print(f"delete {r.env_file} now: it holds the storage secrets that recovery needed")
    else:
        print("to run the recovery:")
        for i, step in enumerate(r.steps, 1):
            print(f"  {i}. {step}")
    return 0


def cmd_wal_status(args: argparse.Namespace) -> int:
    from coldcopy.backup.logical import context
    from coldcopy.core.archive_report import summarize
    from coldcopy.restore.pitr import base_manifests
    from coldcopy.wal.archive import archived_names

    ctx = context(settings_for(args, (STORAGE,)))
    st = summarize(archived_names(ctx), base_manifests(ctx))
    if args.json:
        emit_json(st.to_dict())
        return 0 if st.ok else 1
    if not st.timelines:
        print("the WAL archive is empty: set archive_command = 'python -m coldcopy wal-push %p'")
    for t in st.timelines:
        print(
            f"timeline {t.timeline}: {t.count} segments {t.first} .. {t.last}, "
            f"newest stored {t.newest_archived_at}"
        )
        for a, b in t.gaps:
            print(f"  ! gap: {a}" + ("" if a == b else f" .. {b}"))
    for w in st.backups:
        if w.ok:
            print(f"{w.name}: recoverable from {w.recoverable_from} to about {w.recoverable_to_time}")
        else:
            print(f"{w.name}: NOT recoverable: the WAL from {w.start_wal_segment} is missing")
    return 0 if st.ok else 1


def cmd_restore_point(args: argparse.Namespace) -> int:
    from coldcopy.postgres.client import Postgres

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
    out = {"name": args.name, "lsn": lsn, "wal_switched": switched}
    if args.json:
        emit_json(out)
    else:
        print(
            f"restore point {args.name!r} at LSN {lsn}"
            + ("" if switched else " (could not switch WAL: it is archived at the next segment switch)")
        )
    return 0


def add_pitr_commands(add: AddCommand) -> None:
    rp = add("restore-point", cmd_restore_point, "mark this moment as a named PITR target")
    rp.add_argument("name")
    add(
        "basebackup", cmd_basebackup, "take a physical base backup (pg_basebackup) for point-in-time recovery"
    )
    wp = add("wal-push", cmd_wal_push, "archive one WAL file (use as archive_command: wal-push %%p)")
    wp.add_argument("path")
    wd = add(
        "wal-pushd",
        cmd_wal_pushd,
        "a warm WAL pusher for archive_command = 'python3 -S -m coldcopy.walclient --socket PATH %%p'",
    )
    wd.add_argument("--socket", required=True, help="unix socket path (created 0600)")
    ws = add(
        "wal-sweep",
        cmd_wal_sweep,
        "stream WAL from a replication slot (pg_receivewal) up to now and archive complete segments",
    )
    ws.add_argument("--dir", help="local folder for pg_receivewal (default: a per-cluster temp folder)")
    ws.add_argument("--slot", help="replication slot (default: coldcopy_<cluster>; created if missing)")
    wf = add("wal-fetch", cmd_wal_fetch, "restore one archived WAL file (restore_command: wal-fetch %%f %%p)")
    wf.add_argument("name")
    wf.add_argument("dest")
    wf.add_argument(
        "--prefetch", type=int, default=4, help="also fetch this many following segments ahead (default 4)"
    )
    wf.add_argument(
        "--spool", help="folder for prefetched segments (default: <data dir>.coldcopy-walspool next to it)"
    )
    add(
        "wal-status",
        cmd_wal_status,
        "the WAL archive: timelines, gaps, and each base backup's recovery window",
    )
    p = add("pitr", cmd_pitr, "recover a new data folder to a point in time (base backup + archived WAL)")
    p.add_argument("--target-time", type=utc_time, help="ISO time, UTC unless it has an offset")
    p.add_argument("--target-lsn", help="an LSN such as 0/16B3748")
    p.add_argument("--target-xid", help="a transaction id: recover up to and including its commit")
    p.add_argument("--target-name", help="a restore point (coldcopy restore-point NAME)")
    p.add_argument("--target", choices=["immediate"], help="stop as soon as the base backup is consistent")
    p.add_argument(
        "--target-dir", help="a new or empty folder for the data (default: ./coldcopy-pitr-<time>)"
    )
    p.add_argument("--port", type=int, default=5432, help="port of the recovered server")
    p.add_argument("--start", action="store_true", help="start it with pg_ctl and wait for promotion")
    p.add_argument("--backup", help="use this base backup instead of the newest that fits")
    p.add_argument(
        "--coldcopy-command",
        help="how the postgres OS user runs coldcopy in restore_command "
        "(default: COLDCOPY_SERVER_COMMAND, else this Python -m coldcopy)",
    )
    p.add_argument("--timeout", type=float, default=600, help="seconds to wait for promotion")
