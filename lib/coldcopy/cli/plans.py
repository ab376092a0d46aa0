"""`coldcopy plan` and `coldcopy recovery-time`: runbooks and estimates from the bucket's state."""

from __future__ import annotations

import argparse
from datetime import UTC, date, datetime
from typing import Any

from coldcopy.cli.common import AddCommand, settings_for, utc_time
from coldcopy.cli.output import emit_json, human_age, human_bytes


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.0f} s" if seconds < 120 else human_age(seconds)


def cmd_recovery_time(args: argparse.Namespace) -> int:
    from coldcopy.backup.logical import context
    from coldcopy.core.recovery_time import estimate
    from coldcopy.wal.monitor import load

    s = settings_for(args)
    ctx = context(s)
    est = estimate(ctx.catalog.read(), datetime.now(UTC), load(ctx.storage))
    if args.json:
        emit_json(est)
        return 0
    print(f"basis: {est['basis']}")
    if not est["estimated"]:
        print(f"NOTE: {est['reason']} — {est['how_to_measure']}")
    for sc in est["scenarios"]:
        shown = _duration(sc["estimate_seconds"]) if sc["available"] else "-"
        print(f"  {sc['title']:45} {shown:>10}  {sc['how']}")
    return 0


def _date(text: str) -> date:
    """argparse type: a calendar date."""
    try:
        return date.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a date; use e.g. 2026-06-30") from None


def cmd_plan(args: argparse.Namespace) -> int:
    from coldcopy.backup.logical import context
    from coldcopy.core.runbooks import Facts, build_plan
    from coldcopy.wal.monitor import load

    s = settings_for(args)
    ctx = context(s)
    facts = Facts(
        s.db_name or s.cluster or "postgres", ctx.key.key_id if ctx.key else None, s.compliance_retention_days
    )
    plan = build_plan(
        args.scenario,
        ctx.catalog.read(),
        facts,
        datetime.now(UTC),
        before=args.before,
        on_date=args.date,
        wal=load(ctx.storage),
    )
    if args.json:
        emit_json(plan.to_dict())
    else:
        print(render(plan.to_dict()))
    return 0 if plan.ok else 1


def render(p: dict[str, Any]) -> str:
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


def add_plan_commands(add: AddCommand) -> None:
    from coldcopy.core.runbooks import ALIASES, SCENARIOS

    p = add("plan", cmd_plan, "a disaster-recovery runbook computed from the bucket's real state")
    p.add_argument(
        "scenario",
        choices=[*SCENARIOS, *ALIASES],
        metavar="SCENARIO",
        help=f"one of {', '.join(SCENARIOS)} (or an alert's plan: {', '.join(ALIASES)})",
    )
    p.add_argument(
        "--before", type=utc_time, help="deletion: the time of the deletion (ISO 8601, UTC if no zone)"
    )
    p.add_argument("--date", type=_date, help="compliance: the date whose data is needed (YYYY-MM-DD)")
    add("recovery-time", cmd_recovery_time, "how long recovery would take, from measured test restores")
