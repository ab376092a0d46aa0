"""`coldcopy basebackup`: a physical base backup streamed into Spaces, and its verification.

``pg_basebackup -Ft -X none -c fast -D -`` writes one tar to stdout (PostgreSQL injects its
``backup_manifest`` as the last member); it goes through the same pipeline as a dump into the
volumes ``backups/<name>/data.NNNNNN`` (kind ``base``).  WAL is not in the tar: the archive
(`wal-push`) holds it, and pg_basebackup waits until the backup's last segment is archived.

Where the WAL positions come from: the server itself writes them into the stream, so we read them
there while the bytes pass by (``TarWatcher``): ``backup_label`` (the first member) gives the start
LSN, its segment and the timeline; ``backup_manifest`` (the last member) gives the WAL range
(start and end LSN per timeline) under its own SHA-256 checksum.  Nothing is inferred from clocks
or from a second query that could race with other activity.  The server's clock is read right
before pg_basebackup starts and right after it ends, so ``stop_time`` is never earlier than the
real end of the backup (what point-in-time recovery needs to pick a backup for a time target).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import subprocess
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from coldcopy.backup.logical import Session, _StderrTail, commit, context, manifest_for, run_stream_backup
from coldcopy.backup.reader import BackupReader
from coldcopy.config import Settings, redact
from coldcopy.core.lsn import format_lsn, last_segment_needed, parse_lsn, segment_name_of
from coldcopy.core.manifest import Manifest, iso
from coldcopy.core.names import validate_name
from coldcopy.errors import ColdCopyError, DatabaseError, IntegrityError
from coldcopy.stream.pipeline import Packer, Progress, prefetch, read_chunks
from coldcopy.verify.run import VerifyResult, _record

log = logging.getLogger(__name__)
BLOCK = 512
CAPTURE = {"backup_label": 1 << 20, "backup_manifest": 256 << 20}
TAR_FORMAT = "tar (pg_basebackup -Ft -X none, backup_manifest injected), zstd-compressed"


# -- reading the tar as it streams by ------------------------------------------------------------
def _tar_number(field: bytes) -> int:
    if field and field[0] & 0x80:  # base-256, for members over 8 GB
        return int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    return int(text, 8) if text else 0


class TarWatcher:
    """Follows a tar stream header by header and keeps the few small members we want."""

    def __init__(self, wanted: dict[str, int] | None = None) -> None:
        self.wanted = CAPTURE if wanted is None else wanted
        self.members: dict[str, bytes] = {}
        self.count = 0
        self.ended = False
        self._buf = bytearray()
        self._skip = 0  # bytes of the current member's data (and padding) still to pass
        self._capture: tuple[str, int, bytearray] | None = None

    def feed(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            if self._skip:
                take = min(self._skip, len(view))
                if self._capture is not None:
                    name, size, buf = self._capture
                    buf += view[: max(0, min(take, size - len(buf)))]
                    if len(buf) >= size:
                        self.members[name] = bytes(buf)
                        self._capture = None
                self._skip -= take
                view = view[take:]
                continue
            if self.ended:
                return
            need = BLOCK - len(self._buf)
            self._buf += view[:need]
            view = view[need:]
            if len(self._buf) == BLOCK:
                self._header(bytes(self._buf))
                self._buf.clear()

    def _header(self, block: bytes) -> None:
        if block == bytes(BLOCK):
            self.ended = True
            return
        name = block[0:100].split(b"\0", 1)[0].decode(errors="replace")
        if block[257:262] == b"ustar" and block[345]:
            name = block[345:500].split(b"\0", 1)[0].decode(errors="replace") + "/" + name
        size = _tar_number(block[124:136])
        self.count += 1
        self._skip = (size + BLOCK - 1) // BLOCK * BLOCK
        limit = self.wanted.get(name.removeprefix("./"))
        if limit is not None and block[156:157] in (b"0", b"\0") and size <= limit:
            self._capture = (name.removeprefix("./"), size, bytearray())
            if size == 0:
                self.members[self._capture[0]] = b""
                self._capture = None


def parse_backup_label(text: str) -> dict[str, str]:
    """``START WAL LOCATION: 0/2000028 (file 000000010000000000000002)`` and friends."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(": ")
        if sep:
            out[key.strip()] = value.strip()
    m = re.match(r"([0-9A-Fa-f]+/[0-9A-Fa-f]+) \(file ([0-9A-F]{24})\)", out.get("START WAL LOCATION", ""))
    if not m:
        raise IntegrityError("the backup_label in the stream has no START WAL LOCATION")
    out["start_lsn"], out["start_wal_segment"] = m[1], m[2]
    return out


def check_backup_manifest(raw: bytes) -> dict[str, Any]:
    """Parse a backup_manifest and check its own SHA-256 (over everything before the checksum line)."""
    cut = raw.rfind(b'"Manifest-Checksum"')
    try:
        doc: dict[str, Any] = json.loads(raw)
    except ValueError:
        raise IntegrityError("the backup_manifest in the stream is not JSON") from None
    if cut < 0 or hashlib.sha256(raw[:cut]).hexdigest() != doc.get("Manifest-Checksum"):
        raise IntegrityError(
            "the backup_manifest's own checksum does not match", "the base backup cannot be trusted"
        )
    return doc


# -- taking a base backup -------------------------------------------------------------------------
def run_basebackup(
    settings: Settings,
    progress: Progress | None = None,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> Manifest:
    """A physical base backup (pg_basebackup, tar with its backup_manifest) for point-in-time recovery."""

    def body(ses: Session) -> Manifest:
        return _stream(ses, _server_facts(ses.conn), progress, now)

    return run_stream_backup(settings, "base", "pg_basebackup", body, now)


def _server_facts(conn: Any) -> dict[str, Any]:
    rows = conn.run(
        "SELECT (SELECT system_identifier FROM pg_control_system())::text,"
        " (SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'),"
        " current_setting('archive_mode'), pg_is_in_recovery()"
    )
    sysid, seg_size, archive_mode, in_recovery = rows[0]
    if archive_mode == "off":
        raise DatabaseError(
            "archive_mode is off on the server, so the WAL a base backup needs is not archived",
            "set archive_mode = on and archive_command = 'python -m coldcopy wal-push %p' "
            "(see docs), restart the server, then run the base backup again",
        )
    return {
        "system_identifier": str(sysid),
        "wal_segment_size": int(seg_size),
        "in_recovery": bool(in_recovery),
    }


def _server_clock(conn: Any) -> datetime:
    when: datetime = conn.run("SELECT clock_timestamp()")[0][0]
    return when.astimezone(UTC)


def _stream(
    ses: Session, facts: dict[str, Any], progress: Progress | None, now: Callable[[], datetime]
) -> Manifest:
    ctx, pg, conn, name = ses.ctx, ses.pg, ses.conn, ses.name
    s = ctx.settings
    t0 = time.monotonic()
    args = [
        pg.tool("pg_basebackup").path,
        "--format=tar",
        "--wal-method=none",
        "--checkpoint=fast",
        "--pgdata=-",
        "--manifest-checksums=SHA256",
        f"--label={name}",
        "--no-password",
    ]
    writer = ses.data_writer()
    watcher = TarWatcher()
    start_time = _server_clock(conn)
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=pg.libpq_env())
    assert proc.stdout is not None and proc.stderr is not None
    errors = _StderrTail(proc.stderr)
    try:
        packer = Packer(writer, ctx.key, s.zstd_level)
        for chunk in prefetch(read_chunks(proc.stdout)):
            watcher.feed(chunk)
            packer.write(chunk)
            if progress:
                progress(packer.raw_size, packer.stored_size)
        stats = packer.close()
        rc = proc.wait()
        if rc != 0:
            raise DatabaseError(
                f"pg_basebackup failed (exit {rc}): {redact(errors.text(), s)[-800:]}",
                "nothing was stored; a base backup needs a user with the REPLICATION attribute, a "
                "replication line in pg_hba.conf, a free WAL sender and a working archive_command",
            )
        positions = _positions(watcher, facts["wal_segment_size"])
        stop_time = _server_clock(conn)
        volumes = writer.complete()
    except BaseException:
        proc.kill()
        proc.wait()
        writer.abort()
        raise
    manifest = manifest_for(
        ses,
        kind="base",
        finished=now(),
        duration=time.monotonic() - t0,
        stats=stats,
        volumes=volumes,
        row_counts="none",
        extra={
            "format": TAR_FORMAT,
            **positions,
            "start_time": iso(start_time),
            "stop_time": iso(stop_time),
            "system_identifier": facts["system_identifier"],
            "wal_segment_size": facts["wal_segment_size"],
            "from_standby": facts["in_recovery"],
            "tar_members": watcher.count,
        },
    )
    commit(ctx, manifest)  # the commit point
    return manifest


def _positions(watcher: TarWatcher, seg_size: int) -> dict[str, Any]:
    if not watcher.ended or "backup_label" not in watcher.members or "backup_manifest" not in watcher.members:
        raise IntegrityError(
            "the base backup stream lacks its backup_label or backup_manifest (or ends early)",
            "nothing was stored; check that pg_basebackup runs without --no-manifest",
        )
    label = parse_backup_label(watcher.members["backup_label"].decode(errors="replace"))
    doc = check_backup_manifest(watcher.members["backup_manifest"])
    ranges = doc.get("WAL-Ranges") or []
    if not ranges:
        raise IntegrityError("the backup_manifest has no WAL-Ranges")
    timeline = int(ranges[-1]["Timeline"])
    start_lsn, stop_lsn = parse_lsn(ranges[0]["Start-LSN"]), parse_lsn(ranges[-1]["End-LSN"])
    if start_lsn != parse_lsn(label["start_lsn"]):
        raise IntegrityError("backup_label and backup_manifest disagree on the start LSN")
    return {
        "start_lsn": format_lsn(start_lsn),
        "stop_lsn": format_lsn(stop_lsn),
        "timeline": timeline,
        "start_timeline": int(label.get("START TIMELINE", ranges[0]["Timeline"])),
        "start_wal_segment": label["start_wal_segment"],
        "stop_wal_segment": last_segment_needed(stop_lsn, timeline, seg_size).name(seg_size)
        if stop_lsn > start_lsn
        else segment_name_of(stop_lsn, timeline, seg_size),
        "backup_label_start_time": label.get("START TIME", ""),
        "manifest_files": len(doc.get("Files") or []),
    }


# -- reading a base backup back ------------------------------------------------------------------
@contextlib.contextmanager
def open_tar(reader: BackupReader) -> Iterator[tarfile.TarFile]:
    """The backup's tar in stream mode (``r|``), decrypted and checked while it is read.

    The checked stream (``reader.stream``) runs in a thread into a pipe; an integrity error there
    surfaces when the tar is closed, even if the tar itself looked complete.
    """
    rfd, wfd = os.pipe()
    failure: list[BaseException] = []

    def pump() -> None:
        try:
            with open(wfd, "wb", buffering=0) as out:
                reader.stream(reader.manifest.data, out.write)
        except BaseException as exc:  # handed to the reader side
            failure.append(exc)

    thread = threading.Thread(target=pump, name="tar-stream", daemon=True)
    thread.start()
    src = open(rfd, "rb")  # noqa: SIM115 - closed in every path below, before the thread is joined
    try:
        with tarfile.open(fileobj=src, mode="r|") as tar:
            yield tar
        while src.read(1 << 20):  # the tail after the end-of-archive blocks is checked too
            pass
    except BaseException as exc:
        src.close()
        thread.join(timeout=60)
        if failure and not isinstance(failure[0], BrokenPipeError):
            raise failure[0] from None  # the stream's own error explains a tar that ends early
        if isinstance(exc, tarfile.TarError):
            raise IntegrityError(
                f"the base backup's tar cannot be read: {exc}", "the backup cannot be used; use another one"
            ) from None
        raise
    src.close()
    thread.join(timeout=60)
    if failure and not isinstance(failure[0], BrokenPipeError):
        raise failure[0]


def verify_base(settings: Settings, name: str) -> VerifyResult:
    """Chunks authenticate, checksums match, the tar reads, and every file matches backup_manifest."""
    t0 = time.monotonic()
    ctx = context(settings)
    result = VerifyResult(validate_name(name), "checksum")
    try:
        reader = BackupReader(ctx, name)
        if reader.manifest.kind != "base":
            raise IntegrityError(f"{name} is not a base backup", "use `coldcopy verify` for dumps")
        reader.confirm()
        result.add("objects present and key confirmed", True)
        sums: dict[str, tuple[int, str]] = {}
        captured: dict[str, bytes] = {}
        with open_tar(reader) as tar:
            for member in tar:
                f = tar.extractfile(member) if member.isfile() else None
                if f is None:
                    continue
                h = hashlib.sha256()
                keep = member.name in CAPTURE
                buf = bytearray()
                while block := f.read(1 << 20):
                    h.update(block)
                    if keep:
                        buf += block
                sums[member.name] = (member.size, h.hexdigest())
                if keep:
                    captured[member.name] = bytes(buf)
        result.add("every chunk authenticates; sizes and checksums match", True)
        result.add("the tar reads", True, f"{len(sums)} files")
        _check_files(result, captured, sums)
    except ColdCopyError as exc:
        result.add("verification", False, exc.message)
    except tarfile.TarError as exc:
        result.add("the tar reads", False, str(exc))
    result.duration_seconds = round(time.monotonic() - t0, 3)
    _record(ctx, result)
    return result


def _check_files(result: VerifyResult, captured: dict[str, bytes], sums: dict[str, tuple[int, str]]) -> None:
    if "backup_label" not in captured or "backup_manifest" not in captured:
        result.add("backup_label and backup_manifest present", False)
        return
    doc = check_backup_manifest(captured["backup_manifest"])
    bad: list[str] = []
    for entry in doc.get("Files") or []:
        path = entry.get("Path", "")
        got = sums.get(path)
        sha_ok = entry.get("Checksum-Algorithm") != "SHA256" or (
            got is not None and entry.get("Checksum") == got[1]
        )
        if got is None or got[0] != int(entry.get("Size", -1)) or not sha_ok:
            bad.append(path)
    detail = f"{len(doc.get('Files') or [])} files checked" + (
        f"; mismatched: {', '.join(bad[:5])}" if bad else ""
    )
    result.add("every file matches backup_manifest (size and SHA-256)", not bad, detail)
