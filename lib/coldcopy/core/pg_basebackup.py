"""pg_basebackup's tar stream, read as it passes by.  Pure: no I/O.

``TarWatcher`` follows the tar header by header and keeps the few small members ColdCopy wants:
``backup_label`` (the first member: the start LSN, its segment, the timeline) and
``backup_manifest`` (the last: the WAL range under its own SHA-256 checksum).  Nothing is inferred
from clocks or from a second query that could race with other activity.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from coldcopy.core.lsn import format_lsn, last_segment_needed, parse_lsn, segment_name_of
from coldcopy.errors import IntegrityError

BLOCK = 512
CAPTURE = {"backup_label": 1 << 20, "backup_manifest": 256 << 20}


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


def wal_positions(watcher: TarWatcher, seg_size: int) -> dict[str, Any]:
    """The WAL positions the stream's backup_label and backup_manifest give (checked against each other)."""
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
