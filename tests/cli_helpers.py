"""Running the real `coldcopy` command line from tests, in-process or as a subprocess."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from coldcopy.cli.main import main
from coldcopy.config import Settings
from coldcopy.core.times import Clock
from coldcopy.functions import web
from coldcopy.ops.queue import get_run
from coldcopy.storage.store import ObjectStore


@dataclass
class Result:
    rc: int
    out: str
    err: str


def run_cli(env: dict[str, str], *args: str) -> Result:
    """In-process (fast): the environment is exactly ``env`` while the command runs."""
    saved = dict(os.environ)
    out, err = io.StringIO(), io.StringIO()
    try:
        os.environ.clear()
        os.environ.update(env)
        os.environ.setdefault("COLDCOPY_ENV_FILE", os.devnull)
        with redirect_stdout(out), redirect_stderr(err):
            try:
                rc = main(list(args))
            except SystemExit as exc:  # argparse
                rc = int(exc.code or 0)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return Result(rc, out.getvalue(), err.getvalue())


def spawn_cli(env: dict[str, str], *args: str, **kw: object) -> subprocess.Popen[str]:
    full = {**env, "COLDCOPY_ENV_FILE": os.devnull}
    return subprocess.Popen(
        [sys.executable, "-m", "coldcopy", *args],
        env=full,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **kw,
    )  # type: ignore[call-overload]


def killed_at_point(
    env: dict[str, str],
    point: str,
    fifo_dir: Path,
    *args: str,
    while_paused: Callable[[], None] | None = None,
) -> int:
    """Run ``coldcopy *args`` until it reaches the pause point ``point``; SIGKILL it there (a FIFO
    wakes the caller exactly at the point; ``while_paused`` runs first, the process held there).
    Returns its pid; fails the test if it ends first."""
    fifo = fifo_dir / f"{point.replace(':', '-')}.fifo"
    os.mkfifo(fifo)
    proc = spawn_cli({**env, "COLDCOPY_PAUSE_AT": f"{point}@{fifo}"}, *args)

    def unblock_if_it_ends() -> None:  # a run that never reaches the point must not hang the test
        proc.wait()
        with contextlib.suppress(OSError):
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))

    threading.Thread(target=unblock_if_it_ends, daemon=True).start()
    with fifo.open() as f:  # returns when the process opens it: it is at the point
        text = f.read().strip()
    if not text:
        pytest.fail(f"`coldcopy {args[0]}` ended before {point}: {proc.communicate()[1][-2000:]}")
    try:
        if while_paused is not None:
            while_paused()
    finally:
        os.kill(int(text), signal.SIGKILL)
        proc.wait()
    return int(text)


def stored_run(storage: ObjectStore, run_id: str) -> dict[str, Any] | None:
    """A run record as ``coldcopy runs --json`` and ``GET /runs/<id>`` show it (None if absent)."""
    run = get_run(storage, run_id)
    return run.to_dict() if run is not None else None


def web_call(settings: Settings, function: str, token: str, clock: Clock) -> dict[str, Any]:
    """GET a monitor function the way the platform calls it, with these settings and this clock;
    its 200 answer (``statusCode``, ``headers``, ``body``)."""
    web.use_settings(settings, clock=clock)
    try:
        headers = {"authorization": f"Bearer {token}"}
        r = web.handle(function, {"http": {"method": "GET", "path": "", "headers": headers}})
    finally:
        web.use_settings(None)
    assert r["statusCode"] == 200, r
    return r


def web_get(settings: Settings, function: str, token: str, clock: Clock) -> dict[str, Any]:
    """The JSON body of ``web_call``'s answer."""
    body: dict[str, Any] = json.loads(web_call(settings, function, token, clock)["body"])
    return body


def spawn_serve(env: dict[str, str], port: int, log: Path, cwd: Path) -> subprocess.Popen[bytes]:
    """A real `coldcopy serve` process on ``port``, its output in ``log``."""
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "coldcopy", "serve", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
        )
