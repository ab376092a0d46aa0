"""Every module imports and every command starts, on this interpreter.

scripts/test.sh runs this file a second time under Debian's own ``/usr/bin/python3`` (3.11.2 on
Debian 12: what the postgres OS user runs for archive and restore commands), in ``.venv-system``,
together with test_safe_tar.py and test_pitr.py's end-to-end ``pitr`` runs.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import coldcopy
from coldcopy.cli.main import build_parser


def test_every_module_imports() -> None:
    names = [m.name for m in pkgutil.walk_packages(coldcopy.__path__, "coldcopy.")]
    assert "coldcopy.restore.pitr" in names and len(names) > 60
    for name in names:
        importlib.import_module(name)


def commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*path, name)
                yield from commands(sub, (*path, name))


def test_every_command_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    every = list(commands(build_parser()))
    assert ("pitr",) in every and ("catalog", "rebuild") in every and len(every) > 30
    for path in every:
        with pytest.raises(SystemExit) as exc:
            build_parser().parse_args([*path, "--help"])
        assert exc.value.code == 0, path
        assert capsys.readouterr().out.startswith(f"usage: coldcopy {' '.join(path)}"), path


def test_the_installed_commands_start() -> None:
    """In a process of their own: ``python -m coldcopy`` (restore_command's default) and the script."""
    for argv in ([sys.executable, "-m", "coldcopy", "--version"], [_script(), "pitr", "--help"]):
        r = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
        assert r.returncode == 0 and r.stdout.startswith(("coldcopy ", "usage: coldcopy pitr")), r


def _script() -> str:
    return str(Path(sys.executable).parent / "coldcopy")


def test_this_is_the_interpreter_the_test_command_asked_for() -> None:
    """scripts/test.sh names the interpreter of its second run; pitr's restore_command is this venv's."""
    wanted = os.environ.get("COLDCOPY_TEST_PYTHON")
    if not wanted:
        pytest.skip("COLDCOPY_TEST_PYTHON is set by scripts/test.sh for its run under /usr/bin/python3")
    assert os.path.realpath(sys.executable) == os.path.realpath(wanted)
    assert sys.prefix != sys.base_prefix and Path(sys.executable).parent == Path(sys.prefix) / "bin"
