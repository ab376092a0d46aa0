"""Streaming authenticated encryption of backup payloads: AES-256-GCM frames, STREAM construction.

Pure (no I/O); memory is one frame plus what the caller hands in. The byte format is specified in
``docs/encryption-format.md`` -- keep the two in step. Frames authenticate the header up to the end of
its *params* section, not the key *envelope*, so a key rotation re-wraps the data key
(:func:`rewrap_header`) without re-encrypting data; the envelope is checked by unwrapping.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from coldcopy.errors import ColdCopyError, IntegrityError, WrongKeyError

MAGIC = b"CCENC"
VERSION = 2  # 2: params name the object the stream was written as ("object"); 1 had no name
READABLE_VERSIONS = (1, 2)
OBJECT_MAX = 1024  # characters of a bound object name
ALG_AES = "AES-256-GCM"
ALG_NONE = "none"
DEFAULT_FRAME_SIZE = 1 << 20
FRAME_SIZE_MAX = 64 << 20  # a damaged header must not make a reader allocate more than this per frame
SECTION_MAX = 4096
HEADER_MAX = len(MAGIC) + 1 + 2 * (4 + SECTION_MAX)  # read this many bytes and read_header() succeeds
TAG_SIZE = 16
KDF_N, KDF_R, KDF_P = 2**15, 8, 1
KEY_ID_SALT = b"coldcopy-key-id-v1"  # fixed and public: key_id must be the same in every process
WRAP_AAD = b"coldcopy-data-key"
_PARAMS_KEYS = {"alg", "frame_size"}  # version 1
_PARAMS_KEYS_V2 = {"alg", "frame_size", "object"}
_ENVELOPE_KEYS = {"key_id", "kdf", "wrapped_key", "wrap_nonce"}
_KDF_KEYS = {"name", "n", "r", "p", "salt"}
_ENCRYPT_INTO = hasattr(AESGCM, "encrypt_into")
_ALTERED = "the stored data was altered or belongs to another backup"
_HINT = "the stored object is damaged or incomplete; restore from another backup or another copy"


@functools.lru_cache(maxsize=32)
def _scrypt(secret: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(secret)


class MasterKey:
    """The key material behind BACKUP_ENCRYPTION_KEY. Never printed: repr shows the key id only."""

    __slots__ = ("_secret", "key_id", "_kek", "_previous")

    def __init__(self, secret: bytes) -> None:
        if not secret:
            raise ColdCopyError("BACKUP_ENCRYPTION_KEY is empty", "set it to a long random passphrase")
        self._secret = secret
        digest = hashlib.sha256(_scrypt(secret, KEY_ID_SALT, KDF_N, KDF_R, KDF_P)).hexdigest()
        self.key_id: str = digest[:16]
        self._kek: tuple[bytes, bytes] | None = None  # (salt, KEK) reused by every Encryptor
        self._previous: dict[str, MasterKey] = {}  # key id → an older key that still opens streams

    def with_previous(self, previous: tuple[MasterKey, ...]) -> MasterKey:
        """This key (which writes) holding ``previous`` keys too: a reader opens a stream with the
        key whose key id its envelope names (during and after a key rotation)."""
        ring = MasterKey.__new__(MasterKey)
        ring._secret, ring.key_id, ring._kek = self._secret, self.key_id, self._kek
        ring._previous = {k.key_id: k for k in previous if k.key_id != self.key_id}
        return ring

    def key_ids(self) -> tuple[str, ...]:
        """The key id that writes, then those of the previous keys it holds."""
        return (self.key_id, *self._previous)

    def for_key_id(self, key_id: str | None) -> MasterKey:
        """The held key whose id is ``key_id`` (this one when none matches)."""
        if key_id is None or key_id == self.key_id:
            return self
        return self._previous.get(key_id, self)

    @classmethod
    def from_passphrase(cls, passphrase: str) -> MasterKey:
        return _master_key(passphrase.encode("utf-8"))

    def ready(self) -> MasterKey:
        """Derive now the key-encryption key that this process's streams will wrap their data keys
        with (scrypt, with a fresh salt, once per process), instead of at the first stream; returns
        this key.  A backup calls it in a thread while pg_dump starts (after the key id's scrypt, not
        beside it: each holds 32 MiB while it runs, and two at once would raise the peak memory)."""
        self._encryption_kek()
        return self

    def _encryption_kek(self) -> tuple[bytes, bytes]:
        if self._kek is None:
            salt = os.urandom(16)
            self._kek = (salt, _scrypt(self._secret, salt, KDF_N, KDF_R, KDF_P))
        return self._kek

    def _kek_for(self, salt: bytes, n: int, r: int, p: int) -> bytes:
        return _scrypt(self._secret, salt, n, r, p)

    def __repr__(self) -> str:
        return f"MasterKey(key_id={self.key_id!r})"

    __str__ = __repr__


@functools.lru_cache(maxsize=8)
def _master_key(secret: bytes) -> MasterKey:
    return MasterKey(secret)


@dataclass(frozen=True)
class HeaderInfo:
    alg: str
    frame_size: int
    key_id: str | None
    size: int  # header length in bytes: frames start at this offset
    binding: bytes = field(repr=False)  # AAD of every frame
    kdf: tuple[bytes, int, int, int] | None = field(repr=False, default=None)  # salt, n, r, p
    wrapped_key: bytes = field(repr=False, default=b"")
    wrap_nonce: bytes = field(repr=False, default=b"")
    object: str | None = None  # the object the stream was written as (version 2); None in version 1


def _canonical(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _section(body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + body


def _envelope(key: MasterKey, data_key: bytes) -> bytes:
    salt, kek = key._encryption_kek()
    nonce = os.urandom(12)
    wrapped = AESGCM(kek).encrypt(nonce, data_key, WRAP_AAD)
    kdf = {"name": "scrypt", "n": KDF_N, "r": KDF_R, "p": KDF_P, "salt": _b64(salt)}
    env = {"key_id": key.key_id, "kdf": kdf, "wrapped_key": _b64(wrapped), "wrap_nonce": _b64(nonce)}
    return _section(_canonical(env))


def _bad(message: str) -> IntegrityError:
    return IntegrityError(message, _HINT)


def _header_need(buf: bytes | bytearray) -> tuple[int, bool]:
    """Bytes needed to hold the whole header as far as can be told from ``buf``, and whether it does."""
    n = len(buf)
    if buf[: min(n, len(MAGIC))] != MAGIC[: min(n, len(MAGIC))]:
        raise _bad("not a ColdCopy encrypted stream (the first bytes are not CCENC)")
    if n < 10:
        return 10, False
    if buf[5] not in READABLE_VERSIONS:
        raise IntegrityError(f"unsupported encryption format version {buf[5]}", "upgrade ColdCopy")
    p_len = int.from_bytes(buf[6:10], "big")
    e_len = int.from_bytes(buf[10 + p_len : 14 + p_len], "big") if n >= 14 + p_len else 0
    if max(p_len, e_len) > SECTION_MAX:
        raise _bad("the stream header is damaged (a section length is too large)")
    return 14 + p_len + e_len, n >= 14 + p_len + e_len


def _json_section(raw: bytes, keys: set[str]) -> dict[str, Any]:
    obj = json.loads(raw.decode("ascii"))
    if not isinstance(obj, dict) or set(obj) != keys or _canonical(obj) != raw:
        raise ValueError("header section is not the expected canonical JSON")
    return obj


def _int(v: Any, lo: int, hi: int) -> int:
    if type(v) is not int or not lo <= v <= hi:
        raise ValueError(f"value out of range: {v!r}")
    return v


def _b64d(v: Any, size: int) -> bytes:
    raw = base64.b64decode(v, validate=True)
    if len(raw) != size or _b64(raw) != v:
        raise ValueError("bad base64 field")
    return raw


def read_header(prefix: bytes) -> HeaderInfo:
    """Parse the header at the start of ``prefix``. HEADER_MAX bytes (or the whole stream) always suffice."""
    need, complete = _header_need(prefix)
    if not complete:
        raise IntegrityError(
            f"stream truncated: its header needs at least {need} bytes, got {len(prefix)}",
            f"pass the first HEADER_MAX ({HEADER_MAX}) bytes; if that is the whole object, {_HINT}",
        )
    p_len = int.from_bytes(prefix[6:10], "big")
    try:
        params = _json_section(
            bytes(prefix[10 : 10 + p_len]), _PARAMS_KEYS if prefix[5] == 1 else _PARAMS_KEYS_V2
        )
        alg, frame_size = params["alg"], _int(params["frame_size"], 1, FRAME_SIZE_MAX)
        bound = params.get("object")
        if bound is not None and (not isinstance(bound, str) or not 0 < len(bound) <= OBJECT_MAX):
            raise ValueError("bad object name")
        binding = hashlib.sha256(prefix[: 10 + p_len]).digest()
        envelope = bytes(prefix[14 + p_len : need])
        if alg == ALG_NONE:
            if envelope != b"{}":
                raise ValueError("unencrypted stream with a key envelope")
            return HeaderInfo(ALG_NONE, frame_size, None, need, binding, object=bound)
        if alg != ALG_AES:
            raise ValueError(f"unknown algorithm {alg!r}")
        env = _json_section(envelope, _ENVELOPE_KEYS)
        kdf, key_id = env["kdf"], env["key_id"]
        if not isinstance(kdf, dict) or set(kdf) != _KDF_KEYS or kdf["name"] != "scrypt":
            raise ValueError("unknown key derivation")
        n, r = _int(kdf["n"], 2, 1 << 20), _int(kdf["r"], 1, 32)
        if n & (n - 1) or n * r > 1 << 21:  # scrypt needs a power of two; cap memory at 256 MiB
            raise ValueError("scrypt parameters out of range")
        if not isinstance(key_id, str) or len(key_id) != 16 or key_id.strip("0123456789abcdef"):
            raise ValueError("bad key id")
        salt = _b64d(kdf["salt"], 16)
        kdf_t = (salt, n, r, _int(kdf["p"], 1, 16))
        wrapped, wrap_nonce = _b64d(env["wrapped_key"], 32 + TAG_SIZE), _b64d(env["wrap_nonce"], 12)
    except (ValueError, TypeError, KeyError, binascii.Error) as exc:  # UnicodeError and JSON errors too
        raise _bad(f"the stream header is damaged ({exc})") from None
    return HeaderInfo(ALG_AES, frame_size, key_id, need, binding, kdf_t, wrapped, wrap_nonce, bound)


def _unwrap(info: HeaderInfo, key: MasterKey | None) -> bytes | None:
    """The data key of an encrypted stream (None for alg "none"), or WrongKeyError/IntegrityError."""
    if info.alg == ALG_NONE:
        return None
    if key is None:
        raise WrongKeyError(
            f"this backup is encrypted (key id {info.key_id}) but no BACKUP_ENCRYPTION_KEY is configured",
            f"set BACKUP_ENCRYPTION_KEY to the passphrase whose key id is {info.key_id}",
        )
    key = key.for_key_id(info.key_id)
    if key.key_id != info.key_id:
        held = ", ".join(key.key_ids())
        raise WrongKeyError(
            f"the backup was written with key id {info.key_id}; the configured keys have key id {held}",
            "set BACKUP_ENCRYPTION_KEY (or, after a rotation, BACKUP_ENCRYPTION_KEY_PREVIOUS) to the "
            "key that wrote this backup",
        )
    assert info.kdf is not None
    try:
        return AESGCM(key._kek_for(*info.kdf)).decrypt(info.wrap_nonce, info.wrapped_key, WRAP_AAD)
    except InvalidTag:
        raise _bad(
            f"the wrapped data key failed authentication although key id {key.key_id} matches"
        ) from None


def check_key(info: HeaderInfo, key: MasterKey | None) -> None:
    """Raise WrongKeyError unless ``key`` opens the stream described by ``info``."""
    _unwrap(info, key)


def rewrap_header(header: bytes, old: MasterKey, new: MasterKey) -> bytes:
    """Key rotation: the same header with the data key re-wrapped under ``new``; frames stay valid."""
    info = read_header(header)
    data_key = _unwrap(info, old)
    if data_key is None:
        raise ColdCopyError("an unencrypted stream has no data key to re-wrap", "re-encrypt it instead")
    p_len = int.from_bytes(header[6:10], "big")
    return bytes(header[: 10 + p_len]) + _envelope(new, data_key)


def _nonce(index: int, final: bool) -> bytes:
    return index.to_bytes(11, "big") + (b"\x01" if final else b"\x00")


class Encryptor:
    """Turns plaintext into ``header() + update(...)... + finalize()``. Non-final frames are full.

    Whole frames are encrypted straight from the caller's buffer; only a partial frame is copied, into
    a fixed buffer that is never resized (resizing a bytearray per frame costs more than AES-GCM).
    """

    def __init__(
        self, key: MasterKey | None, frame_size: int = DEFAULT_FRAME_SIZE, *, object_key: str = ""
    ) -> None:
        """``object_key``: the name the stream is stored as (``backups/<name>/data``, a WAL segment's
        key …), bound into every frame so a stream stored under another name is detected."""
        if not 1 <= frame_size <= FRAME_SIZE_MAX:
            raise ValueError(f"frame_size must be 1..{FRAME_SIZE_MAX}")
        if len(object_key) > OBJECT_MAX:
            raise ValueError(f"object names are at most {OBJECT_MAX} characters")
        self.key_id: str | None = key.key_id if key else None
        self._frame_size = frame_size
        self._buf, self._fill = bytearray(frame_size), 0  # a partial frame of plaintext
        self._out = bytearray(4 + frame_size + TAG_SIZE)  # the frame being built
        self._index = 0
        self._done = False
        fields: dict[str, Any] = {"alg": ALG_AES if key else ALG_NONE, "frame_size": frame_size}
        if object_key:
            fields["object"] = object_key
        params = _section(_canonical(fields))
        prefix = MAGIC + bytes([VERSION if object_key else 1]) + params
        self._aad = hashlib.sha256(prefix).digest()
        self._aead: AESGCM | None = None
        if key is None:
            self._header = prefix + _section(b"{}")
        else:
            data_key = os.urandom(32)
            self._aead = AESGCM(data_key)
            self._header = prefix + _envelope(key, data_key)

    def header(self) -> bytes:
        return self._header

    def _frame(self, chunk: memoryview, final: bool) -> bytes:
        """One stored frame, built in a reused buffer: one allocation per frame (two cost 5x the time)."""
        nonce, self._index = _nonce(self._index, final), self._index + 1
        if self._aead is None:
            size = len(chunk) + 1
            self._out[4] = final
            self._out[5 : 5 + len(chunk)] = chunk
        elif _ENCRYPT_INTO:  # cryptography >= 46
            size = len(chunk) + TAG_SIZE
            self._aead.encrypt_into(nonce, chunk, self._aad, memoryview(self._out)[4 : 4 + size])
        else:
            ct = self._aead.encrypt(nonce, chunk, self._aad)
            return len(ct).to_bytes(4, "big") + ct
        self._out[:4] = size.to_bytes(4, "big")
        return bytes(memoryview(self._out)[: 4 + size])

    def update(self, data: bytes | bytearray | memoryview) -> bytes:
        if self._done:
            raise RuntimeError("Encryptor.update() after finalize()")
        out: list[bytes] = []
        fs, buf = self._frame_size, self._buf
        with memoryview(data) as view:
            i, n = 0, len(view)
            while i < n:
                if self._fill == 0 and n - i >= fs:
                    out.append(self._frame(view[i : i + fs], final=False))
                    i += fs
                    continue
                take = min(fs - self._fill, n - i)
                buf[self._fill : self._fill + take] = view[i : i + take]
                self._fill, i = self._fill + take, i + take
                if self._fill == fs:
                    out.append(self._frame(memoryview(buf), final=False))
                    self._fill = 0
        return b"".join(out)

    def finalize(self) -> bytes:
        if self._done:
            raise RuntimeError("Encryptor.finalize() called twice")
        self._done = True
        return self._frame(memoryview(self._buf)[: self._fill], final=True)


class Decryptor:
    """Feed any slices of a stored stream to ``update``; call ``finalize`` at its end.

    Memory: the header, then at most one frame (in a fixed buffer) beyond what the caller hands in.
    """

    def __init__(self, key: MasterKey | None, *, expect_object: str | None = None) -> None:
        """``expect_object``: the name the stream must have been written as (a version-1 stream,
        which carries none, is accepted)."""
        self._key = key
        self._expect = expect_object
        self.header_info: HeaderInfo | None = None
        self._aead: AESGCM | None = None
        self._head = bytearray()
        self._buf, self._fill = bytearray(), 0  # a partial frame, length field included
        self._overhead = TAG_SIZE  # stored bytes per frame beyond its plaintext (1 when unencrypted)
        self._index = 0
        self._final_seen = False

    def update(self, data: bytes | bytearray | memoryview) -> bytes:
        out: list[bytes] = []
        with memoryview(data) as view:
            i, n = 0, len(view)
            if self.header_info is None:
                before = len(self._head)
                self._head += view[: HEADER_MAX - before]
                need, complete = _header_need(self._head)
                if not complete:
                    return b""
                self._start(read_header(bytes(self._head[:need])))
                i = need - before
            buf = self._buf
            while i < n:
                if self._final_seen:
                    raise _bad(f"{n - i} bytes after the final frame: {_ALTERED}")
                if self._fill == 0 and n - i >= 4:  # whole frames straight from the caller's buffer
                    end = i + 4 + self._length(view[i : i + 4])
                    if end <= n:
                        out.append(self._open(view[i + 4 : end]))
                        i = end
                        continue
                want = 4 + self._length(buf) if self._fill >= 4 else 4
                take = min(want - self._fill, n - i)
                buf[self._fill : self._fill + take] = view[i : i + take]
                self._fill, i = self._fill + take, i + take
                if self._fill > 4 and self._fill == 4 + self._length(buf):
                    out.append(self._open(memoryview(buf)[4 : self._fill]))
                    self._fill = 0
        return b"".join(out)

    def _start(self, info: HeaderInfo) -> None:
        if self._expect is not None and info.object is not None and info.object != self._expect:
            raise IntegrityError(
                f"the stored data is {info.object!r}, not {self._expect!r}: {_ALTERED}",
                "the backup's objects were swapped or copied; keep them for inspection and use "
                "another backup",
            )
        data_key = _unwrap(info, self._key)  # WrongKeyError before any plaintext
        self._aead = AESGCM(data_key) if data_key is not None else None
        self._overhead = 1 if data_key is None else TAG_SIZE
        self._buf = bytearray(4 + info.frame_size + self._overhead)
        self._head = bytearray()
        self.header_info = info

    def _length(self, field: bytes | bytearray | memoryview) -> int:
        """The stored length of the next frame, refused before buffering if no frame can be that long."""
        assert self.header_info is not None
        length = int.from_bytes(field[:4], "big")
        if not self._overhead <= length <= self.header_info.frame_size + self._overhead:
            raise _bad(f"frame {self._index} has an impossible length {length}: {_ALTERED}")
        return length

    def _open(self, payload: memoryview) -> bytes:
        assert self.header_info is not None
        index, final = self._index, len(payload) - self._overhead < self.header_info.frame_size
        if self._aead is None:
            if payload[0] != final:
                raise _bad(f"frame {index} has a wrong final flag: {_ALTERED}")
            plain = bytes(payload[1:])
        else:
            try:
                plain = self._aead.decrypt(_nonce(index, final), payload, self.header_info.binding)
            except InvalidTag:
                raise _bad(f"frame {index} failed authentication: {_ALTERED}") from None
        self._index, self._final_seen = index + 1, final
        return plain

    def finalize(self) -> None:
        if self.header_info is None:
            raise _bad(f"stream truncated: the header is incomplete ({len(self._head)} bytes)")
        if not self._final_seen:
            raise _bad(f"stream truncated after {self._index} frames: the final frame is missing")
