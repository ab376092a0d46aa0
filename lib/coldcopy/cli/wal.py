"""Commands that archive WAL: `wal-push` (archive_command) and `wal-pushd` (its warm daemon)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from coldcopy.cli.common import settings_for
from coldcopy.config import STORAGE
from coldcopy.context import open_context
from coldcopy.wal.archive import push
from coldcopy.wal.pushd import run_pushd

log = logging.getLogger("coldcopy")


def cmd_wal_push(args: argparse.Namespace) -> int:
    r = push(open_context(settings_for(args, (STORAGE,))), Path(args.path))
    log.debug("%s stored as %s (%d → %d bytes)", r.name, r.key, r.raw_size, r.stored_size)
    return 0


def cmd_wal_pushd(args: argparse.Namespace) -> int:
    run_pushd(open_context(settings_for(args, (STORAGE,))), Path(args.socket).absolute())
    return 0
