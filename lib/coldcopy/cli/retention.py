"""Command-line commands for retention: `cleanup`, `pin`, `unpin`, `storage lifecycle`."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from coldcopy.cli.common import AddCommand, settings_for, utc_time
from coldcopy.cli.output import emit_json, table
from coldcopy.config import Settings
from coldcopy.errors import ColdCopyError

NOW_SKEW = timedelta(minutes=5)


def _settings(args: argparse.Namespace) -> Settings:
    return settings_for(args)


def _policy(args: argparse.Namespace, s: Settings) -> Any:
    from coldcopy.ops.cleanup import load_policy

    return load_policy(s, env_file=Path(args.env_file) if args.env_file else None)


def cmd_cleanup(args: argparse.Namespace) -> int:
    from coldcopy.ops.cleanup import run_cleanup

    s = _settings(args)
    policy = _policy(args, s)
    if args.now is not None and args.now > datetime.now(UTC) + NOW_SKEW:
        raise ColdCopyError(
            "--now is in the future",
            "use the time a dry run printed, or leave --now out (it defaults to now)",
        )
    out = run_cleanup(s, dry_run=args.dry_run, now=args.now, expect=args.expect, policy=policy)
    if args.json:
        emit_json(out)
        return 0
    verb = "would delete" if args.dry_run else "deleted"
    print(f"policy: {policy.describe()}")
    print(f"evaluated at {out['now']}")
    gone = out["delete"] if args.dry_run else [d for d in out["delete"] if d["name"] in set(out["deleted"])]
    print(f"{verb} {len(gone)} backup(s):")
    for d in gone:
        print(f"  - {d['name']}: {d['reason']}")
    print(f"{verb} {len(out['wal_delete']) if args.dry_run else len(out['wal_deleted'])} WAL file(s)")
    for w in out["wal_delete"] if args.dry_run else []:
        print(f"  - {w['key']}: {w['reason']}")
    housekeeping = len(out["job_records_delete"]) if args.dry_run else out.get("job_records_deleted", 0)
    if housekeeping:
        print(f"{verb} {housekeeping} job records older than COLDCOPY_JOB_HISTORY_DAYS (runs, claims, slots)")
    for sk in out.get("skipped", []):
        print(f"  skipped {sk['name']}: {sk['reason']}")
    if out["keep"]:
        print(f"keeping {len(out['keep'])} backup(s):")
        print(table([[k["name"], "; ".join(k["reasons"])] for k in out["keep"]], ["NAME", "WHY"]))
    for r in out["reported"]:
        print(f"! {r}")
    if args.dry_run:
        print(
            f"plan {out['plan_id']}: run `coldcopy cleanup --now {out['now']} --expect {out['plan_id']}`"
            " to delete exactly this"
        )
    return 0


def cmd_pin(args: argparse.Namespace) -> int:
    from coldcopy.ops.pins import pin
    from coldcopy.storage.catalog_store import CatalogStore
    from coldcopy.storage.s3 import Storage

    s = _settings(args)
    record = pin(CatalogStore(Storage(s)), args.name, args.reason, by=args.by)
    if args.json:
        emit_json(record)
    else:
        print(f"pinned {record['name']}: {record['reason']} (by {record['by']})")
    return 0


def cmd_unpin(args: argparse.Namespace) -> int:
    from coldcopy.ops.pins import unpin
    from coldcopy.storage.catalog_store import CatalogStore
    from coldcopy.storage.s3 import Storage

    s = _settings(args)
    record = unpin(CatalogStore(Storage(s)), args.name, by=args.by)
    if args.json:
        emit_json(record)
    else:
        print(f"unpinned {record['name']} (it was pinned for: {record['was'].get('reason')})")
    return 0


def cmd_lifecycle(args: argparse.Namespace) -> int:
    from coldcopy.core.retention import lifecycle_problems, lifecycle_rules
    from coldcopy.storage.s3 import Storage

    s = _settings(args)
    policy = _policy(args, s)
    storage = Storage(s)
    current = storage.get_lifecycle()
    wanted = lifecycle_rules(policy, storage.prefix)
    ours = {str(r["ID"]) for r in wanted}
    foreign = [r for r in current if str(r.get("ID", "")) not in ours]
    problems = lifecycle_problems(foreign, policy, storage.prefix)
    applied = False
    if args.apply:
        if problems:
            raise ColdCopyError(
                "the bucket has lifecycle rules that disagree with the retention policy: "
                + "; ".join(problems),
                "remove or lengthen those rules (retention is `coldcopy cleanup`'s job), then apply again",
            )
        storage.put_lifecycle([*foreign, *wanted])
        current = storage.get_lifecycle()
        applied = True
    out = {
        "bucket": s.spaces_bucket,
        "prefix": storage.prefix,
        "applied": applied,
        "rules": current,
        "wanted": wanted,
        "in_place": all(_same(w, current) for w in wanted),
        "problems": problems,
    }
    if args.json:
        emit_json(out)
    else:
        print(f"bucket {s.spaces_bucket} lifecycle rules ({len(current)}):")
        for r in current:
            print(f"  - {_describe(r)}")
        print(
            "coldcopy's rules are " + ("in place" if out["in_place"] else "NOT in place (run with --apply)")
        )
        for p in problems:
            print(f"! {p}")
    return 1 if problems else 0


def _same(want: dict[str, object], current: list[dict[str, Any]]) -> bool:
    for r in current:
        if r.get("ID") == want["ID"]:
            return bool(r.get("AbortIncompleteMultipartUpload") == want["AbortIncompleteMultipartUpload"])
    return False


def _describe(rule: dict[str, Any]) -> str:
    filt = rule.get("Filter", {})
    prefix = filt.get("Prefix", rule.get("Prefix", "")) if isinstance(filt, dict) else ""
    parts = [f"{rule.get('ID', '?')} [{rule.get('Status')}] prefix {prefix!r}"]
    if "AbortIncompleteMultipartUpload" in rule:
        days = rule["AbortIncompleteMultipartUpload"].get("DaysAfterInitiation")
        parts.append(f"abort incomplete uploads after {days} days")
    if "Expiration" in rule:
        parts.append(f"expire {rule['Expiration']}")
    return ", ".join(parts)


def add_retention_commands(add: AddCommand) -> None:
    c = add("cleanup", cmd_cleanup, "delete backups and WAL that the retention policy no longer keeps")
    c.add_argument("--dry-run", action="store_true", help="show what would go and why; delete nothing")
    c.add_argument("--now", type=utc_time, help="evaluate the policy at this (past) time, e.g. a dry run's")
    c.add_argument("--expect", metavar="PLAN_ID", help="delete only if the plan is this dry run's plan id")
    p = add("pin", cmd_pin, "keep a backup forever (cleanup never deletes a pinned backup)")
    p.add_argument("name")
    p.add_argument("--reason", required=True, help="why it is kept (shown by cleanup)")
    p.add_argument("--by", help="who pins it (default: user@host)")
    u = add("unpin", cmd_unpin, "remove a backup's pin; retention applies to it again")
    u.add_argument("name")
    u.add_argument("--by", help="who unpins it (default: user@host)")
    st = add("storage", lambda a: 2, "bucket maintenance")
    st_sub = st.add_subparsers(dest="storage_command", required=True, metavar="ACTION")
    lc = st_sub.add_parser(
        "lifecycle", help="show the bucket lifecycle rules; --apply sets the ones that agree with the policy"
    )
    # The common options, also after the action (SUPPRESS: an absent one keeps the outer value).
    lc.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
    lc.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="verbose logs")
    lc.add_argument("--env-file", default=argparse.SUPPRESS, help="read settings from this file")
    lc.add_argument(
        "--apply", action="store_true", help="write coldcopy's rules (keeping the bucket's others)"
    )
    lc.set_defaults(func=cmd_lifecycle)
