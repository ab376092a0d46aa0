"""The prefetch spool of ``wal-fetch``: segments fetched ahead, served without the network.

A miss fetches the requested segment and the next ``prefetch`` ones in parallel; the extra ones
land here (written to a temporary name, fsynced, renamed), and the following restore_command
calls take them with one rename.  Standard library only, so a hit costs no boto3 or crypto
import.  A file in the spool is the exact archived content of the file it is named after (it
was fetched by that name), so a wrong guess of "next" only costs a GET, never correctness.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path

from .wal import ARCHIVE_NAME_RE, DEFAULT_SEGMENT_SIZE, Segment, parse_segment

SPOOL_SUFFIX = ".coldcopy-walspool"


def default_spool(cwd: Path | None = None) -> Path | None:
    """``<data dir>.coldcopy-walspool`` next to the data folder restore_command runs in, if usable."""
    here = (cwd or Path.cwd()).absolute()
    if not (here / "PG_VERSION").exists():
        return None
    spool = here.parent / f"{here.name}{SPOOL_SUFFIX}"
    try:
        spool.mkdir(mode=0o700, exist_ok=True)
    except OSError:
        return None
    return spool if os.access(spool, os.W_OK) else None


def is_segment(name: str) -> bool:
    return len(name) == 24 and bool(ARCHIVE_NAME_RE.match(name))


def ahead(name: str, count: int, segment_size: int = DEFAULT_SEGMENT_SIZE) -> list[str]:
    """The ``count`` segment names after ``name`` on its timeline (none for other archive files)."""
    if not is_segment(name):
        return []
    seg = parse_segment(name, segment_size)
    return [Segment(seg.timeline, seg.segno + i).name(segment_size) for i in range(1, count + 1)]


def _write_atomic(folder: Path, name: str, data: bytes) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        final = folder / name
        os.replace(tmp, final)
        return final
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def put(spool: Path, name: str, data: bytes) -> None:
    if not ARCHIVE_NAME_RE.match(name):
        raise ValueError(f"{name!r} is not a WAL file name")
    _write_atomic(spool, name, data)


def has(spool: Path, name: str) -> bool:
    return bool(ARCHIVE_NAME_RE.match(name)) and (spool / name).is_file()


def take(spool: Path, name: str, dest: Path) -> bool:
    """Move ``spool/name`` to ``dest`` (atomically); False when the spool does not have it."""
    if not ARCHIVE_NAME_RE.match(name):
        return False
    src = spool / name
    dest = dest if dest.is_absolute() else Path.cwd() / dest
    try:
        os.replace(src, dest)
    except FileNotFoundError:
        return False
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=dest.parent)
        try:
            with os.fdopen(fd, "wb") as out, src.open("rb") as inp:
                shutil.copyfileobj(inp, out, 1 << 20)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        src.unlink()
    prune(spool, name)
    return True


def prune(spool: Path, name: str) -> None:
    """Drop spooled segments before ``name`` on its timeline: recovery has gone past them."""
    if not is_segment(name):
        return
    for p in spool.iterdir():
        stale = is_segment(p.name) and p.name[:8] == name[:8] and p.name < name
        if stale or p.name.endswith(".tmp"):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
