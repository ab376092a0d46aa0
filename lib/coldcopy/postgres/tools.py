"""PostgreSQL's client programs: where they are, their version, and running them.

``PG_BIN_DIR`` wins; else the newest ``/usr/lib/postgresql/<major>/bin``; else ``PATH``.  A tool's
stderr is drained in a thread (``StderrTail``) so that it can never block the pipe it writes to,
and reported redacted.
"""

from __future__ import annotations

import ctypes
import glob
import re
import shutil
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from coldcopy.config import Settings, redact
from coldcopy.errors import ConfigError, DatabaseError
from coldcopy.postgres.tls import libpq_tls_hint


def major_of(version_num: int) -> int:
    """The major version of a ``server_version_num`` (150004 → 15, 90624 → 9)."""
    return version_num // 10000 if version_num >= 100000 else version_num // 100


@dataclass(frozen=True)
class ToolVersion:
    path: str
    major: int
    text: str


def tool_path(name: str, settings: Settings) -> str:
    """PG_BIN_DIR, else the newest /usr/lib/postgresql/<major>/bin, else PATH."""
    if settings.pg_bin_dir:
        candidate = Path(settings.pg_bin_dir) / name
        if not candidate.exists():
            raise ConfigError([f"PG_BIN_DIR has no {name} ({candidate})"])
        return str(candidate)
    found = sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
        key=lambda p: int(re.sub(r"\D", "", p.split("/")[4]) or 0),
    )
    if found:
        return found[-1]
    on_path = shutil.which(name)
    if not on_path:
        raise DatabaseError(
            f"{name} is not installed",
            "install the PostgreSQL client tools (postgresql-client) or set PG_BIN_DIR",
        )
    return on_path


def tool_version(name: str, settings: Settings) -> ToolVersion:
    path = tool_path(name, settings)
    out = subprocess.run([path, "--version"], capture_output=True, text=True, check=False).stdout.strip()
    m = re.search(r"(\d+)(?:\.(\d+))?", out)
    if not m:
        raise DatabaseError(f"cannot tell the version of {path}: {out[:100]!r}")
    return ToolVersion(path, int(m.group(1)), out)


def run_tool(
    args: list[str], env: dict[str, str], settings: Settings, what: str, input_bytes: bytes | None = None
) -> bytes:
    """Run a client tool to completion; on failure raise DatabaseError with its redacted stderr."""
    proc = subprocess.run(
        args, env=env, input=input_bytes, capture_output=True, check=False, preexec_fn=die_with_parent
    )
    if proc.returncode != 0:
        text = proc.stderr.decode(errors="replace")
        raise DatabaseError(
            f"{what} failed (exit {proc.returncode}): {redact(text, settings).strip()[-800:]}",
            libpq_tls_hint(text),
        )
    return proc.stdout


_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def die_with_parent() -> None:
    """``preexec_fn`` of a client program (pg_dump, pg_restore, psql …): the kernel kills it when
    the thread that started it dies, so a killed ColdCopy leaves no pg_restore writing on (Linux;
    start it from a thread that lives as long as the program)."""
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class StderrTail:
    """Drains a child's stderr in a thread (so it can never block) and keeps the last lines."""

    def __init__(self, stream: IO[bytes], keep: int = 40) -> None:
        self.lines: list[str] = []
        self.keep = keep
        self._thread = threading.Thread(target=self._drain, args=(stream,), daemon=True)
        self._thread.start()

    def _drain(self, stream: IO[bytes]) -> None:
        for line in stream:
            self.lines.append(line.decode(errors="replace").rstrip())
            del self.lines[: -self.keep]

    def text(self) -> str:
        self._thread.join(timeout=5)
        return "\n".join(self.lines)
