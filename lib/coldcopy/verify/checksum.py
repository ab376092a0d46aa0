"""``verify --level checksum`` of a dump: every chunk authenticates, the sizes and checksums match
the manifest, and ``pg_restore --list`` reads the archive's table of contents.  No database."""

from __future__ import annotations

from coldcopy.backup.reader import BackupReader
from coldcopy.config import Settings
from coldcopy.core.verification import VerifyResult
from coldcopy.errors import ColdCopyError, StorageError
from coldcopy.postgres.client import Postgres
from coldcopy.restore.toc import TocReader
from coldcopy.stream.pipeline import Progress


def check_dump(
    reader: BackupReader, settings: Settings, result: VerifyResult, progress: Progress | None
) -> None:
    """Stream the dump through ``pg_restore --list``; adds the checks to ``result``."""
    toc = TocReader(Postgres(settings), settings)
    try:
        stats = reader.stream(reader.manifest.data, toc.write, progress)
    except ColdCopyError as exc:
        toc.abandon()
        result.add(
            "every chunk authenticates; sizes and checksums match",
            False,
            exc.message,
            storage=isinstance(exc, StorageError),
        )
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
