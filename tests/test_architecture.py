"""The floor plan's rules that import-linter does not check (docs/architecture.md, "Rules the tests keep").

Each rule is checked on the package's source with ``ast``; each also has a small example that
breaks it, so that a checker that silently finds nothing fails here too.
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from coldcopy.cli.main import handler_of
from coldcopy.cli.parser import build_parser

REPO = Path(__file__).resolve().parents[1]
LIB = REPO / "lib" / "coldcopy"
IMPORT_FREE = ("__init__.py", "core/__init__.py", "wal/__init__.py")
# Where reading the process environment is the point (not settings): the stdlib-only archive client,
# the wal-fetch spool's hand-over between its fast path and the CLI, and config itself.
ENV_READERS = ("config.py", "walclient.py", "wal/spool.py", "cli/walfetch.py")


def _modules() -> list[Path]:
    return sorted(LIB.rglob("*.py"))


def _ours(node: ast.Import | ast.ImportFrom) -> bool:
    if isinstance(node, ast.ImportFrom):
        return node.level > 0 or (node.module or "").split(".")[0] == "coldcopy"
    return any(a.name.split(".")[0] == "coldcopy" for a in node.names)


def late_imports(source: str) -> list[int]:
    """Lines of imports of coldcopy modules below the top level without a comment saying why (on
    the line, or on the line above the block of imports it starts)."""
    tree = ast.parse(source)
    lines = source.splitlines()
    top = {id(n) for n in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)) and _ours(node) and id(node) not in top:
            i = node.lineno - 1
            while i > 0 and lines[i - 1].strip().startswith(("from ", "import ")):
                i -= 1  # the first import of this block
            explained = "#" in lines[node.lineno - 1] or lines[i - 1].strip().startswith("#")
            if not explained:
                found.append(node.lineno)
    return found


def private_imports(source: str) -> list[str]:
    """``_private`` names imported from another coldcopy module."""
    tree = ast.parse(source)
    return [
        f"{node.module}.{a.name}"
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and _ours(node)
        for a in node.names
        if a.name.startswith("_") and not a.name.startswith("__")
    ]


def undocumented(source: str) -> list[str]:
    """Public functions and classes (and their public methods) without a docstring."""
    tree = ast.parse(source)
    out = []
    for node in tree.body:
        public = isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_")
        if public and ast.get_docstring(node) is None:
            out.append(node.name)
    return out


def test_the_checkers_find_what_they_look_for() -> None:
    bad = (
        "from coldcopy.x import y\n"
        "def f():\n"
        "    from coldcopy.core import z\n"
        "    # the web functions' cold start\n"
        "    from coldcopy.storage import s3\n"
        "    from coldcopy.storage import memory\n"
        "def h():\n"
        "    from coldcopy.a import _b\n"
        "def g():\n"
        '    """Documented."""\n'
    )
    assert late_imports(bad) == [3, 8]
    assert private_imports(bad) == ["coldcopy.a._b"]
    assert undocumented(bad) == ["f", "h"]


def test_coldcopy_imports_sit_at_the_top_unless_a_comment_says_why() -> None:
    found = {str(p.relative_to(LIB)): lines for p in _modules() if (lines := late_imports(p.read_text()))}
    assert found == {}, "move these imports to the top, or say beside them why they must be late"


def test_no_module_imports_another_modules_private_name() -> None:
    found = {str(p.relative_to(LIB)): names for p in _modules() if (names := private_imports(p.read_text()))}
    assert found == {}, "a helper two modules share belongs where both can see it, under a public name"


def test_every_public_function_of_the_core_has_a_docstring() -> None:
    found = {
        str(p.relative_to(LIB)): names
        for p in sorted((LIB / "core").glob("*.py"))
        if (names := undocumented(p.read_text()))
    }
    assert found == {}


def test_the_fast_paths_package_files_import_nothing() -> None:
    for rel in IMPORT_FREE:
        tree = ast.parse((LIB / rel).read_text())
        assert not [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))], rel


def test_nothing_but_config_reads_the_environment_for_settings() -> None:
    reading = re.compile(r"os\.environ\.get\(|os\.getenv\(|os\.environ\[[^\]]+\](?!\s*=)|\benvironment\(")
    found = []
    for p in _modules():
        rel = str(p.relative_to(LIB))
        if rel in ENV_READERS:
            continue
        for n, line in enumerate(p.read_text().splitlines(), 1):
            if reading.search(line):
                found.append(f"{rel}:{n}: {line.strip()}")
    assert found == [], "settings come from coldcopy.config.Settings"


def test_the_wal_fetch_fast_path_loads_only_the_standard_library() -> None:
    code = (
        "import sys; import coldcopy.wal.spool; "
        "print(sorted(m for m in sys.modules if m.startswith('coldcopy')))"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "lib")}
    out = subprocess.run(
        [sys.executable, "-S", "-c", code], capture_output=True, text=True, env=env, check=True
    )
    loaded = set(ast.literal_eval(out.stdout))
    assert loaded <= {"coldcopy", "coldcopy.wal", "coldcopy.wal.spool", "coldcopy.core", "coldcopy.core.lsn",
                      "coldcopy.errors"}, loaded  # fmt: skip


@pytest.mark.parametrize("tool", [["lint-imports"]])
def test_the_layer_contracts_hold(tool: list[str]) -> None:
    exe = Path(sys.executable).parent / tool[0]
    proc = subprocess.run([str(exe), *tool[1:]], capture_output=True, text=True, cwd=REPO, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:]


def test_every_command_names_a_handler_that_exists() -> None:
    """The parser names handlers as strings (imported when the command runs): a typo must fail here,
    not as an 'unexpected AttributeError' in front of a user."""
    handlers = []

    def walk(parser: argparse.ArgumentParser) -> None:
        default = parser.get_default("handler")
        if default is not None:
            handlers.append(default)
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    walk(sub)

    walk(build_parser())
    assert len(handlers) >= 29  # every command and action (walk found them)
    for name in handlers:
        assert callable(handler_of(argparse.Namespace(handler=name))), name
