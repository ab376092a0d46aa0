"""``verify --level checksum`` of a dump: every chunk authenticates, the sizes and checksums match
the manifest, and ``pg_restore --list`` reads the archive's table of contents.  No database."""

from __future__ import annotations

import contextlib
import subprocess
import threading
from typing import IO

from coldcopy.backup.reader import BackupReader
from coldcopy.config import Settings, redact
from coldcopy.core.verification import VerifyResult
from coldcopy.errors import ColdCopyError
from coldcopy.postgres.client import Postgres
from coldcopy.postgres.tools import StderrTail
from coldcopy.stream.pipeline import Progress


def check_dump(
    reader: BackupReader, settings: Settings, result: VerifyResult, progress: Progress | None
) -> None:
    """Stream the dump through ``pg_restore --list``; adds the checks to ``result``."""
    toc = _TocReader(Postgres(settings), settings)
    try:
        stats = reader.stream(reader.manifest.data, toc.write, progress)
    except ColdCopyError as exc:
        toc.abandon()
        result.add("every chunk authenticates; sizes and checksums match", False, exc.message)
        return
    result.add(
        "every chunk authenticates; sizes and checksums match",
        True,
        f"{stats.stored_size} bytes stored, {stats.raw_size} bytes of dump, sha256 {stats.raw_sha256[:16]}…",
    )
    listing, error = toc.finish()
    if error:
        result.add("pg_restore --list reads the dump", False, error)
    else:
        data_tables = {
            line.split(" TABLE DATA ", 1)[1].rsplit(" ", 1)[0].replace(" ", ".", 1)
            for line in listing.splitlines()
            if " TABLE DATA " in line and not line.startswith(";")
        }
        missing = [t for t in reader.manifest.tables if t not in data_tables]
        entries = sum(1 for line in listing.splitlines() if line and not line.startswith(";"))
        result.add(
            "pg_restore --list reads the dump",
            not missing,
            f"{entries} archive entries" + (f"; tables missing: {', '.join(missing[:5])}" if missing else ""),
        )


class _TocReader:
    """Feeds the decrypted dump to ``pg_restore --list``; once it has read the TOC and exits, the rest
    of the stream is still read (and checked) but discarded."""

    def __init__(self, pg: Postgres, settings: Settings) -> None:
        self.settings = settings
        self.proc = subprocess.Popen(
            [pg.tool("pg_restore").path, "--list"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._out = _Collect(self.proc.stdout)
        self._err = StderrTail(self.proc.stderr)
        self._open = True

    def write(self, data: bytes) -> None:
        if not self._open:
            return
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(data)
        except (BrokenPipeError, OSError):
            self._open = False

    def finish(self) -> tuple[str, str]:
        if self._open and self.proc.stdin:
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


class _Collect:
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
