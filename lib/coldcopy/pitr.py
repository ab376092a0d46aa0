"""`coldcopy pitr`: a new data folder recovered to a point in time from a base backup and the WAL archive.

Order matters: everything that can be checked is checked before the first byte is written: the
target folder is new or empty, a base backup ends before the target, the archive reaches the
target, and the WAL from the backup's first segment up to the target has no gaps.  Only then is the
tar extracted (its stream checked chunk by chunk) and the recovery settings written.

How far the archive "reaches" for a time target: PostgreSQL knows it has passed a time only when
it replays a commit after it, so we need an archived segment stored at or after the target time;
the segments up to the first such one must be continuous.  Timeline switches (recovering across an
earlier PITR): the archived history files give the path from the backup's timeline to the newest
timeline reachable from it (what 'latest' would follow, minus timelines that branched before the
backup ended); continuity is checked along it, and that timeline is written as
recovery_target_timeline.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import walspool
from .backup import BackupContext, context
from .basebackup import open_tar
from .config import Settings
from .errors import ColdCopyError, DatabaseError
from .manifest import Manifest, parse_iso
from .pg import tool_path
from .reader import BackupReader
from .wal import DEFAULT_SEGMENT_SIZE, Segment, format_lsn, gaps, parse_lsn, parse_segment, segment_of
from .walarchive import archived_names, read_archived
from .walfeeder import WalFeeder

log = logging.getLogger(__name__)
OWNER = "postgres"
TARGET_KINDS = ("time", "lsn", "xid", "name", "immediate")


class RecoveryRefused(ColdCopyError):
    """The requested target cannot be reached from what is stored; nothing was written."""

    exit_code = 8


@dataclass(frozen=True)
class Target:
    kind: str  # time | lsn | xid | name | immediate
    time: datetime | None = None
    lsn: int | None = None
    name: str = ""
    xid: int | None = None

    def describe(self) -> str:
        if self.kind == "time" and self.time:
            return f"time {self.time.isoformat()}"
        if self.kind == "lsn" and self.lsn is not None:
            return f"LSN {format_lsn(self.lsn)}"
        if self.kind == "name":
            return f"restore point {self.name!r}"
        if self.kind == "xid":
            return f"the commit of transaction {self.xid}"
        return "the end of the base backup (immediate)"

    def settings(self) -> dict[str, str]:
        if self.kind == "time" and self.time:
            return {"recovery_target_time": self.time.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f+00")}
        if self.kind == "lsn" and self.lsn is not None:
            return {"recovery_target_lsn": format_lsn(self.lsn)}
        if self.kind == "name":
            return {"recovery_target_name": self.name}
        if self.kind == "xid":
            return {"recovery_target_xid": str(self.xid)}
        return {"recovery_target": "immediate"}


@dataclass(frozen=True)
class Plan:
    backup: str
    timeline: int
    first_segment: str
    last_segment: str  # the last segment the recovery is expected to need
    segment_size: int
    backup_stop_time: str
    notes: list[str] = field(default_factory=list)
    server_major: int = 0  # of the server the backup came from: recovery needs the same major
    # What recovery will ask restore_command for, in order (the WAL feeder's list): the archived
    # history files of the timelines it probes, the ones it will find absent, the segments.
    histories: tuple[str, ...] = ()
    absent_histories: tuple[str, ...] = ()
    segments: tuple[str, ...] = ()


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
    plan: Plan | None = field(default=None, repr=False)  # for the WAL feeder of start_recovery

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        del out["plan"]
        return out


# -- planning (no writes) ------------------------------------------------------------------------
@dataclass(frozen=True)
class Archive:
    """The WAL archive: file names with the time each was stored, and the timeline histories."""

    names: list[tuple[str, float]]
    histories: dict[int, list[tuple[int, int]]]


def load_archive(ctx: BackupContext) -> Archive:
    names = archived_names(ctx)
    histories = {
        int(n[:8], 16): parse_history(read_archived(ctx, n).decode("utf-8", "replace"))
        for n, _ in names
        if n.endswith(".history")
    }
    return Archive(names, histories)


def base_manifests(ctx: BackupContext) -> list[Manifest]:
    names = [e.name for e in ctx.catalog.read().entries("base")]
    out = [ctx.catalog.manifest(n) for n in names]
    return sorted((m for m in out if m.extra.get("start_wal_segment")), key=lambda m: m.extra["stop_time"])


def parse_history(text: str) -> list[tuple[int, int]]:
    """A timeline history file as (ancestor timeline, LSN where it was left) lines, oldest first."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].isdigit():
            with contextlib.suppress(ValueError):
                out.append((int(parts[0]), parse_lsn(parts[1])))
    return out


@dataclass(frozen=True)
class Leg:
    """One timeline of the recovery path: its segments from ``lo`` to ``hi`` (None: open-ended)."""

    timeline: int
    lo: int
    hi: int | None


def timeline_legs(
    tli: int, stop_lsn: int, histories: dict[int, list[tuple[int, int]]], size: int
) -> list[Leg]:
    """The path recovery follows from a backup on ``tli`` to the newest timeline reachable from it.

    The newest timeline whose history passes through ``tli`` after the backup's end; on a switch
    from A to B at LSN x, the segment holding x and later ones are read from B.
    """
    best = None
    for t, hist in histories.items():
        left = dict(hist)
        if t > tli and tli in left and left[tli] >= stop_lsn and (best is None or t > best):
            best = t
    if best is None:
        return [Leg(tli, 0, None)]
    legs, lo = [], 0
    for parent, switch in histories[best]:
        if parent < tli:
            continue
        hi = segment_of(switch, parent, size).segno
        legs.append(Leg(parent, lo, hi - 1))
        lo = hi
    legs.append(Leg(best, lo, None))
    return legs


def plan_recovery(
    manifests: list[Manifest],
    archive: list[tuple[str, float]],
    target: Target,
    backup: str | None = None,
    histories: dict[int, list[tuple[int, int]]] | None = None,
) -> Plan:
    """Pick the base backup and the WAL range for ``target``; RecoveryRefused with the reason otherwise.

    Pure: ``manifests`` are the base backups, ``archive`` the archived file names with the time
    each was stored.
    """
    if not manifests:
        raise RecoveryRefused("there is no base backup", "run `coldcopy basebackup` first")
    if backup:
        chosen = [m for m in manifests if m.name == backup]
        if not chosen:
            raise RecoveryRefused(f"{backup} is not a base backup", "run `coldcopy list-backups --kind base`")
        candidates = chosen
    else:
        candidates = manifests
    if target.kind == "time":
        assert target.time is not None
        fits = [m for m in candidates if parse_iso(m.extra["stop_time"]) <= target.time]
        if not fits:
            raise RecoveryRefused(
                f"the target {target.describe()} is before the end of the oldest usable base backup "
                f"({candidates[0].name}, consistent from {candidates[0].extra['stop_time']})",
                "choose a later target; a base backup can only be rolled forward",
            )
    elif target.kind == "lsn":
        assert target.lsn is not None
        lsn = target.lsn
        fits = [m for m in candidates if parse_lsn(m.extra["stop_lsn"]) <= lsn]
        if not fits:
            raise RecoveryRefused(
                f"the target {target.describe()} is before the end of the oldest usable base backup "
                f"({candidates[0].name}, consistent from LSN {candidates[0].extra['stop_lsn']})",
                "choose a later target; a base backup can only be rolled forward",
            )
    else:
        fits = candidates
    m = fits[-1]
    e = m.extra
    size = int(e.get("wal_segment_size", DEFAULT_SEGMENT_SIZE))
    tli = int(e["timeline"])
    legs = _legs(m, histories)

    def timeline_at(segno: int) -> int:
        return _timeline_at(legs, segno)

    segs = sorted((seg.segno, at) for seg, at in _on_path(legs, archive, size))
    first = parse_segment(e["start_wal_segment"], size)
    stop = parse_segment(e["stop_wal_segment"], size)
    if not segs:
        raise RecoveryRefused(
            f"the WAL archive has no segment of timeline {tli}",
            "check archive_command (`coldcopy wal-push %p`) and pg_stat_archiver on the server",
        )
    newest = segs[-1][0]
    if target.kind == "time":
        assert target.time is not None
        when = target.time.timestamp()
        after = [no for no, at in segs if at >= when and no >= stop.segno]
        if not after:
            last_at = datetime.fromtimestamp(max(at for _, at in segs), UTC).isoformat()
            raise RecoveryRefused(
                f"the WAL archive does not reach {target.describe()}: "
                f"the newest segment was stored at {last_at}",
                "choose an earlier target, or wait until the WAL holding the target is archived "
                "(SELECT pg_switch_wal() on the server closes the current segment)",
            )
        last = after[0]
    elif target.kind == "lsn":
        assert target.lsn is not None
        last = max(segment_of(target.lsn, tli, size).segno, stop.segno)  # segno does not depend on tli
        if last > newest:
            raise RecoveryRefused(
                f"the WAL archive does not reach {target.describe()}: "
                f"the newest archived segment on timeline {tli} ends at LSN "
                f"{format_lsn((newest + 1) * size)}",
                "choose an earlier target, or wait until that WAL is archived",
            )
    elif target.kind == "immediate":
        last = stop.segno
    else:
        last = newest
    if stop.segno > newest:
        raise RecoveryRefused(
            f"the WAL that makes {m.name} consistent (up to {stop.name(size)}) is not archived",
            "check the archiver on the server (pg_stat_archiver)",
        )
    first_name, last_name = first.name(size), Segment(timeline_at(last), last).name(size)
    missing = []
    for leg in legs:
        lo, hi = max(leg.lo, first.segno), last if leg.hi is None else min(leg.hi, last)
        if lo <= hi:
            missing += gaps(
                (n for n, _ in archive), size, timeline=leg.timeline,
                first=Segment(leg.timeline, lo).name(size), last=Segment(leg.timeline, hi).name(size),
            )  # fmt: skip
    if missing:
        shown = ", ".join(a if a == b else f"{a}..{b}" for a, b in missing[:5])
        raise RecoveryRefused(
            f"the WAL archive has gaps between {first_name} and {last_name}: {shown}",
            "recovery would stop at the first gap; choose a target before it, or a base backup after it",
        )
    history_files, absent = _history_probes(tli, {n for n, _ in archive if n.endswith(".history")})
    segments = tuple(Segment(timeline_at(no), no).name(size) for no in range(first.segno, last + 1))
    notes = []
    if target.kind == "name":
        notes.append("the restore point must have been created after the chosen base backup started")
    if target.kind == "xid":
        notes.append("the transaction must have committed after the chosen base backup started")
    if len(legs) > 1:
        notes.append("follows timelines " + " → ".join(str(leg.timeline) for leg in legs))
    return Plan(
        m.name, timeline_at(last), first_name, last_name, size, e["stop_time"], notes,
        m.server_version_num // 10000, history_files, absent, segments,
    )  # fmt: skip


def _history_probes(tli: int, archived: set[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The history files recovery from timeline ``tli`` asks for: (archived ones, absent ones).

    PostgreSQL reads the target timeline's history, then
    probes tli+1, tli+2, … up to the first one that is not archived (at the start of recovery and
    again at its end, to choose the new timeline), and at the end reads the history of the
    timeline it recovered on.
    """
    name = "{:08X}.history".format
    present = [name(tli)] if name(tli) in archived else []
    t = tli
    while name(t + 1) in archived:
        present.append(name(t + 1))
        t += 1
    absent = [name(t + 1)] + ([name(t)] if name(t) not in archived else [])
    return tuple(present), tuple(absent)


def _legs(m: Manifest, histories: dict[int, list[tuple[int, int]]] | None) -> list[Leg]:
    e = m.extra
    size = int(e.get("wal_segment_size", DEFAULT_SEGMENT_SIZE))
    return timeline_legs(int(e["timeline"]), parse_lsn(e["stop_lsn"]), histories or {}, size)


def _timeline_at(legs: list[Leg], segno: int) -> int:
    return next(leg.timeline for leg in legs if leg.hi is None or segno <= leg.hi)


def _on_path(legs: list[Leg], archive: list[tuple[str, float]], size: int) -> list[tuple[Segment, float]]:
    """The archived segments recovery along ``legs`` would read, with the time each was stored."""
    segs = [(parse_segment(n, size), at) for n, at in archive if len(n) == 24]
    return [
        (s, at)
        for s, at in segs
        if any(
            leg.timeline == s.timeline and leg.lo <= s.segno and (leg.hi is None or s.segno <= leg.hi)
            for leg in legs
        )
    ]


def reachable_segments(
    m: Manifest, archive: list[tuple[str, float]], histories: dict[int, list[tuple[int, int]]] | None = None
) -> list[str]:
    """The segments recovery from base backup ``m`` replays without a gap, oldest first.

    From the backup's first segment along the planned timeline path (``timeline_legs``), up to
    the last one before a gap or the end of the archive; empty when the WAL that makes the backup
    consistent is incomplete.  Pure.
    """
    e = m.extra
    size = int(e.get("wal_segment_size", DEFAULT_SEGMENT_SIZE))
    legs = _legs(m, histories)
    have = {(seg.timeline, seg.segno) for seg, _ in _on_path(legs, archive, size)}
    segno = parse_segment(e["start_wal_segment"], size).segno
    out = []
    while (_timeline_at(legs, segno), segno) in have:
        out.append(Segment(_timeline_at(legs, segno), segno).name(size))
        segno += 1
    return out if segno > parse_segment(e["stop_wal_segment"], size).segno else []


# -- doing it -------------------------------------------------------------------------------------
def as_owner(args: list[str]) -> list[str]:
    return ["runuser", "-u", OWNER, "--", *args] if os.geteuid() == 0 else args


def _chown_tree(path: Path) -> None:
    if os.geteuid() != 0:
        return
    owner = pwd.getpwnam(OWNER)
    os.lchown(path, owner.pw_uid, owner.pw_gid)
    for folder, dirs, files in os.walk(path):
        os.lchown(folder, owner.pw_uid, owner.pw_gid)
        for name in dirs + files:
            os.lchown(os.path.join(folder, name), owner.pw_uid, owner.pw_gid)


def _conf_quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


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
    ctx = context(settings)
    target_dir = target_dir.absolute()
    if target_dir.exists() and (not target_dir.is_dir() or any(target_dir.iterdir())):
        raise RecoveryRefused(f"{target_dir} exists and is not empty", "give a new or empty folder")
    archive = load_archive(ctx)
    plan = plan_recovery(base_manifests(ctx), archive.names, target, backup, archive.histories)
    result = prepare_recovery(ctx, plan, target, target_dir, port=port, command=command, timeout=timeout)
    if start:
        start_recovery(settings, result, timeout, ctx=ctx)
    return result


def _beside(target_dir: Path) -> tuple[Path, Path, Path]:
    """The env file (storage secrets for wal-fetch), the server log and wal-fetch's spool."""
    parent, name = target_dir.parent, target_dir.name
    return (
        parent / f"{name}.coldcopy-restore.env",
        parent / f"{name}.log",
        parent / f"{name}.coldcopy-walspool",
    )


def prepare_recovery(
    ctx: BackupContext,
    plan: Plan,
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
        with open_tar(reader) as tar:
            tar.extractall(target_dir, filter="data")
        target_dir.chmod(0o700)
        with contextlib.suppress(FileNotFoundError):
            env_file.unlink()
        fd = os.open(env_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never readable by others
        with os.fdopen(fd, "w") as f:
            f.write("".join(f"{k}={_env_quote(v)}\n" for k, v in restore_env(settings).items()))
        log_file.touch()
        shutil.rmtree(spool, ignore_errors=True)
        spool.mkdir(mode=0o700)
        (spool / walspool.MANAGED).touch()  # removed with the spool after promotion: takes may link
        cmd = command or settings.server_command or shlex.join([sys.executable, "-m", "coldcopy"])
        values = {
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
        lines = "".join(f"{k} = {_conf_quote(v)}\n" for k, v in values.items())
        with (target_dir / "postgresql.auto.conf").open("a") as f:
            f.write(
                f"\n# point-in-time recovery by coldcopy from {plan.backup} to {target.describe()}\n{lines}"
            )
        (target_dir / "recovery.signal").touch()
        # standby.signal (kept in a standby's backup) would win over recovery.signal: a standby.
        for stale in ("postmaster.pid", "postmaster.opts", "standby.signal"):
            with contextlib.suppress(FileNotFoundError):
                (target_dir / stale).unlink()
        _chown_tree(target_dir)
        _chown_tree(env_file)
        _chown_tree(log_file)
        _chown_tree(spool)
    except BaseException:
        if created:
            shutil.rmtree(target_dir, ignore_errors=True)
        else:
            for child in target_dir.iterdir():
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        with contextlib.suppress(FileNotFoundError):
            env_file.unlink()
        shutil.rmtree(spool, ignore_errors=True)
        raise
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


def server_tool(name: str, settings: Settings, major: int = 0) -> str:
    """A server program of the backup's major version when installed (PG_BIN_DIR always wins)."""
    candidate = Path(f"/usr/lib/postgresql/{major}/bin/{name}")
    if major and not settings.pg_bin_dir and candidate.exists():
        return str(candidate)
    return tool_path(name, settings)


def _start_command(settings: Settings, target_dir: Path, major: int, timeout: float) -> list[str]:
    _, log_file, _ = _beside(target_dir)
    pg_ctl = server_tool("pg_ctl", settings, major)
    wait = str(max(int(timeout), 1))
    return [pg_ctl, "-D", str(target_dir), "-l", str(log_file), "-w", "-t", wait, "start"]


def start_recovery(
    settings: Settings, result: PitrResult, timeout: float, *, ctx: BackupContext | None = None
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
            feeder = _start_feeder(ctx or context(settings), result)
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


def _start_feeder(ctx: BackupContext, result: PitrResult) -> WalFeeder:
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


def postmaster_pid(target_dir: Path) -> int | None:
    """The pid of the server running in ``target_dir``, or None."""
    try:
        pid = int((target_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        os.kill(pid, 0)
    except PermissionError:
        pass  # another user's process (we are not root): it exists
    except (OSError, ValueError):
        return None
    # A crashed server leaves its pid file and the pid may be reused: only a process working in
    # this data folder is its postmaster (never signal a stranger).
    return pid if _works_in(pid, target_dir) else None


def _works_in(pid: int, target_dir: Path) -> bool:
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd")).resolve() == target_dir.resolve()
    except PermissionError:
        pass  # another user's process, and no CAP_SYS_PTRACE (containers): its command line is public
    except OSError:
        return False
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    if b"-D" in args[:-1]:
        return Path(os.fsdecode(args[args.index(b"-D") + 1])).resolve() == target_dir.resolve()
    return bool(args) and os.path.basename(os.fsdecode(args[0])) in ("postgres", "postmaster")


def _control_state(target_dir: Path, settings: Settings, major: int = 0) -> str:
    proc = subprocess.run(
        as_owner([server_tool("pg_controldata", settings, major), "-D", str(target_dir)]),
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "LC_ALL": "C"},
    )
    m = re.search(r"^Database cluster state:\s*(.+)$", proc.stdout, re.M)
    return m[1].strip() if m else ""


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
        state = _control_state(target_dir, settings, result.server_major)
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


def parse_target(
    time_: datetime | None, lsn: str | None, name: str | None, immediate: bool, xid: str | None = None
) -> Target:
    given = [x for x in (time_, lsn, name, immediate or None, xid) if x is not None]
    if len(given) != 1:
        raise RecoveryRefused(
            "give exactly one target: --target-time, --target-lsn, --target-xid, --target-name "
            "or --target immediate"
        )
    if xid is not None:
        if not xid.isdigit() or not 3 <= int(xid) < 1 << 63:
            raise RecoveryRefused(
                f"{xid[:30]!r} is not a transaction id", "use the number txid_current() gave"
            )
        return Target("xid", xid=int(xid))
    if time_ is not None:
        return Target("time", time=time_)
    if lsn is not None:
        try:
            return Target("lsn", lsn=parse_lsn(lsn))
        except ValueError as exc:
            raise RecoveryRefused(str(exc)) from None
    if name is not None:
        if not name or len(name) > 63:
            raise RecoveryRefused("a restore point name has 1 to 63 characters")
        return Target("name", name=name)
    return Target("immediate")
