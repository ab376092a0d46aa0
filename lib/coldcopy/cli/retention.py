"""Commands for retention: `cleanup`, `pin`, `unpin`, `storage lifecycle`."""

from __future__ import annotations

import argparse
from datetime import timedelta
from typing import Any

from coldcopy.cli.common import now, settings_for
from coldcopy.cli.output import present
from coldcopy.config import Settings
from coldcopy.core.humanize import table
from coldcopy.core.retention import RetentionPolicy, lifecycle_problems, lifecycle_rules
from coldcopy.errors import ColdCopyError
from coldcopy.ops.cleanup import run_cleanup
from coldcopy.ops.pins import pin, unpin
from coldcopy.storage.catalog_store import CatalogStore
from coldcopy.storage.s3 import open_store

NOW_SKEW = timedelta(minutes=5)


def _cleanup_text(out: dict[str, Any], policy: RetentionPolicy, dry_run: bool) -> str:
    verb = "would delete" if dry_run else "deleted"
    gone = out["delete"] if dry_run else [d for d in out["delete"] if d["name"] in set(out["deleted"])]
    lines = [f"policy: {policy.describe()}", f"evaluated at {out['now']}", f"{verb} {len(gone)} backup(s):"]
    lines += [f"  - {d['name']}: {d['reason']}" for d in gone]
    lines.append(f"{verb} {len(out['wal_delete']) if dry_run else len(out['wal_deleted'])} WAL file(s)")
    lines += [f"  - {w['key']}: {w['reason']}" for w in (out["wal_delete"] if dry_run else [])]
    housekeeping = len(out["job_records_delete"]) if dry_run else out.get("job_records_deleted", 0)
    if housekeeping:
        lines.append(
            f"{verb} {housekeeping} job records older than COLDCOPY_JOB_HISTORY_DAYS (runs, claims, slots)"
        )
    ch = out.get("changes") or {}
    if ch.get("batches_delete") or ch.get("orphans_delete"):
        lines.append(
            f"{verb} {len(ch['batches_delete'])} change batch(es) committed before {ch['needed_by']} "
            f"(the oldest kept dump) and {len(ch['orphans_delete'])} volume(s) of killed drains"
        )
    lines += [f"  skipped {sk['name']}: {sk['reason']}" for sk in out.get("skipped", [])]
    if out["keep"]:
        lines.append(f"keeping {len(out['keep'])} backup(s):")
        lines.append(table([[k["name"], "; ".join(k["reasons"])] for k in out["keep"]], ["NAME", "WHY"]))
    lines += [f"! {r}" for r in out["reported"]]
    if dry_run:
        lines.append(
            f"plan {out['plan_id']}: run `coldcopy cleanup --now {out['now']} --expect {out['plan_id']}`"
            " to delete exactly this"
        )
    return "\n".join(lines)


def cmd_cleanup(args: argparse.Namespace) -> int:
    s = settings_for(args)
    if args.now is not None and args.now > now() + NOW_SKEW:
        raise ColdCopyError(
            "--now is in the future",
            "use the time a dry run printed, or leave --now out (it defaults to now)",
        )
    out = run_cleanup(
        s, dry_run=args.dry_run, now=args.now or now().replace(microsecond=0), expect=args.expect
    )
    present(args, out, lambda: _cleanup_text(out, s.retention, args.dry_run))
    return 0


def cmd_pin(args: argparse.Namespace) -> int:
    record = pin(CatalogStore(open_store(settings_for(args))), args.name, args.reason, by=args.by)
    present(args, record, f"pinned {record['name']}: {record['reason']} (by {record['by']})")
    return 0


def cmd_unpin(args: argparse.Namespace) -> int:
    record = unpin(CatalogStore(open_store(settings_for(args))), args.name, by=args.by)
    present(args, record, f"unpinned {record['name']} (it was pinned for: {record['was'].get('reason')})")
    return 0


def _lifecycle(s: Settings, apply: bool) -> dict[str, Any]:
    storage = open_store(s)
    current = storage.get_lifecycle()
    wanted = lifecycle_rules(s.retention, storage.prefix)
    ours = {str(r["ID"]) for r in wanted}
    foreign = [r for r in current if str(r.get("ID", "")) not in ours]
    problems = lifecycle_problems(foreign, s.retention, storage.prefix)
    if apply:
        if problems:
            raise ColdCopyError(
                "the bucket has lifecycle rules that disagree with the retention policy: "
                + "; ".join(problems),
                "remove or lengthen those rules (retention is `coldcopy cleanup`'s job), then apply again",
            )
        storage.put_lifecycle([*foreign, *wanted])
        current = storage.get_lifecycle()
    return {
        "bucket": s.spaces_bucket,
        "prefix": storage.prefix,
        "applied": apply,
        "rules": current,
        "wanted": wanted,
        "in_place": all(_same(w, current) for w in wanted),
        "problems": problems,
    }


def _lifecycle_text(out: dict[str, Any]) -> str:
    lines = [f"bucket {out['bucket']} lifecycle rules ({len(out['rules'])}):"]
    lines += [f"  - {_describe(r)}" for r in out["rules"]]
    lines.append(
        "coldcopy's rules are " + ("in place" if out["in_place"] else "NOT in place (run with --apply)")
    )
    lines += [f"! {p}" for p in out["problems"]]
    return "\n".join(lines)


def cmd_lifecycle(args: argparse.Namespace) -> int:
    out = _lifecycle(settings_for(args), args.apply)
    present(args, out, lambda: _lifecycle_text(out))
    return 1 if out["problems"] else 0


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
