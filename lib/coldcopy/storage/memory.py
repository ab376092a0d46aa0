"""An ``ObjectStore`` in memory: for tests that need a bucket's semantics but no S3 behaviour.

It keeps what the contract (``coldcopy.storage.store``) promises — create-only writes, key-ordered
listings with ``start_after`` and delimiters, ranged reads, ETags that are the body's MD5 as a
single PUT's are, whole-second modification times — and nothing of the network: no retries, no
multipart uploads, no failures.  Safe to use from several threads.
"""

from __future__ import annotations

import builtins
import copy
import hashlib
import json
import threading
from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from coldcopy.core.times import Clock, utc_now
from coldcopy.errors import ConflictError, NotFoundError, StorageError
from coldcopy.storage.store import ObjectInfo, encode_json, safe_key


@dataclass(frozen=True)
class _Object:
    data: bytes
    modified: datetime
    etag: str
    content_type: str


class MemoryBody:
    """An open object: its bytes from ``start``, read in chunks."""

    def __init__(self, data: bytes) -> None:
        self._data, self._pos = data, 0

    def read(self, amt: int | None = None) -> bytes:
        end = len(self._data) if amt is None else min(len(self._data), self._pos + amt)
        out, self._pos = self._data[self._pos : end], end
        return out

    def iter_chunks(self, chunk_size: int) -> Iterator[bytes]:
        while chunk := self.read(chunk_size):
            yield chunk

    def close(self) -> None:
        self._pos = len(self._data)


class MemoryStore:
    """A bucket under one prefix, held in a dict; ``clock`` sets the objects' modification times."""

    def __init__(
        self, bucket: str = "memory", prefix: str = "coldcopy/test/", clock: Clock = utc_now
    ) -> None:
        self.bucket, self.prefix, self._clock = bucket, prefix, clock
        self._objects: dict[str, _Object] = {}  # by relative key
        self._lifecycle: builtins.list[dict[str, Any]] = []
        self._lock = threading.Lock()

    # -- keys -------------------------------------------------------------------------------------
    def full_key(self, key: str) -> str:
        return self.prefix + safe_key(key)

    # -- single objects -----------------------------------------------------------------------------
    def put_bytes(
        self,
        key: str,
        data: bytes,
        *,
        create_only: bool = False,
        content_type: str = "application/octet-stream",
    ) -> None:
        safe_key(key)
        etag = f'"{hashlib.md5(data, usedforsecurity=False).hexdigest()}"'
        obj = _Object(bytes(data), self._clock().replace(microsecond=0), etag, content_type)
        with self._lock:
            if create_only and key in self._objects:
                raise ConflictError(f"{key} already exists")
            self._objects[key] = obj

    def put_json(self, key: str, obj: Any, *, create_only: bool = False) -> None:
        self.put_bytes(key, encode_json(obj), create_only=create_only, content_type="application/json")

    def _get(self, key: str) -> _Object:
        safe_key(key)
        with self._lock:
            obj = self._objects.get(key)
        if obj is None:
            raise NotFoundError(f"{key} not found")
        return obj

    def get_bytes(self, key: str, byte_range: tuple[int, int] | None = None) -> bytes:
        data = self._get(key).data
        if byte_range is None:
            return data
        _check_range(key, byte_range[0], len(data))
        return data[byte_range[0] : byte_range[1] + 1]

    def get_json(self, key: str) -> Any:
        return json.loads(self.get_bytes(key))

    def get_bytes_if_changed(self, key: str, etag: str | None) -> tuple[bytes, str] | None:
        obj = self._get(key)
        return None if etag and etag == obj.etag else (obj.data, obj.etag)

    def open(self, key: str, start: int = 0) -> MemoryBody:
        data = self._get(key).data
        if start:
            _check_range(key, start, len(data))
        return MemoryBody(data[start:])

    def head(self, key: str) -> ObjectInfo | None:
        try:
            obj = self._get(key)
        except NotFoundError:
            return None
        return ObjectInfo(key, len(obj.data), obj.modified, obj.etag)

    def exists(self, key: str) -> bool:
        return self.head(key) is not None

    def delete(self, keys: builtins.list[str]) -> None:
        for key in keys:  # every key checked before anything is deleted, as one S3 request would
            safe_key(key)
        with self._lock:
            for key in keys:
                self._objects.pop(key, None)

    # -- listings -----------------------------------------------------------------------------------
    def _keys_after(self, prefix: str, start_after: str | None) -> builtins.list[str]:
        safe_key(prefix)
        if start_after:
            safe_key(start_after)
        with self._lock:
            keys = sorted(self._objects)
        first = bisect_right(keys, start_after) if start_after else 0
        return [k for k in keys[first:] if k.startswith(prefix)]

    def list(
        self, prefix: str = "", *, start_after: str | None = None, delimiter: str | None = None
    ) -> Iterator[ObjectInfo]:
        for key in self._keys_after(prefix, start_after):
            if delimiter and delimiter in key[len(prefix) :]:
                continue  # under a "folder": S3 reports it as a common prefix, not an object
            info = self.head(key)
            if info is not None:
                yield info

    def list_prefixes(self, prefix: str) -> Iterator[str]:
        seen: set[str] = set()
        for key in self._keys_after(prefix, None):
            head, sep, _ = key[len(prefix) :].partition("/")
            if sep and head not in seen:
                seen.add(head)
                yield f"{prefix}{head}/"

    # -- bucket lifecycle and multipart uploads (a memory store has none of the latter) -----------
    def get_lifecycle(self) -> builtins.list[dict[str, Any]]:
        with self._lock:
            return copy.deepcopy(self._lifecycle)

    def put_lifecycle(self, rules: builtins.list[dict[str, Any]]) -> None:
        with self._lock:
            self._lifecycle = copy.deepcopy(rules)

    def incomplete_uploads(self, prefix: str) -> builtins.list[tuple[str, str, datetime]]:
        return []

    def abort_upload(self, key: str, upload_id: str) -> None:
        return None


def _check_range(key: str, start: int, size: int) -> None:
    """A range that starts past the end: S3 answers 416 InvalidRange, a storage error."""
    if start >= size:
        raise StorageError(f"storage error InvalidRange while trying to read {key}")
