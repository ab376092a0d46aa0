"""Erasures: what erasing a person means for the user's schema (declared once, per kind), the
ledger's records, and the SQL that re-applies them to a restored database.

The configuration (``GDPR_ERASURE_CONFIG``, a JSON file; docs/erasures.md) declares, per kind of
subject (``lead``), a few statements (``DELETE`` or ``UPDATE``) and a ``check`` query counting what
is left of the subject (it must be zero after the statements), plus ``read`` queries for a
subject-access export.  Each names the subject only as the bound parameter ``:subject``; the
configuration is refused as a whole, before anything runs, when one is not a single statement of
the allowed sort or lacks the parameter.

A record keeps the subject's value (the ledger is stored only encrypted: a restore must bind it
again) with the statements and the check as they were when it was recorded, so a restore needs no
configuration.  Listings name a record by id and kind and prove a subject by a salted digest.

The statement that applies a list of erasures is one ``DO`` block: every statement is run with
``EXECUTE … USING`` (the subject a dollar-quoted literal under a random tag it does not contain),
each erasure in its own sub-block whose error names only the erasure's id and the SQLSTATE (never
a value); a statement on a table the restored database lacks (a backup older than the table)
changes nothing.  Then every check runs; one that counts anything fails the block.  The rows each
erasure changed are left in the setting ``coldcopy.erased`` as JSON (``{id: rows}``) for the
caller to read in the same transaction.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from coldcopy.core.sql import quote_literal
from coldcopy.core.times import iso, parse_iso

LEDGER_PREFIX = "erasures/"
RECORD_FORMAT = "coldcopy-erasure-2"
ERASED_SETTING = "coldcopy.erased"
SUBJECTS_SETTING = "coldcopy.subjects"  # the subjects by erasure id, while a DO block applies them
PARAMETER = "subject"
STATEMENT_VERBS = ("DELETE", "UPDATE")
_KIND = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
_READ_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_ID = re.compile(r"^[0-9]{8}T[0-9]{6}Z-[0-9a-f]{8}$")


class ErasureInputError(ValueError):
    """An erasure configuration or request that cannot be used (the message names no value)."""


# -- SQL text: one statement, its verb, the :subject parameter --------------------------------------
@dataclass(frozen=True)
class _Scanned:
    code: str  # the text with quoted strings, identifiers and comments blanked
    parameters: list[tuple[int, str]]  # (offset, name) of each :name outside quotes


def _scan(sql: str) -> _Scanned:
    """Blank out literals, quoted identifiers and comments, and find the ``:name`` parameters."""
    out = list(sql)
    params: list[tuple[int, str]] = []
    i, n = 0, len(sql)

    def blank(a: int, b: int) -> None:
        for k in range(a, min(b, n)):
            out[k] = " "

    while i < n:
        c = sql[i]
        if c in "'\"":
            escapes = c == "'" and i > 0 and sql[i - 1] in "eE"  # E'it\'s'
            j = i + 1
            while j < n:
                if escapes and sql[j] == "\\":
                    j += 2
                    continue
                if sql[j] == c:
                    if j + 1 < n and sql[j + 1] == c:
                        j += 2
                        continue
                    break
                j += 1
            blank(i, j + 1)
            i = j + 1
        elif sql.startswith("--", i):
            j = sql.find("\n", i)
            j = n if j < 0 else j
            blank(i, j)
            i = j
        elif sql.startswith("/*", i):
            j = sql.find("*/", i + 2)
            j = n if j < 0 else j + 2
            blank(i, j)
            i = j
        elif c == "$" and (m := re.match(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$", sql[i:])):
            tag = m.group(0)
            j = sql.find(tag, i + len(tag))
            j = n if j < 0 else j + len(tag)
            blank(i, j)
            i = j
        elif c == ":" and sql.startswith("::", i):
            i += 2
        elif c == ":" and (m := re.match(r":([A-Za-z_][A-Za-z0-9_]*)", sql[i:])):
            params.append((i, m.group(1)))
            i += len(m.group(0))
        else:
            i += 1
    return _Scanned("".join(out), params)


def _one_statement(sql: str, what: str, verbs: tuple[str, ...]) -> str:
    """``sql`` without a trailing ``;`` when it is one statement starting with one of ``verbs``
    and naming ``:subject`` (and no other parameter); ErasureInputError saying what is wrong."""
    if not isinstance(sql, str) or not sql.strip():
        raise ErasureInputError(f"{what} is empty: give one SQL statement as a string")
    scanned = _scan(sql)
    code = scanned.code.rstrip()
    if code.endswith(";"):
        code = code[:-1]
        sql = sql[: len(code)]
    if ";" in code:
        raise ErasureInputError(f"{what} holds more than one statement: give each its own entry")
    first = code.split(None, 1)[0].upper() if code.strip() else ""
    if first not in verbs:
        raise ErasureInputError(
            f"{what} must be a {' or '.join(verbs)} statement (it starts with {first[:20]!r})"
        )
    names = {p for _, p in scanned.parameters}
    if PARAMETER not in names:
        raise ErasureInputError(f"{what} does not name the subject: use the parameter :{PARAMETER}")
    other = sorted(names - {PARAMETER})
    if other:
        raise ErasureInputError(f"{what} names the parameter :{other[0]}; only :{PARAMETER} is bound")
    return sql.strip()


def positional(sql: str) -> str:
    """``sql`` with ``:subject`` as ``$1`` (for ``EXECUTE … USING``)."""
    out, last = [], 0
    for at, name in _scan(sql).parameters:
        out += [sql[last:at], "$1"]
        last = at + 1 + len(name)
    return "".join(out) + sql[last:]


# -- the configuration -----------------------------------------------------------------------------
@dataclass(frozen=True)
class ErasureKind:
    """What erasing one kind of subject means: statements, the check, the export's reads."""

    name: str
    statements: tuple[str, ...]
    check: str
    read: dict[str, str] = field(default_factory=dict)


def parse_kinds(text: str) -> dict[str, ErasureKind]:
    """The configuration's kinds; ErasureInputError naming the first problem."""
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise ErasureInputError(f"the erasure configuration is not JSON: {exc}") from None
    kinds = doc.get("kinds") if isinstance(doc, dict) else None
    if not isinstance(kinds, dict) or not kinds:
        raise ErasureInputError(
            'the erasure configuration needs {"kinds": {"lead": {...}}} with at least one kind'
        )
    out = {}
    for name, spec in kinds.items():
        if not _KIND.match(str(name)):
            raise ErasureInputError(
                f"kind {str(name)[:40]!r}: use lower-case letters, digits and underscores"
            )
        out[name] = _kind(name, spec)
    return out


def _kind(name: str, spec: Any) -> ErasureKind:
    if not isinstance(spec, dict):
        raise ErasureInputError(f"kind {name}: give an object with statements, check and read")
    unknown = sorted(set(spec) - {"statements", "check", "read", "note"})
    if unknown:
        raise ErasureInputError(f"kind {name}: unknown key {unknown[0]!r} (statements, check, read)")
    statements = spec.get("statements")
    if not isinstance(statements, list) or not statements:
        raise ErasureInputError(f"kind {name}: statements must be a list of one or more SQL statements")
    done = tuple(
        _one_statement(s, f"kind {name}, statement {i}", STATEMENT_VERBS) for i, s in enumerate(statements, 1)
    )
    check = _one_statement(spec.get("check", ""), f"kind {name}, check", ("SELECT",))
    read = spec.get("read", {})
    if not isinstance(read, dict):
        raise ErasureInputError(f"kind {name}: read must map a name to a SELECT query")
    reads = {}
    for label, sql in read.items():
        if not _READ_NAME.match(str(label)):
            raise ErasureInputError(f"kind {name}: read query name {str(label)[:40]!r} is not a plain name")
        reads[str(label)] = _one_statement(sql, f"kind {name}, read {label}", ("SELECT",))
    return ErasureKind(name, done, check, reads)


def choose_kind(kinds: dict[str, ErasureKind], wanted: str | None) -> ErasureKind:
    """The kind asked for (or the only one); ErasureInputError naming the kinds there are."""
    if wanted is None:
        if len(kinds) == 1:
            return next(iter(kinds.values()))
        raise ErasureInputError(f"give --kind: the configuration declares {', '.join(sorted(kinds))}")
    if wanted not in kinds:
        raise ErasureInputError(
            f"unknown kind {wanted[:40]!r}: the configuration declares {', '.join(sorted(kinds))}"
        )
    return kinds[wanted]


def check_subject(subject: str) -> str:
    """The subject as given; ErasureInputError for an empty one or one holding a NUL byte."""
    if not subject.strip():
        raise ErasureInputError("--subject is empty (it would match nothing, or too much)")
    if "\x00" in subject:
        raise ErasureInputError("--subject holds a NUL byte")
    return subject


# -- the ledger's records --------------------------------------------------------------------------
@dataclass(frozen=True)
class Erasure:
    """One recorded erasure request."""

    id: str
    recorded_at: datetime
    database: str  # the backed-up database (DB_NAME) whose restores re-apply it
    kind: str
    subject: str  # personal data: only in the encrypted record and the statement binding it
    statements: tuple[str, ...]
    check: str
    subject_salt: str
    subject_sha256: str
    live: str = "applied"  # "applied" by `gdpr erase`, or "checked" (the application had erased)
    note: str = ""

    @property
    def key(self) -> str:
        """Its object in the bucket (relative to the prefix)."""
        return ledger_key(self.id)

    def to_dict(self) -> dict[str, Any]:
        """The record as stored (encrypted: it holds the subject)."""
        return {
            "format": RECORD_FORMAT,
            "id": self.id,
            "recorded_at": iso(self.recorded_at),
            "database": self.database,
            "kind": self.kind,
            "subject": self.subject,
            "statements": list(self.statements),
            "check": self.check,
            "subject_salt": self.subject_salt,
            "subject_sha256": self.subject_sha256,
            "live": self.live,
            "note": self.note,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Erasure:
        """A stored record; ValueError if it is not one (or its SQL is not what a kind allows)."""
        if d.get("format") != RECORD_FORMAT:
            raise ValueError(f"unknown erasure record format {d.get('format')!r}")
        kind = _kind(str(d["kind"]), {"statements": list(d["statements"]), "check": d["check"]})
        return cls(
            id=str(d["id"]),
            recorded_at=parse_iso(str(d["recorded_at"])),
            database=str(d["database"]),
            kind=kind.name,
            subject=str(d["subject"]),
            statements=kind.statements,
            check=kind.check,
            subject_salt=str(d["subject_salt"]),
            subject_sha256=str(d["subject_sha256"]),
            live=str(d.get("live", "applied")),
            note=str(d.get("note", "")),
        )

    def is_subject(self, subject: str) -> bool:
        """Whether ``subject`` is the identifier this record was made for."""
        return secrets.compare_digest(subject_digest(self.subject_salt, subject), self.subject_sha256)


def new_erasure(
    kind: ErasureKind, subject: str, database: str, now: datetime, *, live: str = "applied", note: str = ""
) -> Erasure:
    """A new record of erasing ``subject`` as ``kind`` declares it."""
    salt = secrets.token_hex(16)
    return Erasure(
        id=new_id(now, secrets.token_hex(4)),
        recorded_at=now.replace(microsecond=0),
        database=database,
        kind=kind.name,
        subject=subject,
        statements=kind.statements,
        check=kind.check,
        subject_salt=salt,
        subject_sha256=subject_digest(salt, subject),
        live=live,
        note=note,
    )


def ledger_key(erasure_id: str) -> str:
    """The bucket key of the erasure ``erasure_id`` (ValueError for a malformed id)."""
    if not _ID.match(erasure_id):
        raise ValueError(f"{erasure_id[:40]!r} is not an erasure id")
    return f"{LEDGER_PREFIX}{erasure_id}.json.zst"


def new_id(now: datetime, token: str) -> str:
    """An id that sorts by time: ``20260301T120000Z-1a2b3c4d``."""
    return f"{now.strftime('%Y%m%dT%H%M%SZ')}-{token}"


def subject_digest(salt: str, subject: str) -> str:
    """The salted SHA-256 of a person's identifier (what listings prove a subject by)."""
    return hashlib.sha256(f"{salt}\n{subject.strip()}".encode()).hexdigest()


# -- applying --------------------------------------------------------------------------------------
def dollar_literal(value: str) -> str:
    """``value`` as a dollar-quoted literal under a random tag it does not contain."""
    while True:
        tag = "cc" + secrets.token_hex(6)
        if f"${tag}$" not in value:
            return f"${tag}${value}${tag}$"


def subjects_json(erasures: list[Erasure]) -> str:
    """The subjects by erasure id: the value of the transaction-local setting ``coldcopy.subjects``
    that ``apply_sql`` reads them from (set with a bound parameter, so no subject is ever in the
    text of a statement: not in the server's log of a failing one, pg_stat_activity or
    pg_stat_statements)."""
    return json.dumps({e.id: e.subject for e in erasures}, ensure_ascii=False)


def apply_sql(erasures: list[Erasure], *, statements: bool = True, restored: bool = True) -> str:
    """One ``DO`` statement applying every erasure (only checking, without ``statements``), each
    subject read from the setting ``coldcopy.subjects`` (``subjects_json``, set before it in the
    same transaction; cleared at its end); it leaves ``{id: rows changed}`` in the
    transaction-local setting ``coldcopy.erased`` (``{}`` for no erasures) and fails when a check
    still counts a subject's rows.  In a ``restored`` database a table it lacks (a backup older
    than the table) holds nothing to erase; in the live one it is an error (a statement that
    names a table wrongly)."""
    absent = "undefined_table" if restored else "SQLSTATE 'CC000'"  # CC000: raised by nothing
    body = ["DECLARE n bigint; total bigint; left_over bigint; done jsonb := '{}'::jsonb;", "BEGIN"]
    for e in erasures:
        subject = f"(current_setting('{SUBJECTS_SETTING}')::jsonb ->> {quote_literal(e.id)})"
        body += ["  BEGIN", "    total := 0;"]
        for sql in e.statements if statements else ():
            body += [
                "    BEGIN",
                f"      EXECUTE {dollar_literal(positional(sql))} USING {subject};",
                "      GET DIAGNOSTICS n = ROW_COUNT;",
                "      total := total + n;",
                f"    EXCEPTION WHEN {absent} THEN NULL;",
                "    END;",
            ]
        body += [
            "    BEGIN",
            f"      EXECUTE {dollar_literal(positional(e.check))} INTO left_over USING {subject};",
            f"    EXCEPTION WHEN {absent} THEN left_over := 0;",
            "    END;",
            f"    done := done || jsonb_build_object('{e.id}', total);",
            "  EXCEPTION WHEN OTHERS THEN",
            f"    RAISE EXCEPTION 'coldcopy: erasure {e.id} could not be applied (SQLSTATE %)', SQLSTATE;",
            "  END;",
            "  IF coalesce(left_over, 0) <> 0 THEN",
            f"    RAISE EXCEPTION 'coldcopy: erasure {e.id} ({e.kind}): its check still counts % row(s)"
            " of the subject', left_over;",
            "  END IF;",
        ]
    body += [
        f"  PERFORM set_config('{ERASED_SETTING}', done::text, true);",
        f"  PERFORM set_config('{SUBJECTS_SETTING}', '', true);",
        "END",
    ]
    quoted = dollar_literal("\n".join(body))  # under a tag nothing inside holds
    return f"DO {quoted};"


# -- what still holds a subject --------------------------------------------------------------------
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
