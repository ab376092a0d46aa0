"""The erasure ledger in the bucket, and applying it to a restored database (docs/erasures.md).

Each erasure is one create-only object ``erasures/<id>.json.zst``, packed like every stream
(zstd, AES-256-GCM, bound to its key: docs/encryption-format.md version 2), because it holds the
values it erases.  Every restore reads the whole ledger and applies it (core/erasure.apply_sql) to
the restored database before the database is used: the staging database before its swap, the
project's transaction before its COMMIT, the verification's scratch before its checks.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pg8000.native

from coldcopy.context import Context
from coldcopy.core.erasure import (
    ERASED_SETTING,
    LEDGER_PREFIX,
    SUBJECTS_SETTING,
    Erasure,
    apply_sql,
    subjects_json,
)
from coldcopy.errors import ConfigError, DatabaseError, IntegrityError
from coldcopy.stream.pipeline import Unpacker, pack_bytes

log = logging.getLogger(__name__)


@dataclass
class Applied:
    """What re-applying the ledger did to one restored database."""

    erasures: int = 0
    rows_removed: int = 0  # rows the statements deleted or changed
    per_erasure: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "erasures_applied": self.erasures,
            "erased_rows_removed": self.rows_removed,
            # every erasure's check counted zero (a count above zero fails the restore instead)
            "erased_subjects_remaining": 0,
            "erasures": dict(self.per_erasure),
        }

    def add(self, other: Applied) -> Applied:
        """Both together (one server's databases)."""
        return Applied(
            self.erasures + other.erasures,
            self.rows_removed + other.rows_removed,
            {**self.per_erasure, **other.per_erasure},
        )

    @classmethod
    def from_setting(cls, erasures: list[Erasure], text: str | None) -> Applied:
        """From the JSON ``apply_sql`` leaves in ``coldcopy.erased``; DatabaseError if an erasure is
        missing from it (the statement did not run to its end)."""
        done = json.loads(text) if text else {}
        missing = [e.id for e in erasures if e.id not in done]
        if missing:
            raise DatabaseError(
                f"{len(missing)} erasure(s) were not applied (first: {missing[0]})",
                "the restore was not completed; see docs/erasures.md",
            )
        per = {e.id: int(done[e.id]) for e in erasures}
        return cls(len(erasures), sum(per.values()), per)


def record_erasure(ctx: Context, erasure: Erasure) -> Erasure:
    """Store ``erasure``, create-only and encrypted; ConfigError when backups are not encrypted
    (the ledger holds the subject, which a restore binds again)."""
    if ctx.key is None:
        raise ConfigError(
            [
                "BACKUP_ENCRYPTION_KEY is not set, and the erasure ledger holds the subjects it erases: "
                "it is stored only encrypted"
            ]
        )
    packed, _ = pack_bytes(
        json.dumps(erasure.to_dict(), sort_keys=True).encode(),
        ctx.key,
        ctx.settings.zstd_level,
        object_key=erasure.key,
    )
    ctx.storage.put_bytes(erasure.key, packed, create_only=True)
    log.info("recorded erasure %s (kind %s)", erasure.id, erasure.kind)
    return erasure


def read_ledger(ctx: Context, database: str | None = None) -> list[Erasure]:
    """Every recorded erasure (of backups of ``database``, if given), oldest first, each
    authenticated; IntegrityError naming the record that cannot be opened (a restore must not go
    on without it)."""
    out = []
    for info in ctx.storage.list(LEDGER_PREFIX):
        if not info.key.endswith(".json.zst"):
            continue
        un = Unpacker(ctx.key, expect_object=info.key)
        try:
            raw = un.feed(ctx.storage.get_bytes(info.key))
            un.finish(None)
            out.append(Erasure.from_dict(json.loads(raw)))
        except (ValueError, KeyError) as exc:
            raise IntegrityError(
                f"erasure record {info.key} cannot be read: {type(exc).__name__}",
                "restores re-apply every erasure; restore the record or ask for help",
            ) from None
    return sorted((e for e in out if database is None or e.database == database), key=lambda e: e.id)


@contextmanager
def erasing(
    conn: pg8000.native.Connection, erasures: list[Erasure], *, statements: bool = True, restored: bool = True
) -> Iterator[Applied]:
    """Apply ``erasures`` on ``conn`` in one transaction (only their checks, without
    ``statements``; ``restored``: see ``apply_sql``), committed when the body returns;
    DatabaseError (naming an erasure, never a value) if one cannot be applied or a check still
    counts rows, and then nothing was changed."""
    conn.run("BEGIN")
    try:
        yield erase_in_transaction(conn, erasures, statements=statements, restored=restored)
        conn.run("COMMIT")
    except BaseException:
        conn.run("ROLLBACK")
        raise


def erase_in_transaction(
    conn: pg8000.native.Connection, erasures: list[Erasure], *, statements: bool = True, restored: bool = True
) -> Applied:
    """Apply ``erasures`` inside the transaction open on ``conn`` (the caller commits or rolls
    back); DatabaseError (naming an erasure, never a value) if one cannot be applied or a check
    still counts rows."""
    try:  # the subjects as a bound parameter: never in a statement's text
        conn.run("SELECT set_config(:k, :v, true)", k=SUBJECTS_SETTING, v=subjects_json(erasures))
        conn.run(apply_sql(erasures, statements=statements, restored=restored))
        rows = conn.run(f"SELECT current_setting('{ERASED_SETTING}', true)")
    except pg8000.native.DatabaseError as exc:
        info = exc.args[0] if exc.args and isinstance(exc.args[0], dict) else {}
        raise DatabaseError(
            f"the erasure ledger could not be applied: {info.get('M', 'error')}",
            "nothing was changed by it (a restore was not completed; the target was left as it "
            "was); see docs/erasures.md",
        ) from None
    return Applied.from_setting(erasures, rows[0][0])


def apply_erasures(conn: pg8000.native.Connection, erasures: list[Erasure]) -> Applied:
    """Apply ``erasures`` on ``conn`` in one transaction (see ``erasing``)."""
    if not erasures:
        return Applied()
    with erasing(conn, erasures) as applied:
        return applied


DATABASES = "SELECT datname FROM pg_database WHERE datallowconn"


def apply_to_server(
    connect: Callable[[str], pg8000.native.Connection], erasures: list[Erasure], present: set[str]
) -> Applied:
    """The ledger applied to a recovered server: each erasure in its database, where the server
    has that database (``present``, as ``DATABASES`` lists them; ``connect(name)`` opens one)."""
    applied = Applied()
    for database in sorted({e.database for e in erasures} & present):
        conn = connect(database)
        try:
            applied = applied.add(apply_erasures(conn, [e for e in erasures if e.database == database]))
        finally:
            conn.close()
    return applied
