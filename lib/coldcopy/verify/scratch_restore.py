"""Test restores: verification levels ``full`` and ``restore`` (the weekly job: ``verify.scheduled``).

A test restore streams the backup (every chunk authenticated, sizes and checksums compared with
the manifest) into ``pg_restore`` on a *scratch target*: a new database named ``cc_verify_<…>`` on
the server named by ``VERIFY_DB_*``, or, without one, on a throwaway local cluster when the
runner has the PostgreSQL server binaries.  Then it checks the restored database: every table's
row count equals the manifest's (``full``), plus ``amcheck`` on every B-tree index where the
extension is available and the configured sanity queries (``restore``).  The restore time and
throughput are measured and kept in the verification record; the scratch database is always
dropped, also when a check fails or the restore breaks.  Base backups get a restore drill instead
(:mod:`coldcopy.verify.base_drill`); its record has the same shape plus the WAL replay measured.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import pg8000.native

from coldcopy.backup.reader import BackupReader
from coldcopy.config import Secret, Settings
from coldcopy.core.erasure import Erasure
from coldcopy.core.names import LOGICAL_KINDS
from coldcopy.core.sanity import SanityQuery, parse_sanity_queries
from coldcopy.core.shape import summary as shape_summary
from coldcopy.core.verification import VerifyResult
from coldcopy.errors import ColdCopyError, ConfigError, EnvironmentProblem, StorageError
from coldcopy.postgres.client import Postgres
from coldcopy.postgres.cluster import PgCluster
from coldcopy.postgres.shape import read_facts
from coldcopy.restore.erasures import Applied, apply_erasures, read_ledger
from coldcopy.restore.logical import pg_restore_into, shape_problems
from coldcopy.restore.project import ShapeMismatch, restore_into
from coldcopy.stream.pipeline import Progress

log = logging.getLogger(__name__)

SCRATCH_PREFIX = "cc_verify_"
STALE_SCRATCH = timedelta(days=2)
_STAMP = "%Y%m%d%H%M%S"
_SCRATCH_RE = re.compile(r"cc_verify_(\d{14})_[0-9a-f]{6}")


# -- the scratch target ----------------------------------------------------------------------------
@dataclass
class Scratch:
    pg: Postgres
    settings: Settings
    dbname: str
    where: str
    dropped: bool = False
    drop_error: str = ""
    stale_dropped: tuple[str, ...] = ()  # left behind by runs that were killed


def scratch_name(now: datetime | None = None) -> str:
    stamp = (now or datetime.now(UTC)).strftime(_STAMP)
    return f"{SCRATCH_PREFIX}{stamp}_{secrets.token_hex(3)}"


def stale_scratch(names: list[str], now: datetime) -> list[str]:
    """Scratch databases older than STALE_SCRATCH: their run was killed before it could drop them."""
    out = []
    for name in names:
        m = _SCRATCH_RE.fullmatch(name)
        if m and now - datetime.strptime(m.group(1), _STAMP).replace(tzinfo=UTC) > STALE_SCRATCH:
            out.append(name)
    return out


# The throwaway cluster's superuser: never a role name a dump carries (Supabase's is ``postgres``).
SCRATCH_SUPERUSER = "coldcopy_scratch"


@contextmanager
def scratch_database(settings: Settings, *, cron: bool = False, create: bool = True) -> Iterator[Scratch]:
    """A new, empty database for a test restore; dropped on the way out, whatever happened.
    ``cron``: the dump has pg_cron, so a throwaway cluster preloads it (when installed here) with
    the scratch database as ``cron.database_name``.  ``create=False``: only the name is reserved
    (a restore creates the database under it), and dropped on the way out all the same."""
    dbname = scratch_name()
    cluster = None
    if settings.verify_db_host:
        if not settings.verify_db_user:
            raise ConfigError(["VERIFY_DB_USER is not set (VERIFY_DB_HOST is)"])
        target = replace(
            settings,
            db_host=settings.verify_db_host,
            db_port=settings.verify_db_port,
            db_user=settings.verify_db_user,
            db_password=settings.verify_db_password,
            db_sslmode=settings.verify_db_sslmode,
            db_sslrootcert=settings.verify_db_sslrootcert,
            db_name=dbname,
        )
        names = "VERIFY_DB_"
        where = f"{settings.verify_db_host}:{settings.verify_db_port} (VERIFY_DB_HOST)"
    else:
        try:
            cluster = PgCluster(password=secrets.token_urlsafe(18), user=SCRATCH_SUPERUSER)
            if cron and cluster.has_library("pg_cron"):
                cluster.settings.update(shared_preload_libraries="pg_cron", **{"cron.database_name": dbname})
            cluster.start()
        except ColdCopyError as exc:
            raise EnvironmentProblem(
                f"no scratch target for a test restore: VERIFY_DB_HOST is not set and a local cluster "
                f"cannot start ({exc.message})",
                "set VERIFY_DB_HOST/PORT/USER/PASSWORD to a server where ColdCopy may create and drop "
                "databases, or run where the PostgreSQL server binaries are installed",
            ) from None
        target = replace(
            settings,
            db_host=cluster.host,
            db_port=cluster.port,
            db_user=cluster.user,
            db_password=Secret(cluster.password),
            db_sslmode="disable",
            db_sslrootcert=None,
            db_name=dbname,
        )
        names = "DB_"
        where = f"a throwaway local cluster on port {cluster.port}"
    pg = Postgres(target, names)
    try:
        with pg.session(pg.maintenance_db()) as admin:
            existing = [str(r[0]) for r in admin.run("SELECT datname FROM pg_database")]
            stale = stale_scratch(existing, datetime.now(UTC))
            for name in stale:
                pg.drop_database(admin, name)
            if create:
                pg.create_database(admin, dbname)
        scratch = Scratch(pg, target, dbname, where, stale_dropped=tuple(stale))
        try:
            yield scratch
        finally:
            try:
                with pg.session(pg.maintenance_db()) as admin:
                    pg.drop_database(admin, dbname)
                scratch.dropped = True
            except (ColdCopyError, pg8000.exceptions.DatabaseError) as exc:
                scratch.drop_error = str(exc)[:300]
                log.error("the scratch database %s could not be dropped: %s", dbname, exc)
    finally:
        if cluster is not None:
            cluster.destroy()


# -- the test restore ------------------------------------------------------------------------------
def run_test_restore(
    settings: Settings, reader: BackupReader, result: VerifyResult, progress: Progress | None = None
) -> None:
    """Restore into a scratch database and check it; adds checks and the measurement to ``result``."""
    manifest = reader.manifest
    if manifest.kind not in LOGICAL_KINDS:
        result.add("test restore", False, f"a {manifest.kind} backup cannot be test-restored with pg_restore")
        return
    sanity = parse_sanity_queries(settings.verify_sanity_queries) if result.level == "restore" else []
    scratch: Scratch | None = None
    supabase = manifest.platform.get("platform") == "supabase"
    try:
        with scratch_database(settings, cron="pg_cron" in manifest.shape.get("extensions", {})) as scratch:
            stale = f"; dropped {len(scratch.stale_dropped)} stale scratch database(s)"
            result.add(
                "scratch database created",
                True,
                f"{scratch.dbname} on {scratch.where}" + (stale if scratch.stale_dropped else ""),
            )
            erasures = read_ledger(reader.ctx, manifest.database)  # before sanity queries
            if supabase:
                _restore_project_and_check(reader, scratch, result, progress, erasures)
            else:
                _restore_and_check(reader, scratch, result, progress, erasures)
            if result.ok and result.level == "restore":
                _check_amcheck(scratch, result)
                _check_sanity(scratch, sanity, settings.verify_statement_timeout_seconds, result)
    except EnvironmentProblem as exc:
        result.add("scratch target", False, exc.message[:500], environment=True)
    except (ColdCopyError, pg8000.exceptions.Error) as exc:
        detail = exc.message if isinstance(exc, ColdCopyError) else f"{type(exc).__name__}: {exc}"
        result.add("test restore" if scratch else "scratch target", False, detail[:500])
    if scratch is None:
        return
    if scratch.dropped:
        result.add("scratch database dropped", True, scratch.dbname)
    else:
        result.add("scratch database dropped", False, f"{scratch.dbname}: {scratch.drop_error}")


def _erasures_check(result: VerifyResult, applied: Applied) -> None:
    result.add(
        "the erasure ledger applied",
        True,
        f"{applied.erasures} erasure(s) applied, {applied.rows_removed} row(s) changed; "
        "every check counts 0 rows of its subject",
    )


def _restore_and_check(
    reader: BackupReader,
    scratch: Scratch,
    result: VerifyResult,
    progress: Progress | None,
    erasures: list[Erasure],
) -> None:
    manifest = reader.manifest
    tool = scratch.pg.tool("pg_restore")
    dumped_by = re.search(r"(\d+)", manifest.tool)
    if dumped_by and tool.major < int(dumped_by.group(1)):
        result.add(
            "test restore",
            False,
            f"pg_restore {tool.major} cannot read a dump made with {manifest.tool}; set PG_BIN_DIR",
        )
        return
    t0 = time.monotonic()
    try:
        pg_restore_into(
            reader,
            scratch.pg,
            tool.path,
            scratch.dbname,
            scratch.settings,
            True,
            progress,
            no_privileges=True,
        )
    except ColdCopyError as exc:
        result.add(
            "test restore: chunks authenticate and pg_restore succeeds",
            False,
            exc.message,
            storage=isinstance(exc, StorageError),
        )
        return
    _measured(reader, scratch, result, t0, "test restore: chunks authenticate and pg_restore succeeds")
    _check_row_counts(scratch, manifest.tables, manifest.row_counts, result)  # as restored: before erasures
    with scratch.pg.session(scratch.dbname) as conn:
        _erasures_check(result, apply_erasures(conn, erasures))
    if manifest.shape:
        # The scratch has none of the server's roles: restored without owners and privileges.
        differs = shape_problems(scratch.pg, scratch.dbname, manifest.shape, ("grants", "roles"))
        result.add("the restored shape equals the manifest's (but grants)", not differs, "; ".join(differs))
        result.skip("grants", "not compared: the scratch has none of the server's roles")


def _measured(reader: BackupReader, scratch: Scratch, result: VerifyResult, t0: float, check: str) -> None:
    seconds = max(time.monotonic() - t0, 1e-6)
    raw, stored = reader.manifest.data.raw_size, reader.manifest.data.stored_size
    result.measurement = {
        "restore_seconds": round(seconds, 3),
        "raw_bytes": raw,
        "stored_bytes": stored,
        "throughput_bytes_per_second": round(raw / seconds, 1),
        "target": scratch.where,
        "server_version": _server_version(scratch),
    }
    result.add(
        check, True, f"{raw} bytes of dump restored in {seconds:.2f} s ({raw / seconds / 1e6:.1f} MB/s)"
    )


def _restore_project_and_check(
    reader: BackupReader,
    scratch: Scratch,
    result: VerifyResult,
    progress: Progress | None,
    erasures: list[Erasure],
) -> None:
    """A Supabase backup: restored by restore's own code (roles applied, one transaction, the shape
    and row counts checked before it commits) into the scratch database."""
    manifest = reader.manifest
    with scratch.pg.session(scratch.dbname) as conn:
        facts = read_facts(conn)
        available = {str(r[0]) for r in conn.run("SELECT name FROM pg_available_extensions")}
    needed = set(manifest.shape.get("extensions", {})) - {"pg_cron"}  # without pg_cron: its check skipped
    missing = sorted(needed - available)
    if missing:
        result.add(
            "extensions the dump needs are installed on the scratch server",
            False,
            f"missing on {scratch.where}: {', '.join(missing)}; install them there, or set VERIFY_DB_HOST "
            "to a server that has them",
            environment=True,
        )
        return
    result.add(
        "extensions the dump needs are installed on the scratch server", True, f"{len(needed)} extensions"
    )
    t0 = time.monotonic()
    check = "test restore: chunks authenticate and the restore (roles, one transaction) succeeds"
    try:
        done = restore_into(
            reader,
            scratch.pg,
            scratch.dbname,
            facts,
            scratch.settings,
            cron_available=facts.cron_available,
            progress=progress,
            erasures=erasures,
        )
    except ShapeMismatch as exc:
        result.add(check, True, "restored, then rolled back by the check below")
        result.add("the restored shape and row counts equal the manifest's", False, exc.message)
        return
    except ColdCopyError as exc:
        result.add(check, False, exc.message)
        return
    _measured(reader, scratch, result, t0, check)
    result.add(
        "the restored shape equals the manifest's",
        True,
        f"{shape_summary(manifest.shape)}; {done.tables_checked} tables' row counts equal",
    )
    _erasures_check(result, done.erased)
    if manifest.shape.get("cron_jobs") and not (facts.cron_available and facts.cron_here):
        result.skip(
            "cron jobs", "pg_cron is not installed where the scratch runs: its jobs were not compared"
        )
    if done.left_out:
        result.skip("what the scratch cannot hold", "; ".join(done.left_out)[:500])


def _server_version(scratch: Scratch) -> str:
    with scratch.pg.session(scratch.dbname) as conn:
        return Postgres.server_version(conn)[1]


def _check_row_counts(scratch: Scratch, expected: dict[str, int], how: str, result: VerifyResult) -> None:
    with scratch.pg.session(scratch.dbname) as conn:
        got = Postgres.table_row_counts(conn)
    if how != "exact":
        missing = sorted(set(expected) - set(got))
        result.add(
            "every table restored (the manifest's counts are estimates)",
            not missing,
            f"{len(got)} tables" + (f"; missing: {', '.join(missing[:5])}" if missing else ""),
        )
        return
    wrong = [
        f"{t}: backup {n}, restored {got.get(t)}" for t, n in sorted(expected.items()) if got.get(t) != n
    ]
    result.add(
        "every table's row count equals the manifest's",
        not wrong,
        f"{len(expected)} tables, {sum(expected.values())} rows" if not wrong else "; ".join(wrong[:5]),
    )


_INDEXES = (
    "SELECT c.oid::bigint, n.nspname, c.relname FROM pg_index i "
    "JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
    "JOIN pg_am am ON am.oid = c.relam "
    "WHERE am.amname = 'btree' AND i.indisvalid AND i.indisready AND c.relpersistence <> 't' "
    "AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%' "
    "ORDER BY 2, 3"
)


def _check_amcheck(scratch: Scratch, result: VerifyResult) -> None:
    with scratch.pg.session(scratch.dbname) as conn:
        try:
            conn.run("CREATE EXTENSION IF NOT EXISTS amcheck")
        except pg8000.exceptions.DatabaseError as exc:
            why = exc.args[0].get("M", "") if exc.args and isinstance(exc.args[0], dict) else str(exc)
            result.skip("amcheck on B-tree indexes", f"amcheck is not available ({why[:200]})")
            return
        bad: list[str] = []
        indexes = conn.run(_INDEXES)
        for oid, schema, name in indexes:
            try:
                conn.run("SELECT bt_index_check(CAST(CAST(:o AS oid) AS regclass), true)", o=int(oid))
            except pg8000.exceptions.DatabaseError as exc:
                msg = exc.args[0].get("M", "") if exc.args and isinstance(exc.args[0], dict) else str(exc)
                bad.append(f"{schema}.{name}: {msg[:200]}")
    result.add(
        "amcheck on B-tree indexes",
        not bad,
        f"{len(indexes)} indexes checked (with heapallindexed)" if not bad else "; ".join(bad[:5]),
    )


def _check_sanity(scratch: Scratch, queries: list[SanityQuery], timeout_s: int, result: VerifyResult) -> None:
    if not queries:
        return
    with scratch.pg.session(scratch.dbname) as conn:
        for q in queries:
            ok, detail = False, ""
            try:
                conn.run("START TRANSACTION READ ONLY")
                conn.run(f"SET LOCAL statement_timeout = {int(timeout_s) * 1000}")
                rows = conn.run(q.sql)
                if len(rows) != 1 or len(rows[0]) != 1:
                    detail = (
                        f"returned {len(rows)} rows of {len(rows[0]) if rows else 0} columns, not one number"
                    )
                else:
                    ok, detail = q.check(rows[0][0])
            except pg8000.exceptions.DatabaseError as exc:
                msg = exc.args[0].get("M", "") if exc.args and isinstance(exc.args[0], dict) else str(exc)
                detail = f"failed: {msg[:300]}"
            finally:
                with suppress(pg8000.exceptions.DatabaseError):
                    conn.run("ROLLBACK")
            result.add(f"sanity: {q.text}", ok, detail)
