#!/usr/bin/env python3
"""Decrypt (and decompress) a ColdCopy backup object WITHOUT ColdCopy.

Needs only ``pip install cryptography zstandard``. Implements docs/encryption-format.md and nothing
else, so it also proves that document complete.

    BACKUP_ENCRYPTION_KEY='...' python3 decrypt_standalone.py data.0* dump.pgdump
    BACKUP_ENCRYPTION_KEY='...' python3 decrypt_standalone.py data.0* - | pg_restore -d mydb
    python3 decrypt_standalone.py --raw data.0* payload.zst    # decrypt only, keep zstd

A backup's data is stored as volumes (data.000000, data.000001, …): give them all, in order (the
shell's sorting of ``data.0*`` is that order); they are read as one stream.

A file OUTPUT is written as OUTPUT.partial and renamed only once the whole stream verified; on
stdout, treat the output as garbage unless the exit status is 0.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import sys
from collections.abc import Iterator
from typing import BinaryIO, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt


class Bad(Exception):
    pass


class Readable(Protocol):
    def read(self, n: int, /) -> bytes: ...


def read_exact(src: Readable, n: int, what: str) -> bytes:
    data = src.read(n)
    if len(data) != n:
        raise Bad(f"stream truncated while reading {what}")
    return data


def scrypt(secret: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(secret)


def plaintext(src: Readable) -> Iterator[bytes]:
    """Verify and decrypt the stream in ``src``, frame by frame."""
    head = read_exact(src, 10, "the header")
    if head[:5] != b"CCENC" or head[5] not in (1, 2):  # 2: params also name the object ("object")
        raise Bad("not a ColdCopy stream of format version 1 or 2")
    params_raw = read_exact(src, int.from_bytes(head[6:10], "big"), "the header")
    aad = hashlib.sha256(head + params_raw).digest()  # binds every frame to magic, version and params
    env_len = int.from_bytes(read_exact(src, 4, "the header"), "big")
    envelope = json.loads(read_exact(src, env_len, "the header"))
    params = json.loads(params_raw)
    frame_size, alg = params["frame_size"], params["alg"]
    aead = None
    if alg == "AES-256-GCM":
        # ColdCopy trims surrounding whitespace from every setting, the key included (doc §3).
        secret = os.environ.get("BACKUP_ENCRYPTION_KEY", "").strip().encode("utf-8")
        if not secret:
            raise Bad(f"encrypted with key id {envelope['key_id']}: set BACKUP_ENCRYPTION_KEY")
        key_id = hashlib.sha256(scrypt(secret, b"coldcopy-key-id-v1", 2**15, 8, 1)).hexdigest()[:16]
        if key_id != envelope["key_id"]:
            raise Bad(f"written with key id {envelope['key_id']}; BACKUP_ENCRYPTION_KEY has key id {key_id}")
        kdf = envelope["kdf"]
        kek = scrypt(secret, base64.b64decode(kdf["salt"]), kdf["n"], kdf["r"], kdf["p"])
        nonce, wrapped = base64.b64decode(envelope["wrap_nonce"]), base64.b64decode(envelope["wrapped_key"])
        aead = AESGCM(AESGCM(kek).decrypt(nonce, wrapped, b"coldcopy-data-key"))
    elif alg != "none":
        raise Bad(f"unknown alg {alg!r}")
    overhead = 1 if aead is None else 16
    index = 0
    while True:
        length_raw = src.read(4)
        if len(length_raw) < 4:
            raise Bad(f"stream truncated after {index} frames: the final frame is missing")
        length = int.from_bytes(length_raw, "big")
        size = length - overhead
        if not 0 <= size <= frame_size:
            raise Bad(f"frame {index} has an impossible length {length}")
        payload = read_exact(src, length, f"frame {index}")
        final = size < frame_size  # every frame but the last holds exactly frame_size bytes
        if aead is None:
            if payload[0] != final:
                raise Bad(f"frame {index} has a wrong final flag")
            yield payload[1:]
        else:
            try:
                yield aead.decrypt(index.to_bytes(11, "big") + bytes([final]), payload, aad)
            except InvalidTag:
                raise Bad(f"frame {index} failed authentication") from None
        index += 1
        if final:
            if src.read(1):
                raise Bad("data after the final frame")
            return


class Volumes:
    """Several files read as one, in the order given (a stream stored as volumes)."""

    def __init__(self, files: list[BinaryIO]) -> None:
        self.files = files

    def read(self, n: int) -> bytes:
        out = bytearray()
        while self.files and len(out) < n:
            chunk = self.files[0].read(n - len(out))
            if chunk:
                out += chunk
            else:
                self.files.pop(0).close()
        return bytes(out)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "inputs",
        nargs="+",
        help="the stored volumes in order (downloaded backups/<name>/data.000000 …), or - for stdin",
    )
    parser.add_argument("output", help="where to write the pg_dump archive, or - for stdout")
    parser.add_argument("--raw", action="store_true", help="decrypt only; do not zstd-decompress")
    args = parser.parse_args()
    if args.inputs == ["-"]:
        src: Readable = sys.stdin.buffer
    else:
        src = Volumes([open(path, "rb") for path in args.inputs])  # noqa: SIM115
    tmp = None if args.output == "-" else args.output + ".partial"
    dst = sys.stdout.buffer if tmp is None else open(tmp, "wb")  # noqa: SIM115
    try:
        if args.raw:
            for chunk in plaintext(src):
                dst.write(chunk)
        else:
            import zstandard

            with zstandard.ZstdDecompressor().stream_writer(dst, closefd=False) as out:
                for chunk in plaintext(src):
                    out.write(chunk)
        dst.flush()
    except (Bad, InvalidTag, KeyError, ValueError, TypeError) as exc:
        print(f"decrypt_standalone: {exc}", file=sys.stderr)
        if tmp:
            dst.close()
            os.unlink(tmp)
        return 1
    if tmp:
        dst.close()
        os.replace(tmp, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
