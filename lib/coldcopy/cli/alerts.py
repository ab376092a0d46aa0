"""Command-line commands for alerts: `alerts` (the active ones) and `alerts test-email`."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

from coldcopy.cli.common import AddCommand, settings_for
from coldcopy.cli.output import emit_json, table
from coldcopy.config import Settings, environment


def _settings(args: argparse.Namespace) -> Settings:
    return settings_for(args)


def cmd_alerts(args: argparse.Namespace) -> int:
    """The active alerts; exit 1 while any is active (for scripts and cron)."""
    from coldcopy.alerting.notify import alerts_report
    from coldcopy.storage.catalog_store import CatalogStore
    from coldcopy.storage.s3 import Storage

    s = _settings(args)
    storage = Storage(s)
    report = alerts_report(
        s, storage, CatalogStore(storage).read(), datetime.now(UTC), env_file=args.env_file
    )
    if args.json:
        emit_json(report)
        return 1 if report["alerts"] else 0
    alerts = report["alerts"]
    if not alerts:
        print("no active alerts")
    else:
        rows = [[a["severity"].upper(), str(a["since"] or "-"), a["message"][:100]] for a in alerts]
        print(table(rows, ["SEVERITY", "SINCE (UTC)", "WHAT"]))
        print("\nwhat to do:")
        for a in alerts:
            print(f"  {a['id']}: {a['plan_command']}")
    email = report["email"]
    if not email["configured"]:
        print("\nalert emails: off (set SMTP_HOST and ALERT_EMAIL)")
    elif email["last_error"]:
        print(f"\nalert emails: FAILING since {email['last_error']['since']}; {email['pending']} pending")
    return 1 if alerts else 0


def cmd_test_email(args: argparse.Namespace) -> int:
    from pathlib import Path

    from coldcopy.alerting.email import send_test, smtp_from

    s = _settings(args)
    cfg = smtp_from(environment(None, Path(args.env_file) if args.env_file else None))
    send_test(cfg, s.cluster or s.db_name or "default", datetime.now(UTC))
    if args.json:
        emit_json({"sent": True, "to": list(cfg.recipients), "server": f"{cfg.host}:{cfg.port}"})
    else:
        print(
            f"test email sent to {', '.join(cfg.recipients)} through {cfg.host}:{cfg.port} ({cfg.security})"
        )
    return 0


def add_alert_commands(add: AddCommand) -> None:
    a = add("alerts", cmd_alerts, "active alerts (exit 1 while any is active); `test-email` tests email")
    sub = a.add_subparsers(dest="alerts_command", metavar="ACTION")
    t = sub.add_parser("test-email", help="send a test message to ALERT_EMAIL through SMTP_HOST")
    t.set_defaults(func=cmd_test_email)
    # The common options, also after the action; SUPPRESS keeps what was given before it.
    t.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
    t.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="verbose logs")
    t.add_argument("--env-file", default=argparse.SUPPRESS, help="read settings from this file")
