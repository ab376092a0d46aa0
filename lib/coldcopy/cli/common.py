"""What every command module of the CLI shares: settings loading, time arguments, registration."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from coldcopy.cli.output import REDACTOR
from coldcopy.config import STORAGE, Settings, load_settings

#: ``add(name, handler, help)`` from ``cli.build_parser``: registers one subcommand.
AddCommand = Callable[[str, Callable[[argparse.Namespace], int], str], argparse.ArgumentParser]


def settings_for(args: argparse.Namespace, need: tuple[str, ...] = (STORAGE,)) -> Settings:
    """Settings for a command (``--env-file`` honoured); from here on logs redact its secrets."""
    s = load_settings(need=need, env_file=Path(args.env_file) if args.env_file else None)
    REDACTOR.settings = s
    return s


def utc_time(text: str) -> datetime:
    """argparse type: an ISO time, UTC unless it carries an offset."""
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a time; use e.g. 2026-11-24T02:30Z") from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
