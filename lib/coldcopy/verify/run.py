"""`coldcopy verify`: prove a stored backup is whole and readable.

Levels: ``checksum`` (no database: every chunk authenticates, sizes and checksums match,
``pg_restore --list`` reads the dump); ``full`` (a timed test restore into a scratch database,
which authenticates every chunk on the way, then every table's row count against the manifest);
``restore`` (``full`` plus ``amcheck`` on the B-tree indexes and the VERIFY_SANITY_QUERIES).  The
test restores live in :mod:`coldcopy.verify.scratch_restore`.  Base backups: ``checksum`` checks the tar
against its backup_manifest (:func:`coldcopy.backup.base.verify_base`); ``full`` and ``restore``
run a restore drill, a point-in-time recovery to a random time (:mod:`coldcopy.verify.base_drill`).
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any

from coldcopy.backup.logical import BackupContext, _StderrTail, context
from coldcopy.backup.reader import BackupReader
from coldcopy.config import Settings, redact
from coldcopy.core.names import parse_name, validate_name
from coldcopy.errors import ColdCopyError, ConfigError
from coldcopy.postgres.client import Postgres
from coldcopy.stream.pipeline import Progress


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""


@dataclass
class VerifyResult:
    name: str
    level: str
    checks: list[Check] = field(default_factory=list)
    duration_seconds: float = 0.0
    measurement: dict[str, Any] | None = None  # test restores: time and throughput

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    def add(self, name: str, ok: bool, detail: str = "") -> bool:
        self.checks.append(Check(name, ok, detail))
        return ok

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "level": self.level,
            "ok": self.ok,
            "duration_seconds": self.duration_seconds,
            "checks": [c.__dict__ for c in self.checks],
            "measurement": self.measurement,
        }


def run_verify(
    settings: Settings, name: str, level: str = "checksum", progress: Progress | None = None
) -> VerifyResult:
    from coldcopy.verify.scratch_restore import LEVELS

    if level not in LEVELS:
        raise ConfigError([f"verification level must be one of {', '.join(LEVELS)} (got {level[:20]!r})"])
    t0 = time.monotonic()
    name = validate_name(name)
    if parse_name(name).kind == "base":  # a physical backup
        if level == "checksum":  # the tar and its backup_manifest
            from coldcopy.backup.base import verify_base

            return verify_base(settings, name)
        from coldcopy.verify.base_drill import run_base_drill  # a restore and a PITR to a random time

        return run_base_drill(settings, name, level)
    ctx = context(settings)
    result = VerifyResult(name, level)
    try:
        _verify(ctx, settings, name, result, progress)
    except ColdCopyError as exc:
        result.add("verification", False, exc.message)
    result.duration_seconds = round(time.monotonic() - t0, 3)
    _record(ctx, result)
    return result


def _verify(
    ctx: BackupContext, settings: Settings, name: str, result: VerifyResult, progress: Progress | None
) -> None:
    try:
        reader = BackupReader(ctx, name)
    except ColdCopyError as exc:
        result.add("manifest readable", False, exc.message)
        return
    result.add("manifest readable", True, f"{len(reader.manifest.tables)} tables recorded")
    try:
        reader.confirm()
    except ColdCopyError as exc:
        result.add("objects present and key confirmed", False, exc.message)
        return
    result.add("objects present and key confirmed", True)
    if result.level == "checksum":
        _checksum(reader, settings, result, progress)
    else:
        from coldcopy.verify.scratch_restore import run_test_restore

        run_test_restore(settings, reader, result, progress)
    if reader.manifest.globals:
        try:
            reader.read_small(reader.manifest.globals)
            result.add("roles (globals) authenticate", True)
        except ColdCopyError as exc:
            result.add("roles (globals) authenticate", False, exc.message)


def _checksum(
    reader: BackupReader, settings: Settings, result: VerifyResult, progress: Progress | None
) -> None:
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
        self._err = _StderrTail(self.proc.stderr)
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
    def __init__(self, stream: Any) -> None:
        import threading

        self.parts: list[bytes] = []
        self._t = threading.Thread(
            target=lambda: self.parts.extend(iter(lambda: stream.read(65536), b"")), daemon=True
        )
        self._t.start()

    def text(self) -> str:
        self._t.join(timeout=30)
        return b"".join(self.parts).decode(errors="replace")


def _record(ctx: BackupContext, result: VerifyResult) -> None:
    from datetime import UTC, datetime

    from coldcopy.core.manifest import iso
    from coldcopy.verify.scratch_restore import restore_proof

    try:
        now = datetime.now(UTC)
        payload = result.to_dict()
        prev = ctx.catalog.read().verifications.get(result.name)
        payload["restore_proof"] = restore_proof(payload, iso(now), prev)
        ctx.catalog.record("verification", result.name, payload, when=now)
        ctx.catalog.refresh()
    except ColdCopyError:
        pass
