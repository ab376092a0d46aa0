"""`coldcopy pitr` on the change archive: restore the newest logical backup before the target, then
replay the archived transactions it does not contain, exactly to the target.

1. the batch records and the logical backups' snapshots are read, an xid or restore-point target is
   found in the stream (its commit's LSN becomes the target), and the plan is made
   (:func:`coldcopy.core.replay.plan_logical`): refused with exit 8 and nothing created when the
   target is outside the window or in a gap;
2. the dump is restored with ``coldcopy restore``'s own path (the Supabase-faithful one for a
   project) into its staging database, and steps 3 and 4 run there before it is renamed into
   place as ``--target-db`` or DB_NAME (a project's own database: after the restore's commit);
3. the batches are streamed (never held whole; fetched, decrypted and decompressed a volume ahead
   in a thread of their own) through :class:`coldcopy.core.replay_sql.Replayer`, which groups each
   table's rows into multi-row statements (the tables' keys and types come from
   :class:`CatalogShapes`), into ONE transaction on one connection, as
   ``session_replication_role = replica`` (user triggers and the DDL capture do not fire: their
   effects are in the stream), about a megabyte of statements per round trip, sent by
   :class:`Sender`'s thread while the next are written; at the end the sequences are set to at
   least their captured position and the largest value their column holds;
4. the erasure ledger is applied in the same transaction; then COMMIT.  A failure rolls the
   replay back and drops the staging database: the target is left as it was.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import pg8000.native

from coldcopy.backup.reader import expected, finish_checked
from coldcopy.config import Settings
from coldcopy.context import Context, open_context
from coldcopy.core.changes import BATCHES_PREFIX, RESTORE_POINTS, SCHEMA, Batch, SnapshotVisibility
from coldcopy.core.erasure import Erasure
from coldcopy.core.lsn import format_lsn
from coldcopy.core.manifest import StoredObject
from coldcopy.core.names import LOGICAL_KINDS
from coldcopy.core.recovery_plan import RecoveryRefused, Target
from coldcopy.core.replay import (
    Commit,
    Dump,
    LogicalPlan,
    parse_line,
    plan_logical,
    resolved,
    restore_point_name,
    sequence_floor,
)
from coldcopy.core.replay_sql import Replayer, TableShape
from coldcopy.core.sql import quote_ident
from coldcopy.core.times import parse_iso
from coldcopy.errors import DatabaseError
from coldcopy.postgres.client import Postgres
from coldcopy.postgres.shape import USER_NS_SQL, read_facts
from coldcopy.restore.erasures import Applied, erase_in_transaction, read_ledger
from coldcopy.restore.logical import run_restore
from coldcopy.stream.pipeline import Unpacker, prefetch

log = logging.getLogger(__name__)

#: Statements are sent in one simple-protocol query of about this many bytes (one round trip).
ROUND_TRIP_BYTES = 1 << 20
#: The stream is handed from the reading thread in pieces of about this many bytes of lines.
LINES_BYTES = 1 << 20


@dataclass
class ReplayStats:
    transactions: int = 0
    skipped_in_dump: int = 0
    rows: int = 0
    ddl: int = 0
    statements: int = 0
    round_trips: int = 0
    seconds: float = 0.0
    # where the time went: fetching, decrypting and decompressing the batches; parsing the stream
    # and writing SQL (shape lookups included); the server running the statements (in a thread of
    # its own, overlapping the two before); the replay waiting for it
    read_seconds: float = 0.0
    build_seconds: float = 0.0
    server_seconds: float = 0.0
    wait_seconds: float = 0.0
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


def stream_volumes(ctx: Context, records: list[dict[str, Any]]) -> Iterator[tuple[int, list[str]]]:
    """The batches' streams, about LINES_BYTES of lines at a time, with the index of the batch each
    belongs to; after a batch's last volume its checksums are verified (IntegrityError; a batch a
    key rotation re-wrapped is checked against its re-wrap record).  Meant to run ahead in a
    thread of its own (:func:`prefetch`): fetching, decrypting, decompressing and cutting into
    lines then overlap the replay."""
    for i, record in enumerate(records):
        obj = StoredObject.from_dict(record["data"])
        unpacker = Unpacker(ctx.key, expect_object=obj.key)
        rest = b""
        for k, _ in obj.pieces():
            data = rest + unpacker.feed(ctx.storage.get_bytes(k))
            start = 0
            while True:  # about LINES_BYTES at a time: what waits in the queue stays small
                end = data.rfind(b"\n", start, start + LINES_BYTES)
                if end < 0:
                    end = data.find(b"\n", start + LINES_BYTES)  # a line longer than that
                    if end < 0:
                        break
                yield i, data[start:end].decode().split("\n")
                start = end + 1
            rest = data[start:]
        if rest:
            yield i, [rest.decode()]
        finish_checked(ctx.storage, unpacker, obj.key, expected(obj))


def batch_lines(ctx: Context, record: dict[str, Any]) -> Iterator[str]:
    """One batch's stream, line by line, verified (:func:`stream_volumes`)."""
    for _, lines in prefetch(stream_volumes(ctx, [record]), depth=2):
        yield from lines


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


_SHAPE_SQL = """
SELECT c.relreplident,
  ARRAY(SELECT a.attname::text FROM pg_index i
        CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY k(attnum, n)
        JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
        WHERE i.indrelid = c.oid
          AND CASE c.relreplident WHEN 'd' THEN i.indisprimary WHEN 'i' THEN i.indisreplident END
        ORDER BY k.n),
  EXISTS (SELECT FROM pg_index i WHERE i.indrelid = c.oid AND (i.indisunique OR i.indisexclusion)
          AND NOT coalesce(CASE c.relreplident WHEN 'd' THEN i.indisprimary
                                               WHEN 'i' THEN i.indisreplident END, false)),
  ARRAY(SELECT ARRAY[a.attname::text, format('%I.%I', tn.nspname, t.typname), (a.attgenerated <> '')::text]
        FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
        JOIN pg_namespace tn ON tn.oid = t.typnamespace
        WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped)
FROM pg_class c WHERE c.oid = to_regclass(:name)"""


class CatalogShapes:
    """Tables' shapes from the catalog of the database being replayed into (once per table, and
    again after DDL); what was written out before a lookup runs first (``sync``)."""

    def __init__(self, conn: pg8000.native.Connection, sync: Callable[[], None]) -> None:
        self.conn, self.sync = conn, sync

    def shape(self, schema: str, table: str) -> TableShape | None:
        """The table's key, column types, generated columns and other unique indexes (after
        everything written out so far has run: the connection is shared, and DDL may be in it)."""
        self.sync()
        rows = self.conn.run(_SHAPE_SQL, name=f"{quote_ident(schema)}.{quote_ident(table)}")
        if not rows:
            return None
        replident, key, other_unique, columns = rows[0]
        return TableShape(
            key=tuple(key) if replident in ("d", "i") else (),
            types={name: type_name for name, type_name, _ in columns},
            generated=frozenset(name for name, _, gen in columns if gen == "true"),
            other_unique=bool(other_unique),
        )

    def changed(self) -> None:
        """DDL was written out: every lookup syncs first anyway."""


class Sender:
    """Statements out to the server, many per round trip (one simple-protocol query string of
    about ROUND_TRIP_BYTES), from a thread of its own: while the server runs one string, the
    replay parses the stream and writes the next (the connection is used by nothing else until
    :meth:`sync`).  A failed string stops the rest; the error is raised in the caller's thread."""

    def __init__(self, conn: pg8000.native.Connection, stats: ReplayStats) -> None:
        self.conn, self.stats = conn, stats
        self.buf: list[str] = []
        self.size = 0
        self.error: BaseException | None = None
        self.skip = False
        self.queue: queue.Queue[str | None] = queue.Queue(maxsize=2)
        self.thread = threading.Thread(target=self._run, name="replay-sender", daemon=True)
        self.thread.start()

    def add(self, statements: list[str]) -> None:
        """Queue statements in order; a full buffer is sent."""
        for statement in statements:
            self.buf.append(statement)
            self.size += len(statement)
            if self.size >= ROUND_TRIP_BYTES:
                self.send()

    def send(self) -> None:
        """Hand what is queued to the sending thread (waits while it is two strings behind)."""
        if self.error is not None:
            raise self.error
        if self.buf:
            w0 = time.perf_counter()
            self.queue.put(";\n".join(self.buf))
            self.stats.wait_seconds += time.perf_counter() - w0
            self.stats.round_trips += 1
        self.buf, self.size = [], 0

    def sync(self) -> None:
        """Send what is queued and wait until the server has run all of it; the connection is
        then free for other queries."""
        self.send()
        w0 = time.perf_counter()
        self.queue.join()
        self.stats.wait_seconds += time.perf_counter() - w0
        if self.error is not None:
            raise self.error

    def close(self, *, run_rest: bool = True) -> None:
        """Stop the thread, after running what it was given (or skipping it: ``run_rest=False``,
        when the replay fails and is rolled back)."""
        self.skip = self.skip or not run_rest
        if self.thread.is_alive():
            self.queue.put(None)
            self.thread.join()

    def _run(self) -> None:
        while True:
            sql = self.queue.get()
            try:
                if sql is None:
                    return
                if self.error is None and not self.skip:
                    s0 = time.perf_counter()
                    self.conn.run(sql)
                    self.stats.server_seconds += time.perf_counter() - s0
            except BaseException as exc:  # noqa: BLE001 - handed to the replay's thread
                self.error = exc
            finally:
                self.queue.task_done()


def replay_lines(replayer: Replayer, lines: Iterator[str], sender: Sender) -> None:
    """Feed a stream's lines through ``replayer`` into ``sender`` until the stream ends or the
    target is passed; times the reading and the building."""
    stats = sender.stats
    while not replayer.done:
        r0 = time.perf_counter()
        line = next(lines, None)
        b0 = time.perf_counter()
        stats.read_seconds += b0 - r0
        if line is None:
            return
        statements = replayer.feed(line)
        stats.build_seconds += time.perf_counter() - b0
        sender.add(statements)


def apply(
    ctx: Context,
    conn: pg8000.native.Connection,
    plan: LogicalPlan,
    records: dict[str, dict[str, Any]],
    before_commit: Callable[[pg8000.native.Connection], None] | None = None,
) -> ReplayStats:
    """Replay the plan's batches onto the restored dump in ``conn``, in one transaction;
    ``before_commit`` (the erasure ledger) runs in it last, after the sequences are set."""
    t0 = time.monotonic()
    stats = ReplayStats()
    sender = Sender(conn, stats)
    replayer = Replayer(plan.dump.visibility, plan.target, CatalogShapes(conn, sender.sync))
    conn.run("BEGIN")
    try:
        conn.run("SET LOCAL session_replication_role = replica")
        conn.run('SET LOCAL search_path = "$user", public')
        recs = [records[b.key] for b in plan.batches]
        current = 0  # the batch being replayed: its captured sequence positions are the ones set

        def lines() -> Generator[str, None, None]:
            nonlocal current
            for i, volume in prefetch(stream_volumes(ctx, recs), depth=3):
                current = i
                yield from volume

        stream = lines()
        try:
            replay_lines(replayer, stream, sender)
        finally:
            stream.close()  # stops the reading thread when the target ends the replay early
        captured = {str(k): int(v) for k, v in (recs[current].get("sequences") or {}).items()} if recs else {}
        sender.add(replayer.finish())
        sender.sync()
        sender.close()
        if replayer.visible_past_target and replayer.past_target is not None:
            raise RecoveryRefused(
                f"{plan.dump.name} already contains transaction {replayer.past_target.xid}, which "
                f"committed after the target ({replayer.past_target.at.isoformat()})",
                "choose a target a little later, or one before that backup started",
            )
        s0 = time.perf_counter()
        stats.sequences_set = set_sequences(conn, captured)
        if before_commit is not None:
            before_commit(conn)
        conn.run("COMMIT")
        stats.server_seconds += time.perf_counter() - s0
    except pg8000.exceptions.DatabaseError as exc:
        sender.close(run_rest=False)
        conn.run("ROLLBACK")
        last = replayer.last_applied
        where = f" in transaction {last.xid} (committed {last.at.isoformat()})" if last else ""
        raise DatabaseError(
            f"replaying the change archive failed{where}: {_message(exc)}",
            "the replay was rolled back; report this with `coldcopy changes status`",
        ) from None
    except BaseException:
        sender.close(run_rest=False)
        conn.run("ROLLBACK")
        raise
    stats.seconds = round(time.monotonic() - t0, 3)
    for name in ("read_seconds", "build_seconds", "server_seconds", "wait_seconds"):
        setattr(stats, name, round(getattr(stats, name), 3))
    stats.transactions, stats.skipped_in_dump = replayer.applied, replayer.skipped
    stats.rows, stats.ddl, stats.statements = replayer.rows, replayer.ddl, replayer.statements
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
    on_replayed: Callable[[pg8000.native.Connection], None] | None = None,
) -> LogicalPitrResult:
    """Restore the newest dump before ``target``, replay the change archive onto it and apply the
    erasure ledger in the replay's transaction, all in the restore's staging database before it is
    renamed into place (``--target-db`` or DB_NAME): a failed replay leaves the target as it was,
    and nobody ever sees the dump's state nor an erased subject's rows.  A Supabase project's own
    database cannot be staged (restore/project.py gives the dump back inside it in one transaction,
    the ledger applied in it): there the replay's transaction follows that commit, and a failed
    replay leaves the project at the dump's state.  ``scratch`` (a drill's scratch database): a
    plain dump is restored without owners and grants, as test restores are, since the scratch
    server need not have the server's roles.  ``on_replayed(conn)`` runs in the replay's
    transaction once the rows and sequences are in, before the erasure ledger (a drill counts the
    tables there: the ledger removes rows its counts know nothing of)."""
    ctx = open_context(settings)
    plan, records = plan_for(ctx, target)
    erasures = read_ledger(
        ctx, ctx.catalog.manifest(plan.dump.name).database
    )  # every record opens, before anything is written
    pg = Postgres(settings)
    # In place into a project's own database, the dump is committed before the replay: its
    # restore applies the ledger too; anywhere else only the replay's transaction does.
    project = target_db is None and _empty_project_in_place(pg, settings.db_name)
    if on_plan is not None:
        on_plan(plan)  # printed before the restore starts
    t0 = time.monotonic()
    done: dict[str, Any] = {}

    def replay(dbname: str) -> None:
        done["restore_seconds"] = time.monotonic() - t0
        erased: list[Applied] = []
        with pg.session(dbname) as conn:
            done["stats"] = apply(
                ctx,
                conn,
                plan,
                {b.key: r for b, r in records},
                lambda c: erased.append(_erase_after_replay(c, erasures, on_replayed)),
            )
            done["erased"] = erased[0] if erased else Applied()
            done["beat"] = conn.run(f"SELECT max(at) FROM {SCHEMA}.heartbeat") if _has_heartbeat(conn) else []

    restored = run_restore(
        settings,
        plan.dump.name,
        target_db,
        no_owner=scratch,
        no_privileges=scratch,
        erase=project,
        before_swap=replay,
    )
    final = str(restored["target_db"])
    stats, erased, beat = done["stats"], done["erased"], done["beat"]
    restore_seconds = done["restore_seconds"]
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


def _empty_project_in_place(pg: Postgres, dbname: str) -> bool:
    """Whether ``dbname`` is a Supabase project's database (else it is staged, replayed and swapped
    in: all or nothing).  A project's database is given the dump in one transaction and the replay
    follows that commit (it cannot be staged): a failed replay would leave it at the dump's state.
    That is only acceptable for a new, empty project (the disaster case), so a project holding
    tables of the user's or rows of its sign-ups and files is refused before anything is written."""
    with pg.session(pg.maintenance_db()) as admin:
        if not pg.database_exists(admin, dbname):
            return False  # nothing there to lose
    with pg.session(dbname) as conn:
        if read_facts(conn).platform != "supabase":
            return False
        tables = conn.run(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            f"WHERE c.relkind IN ('r', 'p') AND {USER_NS_SQL}"
        )[0][0]
        rows = conn.run(
            "SELECT (SELECT count(*) FROM (SELECT 1 FROM auth.users LIMIT 1) u) "
            "+ (SELECT count(*) FROM (SELECT 1 FROM storage.objects LIMIT 1) o)"
        )[0][0]
    if tables or rows:
        raise RecoveryRefused(
            f"{dbname!r} is a Supabase project's database holding data ({tables} tables of yours"
            f"{', and sign-ups or files' if rows else ''}); a point-in-time recovery in place there is"
            " not all or nothing (the replay follows the dump's commit)",
            "recover into a new project (point DB_* at it) or into a new database with --target-db,"
            " then move the application over",
        )
    return True


def _erase_after_replay(
    conn: pg8000.native.Connection,
    erasures: list[Erasure],
    on_replayed: Callable[[pg8000.native.Connection], None] | None = None,
) -> Applied:
    """The ledger, in the replay's transaction (after ``on_replayed``): what the replay brought
    back goes again, as ordinary deletes (the tables' triggers and foreign keys act as on the
    live database)."""
    if on_replayed is not None:
        on_replayed(conn)
    if not erasures:
        return Applied()
    conn.run("SET LOCAL session_replication_role = origin")
    return erase_in_transaction(conn, erasures)


def _has_heartbeat(conn: pg8000.native.Connection) -> bool:
    return bool(conn.run("SELECT to_regclass(:t) IS NOT NULL", t=f"{SCHEMA}.heartbeat")[0][0])
