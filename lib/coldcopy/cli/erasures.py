"""`coldcopy erase add|list|report`: the erasure ledger (docs/erasures.md).

Values given with ``--where`` and ``--subject`` are personal data: they go into the encrypted
record and nowhere else; what this prints names erasures by id, table and columns, and shows values
only with ``erase list --show-values``.
"""

from __future__ import annotations

import argparse
from typing import Any

from coldcopy.cli.common import now, settings_for
from coldcopy.cli.output import present
from coldcopy.config import DB, STORAGE
from coldcopy.context import Context, open_context
from coldcopy.core.erasure import (
    Erasure,
    ErasureInputError,
    check_against,
    parse_match,
    still_held,
    validate_table,
)
from coldcopy.core.names import LOGICAL_KINDS
from coldcopy.core.retention import tier_picks
from coldcopy.core.times import iso
from coldcopy.errors import InputError
from coldcopy.ops.cleanup import gather
from coldcopy.postgres.client import Postgres
from coldcopy.restore.erasures import read_ledger, record_erasure

_COLUMNS = (
    "SELECT table_schema || '.' || table_name, column_name FROM information_schema.columns "
    "WHERE table_schema || '.' || table_name = :t"
)


def cmd_erase_add(args: argparse.Namespace) -> int:
    s = settings_for(args, (DB, STORAGE))
    try:
        table = validate_table(args.table)
        match = parse_match(args.where or [])
        subject = args.subject if args.subject is not None else " ".join(match[c] for c in sorted(match))
        if not subject.strip():
            raise ErasureInputError("--subject is empty")
        ctx = open_context(s)
        columns: dict[str, set[str]] = {}
        with Postgres(s).session() as conn:
            for t, c in conn.run(_COLUMNS, t=table):
                columns.setdefault(str(t), set()).add(str(c))
            newest = _newest_backup_tables(ctx, s.db_name)
            if newest is not None and table not in newest[1]:
                raise ErasureInputError(f"no table {table} in the newest backup of {s.db_name} ({newest[0]})")
            check_against(table, match, columns)
            where = " AND ".join(f'"{c}" = :v{i}' for i, c in enumerate(sorted(match)))
            params = {f"v{i}": match[c] for i, c in enumerate(sorted(match))}
            schema, name = table.split(".", 1)
            live = int(conn.run(f'SELECT count(*) FROM "{schema}"."{name}" WHERE {where}', **params)[0][0])
    except ErasureInputError as exc:
        raise InputError(str(exc), "nothing was recorded") from None
    e = record_erasure(ctx, s.db_name, table, match, subject, now(), note=args.note or "")
    out = {
        "id": e.id,
        "recorded_at": iso(e.recorded_at),
        "database": e.database,
        "table": e.table,
        "columns": sorted(e.match),
        "live_rows_matching": live,
    }
    lines = [
        f"recorded erasure {e.id}: {e.describe()} in {e.database}; every restore re-applies it",
        f"  rows in the live database that still match: {live}"
        + ("" if live == 0 else " (delete them in the application: ColdCopy does not)"),
    ]
    present(args, out, "\n".join(lines))
    return 0


def _newest_backup_tables(ctx: Context, database: str) -> tuple[str, set[str]] | None:
    entries = [e for e in ctx.catalog.read().entries() if e.database == database and e.kind in LOGICAL_KINDS]
    if not entries:
        return None
    manifest = ctx.catalog.manifest(entries[0].name)
    return entries[0].name, set(manifest.tables)


def _row(e: Erasure, values: bool) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": e.id,
        "recorded_at": iso(e.recorded_at),
        "database": e.database,
        "table": e.table,
        "columns": sorted(e.match),
        "note": e.note,
    }
    if values:
        row["match"] = dict(e.match)
    return row


def cmd_erase_list(args: argparse.Namespace) -> int:
    ctx = open_context(settings_for(args))
    ledger = read_ledger(ctx)
    rows = [_row(e, args.show_values) for e in ledger]
    lines = [f"{len(ledger)} erasure(s) recorded"] + [
        f"  {e.id}  {e.database}: {e.describe(values=args.show_values)}" + (f"  ({e.note})" if e.note else "")
        for e in ledger
    ]
    present(args, rows, "\n".join(lines))
    return 0


def cmd_erase_report(args: argparse.Namespace) -> int:
    s = settings_for(args)
    ctx = open_context(s)
    ledger = read_ledger(ctx)
    if args.subject is not None:
        ledger = [e for e in ledger if e.is_subject(args.subject)]
        if not ledger:
            raise InputError("no erasure is recorded for this subject", "coldcopy erase list shows what is")
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
                **_row(e, False),
                "subject_matches": args.subject is not None,
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
        proof = " (recorded for this subject)" if r["subject_matches"] else ""
        lines.append(f"erasure {r['id']}{proof}: {r['table']} ({', '.join(r['columns'])}) in {r['database']}")
        lines.append(f"  recorded {r['recorded_at']}; every restore and test restore re-applies it")
        held = r["backups_holding_older_data"]
        if not held:
            lines.append("  no stored backup was taken before it")
        for h in held:
            lines.append(f"  still held by {h['backup']} (taken {h['created_at']}), expires: {h['expires']}")
    return "\n".join(lines) or "no erasure recorded"
