"""Commands for alerts: `alerts` (the active ones) and `alerts test-email`."""

from __future__ import annotations

import argparse
from typing import Any

from coldcopy.alerting.email import send_test
from coldcopy.alerting.notify import alerts_report, gather
from coldcopy.cli.common import now, settings_for
from coldcopy.cli.output import present
from coldcopy.context import open_context
from coldcopy.core.humanize import table


def _alerts_text(report: dict[str, Any]) -> str:
    alerts = report["alerts"]
    lines = []
    if not alerts:
        lines.append("no active alerts")
    else:
        rows = [[a["severity"].upper(), str(a["since"] or "-"), a["message"][:100]] for a in alerts]
        lines += [table(rows, ["SEVERITY", "SINCE (UTC)", "WHAT"]), "", "what to do:"]
        lines += [f"  {a['id']}: {a['plan_command']}" for a in alerts]
    email = report["email"]
    if not email["configured"]:
        lines += ["", "alert emails: off (set SMTP_HOST and ALERT_EMAIL)"]
    elif email["last_error"]:
        lines += [
            "",
            f"alert emails: FAILING since {email['last_error']['since']}; {email['pending']} pending",
        ]
    return "\n".join(lines)


def cmd_alerts(args: argparse.Namespace) -> int:
    """The active alerts; exit 1 while any is active (for scripts and cron)."""
    s = settings_for(args)
    ctx = open_context(s)
    when = now()
    report = alerts_report(s, ctx.catalog.read(), gather(ctx.storage, when), when, from_tick=False)
    present(args, report, lambda: _alerts_text(report))
    return 1 if report["alerts"] else 0


def cmd_test_email(args: argparse.Namespace) -> int:
    s = settings_for(args)
    cfg = s.smtp
    send_test(cfg, s.cluster_label, now())
    present(
        args,
        {"sent": True, "to": list(cfg.recipients), "server": f"{cfg.host}:{cfg.port}"},
        f"test email sent to {', '.join(cfg.recipients)} through {cfg.host}:{cfg.port} ({cfg.security})",
    )
    return 0
