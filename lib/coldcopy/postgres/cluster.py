"""A throwaway PostgreSQL cluster in a scratch folder, for the demo, the tests and the benchmarks.

Durability is switched off (fsync, full_page_writes): the cluster is for data we can regenerate.
As root, ``initdb``, ``pg_ctl`` and ``postgres`` run as the ``postgres`` OS user through
``runuser``, because PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import subprocess
import tempfile
import weakref
from pathlib import Path
from types import TracebackType
from typing import Self

import pg8000.native

from coldcopy.errors import DatabaseError
from coldcopy.loopback import free_port
from coldcopy.postgres.server import (
    OWNER,
    SOCKET_PATH_MAX,
    as_owner,
    chown_to_owner,
    chown_tree,
    conf_quote,
    kill_server,
    postmaster_pid,
)

log = logging.getLogger(__name__)
_STOP_MODES = ("smart", "fast", "immediate")
_SETTING_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")
_BIND_FAILURE = re.compile(r"could not bind|could not create any TCP/IP sockets|Address already in use")
_LOG_TAIL_LINES = 20
_CONF_FILE = "coldcopy-localstack.conf"  # our settings, included at the end of postgresql.conf


def find_bin_dir() -> Path:
    """The bin folder of the newest PostgreSQL under /usr/lib/postgresql, else the one on PATH."""
    found: list[tuple[tuple[int, ...], Path]] = []
    for path in Path("/usr/lib/postgresql").glob("*/bin"):
        version = path.parent.name
        if (path / "initdb").is_file() and re.fullmatch(r"\d+(\.\d+)?", version):
            found.append((tuple(int(p) for p in version.split(".")), path))
    if found:
        return max(found)[1]
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    raise DatabaseError(
        "no PostgreSQL server binaries (initdb, pg_ctl, postgres) were found",
        "install the PostgreSQL server package, for example `apt-get install postgresql`",
    )


class PgCluster:
    """A cluster that lives in ``base_dir`` (a fresh temporary folder by default).

    ``start()`` runs initdb on first use, then starts the server on 127.0.0.1:``port``; the
    ``postgres`` role logs in with ``password`` over TCP (scram-sha-256) and without one over the
    unix socket in ``socket_dir``.  ``destroy()`` stops the server and deletes every file the
    cluster made; it also runs at interpreter exit and when the object is garbage collected.  The
    server is found, stopped and killed by the rules of :mod:`coldcopy.postgres.server`.
    """

    host = "127.0.0.1"

    def __init__(
        self,
        base_dir: Path | None = None,
        port: int | None = None,
        settings: dict[str, str] | None = None,
        password: str = "coldcopy-local",
        user: str = "postgres",
    ) -> None:
        self.bin_dir = find_bin_dir()
        self.password = password
        self.user = user  # the bootstrap superuser
        self.settings = dict(settings or {})
        for name, value in self.settings.items():
            _check_setting(name, value)
        self._port_chosen_by_us = port is None
        self.port = free_port() if port is None else port
        # Paths destroy() removes; the finalizer holds this list, never self.
        self._owned_paths: list[Path] = []

        if base_dir is None:
            self.base_dir = Path(tempfile.mkdtemp(prefix="coldcopy-pg-"))
            self._owned_paths.append(self.base_dir)
        else:
            self.base_dir = Path(base_dir).absolute()
            if not self.base_dir.exists():
                self.base_dir.mkdir(parents=True)
                self._owned_paths.append(self.base_dir)
        if self.base_dir in self._owned_paths:
            self.base_dir.chmod(0o755)  # the postgres user must traverse it

        self.data_dir = self.base_dir / "data"
        self.socket_dir = self.base_dir / "sock"
        self.log_path = self.base_dir / "postgres.log"
        if self.base_dir not in self._owned_paths:
            self._owned_paths += [self.data_dir, self.socket_dir, self.log_path]
        if len(str(self.socket_dir / ".s.PGSQL.65535.lock")) > SOCKET_PATH_MAX:
            self.socket_dir = Path(tempfile.mkdtemp(prefix="ccpg-"))
            self.socket_dir.chmod(0o755)
            self._owned_paths.append(self.socket_dir)

        self._finalizer = weakref.finalize(self, _teardown, self.data_dir, self._owned_paths)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Self:
        """Create the cluster if needed and start it; a no-op when it is already running."""
        if not self._finalizer.alive:
            raise DatabaseError("this PostgreSQL cluster was destroyed", "create a new PgCluster")
        if self.is_running():
            return self
        self._check_reachable()
        self._prepare_paths()
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        chown_tree(self.data_dir)  # what root made there: pg_basebackup output, recovery.signal…
        self._write_config()
        self._start_server()
        self._set_password()
        return self

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``smart``, ``fast`` or ``immediate``); a no-op when it is not running."""
        if mode not in _STOP_MODES:
            raise ValueError(f"stop mode must be one of {_STOP_MODES}, not {mode!r}")
        if not self.is_running():
            return
        proc = self.run_as_owner(
            [str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m", mode, "-w", "-t", "60", "stop"]
        )
        if proc.returncode != 0 and self.is_running():
            raise self._failure("pg_ctl stop", proc)

    def destroy(self) -> None:
        """Stop the server however it is doing and delete the cluster's files; safe to call twice.

        A server that cannot be stopped, nor killed, keeps its files (an error is logged).
        """
        self._finalizer()

    def is_running(self) -> bool:
        return postmaster_pid(self.data_dir) is not None

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.destroy()
            raise

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.destroy()

    def __repr__(self) -> str:
        return f"PgCluster(port={self.port}, data_dir={str(self.data_dir)!r}, running={self.is_running()})"

    # -- using it ----------------------------------------------------------------------------

    def connect(self, dbname: str = "postgres") -> pg8000.native.Connection:
        """A TCP connection with password authentication, as a client on another host would make."""
        return pg8000.native.Connection(
            self.user, host=self.host, port=self.port, password=self.password, database=dbname
        )

    def env(self) -> dict[str, str]:
        """libpq variables for client tools (psql, pg_dump…); merge them into a full environment."""
        return {
            "PGHOST": self.host,
            "PGPORT": str(self.port),
            "PGUSER": self.user,
            "PGPASSWORD": self.password,
        }

    def run_as_owner(
        self, args: list[str], *, timeout: float | None = 300
    ) -> subprocess.CompletedProcess[str]:
        """Run a command as the cluster's OS owner (``postgres`` when we are root), output captured.

        The environment is ours without PG* variables; in particular no password, which a
        server started this way would otherwise inherit.
        """
        return subprocess.run(
            as_owner(args),
            capture_output=True,
            text=True,
            cwd="/",  # the owner may not be able to enter our working directory
            env=_tool_env(),
            timeout=timeout,
            check=False,
        )

    def write_data_file(self, relative_path: str, text: str) -> Path:
        """Write a file inside the data folder (``recovery.signal``…) owned by the cluster's owner."""
        path = self.data_dir / relative_path
        path.write_text(text)
        chown_to_owner(path)
        return path

    def create_database(self, name: str) -> None:
        self._admin(f"CREATE DATABASE {pg8000.native.identifier(name)}")

    def drop_database(self, name: str) -> None:
        """Drop ``name`` if it exists, disconnecting its sessions."""
        self._admin(f"DROP DATABASE IF EXISTS {pg8000.native.identifier(name)} WITH (FORCE)")

    def has_library(self, name: str) -> bool:
        """Whether the server can load the shared library ``name`` (e.g. ``pg_cron``)."""
        return (self.bin_dir.parent / "lib" / f"{name}.so").exists()

    def server_version_num(self) -> int:
        conn = self.connect()
        try:
            return int(conn.run("SHOW server_version_num")[0][0])
        finally:
            conn.close()

    # -- internals ---------------------------------------------------------------------------

    @property
    def socket_path(self) -> Path:
        return self.socket_dir / f".s.PGSQL.{self.port}"

    def _admin(self, sql: str) -> None:
        conn = self.connect()
        try:
            conn.run(sql)
        finally:
            conn.close()

    def _check_reachable(self) -> None:
        # pytest's tmp_path, for one, sits below a 0700 folder that the postgres user cannot enter.
        if os.geteuid() == 0 and self.run_as_owner(["test", "-x", str(self.base_dir)]).returncode != 0:
            raise DatabaseError(
                f"the {OWNER} OS user cannot enter {self.base_dir}",
                "use a base_dir whose parent folders others may search (the default, under /tmp, works)",
            )

    def _prepare_paths(self) -> None:
        self.data_dir.mkdir(mode=0o700, exist_ok=True)
        self.socket_dir.mkdir(mode=0o755, exist_ok=True)
        self.log_path.touch()
        for path in (self.data_dir, self.socket_dir, self.log_path):
            chown_to_owner(path)

    def _initdb(self) -> None:
        proc = self.run_as_owner(
            [
                str(self.bin_dir / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                self.user,
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "-N",
            ]
        )
        if proc.returncode != 0:
            raise self._failure("initdb", proc)
        hba = self.data_dir / "pg_hba.conf"
        line = "host replication all 127.0.0.1/32 scram-sha-256"
        existing = {" ".join(raw.split()) for raw in hba.read_text().splitlines()}
        if line not in existing:
            with hba.open("a") as f:
                f.write(line + "\n")

    def _write_config(self) -> None:
        # Our settings live in their own file, rewritten on every start (the port may have changed);
        # lines that others append to postgresql.conf after the include still win, and are kept.
        values = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.socket_dir),
            "password_encryption": "scram-sha-256",  # PostgreSQL 13 still defaults to md5
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "wal_level": "replica",
            "max_wal_senders": "10",
            "max_replication_slots": "10",
            **self.settings,
        }
        lines = "".join(f"{name} = {conf_quote(value)}\n" for name, value in values.items())
        self.write_data_file(_CONF_FILE, f"# written by coldcopy.localstack on every start\n{lines}")
        conf = self.data_dir / "postgresql.conf"
        include = f"include '{_CONF_FILE}'"
        if include not in conf.read_text().splitlines():
            with conf.open("a") as f:
                f.write(f"\n{include}\n")

    def _start_server(self) -> None:
        for attempt in range(3):
            log_offset = _size(self.log_path)
            proc = self.run_as_owner(
                [
                    *(str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-l", str(self.log_path)),
                    *("-w", "-t", "60", "start"),
                ]
            )
            if proc.returncode == 0:
                return
            new_log = _read_from(self.log_path, log_offset)
            if self._port_chosen_by_us and attempt < 2 and _BIND_FAILURE.search(new_log):
                self.port = free_port()  # someone took our port between choosing and binding it
                self._write_config()
                continue
            raise self._failure("pg_ctl start", proc)

    def _set_password(self) -> None:
        conn = pg8000.native.Connection(self.user, unix_sock=str(self.socket_path), database="postgres")
        try:
            conn.run(
                f"ALTER ROLE {pg8000.native.identifier(self.user)} "
                f"PASSWORD {pg8000.native.literal(self.password)}"
            )
        finally:
            conn.close()

    def _failure(self, what: str, proc: subprocess.CompletedProcess[str]) -> DatabaseError:
        output = "\n".join(part.strip() for part in (proc.stdout, proc.stderr) if part and part.strip())
        log = _tail(_read_from(self.log_path, max(0, _size(self.log_path) - 65536)))
        detail = "\n".join(part for part in (_tail(output), log and f"server log:\n{log}") if part)
        if self.password:
            detail = detail.replace(self.password, "***")
        return DatabaseError(
            f"{what} failed (exit {proc.returncode}) for the local cluster in {self.base_dir}:\n{detail}",
            f"see {self.log_path}; check the settings passed to PgCluster and free disk space",
        )


# -- helpers that must not hold a reference to a PgCluster (the finalizer uses them) -------------


def _teardown(data_dir: Path, paths: list[Path]) -> None:
    # Immediate shutdown, killed if it will not go; a server still alive keeps its files (deleting
    # them under it would leave a server running on nothing, and its port and memory taken).
    if not kill_server(data_dir, grace=10, timeout=10):
        log.error("the PostgreSQL server in %s could not be stopped: its files are left in place", data_dir)
        return
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def _tool_env() -> dict[str, str]:
    # No PG* variables from the caller's environment: they would point tools at another server.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C.UTF-8"  # messages in English, whatever the caller's locale
    return env


def _check_setting(name: str, value: str) -> None:
    if not _SETTING_NAME.match(name):
        raise ValueError(f"not a PostgreSQL setting name: {name!r}")
    if "\n" in value or "\r" in value:
        raise ValueError(f"setting {name} must be one line")


def _read_from(path: Path, offset: int) -> str:
    try:
        with path.open("rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _tail(text: str, lines: int = _LOG_TAIL_LINES) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])
