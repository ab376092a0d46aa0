"""The change stream as SQL, in few statements: the pure half of a logical replay.

Rows become SQL with literals: values are string constants the server reads with the column's own
input function (numbers stay the text wal2json wrote; a ``bytea`` value, which wal2json writes as
hex without its ``\\x``, gets it back).  Columns the table generates (``GENERATED ... STORED``:
wal2json writes them, the server refuses them) are left out when the table's shape is known.

**Grouping.** A replay runs in one transaction as ``session_replication_role = replica``: no
trigger fires, so no foreign-key check or cascade either, and each table's final contents depend
only on that table's own rows, in their order.  So rows are grouped per table (not only when they
are adjacent in the stream), each table's rows keep their order, and a group ends when its table
sees a different kind of row:

* inserts with the same columns: one ``INSERT ... VALUES (...), (...)`` (rows in stream order);
* updates of a table with a key (its primary key or replica-identity index) and no other unique
  index or exclusion constraint, that leave the key as it was and carry the same columns (an
  unchanged TOASTed value is absent, so such a row starts another group): one
  ``UPDATE ... FROM (VALUES ...)`` joined on the key.  A second update of a row already in the
  group replaces that row's values (an UPDATE sets values, so the last one wins);
* deletes of a table with a key: one ``DELETE ... USING (VALUES ...)``.

UPDATE and DELETE name the table ``ONLY``: the stream names the table a row is in, and a parent's
key (or ``ctid``) may also be found in a table that inherits from it.

Everything else is one statement per row: updates and deletes of a table without a key, which find
the row by the stream's ``identity`` (every column for ``REPLICA IDENTITY FULL``) and touch exactly
one row (``ctid``), so duplicates stay as many as they were; an update that changes the key; and
updates of a table with another unique index (one statement's rows are checked one by one in an
order the server picks, which could collide where the stream's order did not).  (A trigger set
``ENABLE ALWAYS`` still fires under ``replica``; such triggers should not write other tables.)
A ``TRUNCATE`` and the captured DDL (a row of ``coldcopy.ddl_log``, run at its place, once per
transaction per query text) end every group first: they are barriers.  Groups are bounded in rows
and bytes, and all of them are written out when the pending bytes reach a bound.

The VALUES lists carry their types on the first row (``'1'::pg_catalog.int4``): each column's type
by its own name, without a length (``'abc'::character`` would be ``char(1)`` and cut the value;
``pg_catalog.bpchar`` is not), so the column's own length applies on assignment as it did at the
source.  Without a shape (a table the replay cannot look up) rows are not grouped: each update or
delete is its own statement (inserts of one table still share one).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from coldcopy.core.changes import SCHEMA, SnapshotVisibility
from coldcopy.core.recovery_plan import Target
from coldcopy.core.replay import Commit, parse_line, within
from coldcopy.core.sql import quote_ident, quote_literal

#: Types without an equality operator: an identity value of one is compared as text.
_TEXT_COMPARED = frozenset({"json", "xml", "point", "line", "lseg", "box", "path", "polygon", "circle"})
_DDL_TABLE = "ddl_log"
ident = quote_ident  # the short name the statements below use


@dataclass(frozen=True)
class TableShape:
    """What grouping needs to know of a table in the database being replayed into."""

    key: tuple[str, ...]  # its replica identity's key columns (the primary key); () for FULL/NOTHING
    types: Mapping[str, str]  # column -> its type's own name, qualified (pg_catalog.bpchar: no typmod)
    generated: frozenset[str] = frozenset()  # GENERATED ... STORED columns
    other_unique: bool = False  # a unique index or exclusion constraint besides the key's


class Shapes(Protocol):
    """The tables' shapes, looked up in the database the replay writes to."""

    def shape(self, schema: str, table: str) -> TableShape | None:
        """The table's shape (None: not known; its rows are not grouped)."""

    def changed(self) -> None:
        """DDL was emitted: shapes looked up before it may be stale once it has run."""


class NoShapes:
    """Knows no table: each update and delete is its own statement (a table's inserts still share one)."""

    def shape(self, schema: str, table: str) -> TableShape | None:
        """Always None."""
        return None

    def changed(self) -> None:
        """Nothing to forget."""


# -- values ----------------------------------------------------------------------------------------
def literal(value: Any, type_name: str = "") -> str:
    """A value of the stream as an SQL constant: NULL, or a string the column parses."""
    if value is None:
        return "NULL"
    if value is True or value is False:
        return "'true'" if value else "'false'"
    if isinstance(value, dict | list):
        value = json.dumps(value)
    if type_name == "bytea":
        return "'\\x" + str(value) + "'"  # wal2json writes bytea as bare hex
    return quote_literal(str(value))


def _lit(c: dict[str, Any]) -> str:
    return literal(c.get("value"), str(c.get("type") or ""))


def literals(columns: list[dict[str, Any]]) -> list[str]:
    """:func:`literal` of each column's value (the hot path of a replay: kept tight)."""
    out = []
    for c in columns:
        v = c.get("value")
        if v.__class__ is str:
            if c.get("type") == "bytea":
                out.append("'\\x" + v + "'")
            elif "'" in v:
                out.append("'" + v.replace("'", "''") + "'")
            else:
                out.append("'" + v + "'")
        else:
            out.append(literal(v))
    return out


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
            parts.append(f"{name}::text = {_lit(c)}")
        else:
            parts.append(f"{name} = {_lit(c)}")
    return " AND ".join(parts) or "true"


def one_row(row: dict[str, Any]) -> str:
    """``ctid = (the first row the identity matches)``: exactly one row, even among duplicates."""
    identity = row.get("identity") or []
    if not identity:
        raise ValueError(f"{row.get('action')} on {table_of(row)} without an identity")
    return f"ctid = (SELECT ctid FROM ONLY {table_of(row)} WHERE {_match(identity)} LIMIT 1)"


def _columns(row: dict[str, Any], shape: TableShape | None) -> list[dict[str, Any]]:
    """The row's columns the server accepts values for."""
    cols: list[dict[str, Any]] = row.get("columns") or []
    if shape is None or not shape.generated:
        return cols
    return [c for c in cols if c["name"] not in shape.generated]


def _changed(row: dict[str, Any], shape: TableShape | None) -> list[dict[str, Any]]:
    """The columns an UPDATE sets: all the stream has, less identity columns it leaves as they
    were (a GENERATED ALWAYS key may not be SET)."""
    old = {str(c["name"]): c.get("value") for c in row.get("identity") or []}
    return [c for c in _columns(row, shape) if c["name"] not in old or old[c["name"]] != c.get("value")]


def update_sql(row: dict[str, Any], shape: TableShape | None = None) -> str | None:
    """The UPDATE of one row (None when nothing changes)."""
    changed = _changed(row, shape)
    if not changed:
        return None
    sets = ", ".join(f"{ident(str(c['name']))} = {_lit(c)}" for c in changed)
    return f"UPDATE ONLY {table_of(row)} SET {sets} WHERE {one_row(row)}"


def delete_sql(row: dict[str, Any]) -> str:
    """The DELETE of one row."""
    return f"DELETE FROM ONLY {table_of(row)} WHERE {one_row(row)}"


# -- groups ----------------------------------------------------------------------------------------
def _typed_row(values: list[str], types: list[str]) -> str:
    return "(" + ", ".join(f"{v}::{t}" for v, t in zip(values, types, strict=True)) + ")"


def _values(rows: list[list[str]], types: list[str]) -> str:
    """``VALUES (typed first row), (...)``: the first row's casts type every column."""
    rest = ", ".join("(" + ", ".join(r) + ")" for r in rows[1:])
    return "VALUES " + _typed_row(rows[0], types) + (", " + rest if rest else "")


@dataclass
class _Group:
    """Pending rows of one table and kind that become one statement."""

    table: str  # qualified, quoted
    kind: str  # I, U, D
    signature: tuple[str, ...]  # I: the columns; U: the key then the set columns; D: the key
    types: list[str]  # U, D: the VALUES columns' types
    nkey: int = 0
    rows: dict[tuple[str, ...], list[str]] = field(default_factory=dict)  # U, D: by key
    inserts: list[str] = field(default_factory=list)  # I: "(v1, v2)"
    size: int = 0

    def __len__(self) -> int:
        return len(self.inserts) + len(self.rows)

    def sql(self) -> str:
        if self.kind == "I":
            cols = ", ".join(ident(c) for c in self.signature)
            return f"INSERT INTO {self.table} ({cols}) OVERRIDING SYSTEM VALUE VALUES " + ", ".join(
                self.inserts
            )
        key = [ident(c) for c in self.signature[: self.nkey]]
        on = " AND ".join(f"t.{k} = v.k{i}" for i, k in enumerate(key))
        names = [f"k{i}" for i in range(self.nkey)]
        if self.kind == "D":
            values = _values([list(k) for k in self.rows], self.types)
            return f"DELETE FROM ONLY {self.table} AS t USING ({values}) AS v({', '.join(names)}) WHERE {on}"
        sets = self.signature[self.nkey :]
        names += [f"c{i}" for i in range(len(sets))]
        values = _values([list(k) + v for k, v in self.rows.items()], self.types)
        assign = ", ".join(f"{ident(c)} = v.c{i}" for i, c in enumerate(sets))
        alias = ", ".join(names)
        return f"UPDATE ONLY {self.table} AS t SET {assign} FROM ({values}) AS v({alias}) WHERE {on}"


@dataclass
class _Table:
    """A table as the replay has met it: its quoted name and what grouping may do with it."""

    name: str  # qualified, quoted
    shape: TableShape | None
    key: frozenset[str]  # the key's columns when rows can be grouped by it, else empty
    identity: tuple[str, ...] = ()  # the identity's column order in the stream, once checked

    @classmethod
    def of(cls, schema: str, table: str, shape: TableShape | None) -> _Table:
        keyed = shape is not None and bool(shape.key) and all(k in shape.types for k in shape.key)
        return cls(
            f"{ident(schema)}.{ident(table)}", shape, frozenset(shape.key) if shape and keyed else frozenset()
        )

    def keyed(self, identity: list[dict[str, Any]]) -> tuple[str, ...] | None:
        """The identity's column names when they are this table's key (with no NULL), else None."""
        if not self.key or len(identity) != len(self.key):
            return None
        names = tuple([c["name"] for c in identity])
        if names != self.identity:
            if set(names) != self.key:
                return None
            self.identity = names
        for c in identity:
            if c.get("value") is None:
                return None
        return names


@dataclass
class Replayer:
    """The stream in, SQL out: decides per transaction, groups rows, keeps counts.

    ``feed`` each line in stream order and run what it returns, in order; ``finish`` returns the
    rest.  ``shapes`` is asked about a table before this call has returned any statement, so a
    lookup that first runs what was returned before sees every earlier DDL applied.
    """

    visibility: SnapshotVisibility
    target: Target
    shapes: Shapes = field(default_factory=NoShapes)
    max_group_rows: int = 1000
    max_group_bytes: int = 1 << 18
    max_pending_bytes: int = 1 << 22
    applied: int = 0
    skipped: int = 0  # contained in the dump
    rows: int = 0
    ddl: int = 0
    statements: int = 0
    done: bool = False  # the first commit past the target was seen
    past_target: Commit | None = None
    last_applied: Commit | None = None
    visible_past_target: bool = False  # the dump contains a transaction after the target
    _applying: bool = False
    _groups: dict[str, _Group] = field(default_factory=dict)  # by table, oldest first
    _pending: int = 0
    _truncate: list[str] = field(default_factory=list)
    _queries: set[str] = field(default_factory=set)
    _known: dict[tuple[str, str], _Table] = field(default_factory=dict)

    # -- the stream ---------------------------------------------------------------------------
    def feed(self, line: str) -> list[str]:
        """The statements this line asks for, in order (most are held back to be grouped)."""
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
            return self._out(self._flush_truncate())
        return self.row(parse_line(line))

    def finish(self) -> list[str]:
        """What is still held back."""
        return self._out(self._flush_all())

    def row(self, row: dict[str, Any]) -> list[str]:
        """The statements for one row of an applied transaction."""
        action = row.get("action")
        if action == "M":
            return []
        self.rows += 1
        if action == "T":
            out = self._flush_all() if self._groups else []
            self._truncate.append(table_of(row))
            return self._out(out)
        t = self._table(row)  # before anything is returned: see the class's docstring
        out = self._flush_truncate() if self._truncate else []
        if action == "U":
            self._update(row, t, out)
        elif action == "I":
            if row.get("schema") == SCHEMA and row.get("table") == _DDL_TABLE:
                out += self._ddl(row)
            self._insert(row, t, out)
        elif action == "D":
            self._delete(row, t, out)
        else:
            raise ValueError(f"unknown action {action!r} in the change stream")
        if self._pending >= self.max_pending_bytes:
            out += self._flush_all()
        if out:
            self.statements += len(out)
        return out

    # -- rows ---------------------------------------------------------------------------------
    def _table(self, row: dict[str, Any]) -> _Table:
        name = (str(row["schema"]), str(row["table"]))
        t = self._known.get(name)
        if t is None:
            t = self._known[name] = _Table.of(*name, self.shapes.shape(*name))
        return t

    def _ddl(self, row: dict[str, Any]) -> list[str]:
        query = next((str(c["value"]) for c in row["columns"] if c["name"] == "query"), "")
        if not query or query in self._queries:
            return []
        self._queries.add(query)
        self.ddl += 1
        out = self._flush_all()
        out.append(query.strip().rstrip(";"))
        self._known.clear()
        self.shapes.changed()
        return out

    def _group(self, kind: str, signature: tuple[str, ...], t: _Table, nkey: int, out: list[str]) -> _Group:
        """The table's open group for this kind and signature; a different one is flushed first."""
        g = self._groups.get(t.name)
        if g is not None and (
            g.signature != signature
            or g.kind != kind
            or len(g) >= self.max_group_rows
            or g.size >= self.max_group_bytes
        ):
            out.append(self._take(t.name))
            g = None
        if g is None:
            types = [t.shape.types[n] for n in signature] if t.shape is not None and kind != "I" else []
            g = self._groups[t.name] = _Group(t.name, kind, signature, types, nkey)
        return g

    def _insert(self, row: dict[str, Any], t: _Table, out: list[str]) -> None:
        cols = _columns(row, t.shape)
        values = "(" + ", ".join(literals(cols)) + ")"
        g = self._group("I", tuple([c["name"] for c in cols]), t, 0, out)
        g.inserts.append(values)
        g.size += len(values)
        self._pending += len(values)

    def _update(self, row: dict[str, Any], t: _Table, out: list[str]) -> None:
        identity: list[dict[str, Any]] = row.get("identity") or []
        shape = t.shape
        key_names = t.keyed(identity) if shape is not None and not shape.other_unique else None
        if key_names is None or shape is None:
            out += self._single(t.name, update_sql(row, shape))
            return
        old = {c["name"]: c.get("value") for c in identity}
        changed = []
        names = list(key_names)
        generated, types = shape.generated, shape.types
        for c in row.get("columns") or ():
            name = c["name"]
            if name in old:
                if old[name] != c.get("value"):  # the key changes: a statement of its own
                    out += self._single(t.name, update_sql(row, shape))
                    return
            elif name not in generated:
                if name not in types:
                    out += self._single(t.name, update_sql(row, shape))
                    return
                changed.append(c)
                names.append(name)
        if not changed:
            return
        g = self._group("U", tuple(names), t, len(key_names), out)
        key = tuple(literals(identity))
        values = literals(changed)
        size = sum(map(len, values))
        before = g.rows.get(key)
        if before is None:
            size += sum(map(len, key))
        else:  # updated again: the last values win
            size -= sum(map(len, before))
        g.rows[key] = values
        g.size += size
        self._pending += size

    def _delete(self, row: dict[str, Any], t: _Table, out: list[str]) -> None:
        identity: list[dict[str, Any]] = row.get("identity") or []
        key_names = t.keyed(identity)
        if key_names is None:
            out += self._single(t.name, delete_sql(row))
            return
        g = self._group("D", key_names, t, len(key_names), out)
        key = tuple(literals(identity))
        g.rows[key] = []
        size = sum(map(len, key))
        g.size += size
        self._pending += size

    def _single(self, table: str, sql: str | None) -> list[str]:
        """One row's own statement, after the table's pending group (its order is kept)."""
        out = [self._take(table)] if table in self._groups else []
        return out + ([sql] if sql else [])

    # -- flushing -----------------------------------------------------------------------------
    def _take(self, table: str) -> str:
        g = self._groups.pop(table)
        self._pending -= g.size
        return g.sql()

    def _flush_all(self) -> list[str]:
        out = [self._take(t) for t in list(self._groups)]
        return out + self._flush_truncate()

    def _flush_truncate(self) -> list[str]:
        if not self._truncate:
            return []
        out = ["TRUNCATE ONLY " + ", ".join(self._truncate)]
        self._truncate = []
        return out

    def _out(self, out: list[str]) -> list[str]:
        self.statements += len(out)
        return out
