"""`coldcopy changes drain`: peek the slot, store the batch create-only, then advance the slot.

One drain: write the heartbeat (synchronously committed, so every earlier commit is flushed and
decodable), then batch after batch until the slot is caught up to the LSN read after the
heartbeat:

1. the slot's confirmed position ``C`` is where the batch starts.  If a record for ``C`` already
   exists, an earlier drain stored it and died before advancing: advance to its end and go on
   (no second copy);
2. peek (``pg_logical_slot_peek_changes``, which never moves the slot) through a server-side cursor,
   a few thousand rows at a time, into the pipeline (zstd, AES-GCM) and into volumes of
   ``changes/data/<C>/<attempt>/``: memory is the fetch size plus the volumes in flight, however
   large a transaction is (the server spills a large one to disk);
3. write the record ``changes/batches/<C>.json`` create-only, LAST: the batch exists when it does;
4. advance the slot to the end of the batch's last commit (``pg_replication_slot_advance``).

Fault tests kill a real drain at the pause points ``changes:peeked`` (after the peek, before any
store), ``changes:stored-volumes`` (the batch's volumes stored, not its record) and
``changes:stored-record`` (before the advance); see coldcopy.pausepoints.

Killed anywhere, the next drain finds the slot where the last advance left it: before 3 the batch
is peeked again (the orphaned volumes are cleaned up later), between 3 and 4 step 1 skips it.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import pg8000.native

from coldcopy.changes.slot import HEARTBEAT_ID, PLUGIN, fingerprint, slot_state, unreplayable_tables
from coldcopy.context import Context
from coldcopy.core.changes import FINGERPRINT_MODULUS, SCHEMA, batch_key, data_key, widen_xid, xid_ranges
from coldcopy.core.lsn import parse_lsn
from coldcopy.core.manifest import StoredObject
from coldcopy.core.times import Clock, iso, utc_now
from coldcopy.errors import ConflictError, DatabaseError
from coldcopy.pausepoints import pause_point
from coldcopy.storage.volumes import VolumeWriter
from coldcopy.stream.pipeline import Packer

log = logging.getLogger(__name__)

FETCH_ROWS = 2000
VOLUME_SIZE = 8 << 20
#: Fault injection for tests: called with the name of each step ("peeked", "stored-volumes",
#: "stored-record"); raising there is a drain killed at that point.
Fault = Callable[[str], None]


@dataclass
class BatchResult:
    key: str
    start_lsn: str
    end_lsn: str
    rows: int
    transactions: int
    raw_size: int
    stored_size: int
    resumed: bool = False  # stored by an earlier drain that died before advancing the slot
    untracked_ddl: list[str] = field(default_factory=list)
    fingerprint: str | None = None  # the schema's fingerprint at the batch's end (None: unknown)


@dataclass
class DrainResult:
    slot: str
    heartbeat_at: str
    upto_lsn: str
    batches: list[BatchResult] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)
    untracked_ddl: list[str] = field(default_factory=list)
    large_objects: int = 0
    confirmed_lsn: str = ""
    lag_bytes: int = 0
    fingerprint: str | None = None  # the schema's fingerprint at the end of the newest batch

    @property
    def transactions(self) -> int:
        return sum(b.transactions for b in self.batches)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "transactions": self.transactions}


def filter_tables(tables: list[str]) -> str:
    """wal2json's ``filter-tables`` value for ``schema.table`` names (its special characters escaped)."""

    def esc(part: str) -> str:
        return "".join("\\" + ch if ch in " ',.*\\" else ch for ch in part)

    return ",".join(esc(s) + "." + esc(t) for s, t in (name.split(".", 1) for name in tables))


def heartbeat(conn: pg8000.native.Connection, now: datetime) -> str:
    """Rewrite the heartbeat row, committed synchronously: the stream's clock, and a flush of
    every commit before it (so the slot can decode them now); the schema's fingerprint."""
    conn.run("BEGIN")
    try:
        conn.run("SET LOCAL synchronous_commit = on")
        fp = fingerprint(conn)
        conn.run(
            f"UPDATE {SCHEMA}.heartbeat SET at = :at, fingerprint = :fp WHERE id = :i",
            at=now,
            fp=fp,
            i=HEARTBEAT_ID,
        )
        conn.run("COMMIT")
    except BaseException:
        conn.run("ROLLBACK")
        raise
    return fp


def _fingerprint_value(text: object) -> int | None:
    """A schema fingerprint as a number (None: absent, or the md5 form of earlier versions)."""
    return int(text) if isinstance(text, str) and text.isdigit() and len(text) <= 19 else None


class _Scan:
    """What a batch's rows say: transactions, commit times, heartbeats and DDL (for untracked DDL).

    Untracked DDL: the schema's fingerprint is a set hash, so from the fingerprint at the previous
    heartbeat, adding each captured command's change (its ddl_log row's after - before) gives the
    fingerprint the next heartbeat must show; any other value means DDL the trigger did not see
    (whatever else was captured in between, and in whatever order concurrent commands committed)."""

    def __init__(self, fingerprint: str | None, xmax: int) -> None:
        self.transactions = 0
        self.xmax = xmax  # a snapshot's xmax read after the batch's end: widens the 32-bit xids
        self.xids: list[int] = []
        self.first_commit: str | None = None
        self.last_commit: str | None = None
        self.end_lsn = ""
        self.last_action = ""
        self.fingerprint = fingerprint
        self.expected = _fingerprint_value(fingerprint)  # what the next heartbeat must show
        self.untracked: list[str] = []
        self.first_xid: int | None = None
        self.last_xid: int | None = None

    def row(self, lsn: str, data: str) -> None:
        head = data[:16]
        if head.startswith('{"action":"C"'):
            self.transactions += 1
            self.end_lsn = lsn
            ts = json.loads(data).get("timestamp")
            self.first_commit = self.first_commit or ts
            self.last_commit = ts
        elif head.startswith('{"action":"B"'):
            xid = int(json.loads(data)["xid"])
            self.first_xid = xid if self.first_xid is None else self.first_xid
            self.last_xid = xid
            self.xids.append(widen_xid(xid, self.xmax))
        elif f'"schema":"{SCHEMA}"' in data:
            self._own(json.loads(data))
        self.last_action = head[11:12]

    def _own(self, row: dict[str, Any]) -> None:
        cols = {c["name"]: c.get("value") for c in row.get("columns") or []}
        if row.get("table") == "ddl_log" and row.get("action") == "I":
            before = _fingerprint_value(cols.get("fingerprint_before"))
            after = _fingerprint_value(cols.get("fingerprint_after"))
            if self.expected is None or before is None or after is None:
                self.expected = None  # a row without fingerprints: unknown until the next heartbeat
            else:
                self.expected = (self.expected + after - before) % FINGERPRINT_MODULUS
        elif row.get("table") == "heartbeat" and row.get("action") == "U":
            fp = str(cols.get("fingerprint") or "")
            now = _fingerprint_value(fp)
            if self.expected is not None and now is not None and now != self.expected:
                self.untracked.append(f"schema changed before the heartbeat of {cols.get('at')}")
            self.expected = now
            self.fingerprint = fp or self.fingerprint


def _options(left_out: list[str]) -> list[str]:
    opts = ["format-version", "2", "include-xids", "1", "include-timestamp", "1", "include-lsn", "1"]
    if left_out:
        opts += ["filter-tables", filter_tables(left_out)]
    return opts


def _previous_fingerprint(ctx: Context, start_lsn: str) -> str | None:
    """The fingerprint the newest batch before ``start_lsn`` ended with (None: no batch yet)."""
    keys = [o.key for o in ctx.storage.list("changes/batches/") if o.key < batch_key(start_lsn)]
    if not keys:
        return None
    rec = ctx.storage.get_json(keys[-1])
    return str(rec.get("fingerprint") or "") or None


def drain_batch(
    ctx: Context,
    conn: pg8000.native.Connection,
    slot: str,
    upto: str,
    left_out: list[str],
    max_rows: int,
    now: Clock,
    fault: Fault | None = None,
    previous_fingerprint: str | None = None,
) -> BatchResult | None:
    """One batch from the slot's position up to ``upto`` (at most about ``max_rows`` rows, never
    less than a whole transaction); None when there is nothing to drain.  ``previous_fingerprint``:
    the schema's fingerprint where the stream stands (None: read from the newest stored batch)."""
    state = slot_state(conn, slot)
    if not state.exists or state.invalidated:
        what = "is missing" if not state.exists else "was invalidated"
        raise DatabaseError(
            f"the replication slot {slot} {what}",
            "run `coldcopy changes setup` and take a logical backup: the change window restarts there",
        )
    start = state.confirmed_lsn
    key = batch_key(start)
    if ctx.storage.exists(key):
        log.info("batch %s was stored by an earlier drain that did not advance the slot", key)
        return _resume(ctx, conn, slot, key)
    # Every transaction up to `upto` has its xid already: a snapshot's xmax read now is above them.
    xmax = int(conn.run("SELECT pg_snapshot_xmax(pg_current_snapshot())::text")[0][0])
    fp = previous_fingerprint if previous_fingerprint is not None else _previous_fingerprint(ctx, start)
    scan = _Scan(fp, xmax)
    attempt = secrets.token_hex(4)
    writer = VolumeWriter(ctx.storage, data_key(start, attempt), volume_size=VOLUME_SIZE, concurrency=2)
    packer = Packer(writer, ctx.key, ctx.settings.zstd_level, object_key=data_key(start, attempt))
    rows = 0
    opts = _options(left_out)
    placeholders = ", ".join(f":o{i}" for i in range(len(opts)))
    conn.run("BEGIN")
    try:
        conn.run(
            "DECLARE coldcopy_peek NO SCROLL CURSOR FOR SELECT lsn::text, data FROM "
            f"pg_logical_slot_peek_changes(:slot, :upto::pg_lsn, :n, {placeholders})",
            slot=slot,
            upto=upto,
            n=max_rows,
            **{f"o{i}": o for i, o in enumerate(opts)},
        )
        while True:
            chunk = conn.run(f"FETCH {FETCH_ROWS} FROM coldcopy_peek")
            if not chunk:
                break
            for lsn, data in chunk:
                scan.row(lsn, data)
                packer.write(data.encode() + b"\n")
            rows += len(chunk)
            if fault:
                fault("peeked")
        conn.run("COMMIT")
    except BaseException:
        conn.run("ROLLBACK")
        raise
    if rows == 0:
        writer.abort()
        return None
    pause_point(ctx.settings, "changes:peeked")
    if scan.last_action != "C":
        writer.abort()
        raise DatabaseError(
            f"the slot {slot} returned a batch that does not end with a commit",
            "report this: the output plugin's stream is not what ColdCopy expects",
        )
    stats = packer.close()
    volumes = writer.complete()
    _step(ctx, fault, "stored-volumes")
    stored = StoredObject(
        data_key(start, attempt),
        stats.stored_size,
        stats.stored_sha256,
        stats.raw_size,
        stats.raw_sha256,
        tuple(volumes),
    )
    record: dict[str, Any] = {
        "format": "coldcopy-changes/1",
        "plugin": PLUGIN,
        "slot": slot,
        "start_lsn": start,
        "end_lsn": scan.end_lsn,
        "rows": rows,
        "transactions": scan.transactions,
        "first_xid": scan.first_xid,
        "last_xid": scan.last_xid,
        "xids": xid_ranges(scan.xids),
        "first_commit_at": scan.first_commit,
        "last_commit_at": scan.last_commit,
        "stored_at": iso(now()),
        "data": asdict(stored),
        "raw_size": stats.raw_size,
        "stored_size": stats.stored_size,
        "encryption": {
            "alg": "AES-256-GCM" if ctx.key else "none",
            "key_id": ctx.key.key_id if ctx.key else None,
        },
        "sequences": sequences(conn),
        "left_out": left_out,
        "fingerprint": scan.fingerprint,
        "untracked_ddl": scan.untracked,
    }
    try:
        ctx.storage.put_json(key, record, create_only=True)
    except ConflictError:  # a drain racing this one stored the batch first: keep its copy
        ctx.storage.delete([k for k, _ in stored.pieces()])
        return _resume(ctx, conn, slot, key)
    _step(ctx, fault, "stored-record")
    _advance(conn, slot, scan.end_lsn)
    return BatchResult(
        key,
        start,
        scan.end_lsn,
        rows,
        scan.transactions,
        stats.raw_size,
        stats.stored_size,
        untracked_ddl=scan.untracked,
        fingerprint=scan.fingerprint,
    )


def _step(ctx: Context, fault: Fault | None, step: str) -> None:
    """A point where a fault test kills the drain: in process (``fault``) or a real kill (a pause point)."""
    pause_point(ctx.settings, f"changes:{step}")
    if fault:
        fault(step)


def _resume(ctx: Context, conn: pg8000.native.Connection, slot: str, key: str) -> BatchResult:
    """The batch ``key`` is stored already: advance the slot past it (no second copy)."""
    rec = ctx.storage.get_json(key)
    end = str(rec["end_lsn"])
    _advance(conn, slot, end)
    sizes = (int(rec["rows"]), int(rec["transactions"]), int(rec["raw_size"]), int(rec["stored_size"]))
    fp = str(rec.get("fingerprint") or "") or None
    return BatchResult(key, str(rec["start_lsn"]), end, *sizes, resumed=True, fingerprint=fp)


def _advance(conn: pg8000.native.Connection, slot: str, end_lsn: str) -> None:
    state = slot_state(conn, slot)
    if state.confirmed_lsn and parse_lsn(state.confirmed_lsn) >= parse_lsn(end_lsn):
        return
    conn.run("SELECT pg_replication_slot_advance(:s, :l::pg_lsn)", s=slot, l=end_lsn)


def sequences(conn: pg8000.native.Connection) -> dict[str, int]:
    """Every readable sequence's position now (sequences are not transactional: a recovery sets
    each to at least this value)."""
    rows = conn.run(
        "SELECT format('%I.%I', schemaname, sequencename), last_value FROM pg_sequences "
        "WHERE last_value IS NOT NULL AND schemaname <> :own",
        own=SCHEMA,
    )
    return {str(name): int(value) for name, value in rows}


def drain(
    ctx: Context,
    conn: pg8000.native.Connection,
    slot: str,
    now: Clock = utc_now,
    fault: Fault | None = None,
    max_batches: int | None = None,
    previous_fingerprint: str | None = None,
) -> DrainResult:
    """Heartbeat, then batches until the slot reaches the LSN read after the heartbeat.
    ``previous_fingerprint``: the schema's fingerprint the last drain ended with (the stored health
    keeps it; None: read from the newest stored batch, a listing of the whole archive)."""
    at = now()
    heartbeat(conn, at)
    upto = str(conn.run("SELECT pg_current_wal_lsn()::text")[0][0])
    left_out = unreplayable_tables(conn)
    result = DrainResult(slot, iso(at), upto, left_out=left_out, fingerprint=previous_fingerprint)
    t0 = time.monotonic()
    while max_batches is None or len(result.batches) < max_batches:
        rows = ctx.settings.changes_batch_rows
        batch = drain_batch(ctx, conn, slot, upto, left_out, rows, now, fault, result.fingerprint)
        if batch is None:
            break
        result.batches.append(batch)
        result.fingerprint = batch.fingerprint or result.fingerprint
        result.untracked_ddl += batch.untracked_ddl
        if parse_lsn(batch.end_lsn) >= parse_lsn(upto):
            break
    state = slot_state(conn, slot)
    result.confirmed_lsn, result.lag_bytes = state.confirmed_lsn, state.lag_bytes
    result.large_objects = int(conn.run("SELECT count(*) FROM pg_largeobject_metadata")[0][0])
    log.info(
        "drained %d transactions in %d batches from %s in %.2f s",
        result.transactions,
        len(result.batches),
        slot,
        time.monotonic() - t0,
    )
    return result
