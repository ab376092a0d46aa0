"""``verify --level checksum`` of a base backup: every chunk authenticates, the tar reads, and every
file matches the backup_manifest PostgreSQL wrote into it (size and SHA-256)."""

from __future__ import annotations

import hashlib
import tarfile
import time

from coldcopy.backup.reader import BackupReader, open_tar
from coldcopy.config import Settings
from coldcopy.context import Context, open_context
from coldcopy.core.names import validate_name
from coldcopy.core.pg_basebackup import CAPTURE, check_backup_manifest
from coldcopy.core.verification import VerifyResult
from coldcopy.errors import ColdCopyError, IntegrityError, StorageError
from coldcopy.verify.record import record_result


def verify_base(settings: Settings, name: str, *, ctx: Context | None = None) -> VerifyResult:
    """Chunks authenticate, checksums match, the tar reads, and every file matches backup_manifest."""
    t0 = time.monotonic()
    ctx = ctx or open_context(settings)
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
        result.add("verification", False, exc.message, storage=isinstance(exc, StorageError))
    except tarfile.TarError as exc:
        result.add("the tar reads", False, str(exc))
    result.duration_seconds = round(time.monotonic() - t0, 3)
    record_result(ctx, result)
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
