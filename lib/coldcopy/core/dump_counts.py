"""Row counts read from a pg_dump custom-format archive as it streams past.  Pure: fed bytes.

The backup's manifest records how many rows each table had in the dump's snapshot.  Those
numbers are in the dump already: ``pg_dump --format=custom --compress=0`` writes every table's
rows as COPY text in uncompressed data blocks, one row per line (a newline inside a value is
escaped as backslash-n, so every raw newline byte ends a row), followed by the end-of-data line
``\\.`` and two empty lines (pg_dump 12-17 write them into the archive too).
:class:`RowCounter` follows the archive's framing and counts those newlines, so no second scan of
the user's tables is needed.

The layout (PostgreSQL's ``pg_backup_archiver.c`` and ``pg_backup_custom.c``, archive versions
1.12–1.16, written by pg_dump 9.x–17):

* header: ``PGDMP``, version bytes (major, minor, revision), int size, offset size, format (1:
  custom); the compression (an int before 1.15, one algorithm byte from 1.15 on); the creation
  time as seven ints; the database name, the server's and pg_dump's versions as strings.
* an int (one sign byte, then *int size* bytes little-endian); a string: an int length (negative:
  NULL) and that many bytes.
* the table of contents: an entry count, then per entry its dump id, whether it had a data
  dumper, table oid, oid, tag, desc, section, defn, drop statement, copy statement, namespace,
  tablespace, table access method (1.14), relkind (an int, 1.16), owner, "with oids", its
  dependencies (strings ending with a NULL), and the custom format's data offset (a flag byte and
  *offset size* bytes).
* data blocks to the end: a type byte (1: data, 3: large objects) and the entry's dump id; a data
  block is a run of chunks, each an int length and that many bytes, ending with a zero length; a
  large-object block is a run of (oid, chunks) ending with a zero oid.

pg_dump writes no end-of-archive marker when its output is a pipe; the archive ends after a
complete block.  Memory: the counts, the names of the TABLE DATA entries, and at most one
table-of-contents entry or a few bytes of a chunk header at a time.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

MAGIC = b"PGDMP"
FORMAT_CUSTOM = 1
BLK_DATA = 1
BLK_BLOBS = 3
OLDEST = (1, 12)  # separate BLOB entries (pg_dump 9.0): older archives are refused
NEWEST = (1, 16)  # pg_dump 17


class ArchiveError(ValueError):
    """The bytes are not a custom-format archive this reader understands."""


class _More(Exception):
    """Not enough bytes buffered yet for the next structure."""


@dataclass
class _Entry:
    key: str  # "schema.table"
    counted: bool  # TABLE DATA in COPY text


@dataclass
class RowCounter:
    """Feed the archive's bytes in order (:meth:`feed`), then :meth:`finish`; ``rows`` maps
    ``schema.table`` to the rows of each TABLE DATA entry seen so far."""

    rows: dict[str, int] = field(default_factory=dict)
    version: tuple[int, int, int] = (0, 0, 0)
    _buf: bytes = b""
    _stage: str = "header"  # header, toc, block, chunk, payload, blob_oid, done
    _int_size: int = 4
    _off_size: int = 8
    _entries_left: int = 0
    _entries: dict[int, _Entry] = field(default_factory=dict)
    _current: _Entry | None = None  # the data block being read
    _in_blobs: bool = False
    _remaining: int = 0  # payload bytes still to come in the current chunk
    _newlines: int = 0  # of the current block
    _counting: bool = False  # the current block is TABLE DATA in COPY text
    _last_len: int = 0  # of the block's last chunk so far
    _last_tail: bytes = b""  # its last bytes (up to _TAIL)
    _uncounted: list[str] = field(default_factory=list)

    @property
    def uncounted(self) -> list[str]:
        """TABLE DATA entries whose data is not COPY text (pg_dump --inserts): no count for them."""
        return list(self._uncounted)

    def feed(self, data: bytes) -> None:
        """The next bytes of the archive."""
        if self._buf:
            data = self._buf + data
            self._buf = b""
        pos, end = 0, len(data)
        while pos < end:
            stage = self._stage
            if stage == "payload":
                take = min(self._remaining, end - pos)
                if self._counting:
                    self._newlines += data.count(b"\n", pos, pos + take)
                self._last_tail = (self._last_tail + data[pos : pos + take])[-_TAIL:]
                pos += take
                self._remaining -= take
                if self._remaining == 0:
                    self._stage = "chunk"
                continue
            if stage == "chunk":
                pos, short = self._chunks(data, pos, end)
                if short:
                    break
                continue
            try:
                if stage == "header":
                    pos = self._header(data, pos)
                elif stage == "toc":
                    pos = self._toc_entry(data, pos)
                elif stage == "block":
                    pos = self._block(data, pos)
                elif stage == "blob_oid":
                    pos = self._blob_oid(data, pos)
                else:  # pragma: no cover - no other stage exists
                    raise AssertionError(stage)
            except _More:
                break
        self._buf = data[pos:]

    def _chunks(self, data: bytes, pos: int, end: int) -> tuple[int, bool]:
        """Chunk headers and payloads, as many as are in ``data``: the hot loop (one chunk per row
        in pg_dump 12–17's uncompressed output), so it stays in one function with local names and
        does one table lookup per chunk.  The newlines of a run of whole chunks are counted in one
        ``bytes.count`` over the run, less those in its headers (a length byte can be 0x0A).
        Returns the position reached and whether a chunk header is cut short by the end of
        ``data``.  The last chunk's length and last bytes are kept for :meth:`_end_chunks`."""
        if self._int_size != 4:
            return self._chunks_generic(data, pos)
        unpack = _SIGNED_INT.unpack_from
        in_header, small = _HEADER_NEWLINES, _SMALL
        run = pos  # the run of whole chunks starts here
        header_newlines = 0  # in the run's headers
        last = -1  # the header of the run's last chunk
        while True:
            try:
                sign, length = unpack(data, pos)
            except struct.error:  # fewer than 5 bytes left: the header goes on in the next bytes
                self._count_run(data, run, pos, header_newlines, last)
                return pos, True
            if length < small:
                if sign or not length:
                    if sign:
                        raise ArchiveError("a negative chunk length in a data block")
                    self._count_run(data, run, pos, header_newlines, last)
                    self._end_chunks()
                    return pos + 5, False
                header_newlines += in_header[length]
            else:
                if sign:
                    raise ArchiveError("a negative chunk length in a data block")
                header_newlines += data.count(b"\n", pos + 1, pos + 5)
            stop = pos + 5 + length
            if stop > end:  # the payload goes on in the next bytes
                self._count_run(data, run, end, header_newlines, -1)
                self._last_len = length
                self._last_tail = data[max(pos + 5, end - _TAIL) : end]
                self._remaining = stop - end
                self._stage = "payload"
                return end, False
            last = pos
            pos = stop

    def _count_run(self, data: bytes, start: int, stop: int, header_newlines: int, last: int) -> None:
        """Add the payload newlines of the chunks in ``data[start:stop]``; ``last`` is the header of
        the last whole one (-1: none), whose length and tail :meth:`_end_chunks` may need."""
        if self._counting and stop > start:
            self._newlines += data.count(b"\n", start, stop) - header_newlines
        if last >= 0:
            payload = last + 5
            self._last_len = stop - payload
            self._last_tail = data[max(payload, stop - _TAIL) : stop]

    def _chunks_generic(self, data: bytes, pos: int) -> tuple[int, bool]:
        try:
            length, pos = self._int(data, pos)
        except _More:
            return pos, True
        if length < 0:
            raise ArchiveError("a negative chunk length in a data block")
        if length == 0:
            self._end_chunks()
        else:
            self._remaining = length
            self._last_len = length
            self._last_tail = b""
            self._stage = "payload"
        return pos, False

    def _end_chunks(self) -> None:
        if self._in_blobs:
            self._stage = "blob_oid"
            return
        if self._counting and self._current is not None:
            rows = self._newlines
            # pg_dump 12-17 end a table's COPY data with "\\.\n\n\n" (one WriteData call, so the
            # end of the last chunk).  A line starting with a backslash and a dot is never a row
            # (COPY escapes a backslash in a value as two), so this is the terminator, not data.
            tail, size = self._last_tail, self._last_len
            if tail.endswith(_TERMINATOR) and (size == len(_TERMINATOR) or tail == b"\n" + _TERMINATOR):
                rows -= _TERMINATOR.count(b"\n")
            self.rows[self._current.key] = self.rows.get(self._current.key, 0) + rows
        self._current = None
        self._counting = False
        self._newlines = 0
        self._last_tail, self._last_len = b"", 0
        self._stage = "block"

    # -- structures ---------------------------------------------------------------------------------
    def _int(self, data: bytes, pos: int) -> tuple[int, int]:
        width = 1 + self._int_size
        if len(data) - pos < width:
            raise _More
        value = int.from_bytes(data[pos + 1 : pos + width], "little")
        return (-value if data[pos] else value), pos + width

    def _str(self, data: bytes, pos: int) -> tuple[str | None, int]:
        length, pos = self._int(data, pos)
        if length < 0:
            return None, pos
        if len(data) - pos < length:
            raise _More
        return data[pos : pos + length].decode("utf-8", "replace"), pos + length

    def _header(self, data: bytes, pos: int) -> int:
        if len(data) - pos < 11:
            raise _More
        if data[pos : pos + 5] != MAGIC:
            raise ArchiveError("not a pg_dump custom-format archive (no PGDMP signature)")
        vmaj, vmin, vrev, int_size, off_size, fmt = data[pos + 5 : pos + 11]
        if not OLDEST <= (vmaj, vmin) <= NEWEST:
            raise ArchiveError(f"archive version {vmaj}.{vmin}.{vrev} is not one this reader knows")
        if fmt != FORMAT_CUSTOM:
            raise ArchiveError(f"archive format {fmt} is not the custom format")
        if not 1 <= int_size <= 8 or not 1 <= off_size <= 16:
            raise ArchiveError(f"implausible int/offset sizes {int_size}/{off_size}")
        self._int_size, self._off_size = int_size, off_size
        p = pos + 11
        if (vmaj, vmin) >= (1, 15):
            if len(data) - p < 1:
                raise _More
            compressed = data[p] != 0  # pg_compress_algorithm: 0 is none
            p += 1
        else:
            level, p = self._int(data, p)
            compressed = level != 0
        if compressed:
            raise ArchiveError("the archive's data is compressed (rows cannot be counted)")
        for _ in range(7):  # creation time
            _, p = self._int(data, p)
        for _ in range(3):  # database name, server version, pg_dump version
            _, p = self._str(data, p)
        count, p = self._int(data, p)
        self.version = (vmaj, vmin, vrev)
        self._entries_left = count
        self._stage = "toc" if count > 0 else "block"
        return p

    def _toc_entry(self, data: bytes, pos: int) -> int:
        p = pos
        dump_id, p = self._int(data, p)
        _, p = self._int(data, p)  # had a data dumper
        for _ in range(2):  # table oid, oid
            _, p = self._str(data, p)
        tag, p = self._str(data, p)
        desc, p = self._str(data, p)
        _, p = self._int(data, p)  # section
        for _ in range(2):  # defn, drop statement
            _, p = self._str(data, p)
        copy, p = self._str(data, p)
        namespace, p = self._str(data, p)
        _, p = self._str(data, p)  # tablespace
        if self.version[:2] >= (1, 14):
            _, p = self._str(data, p)  # table access method
        if self.version[:2] >= (1, 16):
            _, p = self._int(data, p)  # relkind
        for _ in range(2):  # owner, "with oids"
            _, p = self._str(data, p)
        while True:  # dependencies, up to a NULL
            dep, p = self._str(data, p)
            if dep is None:
                break
        if len(data) - p < 1 + self._off_size:  # data offset: flag byte and offset
            raise _More
        p += 1 + self._off_size
        if desc == "TABLE DATA":
            key = f"{namespace}.{tag}"
            text = (copy or "").startswith("COPY ")
            if not text:
                self._uncounted.append(key)
            self._entries[dump_id] = _Entry(key, text)
        self._entries_left -= 1
        if self._entries_left == 0:
            self._stage = "block"
        return p

    def _block(self, data: bytes, pos: int) -> int:
        if len(data) - pos < 1:
            raise _More
        kind = data[pos]
        dump_id, p = self._int(data, pos + 1)
        if kind == BLK_DATA:
            self._current = self._entries.get(dump_id)
            self._counting = self._current is not None and self._current.counted
            if self._current is not None and self._counting:
                self.rows.setdefault(self._current.key, 0)
            self._in_blobs = False
            self._newlines = 0
            self._stage = "chunk"
        elif kind == BLK_BLOBS:
            self._current = None
            self._counting = False
            self._in_blobs = True
            self._stage = "blob_oid"
        else:
            raise ArchiveError(f"unknown data block type {kind} (dump id {dump_id})")
        return p

    def _blob_oid(self, data: bytes, pos: int) -> int:
        oid, p = self._int(data, pos)
        if oid == 0:
            self._in_blobs = False
            self._stage = "block"
        else:
            self._stage = "chunk"
        return p

    def finish(self) -> dict[str, int]:
        """The counts, once the whole archive has been fed; raises if it ended mid-structure."""
        if self._stage != "block" or self._buf:
            left = len(self._buf)
            raise ArchiveError(f"the archive ends inside a structure ({self._stage}, {left} bytes left)")
        return dict(self.rows)


_SIGNED_INT = struct.Struct("<BI")  # a sign byte and a 4-byte magnitude: ints as pg_dump writes them
_TERMINATOR = b"\\.\n\n\n"  # what pg_dump writes after a table's rows
_TAIL = len(_TERMINATOR) + 1
_SMALL = 1 << 16  # chunk lengths below this are looked up in _HEADER_NEWLINES


def _header_newlines() -> bytes:
    """How many of a chunk header's bytes are a newline (0x0A), by chunk length below _SMALL: the
    sign byte is 0 and so are the two high bytes of such a length; only the two low bytes can be."""
    table = bytearray(_SMALL)
    table[0x0A::0x100] = b"\x01" * 0x100  # the low byte
    table[0x0A00:0x0B00] = bytes(n + 1 for n in table[0x0A00:0x0B00])  # the second byte
    return bytes(table)


_HEADER_NEWLINES = _header_newlines()
