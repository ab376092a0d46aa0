"""The `coldcopy` command line: thin argument handling over the library."""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from coldcopy import __version__
from coldcopy.cli.alerts import add_alert_commands
from coldcopy.cli.common import settings_for
from coldcopy.cli.jobs import add_job_commands
from coldcopy.cli.output import REDACTOR, emit_json, human_age, human_bytes, setup_logging, table
from coldcopy.cli.pitr import add_pitr_commands
from coldcopy.cli.plans import add_plan_commands
from coldcopy.cli.retention import add_retention_commands
from coldcopy.cli.serve import add_serve_command
from coldcopy.config import DB, STORAGE, Settings, redact
from coldcopy.errors import ColdCopyError
from coldcopy.stream.pipeline import RateMeter

log = logging.getLogger("coldcopy")
UNENCRYPTED_WARNING = (
    "WARNING: BACKUP_ENCRYPTION_KEY is not set — backups are stored UNENCRYPTED. "
    "Set it (and keep a copy somewhere safe) to encrypt new backups."
)


def _settings(args: argparse.Namespace, need: tuple[str, ...]) -> Settings:
    return settings_for(args, need)


def _progress(args: argparse.Namespace) -> RateMeter | None:
    if args.json or not sys.stderr.isatty():
        return None

    def show(line: str) -> None:
        sys.stderr.write(line)
        sys.stderr.flush()

    return RateMeter(show)


def _end_progress(meter: RateMeter | None) -> None:
    if meter is not None:
        sys.stderr.write("\n")


# -- commands -------------------------------------------------------------------------------------
def cmd_backup(args: argparse.Namespace) -> int:
    from coldcopy.backup.logical import run_backup

    s = _settings(args, (DB, STORAGE))
    if not s.encrypted:
        log.warning(UNENCRYPTED_WARNING)
    meter = _progress(args)
    try:
        m = run_backup(s, args.kind, progress=meter)
    finally:
        _end_progress(meter)
    out = {
        "name": m.name,
        "kind": m.kind,
        "database": m.database,
        "size_bytes": m.stored_size,
        "raw_size_bytes": m.raw_size,
        "duration_seconds": m.duration_seconds,
        "encrypted": s.encrypted,
        "tables": len(m.tables),
        "roles_saved": m.globals is not None,
        "created_at": m.started_at,
    }
    if args.json:
        emit_json(out)
    else:
        ratio = m.raw_size / m.stored_size if m.stored_size else 0
        print(
            f"backup {m.name} stored: {human_bytes(m.stored_size)} "
            f"({human_bytes(m.raw_size)} dump, {ratio:.1f}x) in {m.duration_seconds:.1f} s, "
            f"{len(m.tables)} tables, {'encrypted' if s.encrypted else 'NOT ENCRYPTED'}"
            + ("" if m.globals else f"; {m.globals_note}")
        )
    return 0


def _listing(s: Settings, kind: str | None) -> list[dict[str, Any]]:
    from coldcopy.backup.logical import context

    cat = context(s).catalog.read()
    rows = []
    for e in cat.entries(kind):
        v = cat.verifications.get(e.name)
        rows.append(
            {
                **e.to_dict(),
                "last_verification": v.get("at") if v else None,
                "verification_ok": v.get("ok") if v else None,
                "verification_level": v.get("level") if v else None,
            }
        )
    return rows


def cmd_list(args: argparse.Namespace) -> int:
    s = _settings(args, (STORAGE,))
    rows = _listing(s, args.kind)
    if args.json:
        emit_json(rows)
        return 0
    if not rows:
        print("no backups yet — run `coldcopy backup`")
        return 0
    verified = {True: "ok", False: "FAILED", None: "-"}
    print(
        table(
            [
                [
                    r["name"],
                    r["kind"],
                    r["created_at"],
                    human_bytes(r["size_bytes"]),
                    f"{r['duration_seconds']:.1f} s",
                    "yes" if r["encrypted"] else "NO",
                    verified[r["verification_ok"]]
                    + (f" ({r['verification_level']})" if r["verification_level"] else ""),
                ]
                for r in rows
            ],
            ["NAME", "KIND", "CREATED (UTC)", "SIZE", "DURATION", "ENCRYPTED", "VERIFIED"],
        )
    )
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from coldcopy.backup.logical import context
    from coldcopy.core.names import validate_name

    s = _settings(args, (STORAGE,))
    m = context(s).catalog.manifest(validate_name(args.name))
    d = m.to_dict()
    if args.json:
        emit_json(d)
        return 0
    for k in (
        "name",
        "kind",
        "database",
        "cluster",
        "started_at",
        "finished_at",
        "duration_seconds",
        "server_version",
        "tool",
        "row_counts",
        "coldcopy_version",
    ):
        print(f"{k:20} {d[k]}")
    print(f"{'stored size':20} {human_bytes(m.stored_size)} ({m.stored_size} bytes)")
    print(f"{'dump size':20} {human_bytes(m.raw_size)} ({m.raw_size} bytes)")
    print(f"{'compression':20} {m.compression}")
    print(f"{'encryption':20} {m.encryption}")
    pieces = m.data.pieces()
    where = pieces[0][0] if len(pieces) == 1 else f"{pieces[0][0]} … {pieces[-1][0]} ({len(pieces)} volumes)"
    print(f"{'data':20} {where}")
    print(f"{'':20} sha256 {m.data.stored_sha256} (dump sha256 {m.data.raw_sha256})")
    print(f"{'roles':20} {m.globals.key if m.globals else m.globals_note or 'not saved'}")
    for k, v in m.extra.items():
        print(f"{k:20} {v}")
    print(f"tables ({len(m.tables)}):")
    for t, n in sorted(m.tables.items()):
        print(f"  {t:40} {n:>12,}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from coldcopy.backup.logical import context
    from coldcopy.core.catalog import summarize

    s = _settings(args, (STORAGE,))
    ctx = context(s)
    now = datetime.now(UTC)
    st = summarize(ctx.catalog.read(), now, encryption_configured=s.encrypted)
    st["wal"] = _wal_status(ctx.storage, now)
    if st["wal"] is not None:
        st["problems"] += st["wal"]["problems"]
        st["ok"] = not st["problems"]
    if args.json:
        emit_json(st)
        return 0 if st["ok"] else 1
    last = st["last_backup"]
    print(
        f"last backup:  {last['name'] if last else 'none'}"
        + (
            f" ({human_age(st['last_backup_age_seconds'])} ago, {human_bytes(last['size_bytes'])})"
            if last
            else ""
        )
    )
    counts = ", ".join(f"{n} {k}" for k, n in sorted(st["counts_by_kind"].items())) or "none"
    print(f"backups:      {st['backup_count']} ({counts}), {human_bytes(st['total_size_bytes'])} stored")
    print(f"encryption:   {'on' if s.encrypted else 'OFF'}")
    wal = st["wal"]
    if wal is not None:
        age = f", {human_age(wal['last_archived_age_seconds'])} ago" if wal["last_archived_at"] else ""
        print(f"WAL archive:  newest {wal['last_segment'] or 'none'}{age}; {len(wal['gaps'])} gap(s)")
        window = f"{wal['window_start']} .. {wal['window_end']}" if wal["window_start"] else "none yet"
        print(f"recoverable:  {window}")
        for w in wal["warnings"]:
            print(f"  ~ {w}")
    if st["problems"]:
        print("problems:")
        for p in st["problems"]:
            print(f"  ! {p}")
    else:
        print("status:       ok")
    return 0 if st["ok"] else 1


def _wal_status(storage: Any, now: datetime) -> dict[str, Any] | None:
    """The WAL archive as `status` shows it (None without PITR): one listing, the alert rules' view."""
    from dataclasses import asdict

    from coldcopy.config import environment
    from coldcopy.core.alerts import CRITICAL, thresholds_from, wal_alerts
    from coldcopy.core.manifest import parse_iso
    from coldcopy.wal.monitor import compute

    wal = compute(storage)
    if wal is None:
        return None
    out: dict[str, Any] = asdict(wal)
    last = wal.last_archived_at
    out["last_archived_age_seconds"] = (now - parse_iso(last)).total_seconds() if last else None
    found = wal_alerts(wal, thresholds_from(environment()), now)
    out["problems"] = [a.message for a in found if a.severity == CRITICAL]  # make status fail
    out["warnings"] = [a.message for a in found if a.severity != CRITICAL]
    return out


def cmd_verify(args: argparse.Namespace) -> int:
    from coldcopy.verify.run import run_verify

    s = _settings(args, (STORAGE,))
    meter = _progress(args)
    try:
        r = run_verify(s, args.name, level=args.level, progress=meter)
    finally:
        _end_progress(meter)
    if args.json:
        emit_json(r.to_dict())
    else:
        for c in r.checks:
            print(f"  {'ok  ' if c.ok else 'FAIL'} {c.name}" + (f": {c.detail}" if c.detail else ""))
        print(
            f"{r.name}: {'verified' if r.ok else 'VERIFICATION FAILED'} at level {r.level} "
            f"in {r.duration_seconds:.1f} s"
        )
    return 0 if r.ok else 4


def cmd_restore(args: argparse.Namespace) -> int:
    from coldcopy.restore.logical import run_restore

    s = _settings(args, (DB, STORAGE))
    meter = _progress(args)
    try:
        r = run_restore(
            s,
            args.backup_name,
            args.target_db,
            clean=args.clean,
            keep_old=args.keep_old,
            no_owner=args.no_owner,
            progress=meter,
        )
    finally:
        _end_progress(meter)
    if args.json:
        emit_json(r)
    else:
        print(
            f"restored {r['name']} into {r['target_db']} in {r['duration_seconds']:.1f} s"
            + (f"; the previous database is kept as {r['previous_kept_as']}" if r["previous_kept_as"] else "")
        )
    return 0


def cmd_catalog_rebuild(args: argparse.Namespace) -> int:
    from coldcopy.backup.logical import context

    s = _settings(args, (STORAGE,))
    cat = context(s).catalog.rebuild()
    out = {"backups": len(cat.backups), "unreadable": cat.unreadable, "watermark": cat.watermark}
    if args.json:
        emit_json(out)
    else:
        print(
            f"catalog rebuilt: {len(cat.backups)} backups"
            + (
                f", {len(cat.unreadable)} unreadable manifests: {', '.join(cat.unreadable)}"
                if cat.unreadable
                else ""
            )
        )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from coldcopy.localstack.demo import run_demo

    return run_demo(scale=args.scale, as_json=args.json, serve=args.serve, port=args.port)


# -- parser ---------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    def options(top: bool) -> argparse.ArgumentParser:
        # Accepted before and after the command.  After it they default to SUPPRESS, so that a
        # subcommand does not overwrite what was given before it (`coldcopy --json status`).
        opts = argparse.ArgumentParser(add_help=False)
        flag: object = False if top else argparse.SUPPRESS
        opts.add_argument("--json", action="store_true", default=flag, help="machine-readable output")
        opts.add_argument("--debug", action="store_true", default=flag, help="verbose logs (no secrets)")
        opts.add_argument(
            "--env-file",
            default=None if top else argparse.SUPPRESS,
            help="read settings from this file instead of ./.env",
        )
        return opts

    top_options = options(top=True)
    common = options(top=False)
    p = argparse.ArgumentParser(
        prog="coldcopy",
        parents=[top_options],
        description="Encrypted, verified PostgreSQL backups on DigitalOcean Spaces.",
    )
    p.add_argument("--version", action="version", version=f"coldcopy {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, fn: Callable[[argparse.Namespace], int], help_: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, parents=[common], help=help_, description=help_)
        sp.set_defaults(func=fn)
        return sp

    b = add("backup", cmd_backup, "take a logical backup of DB_NAME")
    b.add_argument("--kind", choices=["full", "compliance"], default="full")
    ls = add("list-backups", cmd_list, "list backups, newest first")
    ls.add_argument("--kind", choices=["full", "compliance", "base"])
    sh = add("show", cmd_show, "everything the manifest of a backup knows")
    sh.add_argument("name")
    add("status", cmd_status, "last backup, its age, counts, total size and anything wrong")
    v = add("verify", cmd_verify, "check a backup: chunks authenticate, checksums match, pg_restore reads it")
    v.add_argument("name")
    v.add_argument(
        "--level",
        choices=["checksum", "full", "restore"],
        default="checksum",
        help="checksum: no database, every chunk authenticates and pg_restore --list reads the dump; "
        "full: a timed test restore into a scratch database (VERIFY_DB_* or a throwaway local cluster) "
        "and every table's row count; restore: full plus amcheck and VERIFY_SANITY_QUERIES.  For a base "
        "backup, full and restore run a PITR drill: restore it into a throwaway folder, recover to a "
        "random point of its window, check the server promotes, measure the replay",
    )
    r = add("restore", cmd_restore, "restore a backup into a new database, or safely back into DB_NAME")
    r.add_argument("--backup-name", required=True)
    r.add_argument("--target-db", help="restore into this new database (default: replace DB_NAME safely)")
    r.add_argument("--clean", action="store_true", help="replace --target-db if it exists")
    r.add_argument(
        "--keep-old",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="keep the replaced database under a dated name (default: keep when replacing DB_NAME)",
    )
    r.add_argument("--no-owner", action="store_true", help="do not restore ownership and privileges")
    cat = add("catalog", lambda a: (p.parse_args(["catalog", "--help"]), 2)[1], "catalog maintenance")
    cat_sub = cat.add_subparsers(dest="catalog_command", required=True, metavar="ACTION")
    rb = cat_sub.add_parser("rebuild", parents=[common], help="rebuild catalog.json from the records")
    rb.set_defaults(func=cmd_catalog_rebuild)
    d = add(
        "demo",
        cmd_demo,
        "run the whole thing locally: PostgreSQL, an S3 server, demo data, "
        "backup → list → verify → restore → compare",
    )
    d.add_argument("--scale", type=float, default=1.0, help="demo data size (1.0 ≈ a few hundred MB)")
    d.add_argument(
        "--serve",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="keep the local stack and the monitor running at the end",
    )
    d.add_argument("--port", type=int, default=8090)
    add_job_commands(add)
    add_alert_commands(add)
    add_retention_commands(add)
    add_serve_command(add)
    add_plan_commands(add)
    add_pitr_commands(add)
    return p


class Terminated(BaseException):
    """SIGTERM (a stopped worker, `kill`, tini forwarding a shutdown), raised like KeyboardInterrupt."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """SIGTERM unwinds the stack instead of ending the process on the spot, so every ``finally``
    runs: a drill's scratch server is stopped and its folder (a copy of the data, the storage
    secrets) removed, the volumes of an unfinished backup deleted, an in-flight marker dropped."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.debug)
    try:
        with _sigterm_unwinds():
            rc: int = args.func(args)
        return rc
    except Terminated:
        print("terminated (SIGTERM); cleaned up", file=sys.stderr)
        return 143
    except ColdCopyError as exc:
        print(f"error: {redact(str(exc), REDACTOR.settings)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - last line of defence: a clear message, no secrets
        if args.debug:
            print(redact(traceback.format_exc(), REDACTOR.settings), file=sys.stderr)
        print(
            f"error: unexpected {type(exc).__name__}: {redact(str(exc), REDACTOR.settings)[:500]}\n"
            "  → run again with --debug for details",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
