"""`coldcopy restore`: into a new database, or safely back into DB_NAME through a staging database."""

from __future__ import annotations

import logging
import re
import subprocess
import time
from collections.abc import Callable
from typing import Any

import pg8000.native

from coldcopy.backup.reader import BackupReader
from coldcopy.config import Settings, redact
from coldcopy.context import Context, open_context
from coldcopy.core.erasure import Erasure
from coldcopy.core.names import validate_db_identifier
from coldcopy.core.shape import differences, expected_for
from coldcopy.errors import ConflictError, DatabaseError
from coldcopy.pausepoints import pause_point
from coldcopy.postgres.client import Postgres
from coldcopy.postgres.shape import Facts, read_facts, read_shape
from coldcopy.postgres.tls import libpq_tls_hint
from coldcopy.postgres.tools import StderrTail, ToolVersion, die_with_parent
from coldcopy.restore.erasures import Applied, apply_erasures, read_ledger
from coldcopy.restore.guard import KEPT, STAGING, dated, put_right_if_interrupted, restore_guard
from coldcopy.restore.project import restore_into
from coldcopy.storage.state_store import clear_intent, write_intent
from coldcopy.storage.store import ObjectStore
from coldcopy.stream.pipeline import Progress

log = logging.getLogger(__name__)


def run_restore(
    settings: Settings,
    name: str,
    target_db: str | None = None,
    *,
    clean: bool = False,
    keep_old: bool | None = None,
    no_owner: bool = False,
    check_counts: bool = True,
    progress: Progress | None = None,
    no_privileges: bool = False,
    erase: bool = True,
    before_swap: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Restore ``name``; the erasure ledger is applied before the data is used (a caller that
    applies it itself later, before anyone can use the database, passes ``erase=False``).
    ``no_privileges`` (a drill's scratch, where the server's roles need not exist): a plain dump
    is restored without its grants, and grants and roles are left out of the shape check.
    ``before_swap(dbname)`` (``coldcopy pitr``'s replay) runs on the restored and checked staging
    database, under the restore's lock, before it is renamed into place; if it raises, the staging
    database is dropped and the target is left as it was.  A Supabase project's own database is
    restored in place in one transaction (no staging database): there it runs after that commit."""
    t0 = time.monotonic()
    ctx = open_context(settings)
    reader = BackupReader(ctx, name)
    reader.confirm()  # wrong key, missing or resized objects: refused before we touch any database
    erasures = read_ledger(ctx, reader.manifest.database) if erase else []  # re-applied by every restore
    pg = Postgres(settings)
    pg_restore = _pg_restore_for(pg, reader)
    final = validate_db_identifier(target_db or settings.db_name, "target database")
    in_place = target_db is None
    put_right = put_right_if_interrupted(pg, ctx.storage, final)  # a killed restore's database back first
    with pg.session(pg.maintenance_db()) as admin:
        here = in_place and pg.database_exists(admin, final)
    platform = _platform_of(pg, final if here else pg.maintenance_db())
    if platform.platform == "supabase" or reader.manifest.platform.get("platform") == "supabase":
        return _restore_project(
            ctx, reader, pg, settings, final, in_place, clean, platform, progress, t0, erasures, before_swap
        )
    if keep_old is None:
        keep_old = in_place  # replacing DB_NAME keeps the old copy unless told otherwise
    with restore_guard(pg, ctx.storage, final) as more:
        put_right += more
        _refuse_unendable_sessions(pg, final)  # before anything is written or anyone disconnected
        exists, staging = _create_staging(pg, final, in_place, clean)
        applied = _restore_checked(
            reader, pg, pg_restore.path, staging, settings, no_owner, check_counts, progress, erasures,
            no_privileges=no_privileges,
        )  # fmt: skip
        _finish_staging(pg, staging, before_swap)
        pause_point(settings, "restore:before-swap")
        if exists:
            old_name: str | None = _swap_in(pg, ctx.storage, settings, final, staging, keep_old)
        else:  # complete only now: a killed restore never leaves a partial database under this name
            with pg.session(pg.maintenance_db()) as admin:
                pg.rename_database(admin, staging, final)
            old_name = None
    return {
        "name": reader.manifest.name,
        "target_db": final,
        "replaced": exists,
        "previous_kept_as": old_name if exists and keep_old else None,
        "duration_seconds": round(time.monotonic() - t0, 3),
        "raw_size_bytes": reader.manifest.data.raw_size,
        "tables_checked": len(reader.manifest.tables) if check_counts else 0,
        "put_right": put_right,
        **applied.to_dict(),
    }


def _platform_of(pg: Postgres, dbname: str) -> Facts:
    with pg.session(dbname) as conn:
        return read_facts(conn)


def _restore_project(
    ctx: Context,
    reader: BackupReader,
    pg: Postgres,
    settings: Settings,
    final: str,
    in_place: bool,
    clean: bool,
    facts: Facts,
    progress: Progress | None,
    t0: float,
    erasures: list[Erasure],
    before_swap: Callable[[str], None] | None,
) -> dict[str, Any]:
    """A Supabase backup, or a Supabase target: the backup is given back inside the database in
    one transaction (restore/project.py), never by renaming or dropping the project's database."""
    if in_place and facts.platform != "supabase":
        raise ConflictError(
            f"{reader.manifest.name} is a Supabase backup and {final!r} is not a Supabase project's database",
            "restore it into a new database with --target-db, or point DB_* at a Supabase project",
        )
    if in_place:  # all or nothing in one transaction: nothing to put right if it is killed
        done = restore_into(
            reader,
            pg,
            final,
            facts,
            settings,
            cron_available=facts.cron_available,
            progress=progress,
            erasures=erasures,
        )
        if before_swap is not None:  # the project's database cannot be staged: after the commit
            before_swap(final)
    else:  # a new database: restored under a staging name, renamed when complete
        with restore_guard(pg, ctx.storage, final):
            exists, staging = _create_staging(pg, final, False, clean)
            try:
                facts = _platform_of(pg, staging)
                done = restore_into(
                    reader,
                    pg,
                    staging,
                    facts,
                    settings,
                    cron_available=facts.cron_available,
                    progress=progress,
                    erasures=erasures,
                )
            except BaseException:
                with pg.session(pg.maintenance_db()) as admin:
                    pg.drop_database(admin, staging)
                raise
            _finish_staging(pg, staging, before_swap)
            pause_point(settings, "restore:before-swap")
            if exists:
                _swap_in(pg, ctx.storage, settings, final, staging, keep_old=False)
            else:
                with pg.session(pg.maintenance_db()) as admin:
                    pg.rename_database(admin, staging, final)
    return {
        "name": reader.manifest.name,
        "target_db": final,
        "replaced": in_place,
        "previous_kept_as": None,
        "duration_seconds": round(time.monotonic() - t0, 3),
        "raw_size_bytes": reader.manifest.data.raw_size,
        "tables_checked": done.tables_checked,
        "platform": facts.platform,
        **done.to_dict(),
    }


def _finish_staging(pg: Postgres, staging: str, before_swap: Callable[[str], None] | None) -> None:
    """``before_swap`` run on ``staging``; ``staging`` dropped if it fails (the target untouched)."""
    if before_swap is None:
        return
    try:
        before_swap(staging)
    except BaseException:
        with pg.session(pg.maintenance_db()) as admin:
            pg.drop_database(admin, staging)
        raise


def _refuse_unendable_sessions(
    pg: Postgres, dbname: str, admin: pg8000.native.Connection | None = None
) -> None:
    """ConflictError listing the sessions on ``dbname`` the swap would have to end but may not."""
    if admin is None:
        with pg.session(pg.maintenance_db()) as conn:
            return _refuse_unendable_sessions(pg, dbname, conn)
    if not pg.database_exists(admin, dbname):
        return None
    stuck = pg.sessions_we_cannot_end(admin, dbname)
    if stuck:
        raise ConflictError(
            f"database {dbname!r} has sessions this role may not end, so it cannot be replaced; nothing "
            f"was changed and nobody was disconnected: {'; '.join(stuck[:10])}",
            "ask whoever runs them (or a superuser) to disconnect, or restore with --target-db",
        )
    return None


def _pg_restore_for(pg: Postgres, reader: BackupReader) -> ToolVersion:
    """The local pg_restore; DatabaseError if it is older than the pg_dump that made the backup."""
    pg_restore = pg.tool("pg_restore")
    dumped_by = re.search(r"(\d+)", reader.manifest.tool)
    if dumped_by and pg_restore.major < int(dumped_by.group(1)):
        raise DatabaseError(
            f"the local pg_restore is version {pg_restore.major} but the backup was made "
            f"with {reader.manifest.tool}",
            "install a newer postgresql-client or set PG_BIN_DIR",
        )
    return pg_restore


def _create_staging(pg: Postgres, final: str, in_place: bool, clean: bool) -> tuple[bool, str]:
    """(whether ``final`` exists, the new database to restore into).  Always a staging name, renamed
    to ``final`` when complete, so a killed restore leaves only a staging database behind (dropped
    by the next restore of ``final``)."""
    with pg.session(pg.maintenance_db()) as admin:
        exists = pg.database_exists(admin, final)
        if exists and not in_place and not clean:
            raise ConflictError(
                f"database {final!r} already exists",
                "choose another --target-db, or pass --clean to replace it",
            )
        staging = dated(final, STAGING)
        if pg.database_exists(admin, staging):
            raise ConflictError(f"staging database {staging!r} already exists", "drop it or wait a second")
        pg.create_database(admin, staging, pristine=True)
    return exists, staging


def _restore_checked(
    reader: BackupReader,
    pg: Postgres,
    tool: str,
    staging: str,
    settings: Settings,
    no_owner: bool,
    check_counts: bool,
    progress: Progress | None,
    erasures: list[Erasure],
    *,
    no_privileges: bool = False,
) -> Applied:
    """The backup restored into ``staging``, its row counts checked (as restored: before the
    erasures), the erasure ledger applied, its shape checked; ``staging`` dropped if any fails."""
    try:
        pg_restore_into(reader, pg, tool, staging, settings, no_owner, progress, no_privileges=no_privileges)
        exact = check_counts and reader.manifest.row_counts == "exact"
        mismatches = _check_counts(pg, staging, reader.manifest.tables) if exact else []
        if mismatches:
            raise DatabaseError(
                "the restored row counts differ from the backup's: " + "; ".join(mismatches[:5])
            )
        with pg.session(staging) as conn:
            applied = apply_erasures(conn, erasures)
        differs = shape_problems(
            pg, staging, reader.manifest.shape, ("grants", "roles") if no_privileges else ()
        )
        if differs:
            raise DatabaseError(
                "the restored database differs from the backup (the target was left as it was):\n  "
                + "\n  ".join(differs),
                "report this with the output of coldcopy show; the backup itself may be fine",
            )
    except BaseException:
        with pg.session(pg.maintenance_db()) as admin:
            pg.drop_database(admin, staging)  # the target stays as it was
        raise
    return applied


def shape_problems(
    pg: Postgres, dbname: str, shape: dict[str, Any], leave_out: tuple[str, ...] = ()
) -> list[str]:
    """How ``dbname`` differs from the recorded ``shape`` (nothing for backups made before shapes
    were recorded); parts named in ``leave_out`` are not compared."""
    if not shape:
        return []
    with pg.session(dbname) as conn:
        facts = read_facts(conn)
        actual = read_shape(conn, facts)
    expected = expected_for(shape, cron_here=facts.cron_here and facts.cron_installed, roles_given_back=True)
    for part in leave_out:
        expected.pop(part, None)
    return differences(expected, actual)


def _swap_in(
    pg: Postgres, storage: ObjectStore, settings: Settings, final: str, staging: str, keep_old: bool
) -> str:
    """``final`` renamed aside (dropped unless ``keep_old``) and ``staging`` renamed to ``final``.

    Returns the name ``final`` was renamed to.  If a rename fails, ``final`` stays as it was; if
    the process is killed between the renames, the intent record written first lets the next
    command put ``final`` back (restore/guard.py).
    """
    old_name = dated(final, KEPT)
    with pg.session(pg.maintenance_db()) as admin:
        try:
            _refuse_unendable_sessions(pg, final, admin)  # one may have connected while we restored
        except ConflictError:
            pg.drop_database(admin, staging)
            raise
        for problem in pg.copy_database_properties(admin, final, staging):
            log.warning("not carried over to the restored database: %s", problem)
        write_intent(storage, final, old_name, staging)
        try:
            pg.rename_database(admin, final, old_name)
        except BaseException:
            pg.drop_database(admin, staging)  # the target stays as it was
            clear_intent(storage, final)
            raise
        pause_point(settings, "restore:between-renames")
        try:
            pg.rename_database(admin, staging, final)
        except BaseException:
            pg.rename_database(admin, old_name, final)
            clear_intent(storage, final)
            raise
        clear_intent(storage, final)
        if not keep_old:
            pg.drop_database(admin, old_name)
    return old_name


def pg_restore_into(
    reader: BackupReader,
    pg: Postgres,
    tool: str,
    dbname: str,
    settings: Settings,
    no_owner: bool,
    progress: Progress | None,
    *,
    no_privileges: bool = False,
) -> None:
    args = [tool, "--exit-on-error", "--no-password", f"--dbname={dbname}"]
    if no_owner:
        args += ["--no-owner"]
    if no_privileges:
        args += ["--no-privileges"]
    proc = subprocess.Popen(
        args,
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=pg.libpq_env(dbname),
        preexec_fn=die_with_parent,
    )
    assert proc.stdin is not None and proc.stderr is not None
    errors = StderrTail(proc.stderr)
    stdin = proc.stdin
    try:
        reader.stream(reader.manifest.data, stdin.write, progress)
        pause_point(settings, "restore:restoring")  # pg_restore is still running: it has no EOF yet
        stdin.close()
    except BrokenPipeError:
        pass  # pg_restore stopped reading: its exit code and stderr say why
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    rc = proc.wait()
    if rc != 0:
        text = errors.text()
        raise DatabaseError(
            f"pg_restore failed (exit {rc}): {redact(text, settings)[-800:]}",
            libpq_tls_hint(text, pg.names) or "the target was left as it was",
        )


def _check_counts(pg: Postgres, dbname: str, expected: dict[str, int]) -> list[str]:
    with pg.session(dbname) as conn:
        got = pg.table_row_counts(conn)
    out = []
    for table, rows in sorted(expected.items()):
        if got.get(table) != rows:
            out.append(f"{table}: backup {rows}, restored {got.get(table)}")
    return out
