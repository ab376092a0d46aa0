"""What every command handler shares: its settings (from here on, logs redact their secrets)."""

from __future__ import annotations

import argparse
from pathlib import Path

from coldcopy.cli.output import REDACTOR
from coldcopy.config import STORAGE, Settings, load_settings


def settings_for(args: argparse.Namespace, need: tuple[str, ...] = (STORAGE,)) -> Settings:
    """Settings for a command (``--env-file`` honoured); from here on logs redact its secrets."""
    s = load_settings(need=need, env_file=Path(args.env_file) if args.env_file else None)
    REDACTOR.settings = s
    return s
