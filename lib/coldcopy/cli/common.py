"""What every command handler shares: its settings (from here on, logs redact their secrets) and
the clock."""

from __future__ import annotations

import argparse
from datetime import datetime
from pathlib import Path

from coldcopy.cli.output import REDACTOR
from coldcopy.config import STORAGE, Settings, load_settings
from coldcopy.core.times import Clock, utc_now

#: The commands' clock: the real one (tests that reason about time replace it).
clock: Clock = utc_now


def settings_for(args: argparse.Namespace, need: tuple[str, ...] = (STORAGE,)) -> Settings:
    """Settings for a command (``--env-file`` honoured); from here on logs redact its secrets."""
    s = load_settings(need=need, env_file=Path(args.env_file) if args.env_file else None)
    REDACTOR.settings = s
    return s


def now() -> datetime:
    """The time a command takes as now."""
    return clock()
