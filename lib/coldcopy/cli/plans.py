"""`coldcopy plan` and `coldcopy recovery-time`: runbooks and estimates from the bucket's state."""

from __future__ import annotations

import argparse
from typing import Any

from coldcopy.changes.health import load_health
from coldcopy.cli.common import now, settings_for
from coldcopy.cli.output import present
from coldcopy.context import open_context
from coldcopy.core.erasure import LEDGER_PREFIX
from coldcopy.core.humanize import human_age, human_bytes
from coldcopy.core.recovery_time import estimate
from coldcopy.core.runbooks import Facts, build_plan
from coldcopy.wal.monitor import load


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.0f} s" if seconds < 120 else human_age(seconds)


def _estimate_text(est: dict[str, Any]) -> str:
    lines = [f"basis: {est['basis']}"]
    if not est["estimated"]:
        lines.append(f"NOTE: {est['reason']} — {est['how_to_measure']}")
    for sc in est["scenarios"]:
        shown = _duration(sc["estimate_seconds"]) if sc["available"] else "-"
        lines.append(f"  {sc['title']:45} {shown:>10}  {sc['how']}")
    if est.get("logical_replay"):
        lines.append(f"change archive replay: {est['logical_replay']['basis']}")
    return "\n".join(lines)


def cmd_recovery_time(args: argparse.Namespace) -> int:
    ctx = open_context(settings_for(args))
    est = estimate(ctx.catalog.read(), now(), load(ctx.storage), load_health(ctx.storage))
    present(args, est, lambda: _estimate_text(est))
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    s = settings_for(args)
    ctx = open_context(s)
    facts = Facts(
        s.db_name or s.cluster or "postgres",
        ctx.key.key_id if ctx.key else None,
        s.retention.compliance_days,
        erasures=sum(1 for o in ctx.storage.list(LEDGER_PREFIX) if o.key.endswith(".json.zst")),
    )
    plan = build_plan(
        args.scenario,
        ctx.catalog.read(),
        facts,
        now(),
        before=args.before,
        on_date=args.date,
        wal=load(ctx.storage),
        changes=load_health(ctx.storage),
    )
    d = plan.to_dict()
    present(args, d, lambda: runbook_text(d))
    return 0 if plan.ok else 1


def runbook_text(p: dict[str, Any]) -> str:
    """A runbook as people read it."""
    out = [f"PLAN: {p['scenario']} — {p['title']}" + (f" (alert: {p['alert']})" if p["alert"] else "")]
    if p["blockers"]:
        out.append("THIS PLAN CANNOT WORK AS IT STANDS:")
        out += [f"  ! {b}" for b in p["blockers"]]
    b = p["backup"]
    if b:
        v = b["verification"]
        verdict = (
            f"{'ok' if v['ok'] else 'FAILED'} at level {v['level']} ({v['at']})" if v else "never verified"
        )
        out.append(
            f"backup: {b['name']} (snapshot {b['created_at']}, {human_bytes(b['raw_size_bytes'])} of "
            f"{'base backup' if b['kind'] == 'base' else 'dump'}, "
            f"verification {verdict})"
        )
    sections = (
        ("first", "do first"),
        ("commands", "run"),
        ("after", "check after"),
        ("risks", "what could make it fail"),
    )
    for key, title in sections:
        if p[key]:
            out.append(f"{title}:")
            out += [
                f"  {i}. {line}" if key != "commands" else f"  {line}" for i, line in enumerate(p[key], 1)
            ]
    if p["estimate"]:
        out.append(f"estimated time: {_duration(p['estimate']['seconds'])} ({p['estimate']['basis']})")
    if p["data_loss"]:
        out.append(f"data-loss window: {p['data_loss']['text']}")
    return "\n".join(out)
