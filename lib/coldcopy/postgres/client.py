"""The PostgreSQL adapter: connections (pg8000), the client programs' environment, and database
administration (create, drop, rename, copy properties, the user's tables and their row counts)."""

from __future__ import annotations

import contextlib
import os
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pg8000.native

from coldcopy.config import SUPABASE_CA_HINT, Settings, redact
from coldcopy.core.sql import quote_ident, quote_literal
from coldcopy.errors import ConfigError, DatabaseError
from coldcopy.postgres.tls import attempts, libpq_tls_env, tls_error
from coldcopy.postgres.tools import ToolVersion, tool_version

# Supabase's pooler (Supavisor) serves transaction mode on this port: consecutive transactions
# may run on different server sessions, so pg_dump's exported snapshot (and a restore's single
# transaction spread over statements) cannot hold there.
TRANSACTION_POOLER_PORT = 6543


def refuse_transaction_pooler(host: str, port: int) -> None:
    """ConfigError for a connection through a transaction-mode pooler (Supabase's port 6543)."""
    if port == TRANSACTION_POOLER_PORT:
        raise ConfigError(
            [
                f"DB_PORT {port} is Supabase's transaction-mode pooler ({host}): a backup's snapshot and a "
                "restore's transaction cannot hold there; use the session pooler (port 5432, user "
                "postgres.<project-ref>) or the direct connection (db.<project-ref>.supabase.co:5432)"
            ]
        )


class Postgres:
    """Connections to one server.  ``names`` is the prefix of the settings that describe it
    (``DB_``, or ``VERIFY_DB_`` for the test restores' scratch server), for messages."""

    def __init__(self, settings: Settings, names: str = "DB_") -> None:
        self.s = settings
        self.names = names

    # -- connections ------------------------------------------------------------------------------
    def connect(self, dbname: str | None = None) -> pg8000.native.Connection:
        """A connection made as libpq would make it in DB_SSLMODE (see ``postgres.tls``)."""
        refuse_transaction_pooler(self.s.db_host, self.s.db_port)
        db = dbname or self.s.db_name
        params: dict[str, Any] = {
            "user": self.s.db_user,
            "password": self.s.db_password.reveal() or None,
            "host": self.s.db_host,
            "port": self.s.db_port,
            "database": db,
            "timeout": 30,
            "application_name": "coldcopy",
        }
        plan = attempts(self.s.db_sslmode, self.s.db_sslrootcert)
        failures: list[Exception] = []
        for ssl_context in plan:
            try:
                return pg8000.native.Connection(ssl_context=ssl_context, **params)
            except AttributeError:
                # pg8000 answers a server asking for SCRAM when no password was given with this.
                if params["password"] is not None:
                    raise
                raise self._no_password() from None
            except (pg8000.exceptions.DatabaseError, pg8000.exceptions.InterfaceError, OSError) as exc:
                if params["password"] is None and "no password" in str(exc):
                    raise self._no_password() from None
                failures.append(exc)
                if _unreachable(exc):
                    break  # libpq tries the other way only once it has reached the server
        raise self._connect_error(failures, db) from None

    def _no_password(self) -> DatabaseError:
        """An empty DB_PASSWORD means no password; the server asked for one."""
        n = self.names
        return DatabaseError(
            f"PostgreSQL at {self.s.db_host}:{self.s.db_port} asks {self.s.db_user!r} for a password, "
            f"but {n}PASSWORD is empty (no password)",
            f"set {n}PASSWORD, or let the server accept this client without one (pg_hba.conf)",
        )

    def _connect_error(self, failures: list[Exception], db: str) -> DatabaseError:
        # A failed TLS check says more than the plain attempt that followed it (prefer), or came
        # before it (allow): libpq reports both, we report the certificate.
        for exc in failures:
            if isinstance(exc, ssl.SSLError):
                return tls_error(exc, self.s.db_host, self.s.db_port, self.s.db_sslmode, self.names)
        exc = failures[-1]
        n = self.names
        detail = exc.args[0] if exc.args else exc
        if isinstance(detail, dict):
            code, msg = detail.get("C", ""), detail.get("M", "")
            if code == "28000" and "no encryption" in msg:
                return DatabaseError(
                    f"PostgreSQL at {self.s.db_host}:{self.s.db_port} accepts only encrypted connections "
                    f"({n}SSLMODE={self.s.db_sslmode}): {msg}",
                    f"set {n}SSLMODE=verify-full and {n}SSLROOTCERT to the server's CA ({SUPABASE_CA_HINT})",
                )
            if code in ("28P01", "28000"):
                return DatabaseError(
                    f"PostgreSQL refused the login of {self.s.db_user!r}: {msg}",
                    f"check {n}USER and {n}PASSWORD",
                )
            if code == "3D000":
                return DatabaseError(f"database {db!r} does not exist", "check DB_NAME")
            text = f"{code} {msg}"
        elif str(detail) == "Server refuses SSL":
            return DatabaseError(
                f"PostgreSQL at {self.s.db_host}:{self.s.db_port} does not accept TLS, which "
                f"{n}SSLMODE={self.s.db_sslmode} requires",
                f"enable ssl on the server, or set {n}SSLMODE=prefer to connect unencrypted",
            )
        else:
            text = str(detail)
        where = f"{self.s.db_host}:{self.s.db_port}/{db}"
        return DatabaseError(
            f"cannot connect to PostgreSQL at {where}: {redact(text, self.s)[:300]}",
            f"check {n}HOST, {n}PORT, {n}SSLMODE and that the server accepts connections",
        )

    @contextmanager
    def session(self, dbname: str | None = None) -> Iterator[pg8000.native.Connection]:
        conn = self.connect(dbname)
        try:
            yield conn
        finally:
            conn.close()

    def maintenance_db(self) -> str:
        return "postgres" if self.s.db_name != "postgres" else "template1"

    # -- client tools -----------------------------------------------------------------------------
    def libpq_env(self, dbname: str | None = None) -> dict[str, str]:
        """The environment of a client tool: no other secret of ours is passed on."""
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "HOME", "TZ")}
        env.update(
            PGHOST=self.s.db_host,
            PGPORT=str(self.s.db_port),
            PGUSER=self.s.db_user,
            PGDATABASE=dbname or self.s.db_name,
            PGCONNECT_TIMEOUT="30",
            PGAPPNAME="coldcopy",
        )
        env.update(libpq_tls_env(self.s.db_sslmode, self.s.db_sslrootcert))
        if self.s.db_password:
            env["PGPASSWORD"] = self.s.db_password.reveal()
        return env

    def tool(self, name: str) -> ToolVersion:
        return tool_version(name, self.s)

    # -- facts ------------------------------------------------------------------------------------
    @staticmethod
    def server_version(conn: pg8000.native.Connection) -> tuple[int, str]:
        num = int(conn.run("SHOW server_version_num")[0][0])
        text = str(conn.run("SHOW server_version")[0][0])
        return num, text

    @staticmethod
    def user_tables(conn: pg8000.native.Connection) -> dict[str, int]:
        """``schema.table`` of every user table (relkind r: partitions, not their parents; not an
        extension's), with the planner's row estimate (``pg_class.reltuples``).  Catalog only: no
        table is scanned."""
        return {f"{schema}.{table}": estimate for schema, table, estimate in Postgres.user_table_rows(conn)}

    @staticmethod
    def user_table_rows(conn: pg8000.native.Connection) -> list[tuple[str, str, int]]:
        """(schema, table, estimated rows) of :meth:`user_tables`, names apart."""
        tables = conn.run(
            "SELECT n.nspname, c.relname, c.reltuples::bigint FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind = 'r' AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = "
            "'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e') "
            "AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
            "AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%' ORDER BY 1, 2"
        )
        return [(str(schema), str(table), max(int(estimate), 0)) for schema, table, estimate in tables]

    @staticmethod
    def table_row_counts(conn: pg8000.native.Connection) -> dict[str, int]:
        """``count(*)`` of every user table (see :meth:`user_tables`): a full scan of each, for
        checking a restored database, never the user's own during a backup."""
        counts: dict[str, int] = {}
        for schema, table, _ in Postgres.user_table_rows(conn):
            qualified = f"{quote_ident(schema)}.{quote_ident(table)}"
            counts[f"{schema}.{table}"] = int(conn.run(f"SELECT count(*) FROM ONLY {qualified}")[0][0])
        return counts

    # -- administration -----------------------------------------------------------------------------
    def database_exists(self, conn: pg8000.native.Connection, name: str) -> bool:
        return bool(conn.run("SELECT 1 FROM pg_database WHERE datname = :n", n=name))

    def create_database(self, conn: pg8000.native.Connection, name: str, *, pristine: bool = False) -> None:
        """``pristine``: from template0, as PostgreSQL advises for a restore's target (nothing a site
        added to template1 collides with the dump, and sessions on template1 do not block it)."""
        conn.run(f"CREATE DATABASE {quote_ident(name)}" + (" TEMPLATE template0" if pristine else ""))

    def drop_database(self, conn: pg8000.native.Connection, name: str) -> None:
        conn.run(f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)")

    def copy_database_properties(self, conn: pg8000.native.Connection, src: str, dst: str) -> list[str]:
        """Give ``dst`` what pg_restore without --create does not carry over from ``src``: its
        owner, comment, database-level and per-role settings, and privileges.  Returns what could
        not be copied (for the operator), instead of failing the restore over it."""
        missed: list[str] = []

        def attempt(sql: str, what: str) -> None:
            try:
                conn.run(sql)
            except pg8000.exceptions.DatabaseError as exc:
                detail = exc.args[0].get("M", "") if exc.args and isinstance(exc.args[0], dict) else str(exc)
                missed.append(f"{what}: {detail}")

        row = conn.run(
            "SELECT pg_get_userbyid(datdba), shobj_description(oid, 'pg_database') FROM pg_database "
            "WHERE datname = :n",
            n=src,
        )
        if not row:
            return missed
        owner, comment = row[0]
        attempt(f"ALTER DATABASE {quote_ident(dst)} OWNER TO {quote_ident(owner)}", "owner")
        if comment:
            attempt(f"COMMENT ON DATABASE {quote_ident(dst)} IS {quote_literal(comment)}", "comment")
        settings = conn.run(
            "SELECT CASE WHEN s.setrole = 0 THEN NULL ELSE pg_get_userbyid(s.setrole) END, s.setconfig "
            "FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase WHERE d.datname = :n",
            n=src,
        )
        for role, config in settings:
            for item in config or []:
                name, _, value = str(item).partition("=")
                target = f"ROLE {quote_ident(role)} IN DATABASE" if role else "DATABASE"
                attempt(
                    f"ALTER {target} {quote_ident(dst)} SET {quote_ident(name)} = {quote_literal(value)}",
                    f"setting {name}",
                )
        grants = conn.run(
            "SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END, "
            "a.privilege_type, a.is_grantable FROM pg_database d, aclexplode(d.datacl) a "
            "WHERE d.datname = :n",
            n=src,
        )
        for grantee, privilege, grantable in grants:
            who = "PUBLIC" if grantee == "PUBLIC" else quote_ident(grantee)
            attempt(
                f"GRANT {privilege} ON DATABASE {quote_ident(dst)} TO {who}"
                + (" WITH GRANT OPTION" if grantable else ""),
                f"privilege {privilege} for {grantee}",
            )
        return missed

    @staticmethod
    def sessions_we_cannot_end(conn: pg8000.native.Connection, dbname: str) -> list[str]:
        """The sessions on ``dbname`` the connecting role may not terminate (a superuser's on a
        managed server, a background worker such as pg_cron's launcher), one line each."""
        rows = conn.run(
            "SELECT a.pid, coalesce(a.usename, '-'), a.application_name, a.backend_type "
            "FROM pg_stat_activity a LEFT JOIN pg_roles r ON r.oid = a.usesysid "
            "WHERE a.datname = :n AND a.pid <> pg_backend_pid() "
            "AND coalesce(a.backend_type, '') <> 'autovacuum worker' "  # hidden from others: NULL
            "AND NOT (coalesce(a.backend_type, 'client backend') IN ('client backend', 'walsender') AND ("
            "  (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)"
            "  OR pg_has_role(current_user, a.usesysid, 'MEMBER')"
            "  OR (pg_has_role(current_user, 'pg_signal_backend', 'MEMBER') "
            "      AND NOT coalesce(r.rolsuper, true))))"
            " ORDER BY 1",
            n=dbname,
        )
        return [
            f"pid {pid} ({user}, {app or 'no application name'}, {kind})" for pid, user, app, kind in rows
        ]

    def rename_database(self, conn: pg8000.native.Connection, old: str, new: str) -> None:
        """Rename a database others may be using: stop new sessions, end the current ones, rename.
        Whatever fails, the database accepts connections again afterwards."""
        conn.run(f"ALTER DATABASE {quote_ident(old)} WITH ALLOW_CONNECTIONS false")
        current = old
        try:
            # One session at a time: a session we may not end (a superuser's on a managed service)
            # must not stop us from ending the others; the rename then says what is still there.
            pids = conn.run(
                "SELECT pid FROM pg_stat_activity WHERE datname = :n AND pid <> pg_backend_pid() "
                "AND backend_type = 'client backend'",
                n=old,
            )
            for (pid,) in pids:
                with contextlib.suppress(pg8000.exceptions.DatabaseError):
                    conn.run("SELECT pg_terminate_backend(:p)", p=pid)
            try:
                conn.run(f"ALTER DATABASE {quote_ident(old)} RENAME TO {quote_ident(new)}")
            except pg8000.exceptions.DatabaseError as exc:
                detail = exc.args[0].get("M", "") if exc.args and isinstance(exc.args[0], dict) else str(exc)
                raise DatabaseError(
                    f"could not rename database {old!r} to {new!r}: {detail}",
                    "close the sessions still using it (or ask a superuser to), then run the restore again",
                ) from None
            current = new
        finally:
            conn.run(f"ALTER DATABASE {quote_ident(current)} WITH ALLOW_CONNECTIONS true")


def _unreachable(exc: Exception) -> bool:
    """The attempt failed before reaching the server (no TCP connection): a second one would too."""
    refused = str(exc).startswith("Can't create a connection")
    return isinstance(exc, pg8000.exceptions.InterfaceError) and refused
