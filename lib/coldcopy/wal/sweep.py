"""``coldcopy wal-sweep``: archive WAL over a replication connection, for servers without archive_command.

Each run: make sure the physical replication slot exists (``pg_receivewal --create-slot
--if-not-exists``), read the server's current LSN, stream from the slot up to it
(``pg_receivewal --endpos``), and push every complete file in the local folder with the same
create-only logic as ``wal-push``; a pushed file is deleted locally.  The last segment stays as
``.partial`` and is completed by the next run (pg_receivewal resumes from the folder).  The slot
keeps the server's WAL until it was streamed, so the schedule bounds the data-loss window; drop
the slot (``SELECT pg_drop_replication_slot('<slot>')``) when sweeping stops, or the server keeps
WAL forever.
"""

from __future__ import annotations

import logging
import re
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from coldcopy.config import Settings
from coldcopy.context import open_context
from coldcopy.core.lsn import ARCHIVE_NAME_RE
from coldcopy.errors import DatabaseError
from coldcopy.postgres.client import Postgres
from coldcopy.postgres.tls import libpq_tls_hint
from coldcopy.postgres.tools import tool_path
from coldcopy.wal.archive import push

log = logging.getLogger(__name__)


@dataclass
class SweepResult:
    slot: str
    folder: str
    end_lsn: str
    pushed: list[str] = field(default_factory=list)
    already_archived: list[str] = field(default_factory=list)
    partial: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def slot_name(settings: Settings) -> str:
    base = settings.cluster or settings.db_name or "default"
    return ("coldcopy_" + re.sub(r"[^a-z0-9_]", "_", base.lower()))[:63]


def default_folder(settings: Settings) -> Path:
    return Path(tempfile.gettempdir()) / f"coldcopy-walsweep-{slot_name(settings)}"


def _receivewal(settings: Settings, env: dict[str, str], *args: str) -> None:
    cmd = [tool_path("pg_receivewal", settings), "--no-password", *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False, timeout=3600)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
        raise DatabaseError(
            f"pg_receivewal failed (rc {proc.returncode}): {tail}",
            libpq_tls_hint(tail)
            or "the role needs the REPLICATION attribute and pg_hba.conf a 'replication' line for this host",
        )


def run_sweep(settings: Settings, folder: Path | None = None, slot: str | None = None) -> SweepResult:
    folder = (folder or default_folder(settings)).absolute()
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    slot = slot or slot_name(settings)
    pg = Postgres(settings)
    env = pg.libpq_env()
    _receivewal(settings, env, "-D", str(folder), "--slot", slot, "--create-slot", "--if-not-exists")
    with pg.session() as conn:
        end = str(conn.run("SELECT pg_current_wal_lsn()::text")[0][0])
        # pg_receivewal stops only once it has received WAL *past* --endpos; on an idle server the
        # next record may be 15 s away (the bgwriter's snapshot).  A commit record, flushed
        # (synchronous_commit), puts one right after it.
        conn.run("SET synchronous_commit = on")
        conn.run("SELECT txid_current()")
    _receivewal(settings, env, "-D", str(folder), "--slot", slot, "--endpos", end, "--no-loop")
    ctx = open_context(settings)
    result = SweepResult(slot, str(folder), end)
    for path in sorted(folder.iterdir(), key=lambda p: (not p.name.endswith(".history"), p.name)):
        if path.name.endswith(".partial"):
            result.partial = path.name
            continue
        if not ARCHIVE_NAME_RE.match(path.name):
            continue
        r = push(ctx, path)
        (result.already_archived if r.already_archived else result.pushed).append(r.name)
        path.unlink()
    log.info("wal-sweep: %d pushed up to %s, %s still partial", len(result.pushed), end, result.partial)
    return result
