"""The backup-name grammar, and keys derived from names.

Every name that arrives from outside (CLI argument, URL path, manifest) is checked here before it
touches a storage key, so nothing like ``../`` or ``/`` can ever reach the bucket layout.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from coldcopy.errors import InvalidNameError

KINDS = ("full", "compliance", "base")
LOGICAL_KINDS = ("full", "compliance")  # pg_dump archives; "base" is a physical copy
_DB_PART = r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}"
# [0-9], not \d: \d also matches other scripts' digits, which strptime (and PostgreSQL) refuse.
_NAME_RE = re.compile(
    rf"^(?P<kind>{'|'.join(KINDS)})_backup_(?P<db>{_DB_PART})_(?P<ts>[0-9]{{8}}_[0-9]{{6}})"
)
_TS_FORMAT = "%Y%m%d_%H%M%S"


@dataclass(frozen=True)
class BackupName:
    """A parsed backup name: its kind, database and time."""

    kind: str
    database: str
    created_at: datetime

    def __str__(self) -> str:
        return f"{self.kind}_backup_{self.database}_{self.created_at.strftime(_TS_FORMAT)}"


def db_name_part(database: str) -> str:
    """The database as it appears inside a backup name (characters outside the grammar become '-')."""
    part = re.sub(r"[^A-Za-z0-9_-]", "-", database)[:63]
    if not part or not part[0].isalnum():
        part = "db" + part[:61]
    return part


def make_name(kind: str, database: str, when: datetime) -> BackupName:
    """The name of a backup of ``kind`` of ``database`` taken at ``when`` (UTC, whole seconds)."""
    if kind not in KINDS:
        raise InvalidNameError(f"unknown backup kind {kind!r}", f"use one of: {', '.join(KINDS)}")
    return BackupName(kind, db_name_part(database), when.astimezone(UTC).replace(microsecond=0))


def _timestamp(ts: str) -> datetime:
    """``datetime.strptime(ts, _TS_FORMAT)`` in UTC for the 15 characters the grammar matched
    (``\\d{8}_\\d{6}``), without strptime's cost (a twentieth: /metrics parses every name in the
    catalog).  The same answers: each field has exactly two digits (four for the year) here, and
    the constructor refuses what strptime refuses (month 13, 30 February, second 60, year 0)."""
    return datetime(
        int(ts[0:4]), int(ts[4:6]), int(ts[6:8]), int(ts[9:11]), int(ts[11:13]), int(ts[13:15]), tzinfo=UTC
    )


def parse_name(text: str) -> BackupName:
    """Parse and validate a backup name; raise InvalidNameError with the expected form otherwise."""
    m = _NAME_RE.fullmatch(text) if isinstance(text, str) and len(text) <= 120 else None
    try:
        if not m:
            raise ValueError
        when = _timestamp(m["ts"])
    except ValueError:
        shown = text[:80] if isinstance(text, str) else type(text).__name__
        raise InvalidNameError(
            f"invalid backup name {shown!r}",
            "names look like full_backup_<db>_<YYYYMMDD_HHMMSS> or compliance_backup_<db>_<YYYYMMDD_HHMMSS>;"
            " run `coldcopy list-backups` to see the existing ones",
        ) from None
    return BackupName(m["kind"], m["db"], when)


def validate_name(text: str) -> str:
    """``text`` when it is a backup name; InvalidNameError (with the expected form) otherwise."""
    return str(parse_name(text))


_DB_IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_$-]{0,62}")


def validate_db_identifier(text: str, what: str = "database name") -> str:
    """A database name we are willing to CREATE/DROP/RENAME (quoted, but kept to a safe charset).
    An empty or blank name is refused like any other bad one, never taken to mean a default."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidNameError(
            f"the {what} is empty",
            "give a name of letters, digits, '_', '$' or '-'; leave the option out for the default",
        )
    if not _DB_IDENT_RE.fullmatch(text):
        raise InvalidNameError(
            f"invalid {what} {text[:80]!r}",
            "use letters, digits, '_', '$' or '-' (at most 63 characters, not starting with a digit)",
        )
    return text
