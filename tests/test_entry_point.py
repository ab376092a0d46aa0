"""The `coldcopy` command's own entry point (``coldcopy.__main__``): the garbage collector's
tuning for one-shot commands, in a real interpreter of its own."""

from __future__ import annotations

import json
import subprocess
import sys

from coldcopy.__main__ import GC_THRESHOLD

PROBE = """
import gc, json, sys
before = gc.get_threshold()[0]
sys.argv = ["coldcopy", *json.loads(sys.argv[1])]
from coldcopy.__main__ import main
try:
    main()
except SystemExit:
    pass
print(json.dumps([before, gc.get_threshold()[0], gc.get_freeze_count()]))
"""


def entry(*args: str) -> tuple[int, int, int]:
    """(the threshold before, after the command, the objects frozen at its end)."""
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(list(args))], capture_output=True, text=True, check=True
    )
    before, after, frozen = json.loads(proc.stdout.strip().splitlines()[-1])
    return before, after, frozen


def test_one_shot_commands_collect_less_often_and_skip_the_exits_collection() -> None:
    before, after, frozen = entry("--debug", "list-backups", "--help")
    assert before != GC_THRESHOLD and after == GC_THRESHOLD
    assert frozen > 1000  # the heap was frozen: the interpreter's last collection skips it


def test_the_web_server_keeps_the_default_collector() -> None:
    before, after, _ = entry("serve", "--help")
    assert after == before != GC_THRESHOLD
