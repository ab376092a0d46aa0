"""`coldcopy pitr` on the change archive: restore the newest logical backup before the target, then
replay the archived transactions it does not contain, exactly to the target.

1. the batch records and the logical backups' snapshots are read, an xid or restore-point target is
   found in the stream (its commit's LSN becomes the target), and the plan is made
   (:func:`coldcopy.core.replay.plan_logical`): refused with exit 8 and nothing created when the
   target is outside the window or in a gap;
2. the dump is restored with ``coldcopy restore``'s own path (the Supabase-faithful one for a
   project), into ``--target-db`` or the project's database;
3. the batches are streamed (never held whole) through :class:`coldcopy.core.replay.Replayer` into
   ONE transaction on one connection, as ``session_replication_role = replica`` (user triggers
   and the DDL capture do not fire: their effects are in the stream), many statements per round
   trip; at the end the sequences are set to at least their captured position and the largest
   value their column holds; then COMMIT.  A failure rolls the replay back and drops a
   ``--target-db`` this command created.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import pg8000.native

from coldcopy.backup.reader import expected, finish_checked
from coldcopy.config import Settings
from coldcopy.context import Context, open_context
from coldcopy.core.changes import BATCHES_PREFIX, RESTORE_POINTS, SCHEMA, Batch, SnapshotVisibility
from coldcopy.core.lsn import format_lsn
from coldcopy.core.manifest import StoredObject
from coldcopy.core.names import LOGICAL_KINDS
from coldcopy.core.recovery_plan import RecoveryRefused, Target
from coldcopy.core.replay import (
    Commit,
    Dump,
    LogicalPlan,
    Replayer,
    parse_line,
    plan_logical,
    resolved,
    restore_point_name,
    sequence_floor,
)
from coldcopy.core.times import parse_iso
from coldcopy.errors import DatabaseError
from coldcopy.postgres.client import Postgres
from coldcopy.restore.erasures import apply_erasures, read_ledger
from coldcopy.restore.logical import run_restore
from coldcopy.stream.pipeline import Unpacker, prefetch

log = logging.getLogger(__name__)

#: Statements are sent in one simple-protocol query of about this many bytes (one round trip).
ROUND_TRIP_BYTES = 1 << 20


@dataclass
class ReplayStats:
    transactions: int = 0
    skipped_in_dump: int = 0
    rows: int = 0
    ddl: int = 0
    round_trips: int = 0
    seconds: float = 0.0
    last_xid: int | None = None
    last_commit_at: str | None = None
    last_commit_lsn: str | None = None
    sequences_set: dict[str, int] = field(default_factory=dict)

    @property
    def per_second(self) -> float:
        return round(self.transactions / self.seconds, 1) if self.seconds > 0 else 0.0


@dataclass
class LogicalPitrResult:
    archive: str
    backup: str
    target: str
    target_db: str
    window: dict[str, str]
    batches: list[str]
    restore_seconds: float
    replay: ReplayStats
    heartbeat_at: str | None = None
    erased: dict[str, Any] = field(default_factory=dict)  # the erasure ledger applied after the replay

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["replay"]["transactions_per_second"] = self.replay.per_second
        return out


# -- reading the archive ---------------------------------------------------------------------------
def batch_records(ctx: Context) -> list[tuple[Batch, dict[str, Any]]]:
    """Every stored batch (summary and record), in stream order."""
    keys = [o.key for o in ctx.storage.list(BATCHES_PREFIX) if o.key.endswith(".json")]
    with ThreadPoolExecutor(8) as pool:
        recs = list(pool.map(ctx.storage.get_json, keys))
    return [(Batch.from_record(k, r), r) for k, r in zip(keys, recs, strict=True)]


def batch_lines(ctx: Context, record: dict[str, Any]) -> Iterator[str]:
    """The batch's stream, line by line, its checksums verified at the end (IntegrityError; a batch
    a key rotation re-wrapped is checked against its re-wrap record)."""
    obj = StoredObject.from_dict(record["data"])
    unpacker = Unpacker(ctx.key, expect_object=obj.key)
    rest = b""
    chunks = prefetch((ctx.storage.get_bytes(k) for k, _ in obj.pieces()), depth=2)
    for stored in chunks:
        data = rest + unpacker.feed(stored)
        *lines, rest = data.split(b"\n")
        for line in lines:
            yield line.decode()
    if rest:
        yield rest.decode()
    finish_checked(ctx.storage, unpacker, obj.key, expected(obj))


def logical_dumps(ctx: Context) -> list[Dump]:
    """The logical backups that recorded their snapshot (the ones a replay can extend)."""
    cat = ctx.catalog.read()
    out = []
    for kind in LOGICAL_KINDS:
        for e in cat.entries(kind):
            m = ctx.catalog.manifest(e.name)
            vis = m.extra.get("snapshot_visibility")
            if vis:
                out.append(
                    Dump(
                        m.name,
                        parse_iso(m.started_at),
                        parse_iso(m.finished_at),
                        SnapshotVisibility.from_dict(vis),
                    )
                )
    return out


def locate(ctx: Context, target: Target, records: list[tuple[Batch, dict[str, Any]]]) -> Commit:
    """The commit an xid or restore-point target names (the first in stream order)."""
    xid32 = None if target.xid is None else target.xid & 0xFFFFFFFF
    needle = f'"table":"{RESTORE_POINTS}"'
    for _, rec in records:
        current: dict[str, Any] | None = None
        for line in batch_lines(ctx, rec):
            if line.startswith('{"action":"B"'):
                current = parse_line(line)
                if target.kind == "xid" and int(current["xid"]) == xid32:
                    return Commit.of(current)
            elif target.kind == "name" and needle in line and current is not None:
                row = parse_line(line)
                if restore_point_name(row) == target.name and row.get("schema") == SCHEMA:
                    return Commit.of(current)
    if target.kind == "xid":
        raise RecoveryRefused(
            f"transaction {target.xid} is not in the change archive",
            "a transaction that wrote nothing, or one not yet drained, is not in the stream",
        )
    raise RecoveryRefused(
        f"there is no restore point named {target.name!r} in the change archive",
        "check the name (coldcopy restore-point NAME writes it; a drain must have run since)",
    )


# -- applying --------------------------------------------------------------------------------------
_OWNED_SQL = """
SELECT format('%I.%I', sn.nspname, s.relname), format('%I.%I', tn.nspname, t.relname),
       quote_ident(a.attname)
FROM pg_depend d
JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
JOIN pg_namespace sn ON sn.oid = s.relnamespace
JOIN pg_class t ON t.oid = d.refobjid
JOIN pg_namespace tn ON tn.oid = t.relnamespace
JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = d.refobjsubid
JOIN pg_sequence q ON q.seqrelid = s.oid AND q.seqincrement > 0
WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
  AND d.deptype IN ('a', 'i') AND a.atttypid IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype)"""


def set_sequences(conn: pg8000.native.Connection, captured: dict[str, int]) -> dict[str, int]:
    """Every sequence at least at its captured position and above the values its column holds;
    what was set."""
    used: dict[str, int] = {}
    for seq, table, column in conn.run(_OWNED_SQL):
        top = conn.run(f"SELECT max({column})::bigint FROM {table}")[0][0]
        if top is not None:
            used[str(seq)] = int(top)
    done: dict[str, int] = {}
    for seq, floor in sorted(sequence_floor(captured, used).items()):
        rows = conn.run(
            "SELECT s.last_value FROM pg_sequences s "
            "WHERE format('%I.%I', s.schemaname, s.sequencename) = :q AND s.increment_by > 0",
            q=seq,
        )
        if not rows:
            continue  # dropped before the target, or decreasing
        last = rows[0][0]
        if last is None or int(last) < floor:
            conn.run("SELECT setval(:q::regclass, :v, true)", q=seq, v=floor)
            done[seq] = floor
    return done


def apply(
    ctx: Context,
    conn: pg8000.native.Connection,
    plan: LogicalPlan,
    records: dict[str, dict[str, Any]],
) -> ReplayStats:
    """Replay the plan's batches onto the restored dump in ``conn``, in one transaction."""
    t0 = time.monotonic()
    stats = ReplayStats()
    replayer = Replayer(plan.dump.visibility, plan.target)
    buf: list[str] = []
    size = 0

    def send() -> None:
        nonlocal buf, size
        if buf:
            conn.run(";\n".join(buf))
            stats.round_trips += 1
        buf, size = [], 0

    conn.run("BEGIN")
    try:
        conn.run("SET LOCAL session_replication_role = replica")
        conn.run('SET LOCAL search_path = "$user", public')
        captured: dict[str, int] = {}
        for batch in plan.batches:
            rec = records[batch.key]
            captured = {str(k): int(v) for k, v in (rec.get("sequences") or {}).items()}
            for line in batch_lines(ctx, rec):
                for statement in replayer.feed(line):
                    buf.append(statement)
                    size += len(statement)
                    if size >= ROUND_TRIP_BYTES:
                        send()
                if replayer.done:
                    break
            if replayer.done:
                break
        buf += replayer.finish()
        send()
        if replayer.visible_past_target and replayer.past_target is not None:
            raise RecoveryRefused(
                f"{plan.dump.name} already contains transaction {replayer.past_target.xid}, which "
                f"committed after the target ({replayer.past_target.at.isoformat()})",
                "choose a target a little later, or one before that backup started",
            )
        stats.sequences_set = set_sequences(conn, captured)
        conn.run("COMMIT")
    except pg8000.exceptions.DatabaseError as exc:
        conn.run("ROLLBACK")
        last = replayer.last_applied
        where = f" in transaction {last.xid} (committed {last.at.isoformat()})" if last else ""
        raise DatabaseError(
            f"replaying the change archive failed{where}: {_message(exc)}",
            "the replay was rolled back; report this with `coldcopy changes status`",
        ) from None
    except BaseException:
        conn.run("ROLLBACK")
        raise
    stats.seconds = round(time.monotonic() - t0, 3)
    stats.transactions, stats.skipped_in_dump = replayer.applied, replayer.skipped
    stats.rows, stats.ddl = replayer.rows, replayer.ddl
    if replayer.last_applied:
        c = replayer.last_applied
        stats.last_xid, stats.last_commit_at, stats.last_commit_lsn = (
            c.xid,
            c.at.isoformat(),
            format_lsn(c.lsn),
        )
    return stats


def _message(exc: Exception) -> str:
    arg = exc.args[0] if exc.args else exc
    return str(arg.get("M", arg)) if isinstance(arg, dict) else str(arg)


# -- the command -----------------------------------------------------------------------------------
def plan_for(ctx: Context, target: Target) -> tuple[LogicalPlan, list[tuple[Batch, dict[str, Any]]]]:
    """The plan for ``target`` (refused before anything is written) and the batch records."""
    records = batch_records(ctx)
    if not records:
        raise RecoveryRefused(
            "there is no change archive (no batches stored)",
            "run `coldcopy changes setup`, then backups and drains; or use physical PITR",
        )
    if target.kind in ("xid", "name"):
        target = resolved(target, locate(ctx, target, records))
    if target.kind not in ("time", "lsn"):
        raise RecoveryRefused(
            f"the change archive cannot recover to {target.describe()}",
            "give --target-time, --target-lsn, --target-xid or --target-name",
        )
    return plan_logical(target, logical_dumps(ctx), [b for b, _ in records]), records


def run_logical_pitr(
    settings: Settings,
    target: Target,
    target_db: str | None,
    *,
    on_plan: Any = None,
    scratch: bool = False,
) -> LogicalPitrResult:
    """Restore the newest dump before ``target``, replay the change archive onto it, then apply
    the erasure ledger (in place, also before the swap: the live database never holds an erased
    subject's rows from the dump).  ``scratch`` (a drill's scratch database): a plain dump is
    restored without owners and grants, as test restores are, since the scratch server need not
    have the server's roles."""
    ctx = open_context(settings)
    plan, records = plan_for(ctx, target)
    erasures = read_ledger(
        ctx, ctx.catalog.manifest(plan.dump.name).database
    )  # every record opens, before anything is written
    if on_plan is not None:
        on_plan(plan)  # printed before the restore starts
    t0 = time.monotonic()
    restored = run_restore(
        settings,
        plan.dump.name,
        target_db,
        no_owner=scratch,
        no_privileges=scratch,
        erase=target_db is None,
    )
    restore_seconds = time.monotonic() - t0
    final = str(restored["target_db"])
    pg = Postgres(settings)
    try:
        with pg.session(final) as conn:
            stats = apply(ctx, conn, plan, {b.key: r for b, r in records})
            erased = apply_erasures(conn, erasures)  # what the replay brought back goes again
            beat = conn.run(f"SELECT max(at) FROM {SCHEMA}.heartbeat") if _has_heartbeat(conn) else []
    except BaseException:
        if target_db is not None:
            with pg.session(pg.maintenance_db()) as admin:
                pg.drop_database(admin, final)  # nothing half-recovered under the name asked for
        raise
    heartbeat: datetime | None = beat[0][0] if beat else None
    return LogicalPitrResult(
        archive="logical",
        backup=plan.dump.name,
        target=plan.target.describe() if target.kind in ("time", "lsn") else target.describe(),
        target_db=final,
        window={"start": plan.window_start.isoformat(), "end": plan.window_end.isoformat()},
        batches=[b.key for b in plan.batches],
        restore_seconds=round(restore_seconds, 3),
        replay=stats,
        heartbeat_at=heartbeat.isoformat() if heartbeat else None,
        erased=erased.to_dict(),
    )


def _has_heartbeat(conn: pg8000.native.Connection) -> bool:
    return bool(conn.run("SELECT to_regclass(:t) IS NOT NULL", t=f"{SCHEMA}.heartbeat")[0][0])
