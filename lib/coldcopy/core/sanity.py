"""User-supplied sanity queries for test restores (``VERIFY_SANITY_QUERIES``).  Pure: no I/O.

Syntax: queries separated by ``;``, each ``SELECT … <op> <number>`` where ``<op>`` is one of
``> >= = != < <=``, for example::

    SELECT count(*) FROM workspaces > 0; SELECT count(*) FROM users >= 1

Each query must be a single read-only ``SELECT`` that returns one number.  Anything else is
refused when the configuration is loaded: other statements, a second statement, comments,
``SELECT … INTO``, row locks, and the names of functions that reach outside the database.  On top of
that the query runs in a ``READ ONLY`` transaction with a statement timeout, in the scratch
database that is dropped afterwards.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

OPERATORS: dict[str, Callable[[Decimal, Decimal], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "=": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
}
MAX_QUERIES = 50
MAX_LENGTH = 2000

_SHAPE = re.compile(
    r"(?P<sql>SELECT\b.*?[^<>=!\s])\s*(?P<op>>=|<=|!=|=|>|<)\s*(?P<num>[-+]?\d+(?:\.\d+)?)",
    re.IGNORECASE | re.DOTALL,
)
# Words that never belong in a read-only check (whole words, any case).
_FORBIDDEN_WORDS = [
    *("insert", "update", "delete", "merge", "drop", "alter", "create", "truncate", "grant", "revoke"),
    *("copy", "into", "lock", "vacuum", "reindex", "call", "do", "execute", "prepare", "deallocate"),
    *("set", "reset", "listen", "notify", "refresh", "checkpoint", "begin", "commit", "rollback"),
    *("savepoint", "discard"),
]
_FORBIDDEN_RE = re.compile(r"\b(" + "|".join(_FORBIDDEN_WORDS) + r")\b", re.IGNORECASE)
# Functions with effects outside the transaction, or that read the server's files.
_FORBIDDEN_FUNCS = re.compile(
    r"\b(pg_sleep\w*|pg_terminate_backend|pg_cancel_backend|pg_reload_conf|pg_read_\w+|pg_ls_\w+|"
    r"pg_stat_file|lo_\w+|dblink\w*|set_config|pg_advisory\w*|pg_notify|nextval|setval|"
    r"pg_logical_emit_message|pg_switch_wal|pg_create_\w+|pg_drop_\w+|txid_current|query_to_xml\w*|"
    r"pg_file_\w+)\s*\(",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class SanityQuery:
    """One ``SELECT … <op> <number>`` check of a test-restored database."""

    sql: str
    op: str
    expected: Decimal

    @property
    def text(self) -> str:
        return f"{self.sql} {self.op} {self.expected}"

    def check(self, value: object) -> tuple[bool, str]:
        """Whether ``value`` (the query's single result) satisfies the comparison, and why not."""
        if isinstance(value, bool) or value is None:
            return False, f"returned {value!r}, not a number"
        try:
            number = Decimal(str(value))
        except InvalidOperation:
            return False, f"returned {str(value)[:60]!r}, not a number"
        ok = OPERATORS[self.op](number, self.expected)
        return ok, f"{number} {self.op} {self.expected}" + ("" if ok else " is false")


def parse_sanity_queries(text: str) -> list[SanityQuery]:
    """Parse and validate the whole setting; raises ValueError naming the first refused query."""
    out: list[SanityQuery] = []
    for part in (p.strip() for p in text.split(";")):
        if not part:
            continue
        out.append(parse_one(part))
    if len(out) > MAX_QUERIES:
        raise ValueError(f"has {len(out)} queries; at most {MAX_QUERIES} are allowed")
    return out


def parse_one(part: str) -> SanityQuery:
    """One query of the setting, validated; ValueError naming what is refused."""
    shown = part if len(part) <= 80 else part[:77] + "..."
    if len(part) > MAX_LENGTH:
        raise ValueError(f"query is longer than {MAX_LENGTH} characters: {shown!r}")
    if "--" in part or "/*" in part or "\\" in part or "$" in part:
        raise ValueError(f"query may not contain comments, backslashes or dollar quotes: {shown!r}")
    m = _SHAPE.fullmatch(part)
    if not m:
        raise ValueError(
            f"query {shown!r} is not of the form 'SELECT … <op> <number>' "
            f"(<op> one of {' '.join(OPERATORS)}; queries are separated by ';')"
        )
    sql = m.group("sql").strip()
    bad = _FORBIDDEN_RE.search(sql)
    if bad:
        raise ValueError(f"query {shown!r} uses {bad.group(1).upper()}: only read-only SELECTs are allowed")
    if re.search(r"\bfor\s+(update|share|no\s+key|key)\b", sql, re.IGNORECASE):
        raise ValueError(f"query {shown!r} locks rows: only read-only SELECTs are allowed")
    func = _FORBIDDEN_FUNCS.search(sql)
    if func:
        raise ValueError(f"query {shown!r} calls {func.group(1)}(), which is not allowed in a sanity query")
    return SanityQuery(sql, m.group("op"), Decimal(m.group("num")))
