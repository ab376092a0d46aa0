"""Bad input, clean errors (issue 13): an empty or blank database name is refused, an empty
DB_PASSWORD means no password, a .env line that cannot be parsed or a missing --env-file is an
error naming the file and line, and no library traceback reaches stderr without --debug."""

from __future__ import annotations

import io
import logging
import os
from contextlib import redirect_stderr
from pathlib import Path

import pytest

from cli_helpers import run_cli
from coldcopy.cli.output import setup_logging
from coldcopy.config import load_settings
from coldcopy.errors import ConfigError

NAME = "full_backup_demo_20261124_020000"


@pytest.mark.parametrize("target", ["", "   ", "\t"])
def test_an_empty_or_blank_target_database_is_refused(target: str) -> None:
    r = run_cli({}, "restore", "--backup-name", NAME, "--target-db", target, "--clean")
    assert r.rc == 2, r.err
    assert "--target-db" in r.err and "database name is empty" in r.err


def test_a_bad_target_database_name_is_still_refused() -> None:
    r = run_cli({}, "restore", "--backup-name", NAME, "--target-db", "a b")
    assert r.rc == 2 and "invalid database name 'a b'" in r.err


def test_an_empty_db_password_means_no_password(coldcopy_env: dict[str, str], tmp_path: Path) -> None:
    """The cluster asks for a SCRAM password over TCP: without one, a clear error (exit 5), not
    pg8000's AttributeError; the same from a .env file holding ``DB_PASSWORD=`` as .env.example does."""
    r = run_cli({**coldcopy_env, "DB_PASSWORD": ""}, "backup")
    assert r.rc == 5, r.err
    assert "DB_PASSWORD is empty" in r.err and "AttributeError" not in r.err
    env_file = tmp_path / "coldcopy.env"
    env_file.write_text("DB_PASSWORD=\n")
    env = {k: v for k, v in coldcopy_env.items() if k != "DB_PASSWORD"}
    r = run_cli(env, "--env-file", str(env_file), "backup")
    assert r.rc == 5 and "DB_PASSWORD is empty" in r.err, r.err


def test_a_malformed_env_line_is_an_error_naming_file_and_line(
    memory_env: dict[str, str], tmp_path: Path
) -> None:
    env_file = tmp_path / "bad.env"
    env_file.write_text('DB_HOST=localhost\nDB_PORT="48629\nDB_PASSWORD="s3cr3t-value\n')
    r = run_cli(memory_env, "--env-file", str(env_file), "list-backups")
    assert r.rc == 2, r.err
    assert f"{env_file}, line 2 (DB_PORT=…): cannot be parsed" in r.err
    assert "48629" not in r.err and "s3cr3t-value" not in r.err  # a value is never echoed
    # The same file named by COLDCOPY_ENV_FILE, and through load_settings: every problem at once.
    with pytest.raises(ConfigError) as err:
        load_settings({"COLDCOPY_ENV_FILE": str(env_file)})
    assert any("line 2" in p for p in err.value.problems)
    # A well-formed file is read as before.
    env_file.write_text('DB_HOST=localhost\nDB_PORT="48629"\n')
    assert load_settings({}, env_file=env_file).db_port == 48629


def test_a_missing_env_file_is_an_error(memory_env: dict[str, str], tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.env"
    r = run_cli(memory_env, "--env-file", str(missing), "list-backups")
    assert r.rc == 2 and f"the settings file {missing} (--env-file) does not exist" in r.err, r.err
    with pytest.raises(ConfigError, match="COLDCOPY_ENV_FILE"):
        load_settings({"COLDCOPY_ENV_FILE": str(missing)})
    # ./.env is optional; os.devnull (what the tests and the demo name) is an empty file.
    assert load_settings({"COLDCOPY_ENV_FILE": os.devnull, "DB_PORT": "5433"}).db_port == 5433


def test_no_library_traceback_without_debug() -> None:
    """urllib3 logs a reply whose headers were cut short as a warning with its traceback."""
    for debug in (False, True):
        err = io.StringIO()
        with redirect_stderr(err):
            setup_logging(debug)
            try:
                raise ValueError("headers cut short")
            except ValueError:
                logging.getLogger("urllib3.connection").warning("Failed to parse headers", exc_info=True)
        assert "Failed to parse headers" in err.getvalue()
        assert ("Traceback" in err.getvalue()) is debug, err.getvalue()
