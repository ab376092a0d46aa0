"""Erasures: what a person's erasure request removes, as data, and the SQL that re-applies it.

An erasure names one table and column = value pairs (``public.leads`` where ``email`` is
``alice@example.com``): never free SQL.  Identifiers are checked here and quoted; values are
written as dollar-quoted literals under a random tag they do not contain, so no value can end the
literal.  The statement that applies a list of erasures is one ``DO`` block: each erasure's
``DELETE`` in its own sub-block whose error names only the erasure's id and the SQLSTATE (never a
value: PostgreSQL's messages may quote the value they could not read), and the rows each removed
left in the setting ``coldcopy.erased`` as JSON (``{id: rows}``) for the caller to read in the same
transaction.

The record's ``subject`` is never stored as given: a salted SHA-256 digest proves, when asked with
the identifier (``erase report --subject``), that the record is that person's without a log or a
listing ever repeating it.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from coldcopy.core.sql import qualified, quote_ident
from coldcopy.core.times import iso, parse_iso

LEDGER_PREFIX = "erasures/"
RECORD_FORMAT = "coldcopy-erasure-1"
ERASED_SETTING = "coldcopy.erased"
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]{0,62}$")
_ID = re.compile(r"^[0-9]{8}T[0-9]{6}Z-[0-9a-f]{8}$")


class ErasureInputError(ValueError):
    """An erasure request that cannot be recorded (the message names no value)."""


@dataclass(frozen=True)
class Erasure:
    """One recorded erasure request."""

    id: str
    recorded_at: datetime
    database: str  # the backed-up database (DB_NAME) whose restores re-apply it
    table: str  # schema.table
    match: dict[str, str]  # column -> value, all must be equal (AND)
    subject_salt: str
    subject_sha256: str
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """Its object in the bucket (relative to the prefix)."""
        return ledger_key(self.id)

    def to_dict(self) -> dict[str, Any]:
        """The record as stored (encrypted: it holds the values it erases)."""
        return {
            "format": RECORD_FORMAT,
            "id": self.id,
            "recorded_at": iso(self.recorded_at),
            "database": self.database,
            "table": self.table,
            "match": dict(self.match),
            "subject_salt": self.subject_salt,
            "subject_sha256": self.subject_sha256,
            "note": self.note,
            **({"extra": self.extra} if self.extra else {}),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Erasure:
        """A stored record; ValueError if it is not one, or names an unsafe identifier."""
        if d.get("format") != RECORD_FORMAT:
            raise ValueError(f"unknown erasure record format {d.get('format')!r}")
        table = validate_table(str(d["table"]))
        match = {validate_column(str(c)): str(v) for c, v in dict(d["match"]).items()}
        if not match:
            raise ValueError("an erasure record without a column to match")
        return cls(
            id=str(d["id"]),
            recorded_at=parse_iso(str(d["recorded_at"])),
            database=str(d["database"]),
            table=table,
            match=match,
            subject_salt=str(d["subject_salt"]),
            subject_sha256=str(d["subject_sha256"]),
            note=str(d.get("note", "")),
            extra=dict(d.get("extra", {})),
        )

    def describe(self, *, values: bool = False) -> str:
        """``public.leads where email = …``; the values only when ``values``."""
        cond = " and ".join(f"{c} = {v if values else '…'}" for c, v in sorted(self.match.items()))
        return f"{self.table} where {cond}"

    def is_subject(self, subject: str) -> bool:
        """Whether ``subject`` is the identifier this record was made for."""
        return secrets.compare_digest(subject_digest(self.subject_salt, subject), self.subject_sha256)


def ledger_key(erasure_id: str) -> str:
    """The bucket key of the erasure ``erasure_id`` (ValueError for a malformed id)."""
    if not _ID.match(erasure_id):
        raise ValueError(f"{erasure_id[:40]!r} is not an erasure id")
    return f"{LEDGER_PREFIX}{erasure_id}.json.zst"


def new_id(now: datetime, token: str) -> str:
    """An id that sorts by time: ``20260301T120000Z-1a2b3c4d``."""
    return f"{now.strftime('%Y%m%dT%H%M%SZ')}-{token}"


def subject_digest(salt: str, subject: str) -> str:
    """The salted SHA-256 of a person's identifier (what a record stores instead of it)."""
    return hashlib.sha256(f"{salt}\n{subject.strip()}".encode()).hexdigest()


def validate_table(text: str) -> str:
    """``schema.table`` (``table`` alone means ``public.table``); ErasureInputError otherwise."""
    parts = text.strip().split(".")
    if len(parts) == 1:
        parts = ["public", parts[0]]
    if len(parts) != 2 or not all(_IDENT.match(p) for p in parts):
        raise ErasureInputError(
            f"{text[:80]!r} is not a table name: use schema.table with letters, digits and underscores"
        )
    return ".".join(parts)


def validate_column(text: str) -> str:
    """A column name (letters, digits, underscores); ErasureInputError otherwise."""
    if not _IDENT.match(text):
        raise ErasureInputError(f"{text[:80]!r} is not a column name (letters, digits and underscores)")
    return text


def parse_match(pairs: list[str]) -> dict[str, str]:
    """``["email=alice@example.com", …]`` as {column: value}; ErasureInputError for a pair without
    ``=``, a bad column, an empty value or a column named twice.  Messages never quote a value."""
    if not pairs:
        raise ErasureInputError("name at least one column = value (--where email=alice@example.com)")
    match: dict[str, str] = {}
    for i, pair in enumerate(pairs, 1):
        column, sep, value = pair.partition("=")
        if not sep:
            raise ErasureInputError(f"--where number {i} is not column=value")
        column = validate_column(column.strip())
        if not value.strip():
            raise ErasureInputError(f"--where {column}: the value is empty (it would match too much)")
        if "\x00" in value:
            raise ErasureInputError(f"--where {column}: the value holds a NUL byte")
        if column in match:
            raise ErasureInputError(f"--where {column} is given twice")
        match[column] = value
    return match


def check_against(table: str, match: dict[str, str], columns: dict[str, set[str]]) -> None:
    """ErasureInputError unless ``table`` is among ``columns`` (table -> its columns) and has every
    column ``match`` names."""
    if table not in columns:
        raise ErasureInputError(f"no table {table} in the database (nor in its newest backup)")
    unknown = sorted(set(match) - columns[table])
    if unknown:
        raise ErasureInputError(f"{table} has no column {', '.join(unknown)}")


def dollar_literal(value: str) -> str:
    """``value`` as a dollar-quoted literal under a random tag it does not contain."""
    while True:
        tag = "cc" + secrets.token_hex(6)
        if f"${tag}$" not in value:
            return f"${tag}${value}${tag}$"


def apply_sql(erasures: list[Erasure]) -> str:
    """One ``DO`` statement applying every erasure; it leaves ``{id: rows removed}`` in the
    transaction-local setting ``coldcopy.erased`` (``{}`` for no erasures).  An erasure of a table
    the database does not have (a backup older than the table) removes nothing; a column it lacks
    fails the statement."""
    body = ["DO $ccerase$", "DECLARE n bigint; done jsonb := '{}'::jsonb;", "BEGIN"]
    for e in erasures:
        cond = " AND ".join(f"{quote_ident(c)} = {dollar_literal(v)}" for c, v in sorted(e.match.items()))
        body += [
            "  BEGIN",
            "    n := 0;",
            f"    IF to_regclass({dollar_literal(qualified(e.table))}) IS NOT NULL THEN",
            f"      DELETE FROM {qualified(e.table)} WHERE {cond};",
            "      GET DIAGNOSTICS n = ROW_COUNT;",
            "    END IF;",
            f"    done := done || jsonb_build_object('{e.id}', n);",
            "  EXCEPTION WHEN OTHERS THEN",
            f"    RAISE EXCEPTION 'coldcopy: erasure {e.id} could not be applied (SQLSTATE %)', SQLSTATE;",
            "  END;",
        ]
    body += [f"  PERFORM set_config('{ERASED_SETTING}', done::text, true);", "END", "$ccerase$;"]
    return "\n".join(body)


@dataclass(frozen=True)
class HeldBy:
    """A stored backup made before an erasure (it still holds the erased rows) and when it goes."""

    backup: str
    created_at: datetime
    expires: str  # an ISO date, or why it does not expire on schedule


def still_held(
    erasure: Erasure,
    backups: list[tuple[str, str, datetime]],
    days_for: dict[str, int],
    pins: dict[str, str],
    tier_kept: dict[str, list[str]],
) -> list[HeldBy]:
    """The backups (name, kind, created) taken before ``erasure`` and when each expires: its
    creation plus its kind's days, unless a pin or a retention tier keeps it longer."""
    held = []
    for name, kind, created in sorted(backups, key=lambda b: b[2]):
        if created >= erasure.recorded_at:
            continue
        if name in pins:
            expires = f"pinned ({pins[name]}): kept until unpinned"
        elif name in tier_kept:
            expires = f"kept by retention tier ({', '.join(tier_kept[name])})"
        elif kind in days_for:
            expires = iso(created + timedelta(days=days_for[kind]))[:10]
        else:
            expires = f"unknown kind {kind!r}: not expired by retention"
        held.append(HeldBy(name, created, expires))
    return held
