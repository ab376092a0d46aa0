"""`coldcopy basebackup`: a physical base backup streamed into Spaces (its checks: verify/).

``pg_basebackup -Ft -X none -c fast -D -`` writes one tar to stdout (PostgreSQL injects its
``backup_manifest`` as the last member); it goes through the same pipeline as a dump into the
volumes ``backups/<name>/data.NNNNNN`` (kind ``base``).  WAL is not in the tar: the archive
(`wal-push`) holds it, and pg_basebackup waits until the backup's last segment is archived.

Where the WAL positions come from: the server itself writes them into the stream, so we read them
there while the bytes pass by (``TarWatcher``): ``backup_label`` (the first member) gives the start
LSN, its segment and the timeline; ``backup_manifest`` (the last member) gives the WAL range
(start and end LSN per timeline) under its own SHA-256 checksum.  Nothing is inferred from clocks
or from a second query that could race with other activity.  The server's clock is read right
before pg_basebackup starts and right after it ends, so ``stop_time`` is never earlier than the
real end of the backup (what point-in-time recovery needs to pick a backup for a time target).
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from coldcopy.backup.session import Session, commit, manifest_for, run_stream_backup
from coldcopy.config import Settings, redact
from coldcopy.context import Context
from coldcopy.core.manifest import Manifest, data_key
from coldcopy.core.pg_basebackup import TarWatcher, wal_positions
from coldcopy.core.times import Clock, iso, utc_now
from coldcopy.errors import DatabaseError
from coldcopy.postgres.tls import libpq_tls_hint
from coldcopy.postgres.tools import StderrTail, die_with_parent
from coldcopy.stream.pipeline import Packer, Progress, prefetch, read_chunks

log = logging.getLogger(__name__)
TAR_FORMAT = "tar (pg_basebackup -Ft -X none, backup_manifest injected), zstd-compressed"


# -- reading the tar as it streams by ------------------------------------------------------------
# -- taking a base backup -------------------------------------------------------------------------
def run_basebackup(
    settings: Settings,
    progress: Progress | None = None,
    now: Clock = utc_now,
    *,
    ctx: Context | None = None,
) -> Manifest:
    """A physical base backup (pg_basebackup, tar with its backup_manifest) for point-in-time recovery."""

    def body(ses: Session) -> Manifest:
        return _stream(ses, _server_facts(ses.conn), progress, now)

    return run_stream_backup(settings, "base", "pg_basebackup", body, now, ctx=ctx)


def _server_facts(conn: Any) -> dict[str, Any]:
    rows = conn.run(
        "SELECT (SELECT system_identifier FROM pg_control_system())::text,"
        " (SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'),"
        " current_setting('archive_mode'), pg_is_in_recovery()"
    )
    sysid, seg_size, archive_mode, in_recovery = rows[0]
    if archive_mode == "off":
        raise DatabaseError(
            "archive_mode is off on the server, so the WAL a base backup needs is not archived",
            "set archive_mode = on and archive_command = 'python -m coldcopy wal-push %p' "
            "(see docs), restart the server, then run the base backup again",
        )
    return {
        "system_identifier": str(sysid),
        "wal_segment_size": int(seg_size),
        "in_recovery": bool(in_recovery),
    }


def _server_clock(conn: Any) -> datetime:
    when: datetime = conn.run("SELECT clock_timestamp()")[0][0]
    return when.astimezone(UTC)


def _stream(
    ses: Session, facts: dict[str, Any], progress: Progress | None, now: Callable[[], datetime]
) -> Manifest:
    pg, conn, s = ses.pg, ses.conn, ses.settings
    t0 = time.monotonic()
    # The label is the backup's name: the one thing here that waits for the bucket's side.
    ctx, name = ses.start.wait()
    args = _basebackup_args(ses.tool.path, name)
    writer = ses.data_writer()
    watcher = TarWatcher()
    start_time = _server_clock(conn)
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=pg.libpq_env(), preexec_fn=die_with_parent
    )
    assert proc.stdout is not None and proc.stderr is not None
    errors = StderrTail(proc.stderr)
    try:
        packer = Packer(writer, ctx.key, s.zstd_level, object_key=data_key(name))
        for chunk in prefetch(read_chunks(proc.stdout)):
            watcher.feed(chunk)
            packer.write(chunk)
            if progress:
                progress(packer.raw_size, packer.stored_size)
        stats = packer.close()
        rc = proc.wait()
        if rc != 0:
            text = errors.text()
            raise DatabaseError(
                f"pg_basebackup failed (exit {rc}): {redact(text, s)[-800:]}",
                libpq_tls_hint(text, pg.names)
                or "nothing was stored; a base backup needs a user with the REPLICATION attribute, a "
                "replication line in pg_hba.conf, a free WAL sender and a working archive_command",
            )
        positions = wal_positions(watcher, facts["wal_segment_size"])
        stop_time = _server_clock(conn)
        volumes = writer.complete()
    except BaseException:
        proc.kill()
        proc.wait()
        writer.abort()
        raise
    manifest = manifest_for(
        ses,
        kind="base",
        finished=now(),
        duration=time.monotonic() - t0,
        stats=stats,
        volumes=volumes,
        row_counts="none",
        extra={
            "format": TAR_FORMAT,
            **positions,
            "start_time": iso(start_time),
            "stop_time": iso(stop_time),
            "system_identifier": facts["system_identifier"],
            "wal_segment_size": facts["wal_segment_size"],
            "from_standby": facts["in_recovery"],
            "tar_members": watcher.count,
        },
    )
    commit(ctx, manifest)  # the commit point
    return manifest


def _basebackup_args(tool: str, label: str) -> list[str]:
    """pg_basebackup writing one tar with a SHA-256 backup_manifest to stdout, without WAL."""
    return [
        tool,
        "--format=tar",
        "--wal-method=none",
        "--checkpoint=fast",
        "--pgdata=-",
        "--manifest-checksums=SHA256",
        f"--label={label}",
        "--no-password",
    ]


# -- reading a base backup back ------------------------------------------------------------------
