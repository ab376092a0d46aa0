"""Point-in-time recovery from the change archive, its pure parts: which dump and batches reach a
target, and the SQL that replays the stream on top of the restored dump.

The stream is wal2json's format-version 2, one JSON line per row, with ``B`` and ``C`` lines around
each transaction.  Both carry the transaction's xid, its commit time and the LSN of its commit
record (``lsn``), so whether a transaction is applied is decided at its ``B`` line:

* skipped when the dump already contains it (:meth:`SnapshotVisibility.visible`);
* applied when it committed at or before the target; the first commit after the target ends the
  replay (commits arrive in commit order), as PostgreSQL's own recovery stops.

Rows become SQL with literals (values are passed as untyped string constants, so the server reads
them with the column's own input function; numbers are kept as the text wal2json wrote):
``INSERT``; ``UPDATE`` of the columns the stream has (an unchanged TOASTed column is absent: it keeps
its value); ``DELETE``; consecutive ``TRUNCATE`` rows of one transaction as one ``TRUNCATE ONLY``.
``UPDATE`` and ``DELETE`` find the row by the stream's ``identity`` (the primary key, or every
column for ``REPLICA IDENTITY FULL``) and touch exactly one row (``ctid``), so duplicates in a
table without a key stay as many as they were.  A row of ``coldcopy.ddl_log`` runs its captured
statement first, at its place in the transaction (once per transaction when one query text held
several commands).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from coldcopy.core.changes import RESTORE_POINTS, SCHEMA, Batch, SnapshotVisibility, continuity_gaps
from coldcopy.core.lsn import format_lsn, parse_lsn
from coldcopy.core.recovery_plan import RecoveryRefused, Target
from coldcopy.core.sql import quote_ident, quote_literal
from coldcopy.core.times import parse_iso

#: Types without an equality operator: an identity value of one is compared as text.
_TEXT_COMPARED = frozenset({"json", "xml", "point", "line", "lseg", "box", "path", "polygon", "circle"})
_DDL_TABLE = "ddl_log"


def stream_time(text: str) -> datetime:
    """A wal2json timestamp (``2026-12-02 06:24:53.402895+00``) as an aware datetime."""
    return parse_iso(text.replace(" ", "T", 1))


def parse_line(line: str) -> dict[str, Any]:
    """One stream line; numbers stay text (exact numerics, and the server parses them)."""
    row: dict[str, Any] = json.loads(line, parse_int=str, parse_float=str)
    return row


@dataclass(frozen=True)
class Commit:
    """A transaction of the stream, as its ``B`` line describes it."""

    xid: int
    lsn: int  # its commit record
    at: datetime

    @classmethod
    def of(cls, row: dict[str, Any]) -> Commit:
        """From a ``B`` (or ``C``) line."""
        return cls(int(row["xid"]), parse_lsn(str(row["lsn"])), stream_time(str(row["timestamp"])))


def within(target: Target, commit: Commit) -> bool:
    """Whether ``commit`` is at or before ``target`` (a time or an LSN: xid and restore-point
    targets are resolved to their commit's LSN first, :func:`resolved`)."""
    if target.kind == "time" and target.time is not None:
        return commit.at <= target.time
    if target.kind == "lsn" and target.lsn is not None:
        return commit.lsn <= target.lsn
    raise ValueError(f"replay needs a time or LSN target, not {target.kind}")


def resolved(target: Target, commit: Commit) -> Target:
    """An xid or restore-point target as the LSN of the commit that reaches it (inclusive)."""
    return Target("lsn", lsn=commit.lsn, name=target.name, xid=target.xid)


def restore_point_name(row: dict[str, Any]) -> str | None:
    """The name a row records when it is the insert of a restore point, else None."""
    if row.get("action") != "I" or row.get("schema") != SCHEMA or row.get("table") != RESTORE_POINTS:
        return None
    return next((str(c["value"]) for c in row.get("columns") or [] if c["name"] == "name"), None)


# -- SQL -------------------------------------------------------------------------------------------
ident = quote_ident  # the short name the statements below use


def literal(value: Any) -> str:
    """A value of the stream as an SQL constant: NULL, or an untyped string the column parses."""
    if value is None:
        return "NULL"
    if value is True or value is False:
        return "'true'" if value else "'false'"
    if isinstance(value, dict | list):
        value = json.dumps(value)
    return quote_literal(str(value))


def table_of(row: dict[str, Any]) -> str:
    """The row's table as a qualified, quoted name."""
    return f"{ident(str(row['schema']))}.{ident(str(row['table']))}"


def _match(columns: list[dict[str, Any]]) -> str:
    parts = []
    for c in columns:
        name = ident(str(c["name"]))
        base = str(c.get("type") or "").removesuffix("[]")
        if c.get("value") is None:
            parts.append(f"{name} IS NULL")
        elif base in _TEXT_COMPARED:
            parts.append(f"{name}::text = {literal(c['value'])}")
        else:
            parts.append(f"{name} = {literal(c['value'])}")
    return " AND ".join(parts) or "true"


def one_row(row: dict[str, Any]) -> str:
    """``ctid = (the first row the identity matches)``: exactly one row, even among duplicates."""
    identity = row.get("identity") or []
    if not identity:
        raise ValueError(f"{row.get('action')} on {table_of(row)} without an identity")
    return f"ctid = (SELECT ctid FROM ONLY {table_of(row)} WHERE {_match(identity)} LIMIT 1)"


def insert_head(row: dict[str, Any]) -> str:
    """``INSERT INTO t (cols) OVERRIDING SYSTEM VALUE VALUES``: rows with the same head can share
    one statement."""
    cols = ", ".join(ident(str(c["name"])) for c in row["columns"])
    return f"INSERT INTO {table_of(row)} ({cols}) OVERRIDING SYSTEM VALUE VALUES"


def insert_values(row: dict[str, Any]) -> str:
    """The row's ``(v1, v2, ...)``."""
    return "(" + ", ".join(literal(c.get("value")) for c in row["columns"]) + ")"


def update_sql(row: dict[str, Any]) -> str | None:
    """The UPDATE of one row: the columns the stream has (an unchanged TOAST value is absent), less
    identity columns it leaves as they were (a GENERATED ALWAYS key may not be SET); None when
    nothing changes."""
    old = {str(c["name"]): c.get("value") for c in row.get("identity") or []}
    changed = [
        c for c in row["columns"] if str(c["name"]) not in old or old[str(c["name"])] != c.get("value")
    ]
    if not changed:
        return None
    sets = ", ".join(f"{ident(str(c['name']))} = {literal(c.get('value'))}" for c in changed)
    return f"UPDATE {table_of(row)} SET {sets} WHERE {one_row(row)}"


def delete_sql(row: dict[str, Any]) -> str:
    """The DELETE of one row."""
    return f"DELETE FROM {table_of(row)} WHERE {one_row(row)}"


@dataclass
class Replayer:
    """The stream in, SQL out: decides per transaction, groups inserts, keeps counts.

    ``feed`` each line in stream order and run what it returns; ``finish`` returns the rest.
    """

    visibility: SnapshotVisibility
    target: Target
    max_rows_per_insert: int = 500
    applied: int = 0
    skipped: int = 0  # contained in the dump
    rows: int = 0
    ddl: int = 0
    done: bool = False  # the first commit past the target was seen
    past_target: Commit | None = None
    last_applied: Commit | None = None
    visible_past_target: bool = False  # the dump contains a transaction after the target
    _applying: bool = False
    _head: str = ""
    _values: list[str] = field(default_factory=list)
    _truncate: list[str] = field(default_factory=list)
    _queries: set[str] = field(default_factory=set)

    def _flush(self) -> list[str]:
        out = []
        if self._values:
            out.append(self._head + " " + ", ".join(self._values))
            self._head, self._values = "", []
        if self._truncate:
            out.append("TRUNCATE ONLY " + ", ".join(self._truncate))
            self._truncate = []
        return out

    def feed(self, line: str) -> list[str]:
        """The statements this line asks for, in order (some are held back to be grouped)."""
        if self.done:
            return []
        head = line[:16]
        if head.startswith('{"action":"B"'):
            commit = Commit.of(parse_line(line))
            if not within(self.target, commit):
                self.done, self.past_target = True, commit
                self.visible_past_target = self.visibility.visible(commit.xid)
                return []
            self._applying = not self.visibility.visible(commit.xid)
            if self._applying:
                self.applied += 1
                self.last_applied = commit
                self._queries = set()
            else:
                self.skipped += 1
            return []
        if not self._applying:
            return []
        if head.startswith('{"action":"C"'):
            return self._flush()
        row = parse_line(line)
        return self.row(row)

    def row(self, row: dict[str, Any]) -> list[str]:
        """The statements for one row of an applied transaction."""
        action = row.get("action")
        if action == "M":
            return []
        self.rows += 1
        out: list[str] = []
        if action == "T":
            if self._values:
                out += self._flush()
            self._truncate.append(table_of(row))
            return out
        if self._truncate:
            out += self._flush()
        if action == "I":
            if row.get("schema") == SCHEMA and row.get("table") == _DDL_TABLE:
                out += self._flush()
                query = next((str(c["value"]) for c in row["columns"] if c["name"] == "query"), "")
                if query and query not in self._queries:
                    self._queries.add(query)
                    self.ddl += 1
                    out.append(query.strip().rstrip(";"))
            head = insert_head(row)
            if head != self._head or len(self._values) >= self.max_rows_per_insert:
                out += self._flush()
                self._head = head
            self._values.append(insert_values(row))
            return out
        out += self._flush()
        if action == "U":
            sql = update_sql(row)
            out += [sql] if sql else []
        elif action == "D":
            out.append(delete_sql(row))
        else:
            raise ValueError(f"unknown action {action!r} in the change stream")
        return out

    def finish(self) -> list[str]:
        """What is still held back."""
        return self._flush()


# -- choosing the dump and the batches -------------------------------------------------------------
@dataclass(frozen=True)
class Dump:
    """A logical backup as a recovery from the change archive sees it."""

    name: str
    started_at: datetime
    finished_at: datetime
    visibility: SnapshotVisibility


@dataclass(frozen=True)
class LogicalPlan:
    """The dump to restore and the batches to replay on top of it, up to the target."""

    dump: Dump
    batches: tuple[Batch, ...]
    target: Target  # time or LSN
    window_start: datetime  # the oldest dump this run of the stream extends
    window_end: datetime  # the newest archived commit of this run

    def describe(self) -> str:
        """One line for the output: what is restored and replayed."""
        first = self.batches[0].start_lsn if self.batches else "-"
        last = self.batches[-1].end_lsn if self.batches else "-"
        return (
            f"logical archive: dump {self.dump.name}, then {len(self.batches)} batch(es) of the change "
            f"archive ({first} .. {last}); window {self.window_start.isoformat()} .. "
            f"{self.window_end.isoformat()}"
        )


@dataclass
class _Run:
    batches: list[Batch] = field(default_factory=list)

    @property
    def start(self) -> int:
        return parse_lsn(self.batches[0].start_lsn)

    @property
    def end(self) -> int:
        return parse_lsn(self.batches[-1].end_lsn)

    def newest_commit(self) -> datetime | None:
        times = [stream_time(b.last_commit_at) for b in self.batches if b.last_commit_at]
        return max(times) if times else None


def runs(batches: Sequence[Batch]) -> list[list[Batch]]:
    """The batches cut into continuous runs (a gap: a missing batch, or the slot re-created)."""
    ordered = sorted(batches, key=lambda b: parse_lsn(b.start_lsn))
    gap_starts = {parse_lsn(nxt) for _, nxt in continuity_gaps(ordered)}
    out: list[list[Batch]] = []
    for b in ordered:
        if not out or parse_lsn(b.start_lsn) in gap_starts:
            out.append([])
        out[-1].append(b)
    return out


def _dumps_in(run: _Run, dumps: Sequence[Dump]) -> list[Dump]:
    """Dumps this run extends: their snapshot lies inside it (oldest first)."""
    fit = [
        d
        for d in dumps
        if d.visibility.wal_lsn_before and run.start <= parse_lsn(d.visibility.wal_lsn_before) < run.end
    ]
    return sorted(fit, key=lambda d: d.started_at)


def _reaches(target: Target, run: _Run) -> bool:
    if target.kind == "time" and target.time is not None:
        newest = run.newest_commit()
        return newest is not None and target.time <= newest
    return target.lsn is not None and target.lsn <= run.end


def _before(target: Target, dump: Dump) -> bool:
    if target.kind == "time" and target.time is not None:
        return dump.started_at <= target.time
    return target.lsn is not None and parse_lsn(dump.visibility.wal_lsn_before) <= target.lsn


def plan_logical(target: Target, dumps: Sequence[Dump], batches: Sequence[Batch]) -> LogicalPlan:
    """The newest dump before ``target`` (time or LSN) and the batches from its snapshot to the
    target; RecoveryRefused (nothing written) when no run of the stream reaches it from a dump."""
    if target.kind not in ("time", "lsn"):
        raise ValueError("resolve xid and restore-point targets first")
    all_runs = [_Run(r) for r in runs(batches)]
    if not all_runs:
        raise RecoveryRefused(
            "the change archive is empty", "run `coldcopy changes setup`, a backup, and drains first"
        )
    usable = [(r, _dumps_in(r, dumps)) for r in all_runs]
    usable = [(r, ds) for r, ds in usable if ds]
    if not usable:
        raise RecoveryRefused(
            "no logical backup was taken while the change archive was running, so nothing can be "
            "replayed onto one",
            "take a backup (coldcopy backup) now: the window starts there",
        )
    newest = max((t for r in all_runs if (t := r.newest_commit()) is not None), default=None)
    newest_lsn = max(r.end for r in all_runs)
    oldest = min((ds[0] for _, ds in usable), key=lambda d: d.started_at)
    if (target.kind == "time" and (newest is None or target.time is None or target.time > newest)) or (
        target.kind == "lsn" and (target.lsn or 0) > newest_lsn
    ):
        end = newest.isoformat() if newest else "-"
        raise RecoveryRefused(
            f"{target.describe()} is after the newest archived commit ({end}, LSN {format_lsn(newest_lsn)})",
            "run `coldcopy changes drain` first, or choose an earlier target",
        )
    if not _before(target, oldest):
        raise RecoveryRefused(
            f"{target.describe()} is before the oldest usable logical backup ({oldest.name}, "
            f"started {oldest.started_at.isoformat()})",
            "choose a later target: the change window starts at that backup",
        )
    for run, ds in reversed(usable):
        if not _reaches(target, run):
            continue
        before = [d for d in ds if _before(target, d)]
        if not before:
            continue
        dump = before[-1]
        start = parse_lsn(dump.visibility.wal_lsn_before)
        chosen = [b for b in run.batches if parse_lsn(b.end_lsn) > start and _batch_needed(target, b)]
        window_end = run.newest_commit() or ds[-1].finished_at
        return LogicalPlan(dump, tuple(chosen), target, ds[0].started_at, window_end)
    raise RecoveryRefused(
        f"{target.describe()} falls in a gap of the change archive (a missing batch, or the "
        "replication slot was lost or re-created, with no backup after it before the target)",
        "choose a target inside the window `coldcopy changes status` shows",
    )


def _batch_needed(target: Target, b: Batch) -> bool:
    """Whether the batch may hold a transaction at or before the target."""
    if target.kind == "lsn" and target.lsn is not None:
        return parse_lsn(b.start_lsn) <= target.lsn
    if target.time is not None and b.first_commit_at:
        return stream_time(b.first_commit_at) <= target.time
    return True


def sequence_floor(captured: dict[str, int], used: dict[str, int]) -> dict[str, int]:
    """Where each sequence must be at least after a replay: its captured position, and never
    below a value the replayed rows use (``used``: the largest value in the column it feeds)."""
    out = dict(captured)
    for seq, value in used.items():
        out[seq] = max(out.get(seq, value), value)
    return out
