"""The README's first command: `coldcopy demo` runs the whole thing on the local stack."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def test_demo_runs_end_to_end() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DB_", "DO_", "BACKUP_", "COLDCOPY_"))}
    proc = subprocess.run(
        [sys.executable, "-m", "coldcopy", "demo", "--scale", "0.01", "--json"],
        env={**env, "COLDCOPY_ENV_FILE": os.devnull},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert report["ok"] is True
    steps = {s["step"]: s for s in report["steps"]}
    assert any(k.startswith("coldcopy backup") for k in steps)
    compared = next(s for k, s in steps.items() if k.startswith("comparing"))
    assert compared["differences"] == []
    assert next(s for k, s in steps.items() if k == "coldcopy verify")["ok"] is True
