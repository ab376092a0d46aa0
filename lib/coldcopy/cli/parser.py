"""Every ``coldcopy`` command, its arguments and its help: the CLI's table of contents.

Each command names its handler as ``"<module>:<function>"`` in :mod:`coldcopy.cli`; ``main`` imports
that module only when the command runs, so building the parser (for every command, ``--help``
included) imports nothing heavier than argparse.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from coldcopy import __version__
from coldcopy.core.names import validate_db_identifier
from coldcopy.core.plan_names import ALIASES, SCENARIOS
from coldcopy.errors import InvalidNameError

#: ``add(name, handler, help)``: registers one subcommand and returns its parser.
AddCommand = Callable[[str, str | None, str], argparse.ArgumentParser]


def utc_time(text: str) -> datetime:
    """argparse type: an ISO time, UTC unless it carries an offset."""
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a time; use e.g. 2026-11-24T02:30Z") from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def calendar_date(text: str) -> date:
    """argparse type: a calendar date."""
    try:
        return date.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a date; use e.g. 2026-06-30") from None


def database_name(text: str) -> str:
    """argparse type: a database to create or replace; an empty or blank name is refused (exit 2)
    rather than taken for DB_NAME."""
    try:
        return validate_db_identifier(text, "database name")
    except InvalidNameError as exc:
        raise argparse.ArgumentTypeError(f"{exc.message} ({exc.hint})") from None


def _common_options(top: bool) -> argparse.ArgumentParser:
    """``--json``, ``--debug`` and ``--env-file``, accepted before and after the command.  After it
    they default to SUPPRESS, so that a subcommand does not overwrite what was given before it
    (`coldcopy --json status`)."""
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


def build_parser() -> argparse.ArgumentParser:
    common = _common_options(top=False)
    p = argparse.ArgumentParser(
        prog="coldcopy",
        parents=[_common_options(top=True)],
        description="Encrypted, verified PostgreSQL backups on DigitalOcean Spaces.",
    )
    p.add_argument("--version", action="version", version=f"coldcopy {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, handler: str | None, help_: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, parents=[common], help=help_, description=help_)
        if handler is not None:
            sp.set_defaults(handler=handler)
        return sp

    def action(parent: Any, name: str, handler: str, help_: str) -> argparse.ArgumentParser:
        """An ACTION of a command with actions (``catalog rebuild``), with the common options too."""
        sp: argparse.ArgumentParser = parent.add_parser(name, parents=[common], help=help_)
        sp.set_defaults(handler=handler)
        return sp

    # In the order `coldcopy --help` has always listed them.
    _backup_commands(add, action)
    _demo_command(add)
    _job_commands(add)
    _alert_commands(add, action)
    _retention_commands(add, action)
    _serve_command(add)
    _plan_commands(add)
    _pitr_commands(add)
    _changes_commands(add, action)
    _files_commands(add, action)
    _key_commands(add, action)
    _gdpr_commands(add, action)
    return p


def _subject_args(p: argparse.ArgumentParser, *, kind: bool) -> None:
    p.add_argument(
        "--subject",
        required=True,
        help="the person's identifier (bound as :subject; stored only encrypted); - reads one line "
        "from standard input (not shown in the process list)",
    )
    if kind:
        p.add_argument("--kind", help="the kind of subject (default: the configuration's only kind)")


def _gdpr_commands(add: AddCommand, action: Action) -> None:
    g = add("gdpr", None, "erasures every restore re-applies, and a person's answers (docs/erasures.md)")
    actions = g.add_subparsers(dest="gdpr_command", required=True, metavar="ACTION")
    e = action(
        actions,
        "erase",
        "gdpr:cmd_gdpr_erase",
        "erase a subject from DB_NAME as GDPR_ERASURE_CONFIG declares, and record it (create-only, "
        "encrypted): every later restore re-applies it",
    )
    _subject_args(e, kind=True)
    e.add_argument(
        "--check-only",
        action="store_true",
        help="the application has erased the subject: only check (the count must be 0), then record",
    )
    e.add_argument("--note", help="a reference for the request (no personal data)")
    ls = action(actions, "list", "gdpr:cmd_gdpr_list", "the recorded erasures (ids and kinds)")
    ls.add_argument("--show-values", action="store_true", help="print the subjects too (personal data)")
    r = action(
        actions,
        "report",
        "gdpr:cmd_gdpr_report",
        "when the subject's erasure was recorded, which backups still hold older data and when they expire",
    )
    _subject_args(r, kind=False)
    x = action(
        actions,
        "export",
        "gdpr:cmd_gdpr_export",
        "a subject's data from a backup as JSON (restored into a scratch database, then dropped)",
    )
    _subject_args(x, kind=True)
    x.add_argument("--backup", help="the backup to read (default: the newest logical backup of DB_NAME)")
    x.add_argument("--output", help="a new file for the JSON (default: ./gdpr-export-<time>.json)")


def _key_commands(add: AddCommand, action: Action) -> None:
    k = add("key", None, "the encryption keys: rotate them, see which key holds what")
    actions = k.add_subparsers(dest="key_command", required=True, metavar="ACTION")
    r = action(
        actions,
        "rotate",
        "keys:cmd_key_rotate",
        "re-wrap every stored data key under BACKUP_ENCRYPTION_KEY_NEW (or a prompted passphrase), "
        "opening with BACKUP_ENCRYPTION_KEY and BACKUP_ENCRYPTION_KEY_PREVIOUS; run again to resume",
    )
    r.add_argument("--dry-run", action="store_true", help="say what would be re-wrapped; write nothing")
    action(actions, "status", "keys:cmd_key_status", "stored streams per key id, and keys no setting holds")


def _files_commands(add: AddCommand, action: Action) -> None:
    f = add("files", None, "the project's Storage files (SUPABASE_STORAGE_*): snapshots in the bucket")
    actions = f.add_subparsers(dest="files_command", required=True, metavar="ACTION")
    b = action(
        actions, "backup", "files:cmd_files_backup", "take a files snapshot (only new or changed objects)"
    )
    b.add_argument("--backup", help="the database backup this snapshot goes with")
    action(actions, "list", "files:cmd_files_list", "complete files snapshots, newest first")
    r = action(
        actions, "restore", "files:cmd_files_restore", "write a snapshot's files into the project's Storage"
    )
    r.add_argument("--snapshot", required=True, help="a snapshot id, or the name of its database backup")
    r.add_argument("--bucket", help="restore only this bucket")
    r.add_argument("--prefix", help="restore only keys starting with this (one user's folder)")
    v = action(actions, "verify", "files:cmd_files_verify", "every stored content authenticates and matches")
    v.add_argument("snapshot", help="a snapshot id, or the name of its database backup")


def _changes_commands(add: AddCommand, action: Action) -> None:
    c = add("changes", None, "the change archive: every committed transaction from a logical slot")
    actions = c.add_subparsers(dest="changes_command", required=True, metavar="ACTION")
    action(
        actions, "setup", "changes:cmd_changes_setup", "create the slot, the DDL capture and the heartbeat"
    )
    action(
        actions, "teardown", "changes:cmd_changes_teardown", "remove everything setup created (the slot too)"
    )
    d = action(actions, "drain", "changes:cmd_changes_drain", "archive what the slot holds, then advance it")
    d.add_argument(
        "--loop",
        type=float,
        metavar="SECONDS",
        help="drain every COLDCOPY_CHANGES_INTERVAL_SECONDS for this long",
    )
    action(
        actions, "status", "changes:cmd_changes_status", "slot lag, newest archived change, window, alerts"
    )


Action = Callable[..., argparse.ArgumentParser]


def _serve_command(add: AddCommand) -> None:
    s = add(
        "serve",
        "serve:cmd_serve",
        "host every web function of project.yml locally, called exactly as DigitalOcean calls them, "
        "at /api/v1/web/<namespace>/<package>/<function> and at the short paths (/health, /status, …)",
    )
    s.add_argument("--port", type=int, default=8090, help="port to listen on (default 8090; 0 picks one)")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    s.add_argument(
        "--project",
        type=Path,
        help="folder holding project.yml and packages/ (default: this checkout, else the current folder)",
    )


def _demo_command(add: AddCommand) -> None:
    d = add(
        "demo",
        "demo:cmd_demo",
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


def _backup_commands(add: AddCommand, action: Action) -> None:
    b = add("backup", "backup:cmd_backup", "take a logical backup of DB_NAME")
    b.add_argument("--kind", choices=["full", "compliance"], default="full")
    ls = add("list-backups", "backups:cmd_list", "list backups, newest first")
    ls.add_argument("--kind", choices=["full", "compliance", "base"])
    sh = add("show", "backups:cmd_show", "everything the manifest of a backup knows")
    sh.add_argument("name")
    add("status", "backups:cmd_status", "last backup, its age, counts, total size and anything wrong")
    v = add(
        "verify",
        "backups:cmd_verify",
        "check a backup: chunks authenticate, checksums match, pg_restore reads it",
    )
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
    r = add(
        "restore", "backups:cmd_restore", "restore a backup into a new database, or safely back into DB_NAME"
    )
    r.add_argument("--backup-name", required=True)
    r.add_argument(
        "--target-db",
        type=database_name,
        help="restore into this new database (default: replace DB_NAME safely)",
    )
    r.add_argument("--clean", action="store_true", help="replace --target-db if it exists")
    r.add_argument(
        "--keep-old",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="keep the replaced database under a dated name (default: keep when replacing DB_NAME)",
    )
    r.add_argument(
        "--no-owner",
        action="store_true",
        help="do not restore ownership: the connecting role owns every object (grants are kept)",
    )
    cat = add("catalog", None, "catalog maintenance")
    actions = cat.add_subparsers(dest="catalog_command", required=True, metavar="ACTION")
    action(actions, "rebuild", "backups:cmd_catalog_rebuild", "rebuild catalog.json from the records")


def _job_commands(add: AddCommand) -> None:
    w = add("worker", "jobs:cmd_worker", "run queued jobs one at a time until the queue is empty")
    w.add_argument("--max-jobs", type=int, help="stop after this many jobs")
    w.add_argument("--worker-id", help="name recorded in claims and runs (default: host-pid)")
    w.add_argument(
        "--heartbeat-seconds", type=float, help="how often a running job's heartbeat is written (default: 60)"
    )
    t = add("tick", "jobs:cmd_tick", "enqueue due scheduled jobs, fail stale runs, wake the runner")
    t.add_argument("--now", type=utc_time, help="evaluate the schedule as of this UTC time (default: now)")
    t.add_argument("--no-wake", action="store_true", help="do not wake the runner")
    e = add("enqueue", "jobs:cmd_enqueue", "queue one job for the runner")
    e.add_argument("kind", help="backup-full, backup-compliance, verify, cleanup or restore-test")
    e.add_argument("--name", help="backup name (verify; default: the newest backup)")
    e.add_argument("--wake", action="store_true", help="wake the runner with the configured launcher")
    r = add("runs", "jobs:cmd_runs", "recent job runs, or one run in full")
    r.add_argument("run_id", nargs="?")
    r.add_argument("--limit", type=int, default=20)


def _alert_commands(add: AddCommand, action: Action) -> None:
    a = add(
        "alerts", "alerts:cmd_alerts", "active alerts (exit 1 while any is active); `test-email` tests email"
    )
    actions = a.add_subparsers(dest="alerts_command", metavar="ACTION")
    action(
        actions, "test-email", "alerts:cmd_test_email", "send a test message to ALERT_EMAIL through SMTP_HOST"
    )


def _retention_commands(add: AddCommand, action: Action) -> None:
    c = add(
        "cleanup", "retention:cmd_cleanup", "delete backups and WAL that the retention policy no longer keeps"
    )
    c.add_argument("--dry-run", action="store_true", help="show what would go and why; delete nothing")
    c.add_argument("--now", type=utc_time, help="evaluate the policy at this (past) time, e.g. a dry run's")
    c.add_argument("--expect", metavar="PLAN_ID", help="delete only if the plan is this dry run's plan id")
    p = add("pin", "retention:cmd_pin", "keep a backup forever (cleanup never deletes a pinned backup)")
    p.add_argument("name")
    p.add_argument("--reason", required=True, help="why it is kept (shown by cleanup)")
    p.add_argument("--by", help="who pins it (default: user@host)")
    u = add("unpin", "retention:cmd_unpin", "remove a backup's pin; retention applies to it again")
    u.add_argument("name")
    u.add_argument("--by", help="who unpins it (default: user@host)")
    st = add("storage", None, "bucket maintenance")
    actions = st.add_subparsers(dest="storage_command", required=True, metavar="ACTION")
    lc = action(
        actions,
        "lifecycle",
        "retention:cmd_lifecycle",
        "show the bucket lifecycle rules; --apply sets the ones that agree with the policy",
    )
    lc.add_argument(
        "--apply", action="store_true", help="write coldcopy's rules (keeping the bucket's others)"
    )


def _plan_commands(add: AddCommand) -> None:
    p = add("plan", "plans:cmd_plan", "a disaster-recovery runbook computed from the bucket's real state")
    p.add_argument(
        "scenario",
        choices=[*SCENARIOS, *ALIASES],
        metavar="SCENARIO",
        help=f"one of {', '.join(SCENARIOS)} (or an alert's plan: {', '.join(ALIASES)})",
    )
    p.add_argument(
        "--before", type=utc_time, help="deletion: the time of the deletion (ISO 8601, UTC if no zone)"
    )
    p.add_argument(
        "--date", type=calendar_date, help="compliance: the date whose data is needed (YYYY-MM-DD)"
    )
    add(
        "recovery-time",
        "plans:cmd_recovery_time",
        "how long recovery would take, from measured test restores",
    )


def _pitr_commands(add: AddCommand) -> None:
    rp = add("restore-point", "pitr:cmd_restore_point", "mark this moment as a named PITR target")
    rp.add_argument("name")
    add(
        "basebackup",
        "pitr:cmd_basebackup",
        "take a physical base backup (pg_basebackup) for point-in-time recovery",
    )
    _wal_commands(add)
    p = add(
        "pitr",
        "pitr:cmd_pitr",
        "recover to a point in time: a new data folder (base backup + archived WAL), or a database "
        "(logical backup + the change archive)",
    )
    p.add_argument("--target-time", type=utc_time, help="ISO time, UTC unless it has an offset")
    p.add_argument("--target-lsn", help="an LSN such as 0/16B3748")
    p.add_argument("--target-xid", help="a transaction id: recover up to and including its commit")
    p.add_argument("--target-name", help="a restore point (coldcopy restore-point NAME)")
    p.add_argument("--target", choices=["immediate"], help="stop as soon as the base backup is consistent")
    p.add_argument(
        "--target-dir", help="a new or empty folder for the data (default: ./coldcopy-pitr-<time>)"
    )
    p.add_argument(
        "--target-db",
        help="change archive: restore and replay into this new database (default: DB_NAME, the project's)",
    )
    p.add_argument(
        "--archive",
        choices=["auto", "logical", "physical"],
        default="auto",
        help="which archive to recover from (auto: physical when there are base backups, "
        "else the change archive)",
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


def _wal_commands(add: AddCommand) -> None:
    wp = add("wal-push", "wal:cmd_wal_push", "archive one WAL file (use as archive_command: wal-push %%p)")
    wp.add_argument("path")
    wd = add(
        "wal-pushd",
        "wal:cmd_wal_pushd",
        "a warm WAL pusher for archive_command = 'python3 -S -m coldcopy.walclient --socket PATH %%p'",
    )
    wd.add_argument("--socket", required=True, help="unix socket path (created 0600)")
    ws = add(
        "wal-sweep",
        "pitr:cmd_wal_sweep",
        "stream WAL from a replication slot (pg_receivewal) up to now and archive complete segments",
    )
    ws.add_argument("--dir", help="local folder for pg_receivewal (default: a per-cluster temp folder)")
    ws.add_argument("--slot", help="replication slot (default: coldcopy_<cluster>; created if missing)")
    wf = add(
        "wal-fetch",
        "walfetch:cmd_wal_fetch",
        "restore one archived WAL file (restore_command: wal-fetch %%f %%p)",
    )
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
        "pitr:cmd_wal_status",
        "the WAL archive: timelines, gaps, and each base backup's recovery window",
    )
