"""`coldcopy gdpr erase|list|report|export`: the erasure ledger and a person's answers
(docs/erasures.md).

The subject given with ``--subject`` is personal data: it goes into the encrypted record, is bound
as a parameter, and is printed nowhere; what this prints names erasures by id and kind (the value
only with ``gdpr list --show-values``).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
from pathlib import Path
from typing import Any

from coldcopy.cli.common import now, settings_for
from coldcopy.cli.output import present
from coldcopy.config import DB, STORAGE, Settings
from coldcopy.context import open_context
from coldcopy.core.erasure import (
    Erasure,
    ErasureInputError,
    ErasureKind,
    check_subject,
    choose_kind,
    new_erasure,
    parse_kinds,
    still_held,
)
from coldcopy.core.names import LOGICAL_KINDS
from coldcopy.core.retention import tier_picks
from coldcopy.core.times import iso
from coldcopy.errors import ConflictError, DatabaseError, InputError, NotFoundError
from coldcopy.ops.cleanup import gather
from coldcopy.postgres.client import Postgres
from coldcopy.restore.erasures import erasing, read_ledger, record_erasure
from coldcopy.restore.logical import run_restore

EXPORT_PREFIX = "coldcopy_export_"


def load_kinds(settings: Settings) -> dict[str, ErasureKind]:
    """The kinds ``GDPR_ERASURE_CONFIG`` declares, checked as a whole; InputError otherwise."""
    path = settings.gdpr_erasure_config
    if not path:
        raise InputError(
            "GDPR_ERASURE_CONFIG is not set: it names the JSON file declaring what erasing a subject means",
            "see docs/erasures.md (and .env.example) for the file's form",
        )
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise InputError(f"GDPR_ERASURE_CONFIG {path}: {exc.strerror}", "give a readable JSON file") from None
    try:
        return parse_kinds(text)
    except ErasureInputError as exc:
        raise InputError(f"{path}: {exc}", "nothing was run or recorded; see docs/erasures.md") from None


def subject_of(args: argparse.Namespace) -> str:
    """``--subject``, or with ``-`` one line of standard input; InputError for an empty one."""
    given = str(args.subject)
    subject = sys.stdin.readline().rstrip("\r\n") if given == "-" else given
    try:
        return check_subject(subject)
    except ErasureInputError as exc:
        raise InputError(str(exc), "nothing was run or recorded") from None


def _kind_and_subject(settings: Settings, args: argparse.Namespace) -> tuple[ErasureKind, str]:
    kinds = load_kinds(settings)
    try:
        kind = choose_kind(kinds, args.kind)
    except ErasureInputError as exc:
        raise InputError(str(exc), "nothing was run or recorded") from None
    return kind, subject_of(args)


def cmd_gdpr_erase(args: argparse.Namespace) -> int:
    s = settings_for(args, (DB, STORAGE))
    kind, subject = _kind_and_subject(s, args)
    ctx = open_context(s)
    erasure = new_erasure(
        kind,
        subject,
        s.db_name,
        now(),
        live="checked" if args.check_only else "applied",
        note=args.note or "",
    )
    read_ledger(ctx)  # the ledger opens with these keys before one more record joins it
    # Applied (or only checked) in one transaction that commits once the record is stored: a
    # failure before leaves the live database and the ledger as they were.
    with Postgres(s).session() as conn:
        try:
            with erasing(conn, [erasure], statements=not args.check_only, restored=False) as applied:
                record_erasure(ctx, erasure)
        except DatabaseError as exc:
            raise ConflictError(
                f"{s.db_name}: {exc.message}",
                "nothing was changed or recorded; "
                + (
                    "erase the subject in the application first, or run without --check-only"
                    if args.check_only
                    else "fix the statements in GDPR_ERASURE_CONFIG (docs/erasures.md)"
                ),
            ) from None
    out = {
        "id": erasure.id,
        "recorded_at": iso(erasure.recorded_at),
        "database": erasure.database,
        "kind": erasure.kind,
        "live": erasure.live,
        "live_rows_changed": applied.rows_removed,
        "live_subject_remaining": 0,
    }
    done = (
        f"applied to {erasure.database}: {applied.rows_removed} row(s) changed"
        if not args.check_only
        else f"checked in {erasure.database}: the application had already erased the subject"
    )
    present(
        args,
        out,
        f"recorded erasure {erasure.id} ({erasure.kind}); {done}; the check counts 0 rows of the subject\n"
        "  every restore, PITR and test restore re-applies it before the data is used",
    )
    return 0


def cmd_gdpr_list(args: argparse.Namespace) -> int:
    ctx = open_context(settings_for(args))
    ledger = read_ledger(ctx)
    rows = [_row(e) | ({"subject": e.subject} if args.show_values else {}) for e in ledger]
    lines = [f"{len(ledger)} erasure(s) recorded"] + [
        f"  {e.id}  {e.database}: {e.kind}"
        + (f" {e.subject}" if args.show_values else "")
        + f", live {e.live}"
        + (f"  ({e.note})" if e.note else "")
        for e in ledger
    ]
    present(args, rows, "\n".join(lines))
    return 0


def _row(e: Erasure) -> dict[str, Any]:
    return {
        "id": e.id,
        "recorded_at": iso(e.recorded_at),
        "database": e.database,
        "kind": e.kind,
        "live": e.live,
        "statements": len(e.statements),
        "note": e.note,
    }


def cmd_gdpr_report(args: argparse.Namespace) -> int:
    s = settings_for(args)
    ctx = open_context(s)
    subject = subject_of(args)
    ledger = [e for e in read_ledger(ctx) if e.is_subject(subject)]
    if not ledger:
        raise NotFoundError(
            "no erasure is recorded for this subject", "coldcopy gdpr erase --subject … records one"
        )
    inputs, _ = gather(ctx.catalog)
    policy = s.retention
    days = {k: d for k in ("full", "base", "compliance") if (d := policy.days_for(k)) is not None}
    tiers = tier_picks(inputs.backups, policy)
    report = []
    for e in ledger:
        same_db = [(b.name, b.kind, b.created_at) for b in inputs.backups if b.database == e.database]
        held = still_held(e, same_db, days, dict(inputs.pins), tiers)
        report.append(
            {
                **_row(e),
                "backups_holding_older_data": [
                    {"backup": h.backup, "created_at": iso(h.created_at), "expires": h.expires} for h in held
                ],
                "restores_reapply": True,
            }
        )
    present(args, {"erasures": report, "retention": policy.describe()}, lambda: _report_text(report))
    return 0


def _report_text(report: list[dict[str, Any]]) -> str:
    lines = []
    for r in report:
        lines.append(f"erasure {r['id']} ({r['kind']}) in {r['database']}: recorded {r['recorded_at']}")
        lines.append(
            "  every restore, PITR (physical and logical), test restore and drill re-applies it before "
            "the data is used"
        )
        held = r["backups_holding_older_data"]
        if not held:
            lines.append("  no stored backup was taken before it")
        for h in held:
            lines.append(f"  still held by {h['backup']} (taken {h['created_at']}), expires: {h['expires']}")
    return "\n".join(lines)


def _newest_logical(s: Settings) -> str:
    entries = [
        e
        for e in open_context(s).catalog.read().entries()
        if e.database == s.db_name and e.kind in LOGICAL_KINDS
    ]
    if not entries:
        raise NotFoundError(f"no logical backup of {s.db_name} is stored", "take one with coldcopy backup")
    return entries[0].name


def cmd_gdpr_export(args: argparse.Namespace) -> int:
    s = settings_for(args, (DB, STORAGE))
    kind, subject = _kind_and_subject(s, args)
    if not kind.read:
        raise InputError(f"kind {kind.name} declares no read queries", 'add "read" to GDPR_ERASURE_CONFIG')
    output = Path(args.output or f"gdpr-export-{now().strftime('%Y%m%d_%H%M%S')}.json")
    if output.exists():
        raise InputError(f"{output} exists", "give a new file with --output")
    name = args.backup or _newest_logical(s)
    scratch = EXPORT_PREFIX + secrets.token_hex(4)
    pg = Postgres(s)
    try:
        restored = run_restore(s, name, scratch)
        found: dict[str, list[dict[str, Any]]] = {}
        with pg.session(scratch) as conn:
            for label, sql in kind.read.items():
                rows = conn.run(sql, subject=subject)
                columns = [c["name"] for c in conn.columns or []]
                found[label] = [dict(zip(columns, row, strict=True)) for row in rows]
    finally:
        with pg.session(pg.maintenance_db()) as admin:
            pg.drop_database(admin, scratch)
    doc = {
        "backup": name,
        "kind": kind.name,
        "exported_at": iso(now()),
        "erasures_applied": restored.get("erasures_applied", 0),
        "rows": found,
    }
    fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f, indent=2, sort_keys=True, default=str)
    counts = {label: len(rows) for label, rows in found.items()}
    present(
        args,
        {"backup": name, "output": str(output), "rows": counts, "scratch_dropped": scratch},
        f"exported from {name} into {output}: "
        + ", ".join(f"{label} {n} row(s)" for label, n in counts.items())
        + f"; the scratch database {scratch} was dropped",
    )
    return 0
