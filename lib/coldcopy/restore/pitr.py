"""`coldcopy pitr`: a new data folder recovered to a point in time from a base backup and the WAL archive.

Order matters: everything that can be checked is checked before the first byte is written: the
target folder is new or empty, a base backup ends before the target, the archive reaches the
target, and the WAL from the backup's first segment up to the target has no gaps
(:mod:`coldcopy.core.recovery_plan`).  Only then is the tar extracted (its stream checked chunk by
chunk) and the recovery settings written; ``--start`` then runs the server
(:mod:`coldcopy.postgres.server`) with a WAL feeder until it is promoted.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from coldcopy.backup.reader import BackupReader, open_tar
from coldcopy.config import Settings
from coldcopy.context import Context, open_context
from coldcopy.core.erasure import Erasure
from coldcopy.core.manifest import Manifest
from coldcopy.core.recovery_plan import RecoveryPlan, RecoveryRefused, Target, parse_history, plan_recovery
from coldcopy.errors import DatabaseError
from coldcopy.postgres.client import Postgres
from coldcopy.postgres.server import (
    as_owner,
    chown_tree,
    conf_quote,
    control_state,
    postmaster_pid,
    server_tool,
    stop_server,
)
from coldcopy.restore.erasures import DATABASES, Applied, apply_to_server, read_ledger
from coldcopy.restore.safe_tar import extract_all
from coldcopy.wal import spool as walspool
from coldcopy.wal.archive import archived_names, read_archived
from coldcopy.wal.feeder import WalFeeder

log = logging.getLogger(__name__)


@dataclass
class PitrResult:
    backup: str
    target: str
    target_dir: str
    port: int
    env_file: str
    first_segment: str
    last_segment: str
    started: bool = False
    promoted: bool = False
    reached: str = ""  # "last completed transaction was at log time …" as PostgreSQL reports it
    log_file: str = ""
    steps: list[str] = field(default_factory=list)
    server_major: int = 0
    erased: dict[str, Any] = field(default_factory=dict)  # the erasure ledger applied after promotion
    plan: RecoveryPlan | None = field(default=None, repr=False)  # for the WAL feeder of start_recovery

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        del out["plan"]
        return out


@dataclass(frozen=True)
class Archive:
    """The WAL archive: file names with the time each was stored, and the timeline histories."""

    names: list[tuple[str, float]]
    histories: dict[int, list[tuple[int, int]]]


def load_archive(ctx: Context) -> Archive:
    names = archived_names(ctx)
    histories = {
        int(n[:8], 16): parse_history(read_archived(ctx, n).decode("utf-8", "replace"))
        for n, _ in names
        if n.endswith(".history")
    }
    return Archive(names, histories)


def base_manifests(ctx: Context) -> list[Manifest]:
    names = [e.name for e in ctx.catalog.read().entries("base")]
    out = [ctx.catalog.manifest(n) for n in names]
    return sorted((m for m in out if m.extra.get("start_wal_segment")), key=lambda m: m.extra["stop_time"])


def _env_quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def restore_env(settings: Settings) -> dict[str, str]:
    """What wal-fetch needs: storage, the prefix and the key (nothing about the database)."""
    s = settings
    env = {
        "DO_SPACES_KEY": s.spaces_key,
        "DO_SPACES_SECRET": s.spaces_secret.reveal(),
        "DO_SPACES_BUCKET": s.spaces_bucket,
        "DO_SPACES_REGION": s.spaces_region,
        "DO_SPACES_ENDPOINT": s.spaces_endpoint,
    }
    if s.cluster:
        env["COLDCOPY_CLUSTER"] = s.cluster
    else:
        env["DB_NAME"] = s.db_name
    if s.encrypted:
        env["BACKUP_ENCRYPTION_KEY"] = s.encryption_key.reveal()
    return env


def run_pitr(
    settings: Settings,
    target: Target,
    target_dir: Path,
    *,
    port: int = 5432,
    start: bool = False,
    backup: str | None = None,
    command: str | None = None,
    timeout: float = 600,
) -> PitrResult:
    ctx = open_context(settings)
    target_dir = target_dir.absolute()
    if target_dir.exists() and (not target_dir.is_dir() or any(target_dir.iterdir())):
        raise RecoveryRefused(f"{target_dir} exists and is not empty", "give a new or empty folder")
    archive = load_archive(ctx)
    plan = plan_recovery(base_manifests(ctx), archive.names, target, backup, archive.histories)
    erasures = read_ledger(ctx)  # every record opens, before anything is written
    if erasures and not start:
        raise RecoveryRefused(
            f"the erasure ledger holds {len(erasures)} erasure(s), applied once the recovered server "
            "is promoted and before it is used",
            "pass --start (and DB_USER/DB_PASSWORD of a role of the backed-up cluster)",
        )
    if erasures and not settings.db_user:
        raise RecoveryRefused(
            "the erasure ledger is applied to the recovered server as DB_USER, which is not set",
            "set DB_USER (and DB_PASSWORD) to a role of the backed-up cluster",
        )
    result = prepare_recovery(ctx, plan, target, target_dir, port=port, command=command, timeout=timeout)
    if start:
        start_recovery(settings, result, timeout, ctx=ctx)
        try:
            result.erased = erase_recovered(settings, port, erasures).to_dict()
        except BaseException:
            stop_server(settings, target_dir, result.server_major)  # not to be used unerased
            raise
    return result


def erase_recovered(settings: Settings, port: int, erasures: list[Erasure]) -> Applied:
    """The erasure ledger applied to the recovered server on ``port`` of this machine, as DB_USER;
    DatabaseError if it cannot be (the recovered folder is then not to be used)."""
    if not erasures:
        return Applied()
    local = Postgres(replace(settings, db_host="127.0.0.1", db_port=port, db_sslmode="prefer"))
    with local.session(local.maintenance_db()) as conn:
        present = {str(r[0]) for r in conn.run(DATABASES)}
    return apply_to_server(local.connect, erasures, present)


def _beside(target_dir: Path) -> tuple[Path, Path, Path]:
    """The env file (storage secrets for wal-fetch), the server log and wal-fetch's spool."""
    parent, name = target_dir.parent, target_dir.name
    return (
        parent / f"{name}.coldcopy-restore.env",
        parent / f"{name}.log",
        parent / f"{name}.coldcopy-walspool",
    )


def prepare_recovery(
    ctx: Context,
    plan: RecoveryPlan,
    target: Target,
    target_dir: Path,
    *,
    port: int,
    command: str | None = None,
    timeout: float = 600,
    extra: dict[str, str] | None = None,
) -> PitrResult:
    """Extract ``plan.backup`` into the new or empty ``target_dir`` and write the recovery settings.

    ``extra`` settings follow ours in postgresql.auto.conf.  Whatever fails, nothing written stays.
    """
    settings = ctx.settings
    reader = BackupReader(ctx, plan.backup)
    reader.confirm()
    env_file, log_file, spool = _beside(target_dir)
    created = not target_dir.exists()
    target_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        _extract(reader, target_dir)
        _write_env_file(env_file, settings)
        log_file.touch()
        _new_spool(spool)
        values = _recovery_settings(settings, plan, target, env_file, spool, port, command, extra)
        _write_recovery_settings(target_dir, plan, target, values)
        for path in (target_dir, env_file, log_file, spool):
            chown_tree(path)
    except BaseException:
        _remove_written(target_dir, created, env_file, spool)
        raise
    return _prepared(settings, plan, target, target_dir, port, timeout)


def _extract(reader: BackupReader, target_dir: Path) -> None:
    """The base backup's tar into ``target_dir``, its stream checked chunk by chunk."""
    with open_tar(reader) as tar:
        extract_all(tar, target_dir)  # by the "data" filter's rules, on any Python 3.11
    target_dir.chmod(0o700)


def _write_env_file(env_file: Path, settings: Settings) -> None:
    """What wal-fetch needs (``restore_env``), in a new file only its owner can read."""
    with contextlib.suppress(FileNotFoundError):
        env_file.unlink()
    fd = os.open(env_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never readable by others
    with os.fdopen(fd, "w") as f:
        f.write("".join(f"{k}={_env_quote(v)}\n" for k, v in restore_env(settings).items()))


def _new_spool(spool: Path) -> None:
    """An empty spool for wal-fetch, marked as managed by us."""
    shutil.rmtree(spool, ignore_errors=True)
    spool.mkdir(mode=0o700)
    (spool / walspool.MANAGED).touch()  # removed with the spool after promotion: takes may link


def _recovery_settings(
    settings: Settings,
    plan: RecoveryPlan,
    target: Target,
    env_file: Path,
    spool: Path,
    port: int,
    command: str | None,
    extra: dict[str, str] | None,
) -> dict[str, str]:
    """The settings recovery runs with: wal-fetch as restore_command, the target, the timeline."""
    cmd = command or settings.server_command or shlex.join([sys.executable, "-m", "coldcopy"])
    return {
        "restore_command": f"COLDCOPY_ENV_FILE={shlex.quote(str(env_file))} {cmd} wal-fetch "
        f"--spool {shlex.quote(str(spool))} %f %p",
        **target.settings(),
        "recovery_target_action": "promote",
        # The planned timeline, not 'latest': a newer timeline that branched before this backup
        # ended is not reachable from it, and recovery must follow the path that was checked.
        "recovery_target_timeline": str(plan.timeline),
        "archive_mode": "off",
        # From the archive alone: a standby's backup names its primary (and slot), and streaming
        # from it would paper over a damaged archive and use the real server's slot.
        "primary_conninfo": "",
        "primary_slot_name": "",
        "port": str(port),
        **(extra or {}),
    }


def _write_recovery_settings(
    target_dir: Path, plan: RecoveryPlan, target: Target, values: dict[str, str]
) -> None:
    """``values`` appended to postgresql.auto.conf, recovery.signal, and no stale server files."""
    lines = "".join(f"{k} = {conf_quote(v)}\n" for k, v in values.items())
    with (target_dir / "postgresql.auto.conf").open("a") as f:
        f.write(f"\n# point-in-time recovery by coldcopy from {plan.backup} to {target.describe()}\n{lines}")
    (target_dir / "recovery.signal").touch()
    # standby.signal (kept in a standby's backup) would win over recovery.signal: a standby.
    for stale in ("postmaster.pid", "postmaster.opts", "standby.signal"):
        with contextlib.suppress(FileNotFoundError):
            (target_dir / stale).unlink()


def _remove_written(target_dir: Path, created: bool, env_file: Path, spool: Path) -> None:
    """Everything ``prepare_recovery`` wrote: the folder (or its contents), the env file, the spool."""
    if created:
        shutil.rmtree(target_dir, ignore_errors=True)
    else:
        for child in target_dir.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    with contextlib.suppress(FileNotFoundError):
        env_file.unlink()
    shutil.rmtree(spool, ignore_errors=True)


def _prepared(
    settings: Settings, plan: RecoveryPlan, target: Target, target_dir: Path, port: int, timeout: float
) -> PitrResult:
    """The result of a prepared folder, with the steps left to the operator."""
    env_file, log_file, spool = _beside(target_dir)
    return PitrResult(
        backup=plan.backup,
        target=target.describe(),
        target_dir=str(target_dir),
        port=port,
        env_file=str(env_file),
        first_segment=plan.first_segment,
        last_segment=plan.last_segment,
        log_file=str(log_file),
        steps=[
            shlex.join(as_owner(_start_command(settings, target_dir, plan.server_major, timeout))),
            f"watch {log_file} for 'database system is ready to accept connections' after promotion",
            f"delete {env_file} once the server is promoted (it holds the storage secrets)",
            f"delete {spool} once the server is promoted (segments fetched ahead)",
        ],
        server_major=plan.server_major,
        plan=plan,
    )


def _start_command(settings: Settings, target_dir: Path, major: int, timeout: float) -> list[str]:
    _, log_file, _ = _beside(target_dir)
    pg_ctl = server_tool("pg_ctl", settings, major)
    wait = str(max(int(timeout), 1))
    return [pg_ctl, "-D", str(target_dir), "-l", str(log_file), "-w", "-t", wait, "start"]


def start_recovery(
    settings: Settings, result: PitrResult, timeout: float, *, ctx: Context | None = None
) -> None:
    """Start a prepared folder's server and wait for its promotion (DatabaseError if it does not come).

    While it recovers, a WAL feeder (``ctx``'s storage client and key, or new ones) keeps
    wal-fetch's spool filled ahead of it; the feeder is stopped however this ends.  The server
    keeps running; ``stop_server`` ends it.
    """
    target_dir = Path(result.target_dir)
    start_cmd = _start_command(settings, target_dir, result.server_major, timeout)
    feeder = None
    if result.plan and result.plan.segments:
        try:
            feeder = _start_feeder(ctx or open_context(settings), result)
        except Exception as exc:  # noqa: BLE001 - without a feeder every wal-fetch fetches for itself
            log.warning("recovering without the WAL feeder: %s", exc)
    try:
        if feeder is not None:
            # The first segment is asked for as soon as the server starts: a miss there costs more
            # than the GET the server waits for here (a slower one, wal-fetch waits for itself).
            feeder.wait_first(min(timeout, 5))
        _start_and_wait(settings, result, start_cmd, target_dir, Path(result.log_file), timeout)
    finally:
        if feeder is not None:
            feeder.stop()
    shutil.rmtree(_beside(target_dir)[2], ignore_errors=True)  # promoted: recovery asks for no more WAL


def _start_feeder(ctx: Context, result: PitrResult) -> WalFeeder:
    assert result.plan is not None
    plan, spool = result.plan, _beside(Path(result.target_dir))[2]
    st = Path(result.target_dir).stat()  # PostgreSQL runs as the data folder's owner
    # Plus the segment after the last: read-ahead asks for it when the target is near a segment's
    # end (absent from the archive it is simply not fed).
    segments = [*plan.segments, *walspool.ahead(plan.segments[-1], 1, plan.segment_size)]
    return WalFeeder(
        ctx, spool, histories=list(plan.histories), absent=list(plan.absent_histories),
        segments=segments, owner=(st.st_uid, st.st_gid),
    ).start()  # fmt: skip


def _start_and_wait(
    settings: Settings,
    result: PitrResult,
    start_cmd: list[str],
    target_dir: Path,
    log_file: Path,
    timeout: float,
) -> None:
    deadline = time.monotonic() + timeout
    proc = subprocess.run(as_owner(start_cmd), capture_output=True, text=True, cwd="/", check=False)
    result.started = True
    while time.monotonic() < deadline:
        state = control_state(target_dir, settings, result.server_major)
        text = log_file.read_text(errors="replace")
        # The backup's pg_control already says "in production" (copied from a running primary); the
        # signal file that PostgreSQL removes when archive recovery ends tells the two apart.
        if state == "in production" and not (target_dir / "recovery.signal").exists():
            result.promoted = True
            m = re.findall(r"last completed transaction was at log time (.+)", text)
            result.reached = m[-1].strip() if m else "no transaction was replayed after the base backup"
            return
        # pg_ctl gives up after its -t even while recovery goes on: only a server that is gone failed.
        if postmaster_pid(target_dir) is None:
            tail = "\n".join((text.strip() or (proc.stdout + proc.stderr).strip()).splitlines()[-8:])
            raise DatabaseError(
                f"the recovered server stopped before it was promoted:\n{tail}",
                f"see {log_file}; nothing else was changed, the folder can be deleted",
            )
        time.sleep(0.2)
    raise DatabaseError(
        f"the recovered server was not promoted within {timeout:.0f} s",
        f"see {log_file}; it may still be replaying",
    )
