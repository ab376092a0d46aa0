"""`coldcopy verify`: prove a stored backup is whole and readable.

Levels: ``checksum`` (no database: every chunk authenticates, sizes and checksums match,
``pg_restore --list`` reads the dump); ``full`` (a timed test restore into a scratch database,
which authenticates every chunk on the way, then every table's row count against the manifest);
``restore`` (``full`` plus ``amcheck`` on the B-tree indexes and the VERIFY_SANITY_QUERIES).  The
test restores live in :mod:`coldcopy.verify.scratch_restore`.  Base backups: ``checksum`` checks the tar
against its backup_manifest (:mod:`coldcopy.verify.base_checksum`); ``full`` and ``restore``
run a restore drill, a point-in-time recovery to a random time (:mod:`coldcopy.verify.base_drill`).
"""

from __future__ import annotations

import time

from coldcopy.backup.reader import BackupReader
from coldcopy.config import Settings
from coldcopy.context import Context, open_context
from coldcopy.core.names import parse_name, validate_name
from coldcopy.core.verification import LEVELS, VerifyResult
from coldcopy.errors import ColdCopyError, ConfigError, StorageError
from coldcopy.stream.pipeline import Progress
from coldcopy.verify.base_checksum import verify_base
from coldcopy.verify.base_drill import run_base_drill
from coldcopy.verify.checksum import check_dump
from coldcopy.verify.record import record_result
from coldcopy.verify.scratch_restore import run_test_restore


def run_verify(
    settings: Settings,
    name: str,
    level: str = "checksum",
    progress: Progress | None = None,
    *,
    ctx: Context | None = None,
) -> VerifyResult:
    """Verify backup ``name`` at ``level`` and record the result in the catalog (of ``ctx``, when
    the caller has a context already: a job runner)."""
    if level not in LEVELS:
        raise ConfigError([f"verification level must be one of {', '.join(LEVELS)} (got {level[:20]!r})"])
    t0 = time.monotonic()
    name = validate_name(name)
    if parse_name(name).kind == "base":  # a physical backup
        if level == "checksum":  # the tar and its backup_manifest
            return verify_base(settings, name, ctx=ctx)
        return run_base_drill(settings, name, level, ctx=ctx)  # a restore and a PITR to a random time
    ctx = ctx or open_context(settings)
    result = VerifyResult(name, level)
    try:
        _verify(ctx, settings, name, result, progress)
    except ColdCopyError as exc:
        result.add("verification", False, exc.message, storage=isinstance(exc, StorageError))
    result.duration_seconds = round(time.monotonic() - t0, 3)
    record_result(ctx, result)
    return result


def _verify(
    ctx: Context, settings: Settings, name: str, result: VerifyResult, progress: Progress | None
) -> None:
    try:
        reader = BackupReader(ctx, name)
    except ColdCopyError as exc:
        result.add("manifest readable", False, exc.message, storage=isinstance(exc, StorageError))
        return
    result.add("manifest readable", True, f"{len(reader.manifest.tables)} tables recorded")
    try:
        reader.confirm()
    except ColdCopyError as exc:
        result.add(
            "objects present and key confirmed", False, exc.message, storage=isinstance(exc, StorageError)
        )
        return
    result.add("objects present and key confirmed", True)
    if result.level == "checksum":
        check_dump(reader, settings, result, progress)
    else:
        run_test_restore(settings, reader, result, progress)
    if reader.manifest.globals:
        try:
            reader.read_small(reader.manifest.globals)
            result.add("roles (globals) authenticate", True)
        except ColdCopyError as exc:
            result.add(
                "roles (globals) authenticate", False, exc.message, storage=isinstance(exc, StorageError)
            )
