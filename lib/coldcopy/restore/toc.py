"""The table of contents of a stored dump, read by ``pg_restore --list`` from the decrypted stream."""

from __future__ import annotations

import contextlib
import subprocess
import threading
from typing import IO

from coldcopy.backup.reader import BackupReader
from coldcopy.config import Settings, redact
from coldcopy.errors import DatabaseError
from coldcopy.postgres.client import Postgres
from coldcopy.postgres.tools import StderrTail, die_with_parent


class _Enough(Exception):
    """pg_restore --list has what it needs: stop reading the stream."""


def read_toc(reader: BackupReader, pg: Postgres, settings: Settings) -> str:
    """``pg_restore --list`` of the backup's dump; reads only as much of the stream as it needs
    (the table of contents is at its start)."""
    toc = TocReader(pg, settings)

    def write(data: bytes) -> None:
        toc.write(data)
        if not toc.reading:
            raise _Enough

    try:
        reader.stream(reader.manifest.data, write)
    except _Enough:
        pass
    except BaseException:
        toc.abandon()
        raise
    listing, error = toc.finish()
    if error:
        raise DatabaseError(error, "the dump's table of contents cannot be read; run coldcopy verify on it")
    return listing


class TocReader:
    """Feeds the decrypted dump to ``pg_restore --list``; once it has read the TOC and exits, the rest
    of the stream is still read (and checked) but discarded."""

    def __init__(self, pg: Postgres, settings: Settings) -> None:
        self.settings = settings
        self.proc = subprocess.Popen(
            [pg.tool("pg_restore").path, "--list"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            preexec_fn=die_with_parent,
        )
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._out = Collect(self.proc.stdout)
        self._err = StderrTail(self.proc.stderr)
        self.reading = True  # until pg_restore stops reading its input

    def write(self, data: bytes) -> None:
        if not self.reading:
            return
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(data)
        except (BrokenPipeError, OSError):
            self.reading = False

    def finish(self) -> tuple[str, str]:
        if self.reading and self.proc.stdin:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        rc = self.proc.wait()
        if rc != 0:
            return (
                "",
                f"pg_restore --list failed (exit {rc}): {redact(self._err.text(), self.settings)[-500:]}",
            )
        return self._out.text(), ""

    def abandon(self) -> None:
        self.proc.kill()
        self.proc.wait()


class Collect:
    """Reads a child's stdout to the end in a thread."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.parts: list[bytes] = []
        self._t = threading.Thread(
            target=lambda: self.parts.extend(iter(lambda: stream.read(65536), b"")), daemon=True
        )
        self._t.start()

    def text(self) -> str:
        self._t.join(timeout=30)
        return b"".join(self.parts).decode(errors="replace")
