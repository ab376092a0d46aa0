"""Stand-in hosted Supabase projects for tests (../shared/fixtures/supabase/make-project.sh), and
what a Supabase user's app looks like in one (tests/fixtures/supabase_app.sql)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pg8000.native
import pytest

from coldcopy.loopback import free_port
from coldcopy.postgres.cluster import find_bin_dir

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "supabase"  # a copy of ../shared/fixtures/supabase
MAKE_PROJECT = Path(os.environ.get("COLDCOPY_SUPABASE_FIXTURE", FIXTURES)) / "make-project.sh"
APP_SQL = REPO / "tests" / "fixtures" / "supabase_app.sql"
PASSWORD = "postgres-pw"
ADMIN_PASSWORD = "supabase-admin-pw"


@dataclass
class Project:
    """A running stand-in project: connect as ``postgres`` (not a superuser) like a hosted user."""

    base: Path
    port: int
    host: str = "127.0.0.1"

    def connect(self, dbname: str = "postgres", user: str = "postgres") -> pg8000.native.Connection:
        password = ADMIN_PASSWORD if user == "supabase_admin" else PASSWORD
        if user not in ("postgres", "supabase_admin"):
            # The platform's service roles log in without a password over the socket (trust).
            return pg8000.native.Connection(
                user, unix_sock=str(self.base / "sock" / f".s.PGSQL.{self.port}"), database=dbname
            )
        return pg8000.native.Connection(
            user, password=password, host=self.host, port=self.port, database=dbname
        )

    def env(self) -> dict[str, str]:
        return {
            "DB_HOST": self.host,
            "DB_PORT": str(self.port),
            "DB_USER": "postgres",
            "DB_PASSWORD": PASSWORD,
            "DB_NAME": "postgres",
            "DB_SSLMODE": "disable",
        }

    def run_sql(self, sql: str, dbname: str = "postgres") -> None:
        """A script as the hosted user runs it (psql as postgres over TCP)."""
        subprocess.run(
            [
                str(find_bin_dir() / "psql"),
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                self.host,
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-d",
                dbname,
            ],
            input=sql.encode(),
            env={**os.environ, "PGPASSWORD": PASSWORD},
            check=True,
            capture_output=True,
        )

    def stop(self) -> None:
        subprocess.run(
            [
                "runuser",
                "-u",
                "postgres",
                "--",
                str(find_bin_dir() / "pg_ctl"),
                "-D",
                str(self.base / "data"),
                "-m",
                "immediate",
                "stop",
            ],
            capture_output=True,
            check=False,
        )
        shutil.rmtree(self.base, ignore_errors=True)


def have_fixture() -> bool:
    return MAKE_PROJECT.exists() and os.geteuid() == 0


@contextmanager
def project(with_app: bool) -> Iterator[Project]:
    """A new stand-in project (about 10 s), with the app set up as ``postgres`` when asked."""
    if not have_fixture():
        pytest.skip(f"the Supabase stand-in needs root and {MAKE_PROJECT}")
    base = Path(tempfile.mkdtemp(prefix="cc-supabase-"))
    base.chmod(0o755)
    port = free_port()
    proc = subprocess.run(
        ["bash", str(MAKE_PROJECT), str(base / "p"), str(port)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise RuntimeError(f"make-project.sh failed: {proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    p = Project(base / "p", port)
    try:
        if with_app:
            p.run_sql(APP_SQL.read_text())
        yield p
    finally:
        p.stop()
        shutil.rmtree(base, ignore_errors=True)


def as_role(p: Project, role: str, sql: str, claims: dict[str, Any] | None = None) -> list[list[Any]] | str:
    """``sql`` as PostgREST runs it for ``role`` (SET ROLE, with JWT claims): rows, or the error.
    Through the platform's superuser, only to look (postgres may not become every role)."""
    conn = p.connect("postgres", "supabase_admin")
    try:
        conn.run("BEGIN")
        if claims is not None:
            # Both forms PostgREST has set (auth.uid() reads one or the other, by platform version).
            conn.run("SELECT set_config('request.jwt.claims', :c, true)", c=json.dumps(claims))
            conn.run("SELECT set_config('request.jwt.claim.sub', :s, true)", s=str(claims.get("sub", "")))
        conn.run(f"SET LOCAL ROLE {role}")
        try:
            rows: list[list[Any]] = conn.run(sql)
            return rows
        except pg8000.exceptions.DatabaseError as exc:
            return str(exc.args[0].get("M") if isinstance(exc.args[0], dict) else exc)
        finally:
            conn.run("ROLLBACK")
    finally:
        conn.close()
