"""Restore drills of base backups: `coldcopy verify NAME --level full|restore` for kind ``base``.

A drill proves what point-in-time recovery would do on the bad day, with the same code
(:mod:`coldcopy.restore.pitr`):

1. Plan.  The WAL this backup replays without a gap (``core.recovery_plan.reachable_segments``,
   along the timeline path recovery takes).  The newest commit in it, read with ``pg_waldump`` from the newest
   segments, ends the window: recovery to a time stops at the first commit after that time, so a
   target needs a commit after it.  The target is a random time between the backup's end (its
   ``stop_time``) and that commit; without a commit after the backup, ``--target immediate``.
2. Restore.  ``restore.pitr.prepare_recovery`` into a throwaway folder (timed: the restore
   throughput), ``pg_verifybackup`` against the backup's own manifest, and settings for a private
   server: a unix socket in the folder with trust authentication and no TCP, no hot standby (so
   the source's connection limits do not matter), small shared_buffers, the log in the folder.
3. Recover.  ``restore.pitr.start_recovery`` (timed: the WAL replay), then queries: the server is
   out of recovery, takes a write, and reports the LSN and commit time it reached.
4. Always, also on failure: stop the server and delete the folder.

The measurement (restore time and throughput, target, time and LSN reached, WAL bytes replayed and
replay seconds) goes into the verification record like a logical test restore's, so
:mod:`coldcopy.core.recovery_time` can use the measured replay rate.
"""

from __future__ import annotations

import logging
import os
import random
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pg8000.native

from coldcopy.backup.reader import BackupReader
from coldcopy.config import Settings, redact
from coldcopy.context import Context, open_context
from coldcopy.core.drill import Commit, choose_target, drill_settings, parse_waldump, stop_time_from_log
from coldcopy.core.erasure import Erasure
from coldcopy.core.lsn import format_lsn, parse_lsn
from coldcopy.core.manifest import Manifest
from coldcopy.core.recovery_plan import RecoveryPlan, Target, plan_recovery, reachable_segments
from coldcopy.core.times import iso, parse_iso
from coldcopy.core.verification import VerifyResult
from coldcopy.errors import ColdCopyError, DatabaseError, IntegrityError
from coldcopy.loopback import free_port
from coldcopy.postgres.server import (
    SOCKET_PATH_MAX,
    chown_to_owner,
    postmaster_pid,
    server_tool,
    stop_server,
)
from coldcopy.restore.erasures import DATABASES, apply_to_server, read_ledger
from coldcopy.restore.pitr import Archive, PitrResult, load_archive, prepare_recovery, start_recovery
from coldcopy.verify.record import record_result
from coldcopy.wal.archive import fetch

log = logging.getLogger(__name__)
DRILL_TIMEOUT = 3600.0  # seconds for recovery to promote; a week of WAL can take a while
SCAN_SEGMENTS = 32  # newest segments searched for the last commit before falling back to immediate
DRILL_PREFIX = "coldcopy-drill-"
STALE_MARGIN = 3600.0  # a drill folder older than DRILL_TIMEOUT + this was left by a killed run
HBA = "local all all trust\n"  # the socket sits in a 0700 folder of the server's OS user


# -- the drill -------------------------------------------------------------------------------------
@dataclass
class _Drill:
    ctx: Context
    manifest: Manifest
    result: VerifyResult
    folder: Path
    rng: random.Random
    command: str | None
    timeout: float
    erasures: list[Erasure] = field(default_factory=list)

    @property
    def data(self) -> Path:
        return self.folder / "data"


def run_base_drill(
    settings: Settings,
    name: str,
    level: str = "restore",
    *,
    rng: random.Random | None = None,
    command: str | None = None,
    timeout: float = DRILL_TIMEOUT,
    ctx: Context | None = None,
) -> VerifyResult:
    """Restore base backup ``name`` into a throwaway folder, recover it to a random time and check it."""
    t0 = time.monotonic()
    ctx = ctx or open_context(settings)
    result = VerifyResult(name, level)
    sweep_stale_drills(settings)
    folder = None
    try:
        m = BackupReader(ctx, name).manifest
        if m.kind != "base":
            raise IntegrityError(f"{name} is not a base backup", "use `coldcopy verify` for dumps")
        result.add("manifest readable", True, f"WAL {m.extra.get('start_lsn')} .. {m.extra.get('stop_lsn')}")
        folder = _scratch_folder(m)
    except ColdCopyError as exc:
        result.add("manifest readable" if not result.checks else "scratch folder", False, exc.message)
    except Exception as exc:  # an old or odd manifest: a failed drill, recorded, not a crash
        result.add("manifest readable", False, redact(f"{type(exc).__name__}: {exc}", settings)[:500])
    if folder is not None:
        drill = _Drill(ctx, m, result, folder, rng or random.Random(), command, timeout)
        try:
            _run(drill)
        except ColdCopyError as exc:
            result.add("restore drill", False, exc.message)
        except Exception as exc:
            result.add("restore drill", False, redact(f"{type(exc).__name__}: {exc}", settings)[:500])
        finally:
            _clean_up(drill)
    result.duration_seconds = round(time.monotonic() - t0, 3)
    record_result(ctx, result)
    return result


def _scratch_folder(m: Manifest) -> Path:
    folder = Path(tempfile.mkdtemp(prefix=DRILL_PREFIX))
    try:
        return _prepare_folder(folder, m)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def sweep_stale_drills(settings: Settings, now: float | None = None) -> list[Path]:
    """Remove drill folders a killed run left behind (a copy of the data and the storage secrets):
    those older than the longest drill, their server stopped first.  Returns what was removed."""
    now = time.time() if now is None else now
    removed = []
    for folder in Path(tempfile.gettempdir()).glob(f"{DRILL_PREFIX}*"):
        try:
            if not folder.is_dir() or now - folder.stat().st_mtime < DRILL_TIMEOUT + STALE_MARGIN:
                continue
        except OSError:
            continue
        data = folder / "data"
        if data.exists() and not stop_server(settings, data):
            log.error("a stale drill server in %s could not be stopped; left in place", folder)
            continue
        shutil.rmtree(folder, ignore_errors=True)
        log.warning("removed the stale drill folder %s (a killed drill left it)", folder)
        removed.append(folder)
    return removed


def _prepare_folder(folder: Path, m: Manifest) -> Path:
    if len(str(folder / ".s.PGSQL.65535.lock")) > SOCKET_PATH_MAX:
        raise DatabaseError(
            f"the drill folder's path is too long for the server's unix socket ({folder})",
            "point TMPDIR at a short path such as /tmp",
        )
    free = shutil.disk_usage(folder).free
    if free < m.data.raw_size * 1.1:
        raise DatabaseError(
            f"not enough scratch disk for the drill: {m.data.raw_size} bytes of base backup, {free} free "
            f"in {folder.parent}",
            "point TMPDIR at a larger disk",
        )
    chown_to_owner(folder)  # the server runs as its OS user; only it (and root) may enter
    folder.chmod(0o700)
    return folder


def _run(d: _Drill) -> None:
    m, result = d.manifest, d.result
    major = m.server_version_num // 10000
    _check_server_binaries(d.ctx.settings, major)
    d.erasures = read_ledger(d.ctx)  # every record opens, before anything is restored
    archive = load_archive(d.ctx)
    reach = _reachable(m, archive)
    consistent_at = parse_iso(m.extra["stop_time"])
    newest = _newest_commit(d, reach, consistent_at, major)
    target = choose_target(consistent_at, newest.at if newest else None, d.rng)
    _add_target_check(result, target, consistent_at, newest, reach)
    plan = _plan(d, archive, target, newest)
    port = free_port()
    measurement = _measurement(m, target, consistent_at, newest, major, port)
    result.measurement = measurement
    pitr = _restore(d, plan, target, port, measurement)
    _verify_files(d, major)
    _write_server_files(d)
    _recover(d, pitr, target, measurement)


def _reachable(m: Manifest, archive: Archive) -> list[str]:
    """The WAL recovery from ``m`` replays without a gap; DatabaseError if it stops short of consistency."""
    reach = reachable_segments(m, archive.names, archive.histories)
    if not reach:
        e = m.extra
        raise DatabaseError(
            f"the WAL that makes {m.name} consistent (from {e['start_wal_segment']} to "
            f"{e['stop_wal_segment']}) is not all archived",
            "check `coldcopy wal-status` and the archiver on the server (pg_stat_archiver)",
        )
    return reach


def _add_target_check(
    result: VerifyResult, target: Target, consistent_at: datetime, newest: Commit | None, reach: list[str]
) -> None:
    """The chosen recovery target as a check, with the window it was drawn from."""
    window = f"{iso(consistent_at)} .. {iso(newest.at)}" if newest else ""
    if target.kind == "time":
        result.add("recovery target", True, f"{target.describe()}, at random in the window {window} "
                   "(the backup's end .. the newest archived commit)")  # fmt: skip
    else:
        scanned = min(len(reach), SCAN_SEGMENTS)
        result.add("recovery target", True, "the end of the backup (--target immediate): no transaction "
                   f"committed after the backup in the newest {scanned} archived segment(s), up to "
                   f"{reach[-1]}")  # fmt: skip


def _plan(d: _Drill, archive: Archive, target: Target, newest: Commit | None) -> RecoveryPlan:
    """The recovery plan for ``target``, recorded as a check."""
    # Planned up to the commit that ends the recovery, by its LSN: storage times (whole seconds on S3)
    # are too coarse to tell whether the segment holding it was stored after the target.
    m = d.manifest
    upto = Target("lsn", lsn=newest.lsn) if newest and target.kind == "time" else target
    plan = plan_recovery([m], archive.names, upto, m.name, archive.histories)
    notes = "".join(f"; {n}" for n in plan.notes)
    d.result.add("WAL planned without gaps", True, f"{plan.first_segment} .. {plan.last_segment}{notes}")
    return plan


def _measurement(
    m: Manifest, target: Target, consistent_at: datetime, newest: Commit | None, major: int, port: int
) -> dict[str, Any]:
    """The drill's measurement before the restore: the target, its window and the backup's WAL range."""
    e = m.extra
    return {
        "kind": "base",
        "target": f"a throwaway local data folder (PostgreSQL {major}, unix socket, port {port})",
        "recovery_target": target.describe(),
        "recovery_target_time": iso(target.time) if target.time else None,
        "window_start": iso(consistent_at),
        "window_end": iso(newest.at) if newest else None,
        "start_lsn": e["start_lsn"],
        "stop_lsn": e["stop_lsn"],
        "promoted": False,
    }


def _restore(
    d: _Drill, plan: RecoveryPlan, target: Target, port: int, measurement: dict[str, Any]
) -> PitrResult:
    """Prepare the recovery into the folder, timed (the restore throughput, into ``measurement``)."""
    m = d.manifest
    t0 = time.monotonic()
    pitr = prepare_recovery(
        d.ctx, plan, target, d.data, port=port, command=d.command, timeout=d.timeout,
        extra=drill_settings(d.folder),
    )  # fmt: skip
    seconds = max(time.monotonic() - t0, 1e-6)
    raw, stored = m.data.raw_size, m.data.stored_size
    measurement.update(
        restore_seconds=round(seconds, 3),
        raw_bytes=raw,
        stored_bytes=stored,
        throughput_bytes_per_second=round(raw / seconds, 1),
    )
    d.result.add(
        "base backup restored: chunks authenticate, the tar extracts",
        True,
        f"{raw} bytes restored in {seconds:.2f} s ({raw / seconds / 1e6:.1f} MB/s)",
    )
    return pitr


def _write_server_files(d: _Drill) -> None:
    """The private server's pg_hba.conf, and an empty postgresql.conf where the backup has none."""
    _write_owned(d.folder / "pg_hba.conf", HBA)
    if not (d.data / "postgresql.conf").exists():  # Debian keeps it in /etc, outside the backup
        _write_owned(d.data / "postgresql.conf", "")


def _recover(d: _Drill, pitr: PitrResult, target: Target, measurement: dict[str, Any]) -> None:
    """Start the recovery, timed (the WAL replay, into ``measurement``), then check the server."""
    t1 = time.monotonic()
    try:
        start_recovery(d.ctx.settings, pitr, d.timeout, ctx=d.ctx)
    except ColdCopyError as exc:
        d.result.add("recovered and promoted", False, exc.message[-1500:])
        return
    replay_seconds = max(time.monotonic() - t1, 1e-6)
    measurement["promoted"] = True
    d.result.add("recovered and promoted", True, pitr.reached)
    _check_server(d, pitr, target, measurement, replay_seconds)
    _erase(d, pitr.port)


def _erase(d: _Drill, port: int) -> None:
    """The erasure ledger applied to the recovered server, as every recovery applies it."""
    conn = _connect(d, port)
    try:
        present = {str(r[0]) for r in conn.run(DATABASES)}
    finally:
        conn.close()
    try:
        applied = apply_to_server(lambda db: _connect(d, port, db), d.erasures, present)
    except ColdCopyError as exc:
        d.result.add("the erasure ledger applied", False, exc.message)
        return
    d.result.add(
        "the erasure ledger applied",
        True,
        f"{applied.erasures} erasure(s) applied, {applied.rows_removed} row(s) changed; "
        "every check counts 0 rows of its subject",
    )


def _check_server_binaries(settings: Settings, major: int) -> None:
    path = server_tool("postgres", settings, major)
    out = _run_tool([path, "--version"]).stdout
    m = re.search(r"(\d+)", out)
    if not m or int(m[1]) != major:
        raise DatabaseError(
            f"the drill needs the PostgreSQL {major} server (the backup's major); found {out.strip()[:80]!r}",
            f"install postgresql-{major} (server binaries) on the runner or set PG_BIN_DIR to its bin folder",
        )


def _newest_commit(d: _Drill, reach: list[str], after: datetime, major: int) -> Commit | None:
    """The newest commit in the newest reachable segments (None: none after ``after``)."""
    scan = d.folder / "scan"
    scan.mkdir(mode=0o700)
    waldump = server_tool("pg_waldump", d.ctx.settings, major)
    env = {**os.environ, "TZ": "UTC", "LC_ALL": "C"}
    try:
        for name in reversed(reach[-SCAN_SEGMENTS:]):
            path = scan / name
            fetch(d.ctx, name, path)
            commits = parse_waldump(_run_tool([waldump, "--rmgr=Transaction", str(path)], env).stdout)
            if not commits:  # none here, or pg_waldump cannot read the segment at all: tell them apart
                one = _run_tool([waldump, "--limit=1", str(path)], env)
                if "lsn:" not in one.stdout:
                    raise IntegrityError(
                        f"pg_waldump cannot read the archived segment {name}: {one.stderr.strip()[-300:]}",
                        "the WAL archive or the PostgreSQL binaries do not match this backup",
                    )
            path.unlink()
            if commits:
                newest = max(commits, key=lambda c: c.lsn)
                return newest if newest.at > after else None  # older segments hold only older commits
        return None
    finally:
        shutil.rmtree(scan, ignore_errors=True)


def _run_tool(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, env=env, check=False)


def _verify_files(d: _Drill, major: int) -> None:
    """Every restored file against the backup_manifest PostgreSQL wrote (our settings are ignored by it)."""
    tool = server_tool("pg_verifybackup", d.ctx.settings, major)
    proc = _run_tool([tool, "--no-parse-wal", "--quiet", str(d.data)])
    detail = (proc.stderr or proc.stdout).strip()[-500:] or "every file's size and checksum match"
    d.result.add("every file matches backup_manifest (pg_verifybackup)", proc.returncode == 0, detail)
    if proc.returncode != 0:
        raise IntegrityError("the restored files do not match the backup's manifest; recovery not attempted")


def _write_owned(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o600)
    chown_to_owner(path)


def _connect(d: _Drill, port: int, database: str | None = None) -> pg8000.native.Connection:
    """As the role that took the backup, else ``postgres``; in ``database``, else the backed-up
    database, else template1."""
    sock = str(d.folder / f".s.PGSQL.{port}")
    users = list(dict.fromkeys(u for u in (d.ctx.settings.db_user, "postgres") if u))
    last: Exception | None = None
    tried = (database,) if database else (d.manifest.database, "template1")
    for user in users:
        for db in dict.fromkeys(x for x in tried if x):
            try:
                return pg8000.native.Connection(user, unix_sock=sock, database=db, timeout=60)
            except (pg8000.exceptions.Error, OSError) as exc:
                last = exc
    raise DatabaseError(
        f"the recovered server does not accept a connection as {' or '.join(users)}: {last}",
        "set DB_USER to a role that exists in the backed-up cluster",
    )


def _check_server(
    d: _Drill, pitr: PitrResult, target: Target, measurement: dict[str, Any], replay_seconds: float
) -> None:
    result, m = d.result, d.manifest
    conn = _connect(d, pitr.port)
    try:
        in_recovery, reached_at, reached_lsn, version, db = conn.run(
            "SELECT pg_is_in_recovery(), pg_last_xact_replay_timestamp(), pg_last_wal_replay_lsn()::text,"
            " current_setting('server_version'), current_database()"
        )[0]
        conn.run("SELECT txid_current()")  # takes a transaction id: the copy accepts writes
    finally:
        conn.close()
    result.add(
        "the recovered server answers queries and takes writes",
        in_recovery is False,
        f"PostgreSQL {version}, database {db}" + (", but it is still in recovery" if in_recovery else ""),
    )
    reached = reached_at.astimezone(UTC) if isinstance(reached_at, datetime) else None
    lsn = parse_lsn(str(reached_lsn)) if reached_lsn else 0
    start, stop = parse_lsn(m.extra["start_lsn"]), parse_lsn(m.extra["stop_lsn"])
    replay_bytes = max(lsn - start, 0)
    measurement.update(
        server_version=str(version),
        reached_time=iso(reached) if reached else None,
        reached_lsn=format_lsn(lsn),
        replay_bytes=replay_bytes,
        replay_seconds=round(replay_seconds, 3),
        replay_bytes_per_second=round(replay_bytes / replay_seconds, 1),
    )
    result.add(
        "recovery replayed past the backup's consistent point",
        lsn >= stop,
        f"reached LSN {format_lsn(lsn)} (backup {m.extra['start_lsn']} .. {m.extra['stop_lsn']}); "
        f"{replay_bytes} bytes of WAL in {replay_seconds:.2f} s",
    )
    if target.kind == "time" and target.time is not None:
        inside = reached is None or reached <= target.time
        result.add(
            "the time reached is inside the window, not after the target",
            inside,
            f"last replayed commit at {iso(reached) if reached else '(none after the backup)'}, "
            f"target {iso(target.time)}",
        )
        # ...and not before it: recovery stopped at the first commit after the target, as PostgreSQL
        # logs it (without that line it did not stop at the target at all).
        log_text = Path(pitr.log_file).read_text(errors="replace") if pitr.log_file else ""
        stopped_at = stop_time_from_log(log_text)
        result.add(
            "recovery stopped at the first commit after the target",
            stopped_at is not None and stopped_at > target.time,
            f"stopped before the commit at {iso(stopped_at)}"
            if stopped_at
            else "the server log has no 'recovery stopping before commit' line",
        )


def _clean_up(d: _Drill) -> None:
    """Stop the server and delete the folder, whatever happened; both outcomes are checks."""
    major = d.manifest.server_version_num // 10000
    stopped = True
    if d.data.exists():
        stopped = stop_server(d.ctx.settings, d.data, major)
    for secret in d.folder.glob("*.coldcopy-restore.env"):  # the storage secrets go in any case
        secret.unlink(missing_ok=True)
    if stopped:
        shutil.rmtree(d.folder, ignore_errors=True)
    gone = not d.folder.exists()
    if not gone:
        log.error("the drill folder %s could not be removed", d.folder)
    d.result.add(
        "scratch server stopped and folder removed",
        stopped and gone,
        str(d.folder)
        + ("" if stopped else f": the server (pid {postmaster_pid(d.data)}) could not be stopped")
        + ("" if gone else "; the folder is still there"),
    )
