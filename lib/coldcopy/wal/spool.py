"""The prefetch spool of ``wal-fetch``: segments fetched ahead, served without the network.

A miss fetches the requested segment and the next ``prefetch`` ones in parallel; the extra ones
land here (written to a temporary name, fsynced, renamed), and the following restore_command
calls take them with one rename.  ``pitr --start`` also keeps the spool filled from a thread of
its own (:mod:`coldcopy.wal.feeder`), history files included.  Standard library only, so a hit
costs no boto3 or crypto import: ``python -m coldcopy wal-fetch`` serves a hit through
:func:`fast_fetch` before the CLI is imported.  A file in the spool is the exact archived content
of the file it is named after (it was fetched by that name), so a wrong guess of "next" only
costs a GET, never correctness.  ``<name>.absent`` records that the feeder found a history file
absent from the archive: recovery probes for the next timeline's history at its start and end.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from coldcopy.core.lsn import ARCHIVE_NAME_RE, DEFAULT_SEGMENT_SIZE, Segment, parse_segment

SPOOL_SUFFIX = ".coldcopy-walspool"
ABSENT_SUFFIX = ".absent"
TRIED_ENV = "COLDCOPY_SPOOL_TRIED"  # set by the fast path before it hands a miss to the CLI
MANAGED = ".pitr-managed"  # in a spool `pitr` made and removes after promotion: takes may hard-link
FEEDING_WAIT = 30.0  # seconds a restore_command waits for a file the feeder is fetching


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


def write_atomic(folder: Path, name: str, data: bytes, owner: tuple[int, int] | None = None) -> Path:
    """Write ``folder/name`` whole or not at all: 0600, owned by ``owner`` (uid, gid) when given."""
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            if owner is not None and owner != (os.geteuid(), os.getegid()):
                os.fchown(f.fileno(), *owner)  # before the rename: PostgreSQL never sees a root-owned file
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        final = folder / name
        os.replace(tmp, final)
        return final
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def put(spool: Path, name: str, data: bytes, owner: tuple[int, int] | None = None) -> None:
    if not ARCHIVE_NAME_RE.match(name):
        raise ValueError(f"{name!r} is not a WAL file name")
    write_atomic(spool, name, data, owner)


def put_absent(spool: Path, name: str, owner: tuple[int, int] | None = None) -> None:
    """Record that history file ``name`` is not archived (only history files: a probe, not a gap)."""
    if not name.endswith(".history") or not ARCHIVE_NAME_RE.match(name):
        raise ValueError(f"{name!r} is not a history file name")
    write_atomic(spool, name + ABSENT_SUFFIX, b"", owner)


def has(spool: Path, name: str) -> bool:
    return bool(ARCHIVE_NAME_RE.match(name)) and (spool / name).is_file()


def segments_in(spool: Path) -> int:
    return sum(1 for p in spool.iterdir() if is_segment(p.name))


def feeding_marker(spool: Path, name: str) -> Path:
    """Present while the feeder fetches ``name``; it holds the feeder's pid."""
    return spool / f".{name}.feeding"


def mark_feeding(spool: Path, name: str, owner: tuple[int, int] | None = None) -> None:
    write_atomic(spool, feeding_marker(spool, name).name, str(os.getpid()).encode(), owner)


def _being_fed(marker: Path) -> bool:
    try:
        pid = int(marker.read_text())
        os.kill(pid, 0)
    except PermissionError:
        return True  # alive, another user's (pitr as root, restore_command as postgres)
    except (OSError, ValueError):
        return False
    return True


def serve_file(spool: Path, name: str, dest: Path, *, wait: bool = True) -> int | None:
    """restore_command from the spool: 0 served, 1 known not archived, None: ask the archive.

    A segment the feeder is fetching right now is waited for (a GET away) rather than fetched a
    second time by a cold process; ``wait=False`` when an earlier try of this call already waited.
    """
    if not ARCHIVE_NAME_RE.match(name):
        return None
    if is_segment(name):
        marker = feeding_marker(spool, name)
        deadline = time.monotonic() + (FEEDING_WAIT if wait else 0)
        while not (found := take(spool, name, dest)) and time.monotonic() < deadline:
            if not _being_fed(marker):
                found = take(spool, name, dest)  # the feeder may have put it just before
                break
            time.sleep(0.005)
        return 0 if found else None
    # History files are asked for more than once (at the start and the end of recovery): copied.
    if (spool / (name + ABSENT_SUFFIX)).exists():
        return 1
    try:
        data = (spool / name).read_bytes()
    except FileNotFoundError:
        return None
    dest = dest if dest.is_absolute() else Path.cwd() / dest
    write_atomic(dest.parent, dest.name, data)
    return 0


def take(spool: Path, name: str, dest: Path) -> bool:
    """Put ``spool/name`` at ``dest`` (atomically); False when the spool does not have it.

    In a spool ``pitr`` manages (``MANAGED``), a hard link, so the spool keeps the segment until a
    later one is taken: at the end of recovery PostgreSQL asks again for the segment it stopped in.
    That is safe there: the copy recovers from the archive alone (nothing streams into recycled
    segments before promotion) and the spool is removed once the server is promoted.  Anywhere
    else (a standby's restore_command) a move, so the spool never shares a file PostgreSQL may
    recycle.  Across file systems, a copy.
    """
    if not ARCHIVE_NAME_RE.match(name):
        return False
    src = spool / name
    dest = dest if dest.is_absolute() else Path.cwd() / dest
    try:
        if (spool / MANAGED).exists():
            _link_over(src, dest)
        else:  # not pitr's: a standby may later recycle and overwrite the file in place; move it
            os.replace(src, dest)
    except FileNotFoundError:
        return False
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM):
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
    prune(spool, name)
    return True


def _link_over(src: Path, dest: Path) -> None:
    tmp = dest.parent / f".{dest.name}.{os.getpid()}.link.tmp"
    tmp.unlink(missing_ok=True)
    os.link(src, tmp)
    try:
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def wal_fetch_args(argv: list[str]) -> tuple[str, str, int, str | None] | None:
    """``wal-fetch``'s own arguments (name, dest, prefetch, spool) in the forms restore_command uses.

    None for anything else (another option, a help request): the full CLI then parses them.
    """
    pos: list[str] = []
    opts: dict[str, str] = {}
    it = iter(argv)
    for arg in it:
        key, eq, value = arg.partition("=")
        if key in ("--spool", "--prefetch"):
            opts[key] = value if eq else next(it, "")
        elif arg.startswith("-") and arg != "-":
            return None
        else:
            pos.append(arg)
    prefetch = opts.get("--prefetch", "4")
    if len(pos) != 2 or not prefetch.isdigit() or opts.get("--spool") == "":
        return None
    return pos[0], pos[1], int(prefetch), opts.get("--spool")


def fast_fetch(argv: list[str]) -> int | None:
    """``wal-fetch`` served from the spool before anything heavy is imported; None: not served here.

    The same spool rules as the CLI's ``wal-fetch`` (which calls :func:`serve_file` too): no spool
    without prefetch, ``--spool`` or the default next to the data folder.
    """
    args = wal_fetch_args(argv)
    if args is None or args[2] <= 0:
        return None
    name, dest, _, folder = args
    spool = Path(folder) if folder else default_spool()
    if spool is None:
        return None
    try:
        return serve_file(spool, name, Path(dest))
    except OSError:
        return None  # the CLI tries again and reports it
    finally:
        os.environ[TRIED_ENV] = "1"  # the CLI after a miss: the feeder was waited for already


def prune(spool: Path, name: str) -> None:
    """Drop spooled segments before ``name`` but the one just before it: recovery has gone past them.

    Names sort by timeline first: once recovery reads a newer timeline it never asks for an older
    one's segments again.  The segment before is kept: read-ahead may ask for ``name`` while
    recovery ends in the one before, which the end of recovery then asks for again.
    """
    if not is_segment(name):
        return
    try:
        entries = list(spool.iterdir())
        # The one just before is the largest name below: no segment-size arithmetic (clusters made
        # with --wal-segsize name their segments differently).
        before = max((p.name for p in entries if is_segment(p.name) and p.name < name), default="")
        for p in entries:
            stale = is_segment(p.name) and p.name < name and p.name != before
            if stale or (p.name.endswith(".tmp") and _abandoned(p)):
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
    except OSError as exc:  # housekeeping: the file asked for is already in place
        print(f"wal-fetch: could not prune the spool {spool}: {exc}", file=sys.stderr)


def _abandoned(tmp: Path) -> bool:
    """A temporary file left by a wal-fetch that died; a fresh one may be the feeder's write in flight."""
    try:
        return time.time() - tmp.stat().st_mtime > 60
    except FileNotFoundError:
        return False
