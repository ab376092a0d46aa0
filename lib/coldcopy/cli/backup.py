"""`coldcopy backup`: a logical backup of DB_NAME (in a module of its own, so the command loads
only what a backup runs: not the restore, verification, files or WAL code the other backup
commands in :mod:`coldcopy.cli.backups` need)."""

from __future__ import annotations

import argparse
import logging

from coldcopy.backup.logical import run_backup
from coldcopy.cli.common import settings_for
from coldcopy.cli.output import present, progress_meter
from coldcopy.config import DB, STORAGE
from coldcopy.context import Context
from coldcopy.core.humanize import human_bytes
from coldcopy.core.views import backup_summary
from coldcopy.postgres.client import Postgres
from coldcopy.restore.guard import put_right_if_interrupted

log = logging.getLogger("coldcopy")
UNENCRYPTED_WARNING = (
    "WARNING: BACKUP_ENCRYPTION_KEY is not set — backups are stored UNENCRYPTED. "
    "Set it (and keep a copy somewhere safe) to encrypt new backups."
)


def cmd_backup(args: argparse.Namespace) -> int:
    s = settings_for(args, (DB, STORAGE))
    if not s.encrypted:
        log.warning(UNENCRYPTED_WARNING)

    def put_right(ctx: Context) -> list[str]:
        # DB_NAME, if a restore of it was killed between its renames (checked in the background
        # once pg_dump runs, or at once when the connection fails: the backup then connects
        # again if it was put back)
        return put_right_if_interrupted(Postgres(s), ctx.storage, s.db_name)

    with progress_meter(args) as meter:
        m = run_backup(s, args.kind, progress=meter, put_right=put_right)
    out = backup_summary(m, encrypted=s.encrypted)
    ratio = m.raw_size / m.stored_size if m.stored_size else 0
    present(
        args,
        out,
        f"backup {m.name} stored: {human_bytes(m.stored_size)} "
        f"({human_bytes(m.raw_size)} dump, {ratio:.1f}x) in {m.duration_seconds:.1f} s, "
        f"{len(m.tables)} tables, {'encrypted' if s.encrypted else 'NOT ENCRYPTED'}"
        + ("" if m.globals else f"; {m.globals_note}"),
    )
    return 0
