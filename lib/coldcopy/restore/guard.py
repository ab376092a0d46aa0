"""What keeps a restore that is killed at any instant from losing a database.

A restore of a database holds a lock for its whole run (one restore of a database at a time) and,
before it renames the live database aside, writes an *intent record* to the bucket
(``state/restore-intents/<database>.json``).  The next command that touches the database (a
restore, a backup, ``coldcopy status``) finds the record: if the database is missing, it renames
the original back; either way it removes the record.  Staging databases a killed restore left
(``<database>_ccstage_<stamp>``) are dropped by the next restore of that database.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import pg8000.native

from coldcopy.errors import ConflictError, NotFoundError
from coldcopy.postgres.client import Postgres
from coldcopy.storage.state_store import clear_intent, intent_key
from coldcopy.storage.store import ObjectStore

log = logging.getLogger(__name__)

STAGING = "ccstage"
KEPT = "before_restore"


def dated(base: str, label: str, now: datetime | None = None) -> str:
    """``<base>_<label>_<timestamp>``, cut so the whole name fits PostgreSQL's 63 bytes."""
    suffix = f"_{label}_{(now or datetime.now(UTC)).strftime('%Y%m%d_%H%M%S')}"
    return base.encode()[: 63 - len(suffix)].decode(errors="ignore") + suffix


def staging_names(final: str, names: list[str]) -> list[str]:
    """The staging databases of restores of ``final`` among ``names``."""
    cut = dated(final, STAGING)[: -len("_YYYYmmdd_HHMMSS") - len(STAGING) - 1]
    pattern = re.compile(re.escape(cut) + rf"_{STAGING}_\d{{8}}_\d{{6}}")
    return [n for n in names if pattern.fullmatch(n)]


@contextmanager
def restore_guard(pg: Postgres, storage: ObjectStore, final: str) -> Iterator[list[str]]:
    """Held for a whole restore of ``final``: refuses a second concurrent one, and first puts right
    what a killed restore of it left (yields what it did, for the output)."""
    with pg.session(pg.maintenance_db()) as conn:
        key = f"coldcopy-restore:{final}"
        if not conn.run("SELECT pg_try_advisory_lock(hashtext(:k))", k=key)[0][0]:
            raise ConflictError(
                f"another restore of {final!r} is running", "wait for it to finish, then run this one again"
            )
        try:
            yield put_right(pg, conn, storage, final)
        finally:
            conn.run("SELECT pg_advisory_unlock(hashtext(:k))", k=key)


def put_right(pg: Postgres, admin: pg8000.native.Connection, storage: ObjectStore, final: str) -> list[str]:
    """Finish what an interrupted restore of ``final`` left: the original renamed back if the
    restore was killed between its renames, its staging databases dropped."""
    done: list[str] = []
    try:
        intent = storage.get_json(intent_key(final))
    except NotFoundError:
        intent = None
    if isinstance(intent, dict):
        aside = str(intent.get("renamed_to", ""))
        if not pg.database_exists(admin, final) and aside and pg.database_exists(admin, aside):
            pg.rename_database(admin, aside, final)
            done.append(f"put {final!r} back: a restore killed between its renames had left it as {aside!r}")
        clear_intent(storage, final)
    names = [str(r[0]) for r in admin.run("SELECT datname FROM pg_database")]
    for name in staging_names(final, names):
        pg.drop_database(admin, name)
        done.append(f"dropped {name!r}, the staging database of an interrupted restore")
    for line in done:
        log.warning("%s", line)
    return done


def put_right_if_interrupted(pg: Postgres, storage: ObjectStore, database: str) -> list[str]:
    """For commands other than restore (backup): put ``database`` back if a restore of it was
    interrupted (one GET when none was)."""
    if not storage.exists(intent_key(database)):
        return []
    with restore_guard(pg, storage, database) as done:
        return done
