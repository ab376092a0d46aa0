"""What ColdCopy needs of a bucket: the ``ObjectStore`` interface every adapter implements.

Two implementations: :class:`coldcopy.storage.s3.S3Store` (Spaces or any S3 endpoint; production)
and :class:`coldcopy.storage.memory.MemoryStore` (a dict; for tests that need no S3 behaviour).
``tests/test_store_contract.py`` runs one suite against both, the S3 one against a real S3 server.

Keys are relative to the store's ``prefix`` (``coldcopy/<cluster>/``).  The semantics every
implementation keeps:

* ``put_*(create_only=True)`` is ``If-None-Match: *``: ConflictError when the key exists;
* a missing key is NotFoundError (``head`` answers None instead);
* listings are in key order, ``start_after`` exclusive, and see every finished write;
* every failure of the store itself is a StorageError (exit 6) with a hint; a read that breaks
  midway raises :class:`ReadInterrupted` so that a reader can resume with a ranged ``open``.
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from coldcopy.errors import StorageError


@dataclass(frozen=True)
class ObjectInfo:
    key: str  # relative to the prefix
    size: int
    last_modified: datetime
    etag: str = ""  # quoted, as S3 sends it; the MD5 of the body for a single PUT


class ReadInterrupted(StorageError):
    """Reading an open body broke off (connection reset, stall, truncated reply): resumable."""

    def __init__(self, message: str, hint: str | None = None, *, cause: str = "") -> None:
        super().__init__(message, hint)
        self.cause = cause  # what broke it (ReadTimeoutError, ProtocolError …), for the messages


class Body(Protocol):
    """An open object's streaming body (``ObjectStore.open``)."""

    def iter_chunks(self, chunk_size: int) -> Iterator[bytes]: ...

    def read(self, amt: int | None = None) -> bytes: ...

    def close(self) -> None: ...


class ObjectStore(Protocol):
    """A bucket under one prefix."""

    bucket: str
    prefix: str

    def full_key(self, key: str) -> str:
        """The key in the bucket (prefix + key); StorageError for an unsafe key (``..``, leading ``/``)."""
        ...

    def put_bytes(
        self, key: str, data: bytes, *, create_only: bool = False, content_type: str = ...
    ) -> None: ...

    def put_json(self, key: str, obj: Any, *, create_only: bool = False) -> None: ...

    def get_bytes(self, key: str, byte_range: tuple[int, int] | None = None) -> bytes:
        """The object (or the inclusive ``byte_range``); NotFoundError when absent."""
        ...

    def get_json(self, key: str) -> Any:
        """The object parsed as JSON; ValueError when it is not JSON."""
        ...

    def get_bytes_if_changed(self, key: str, etag: str | None) -> tuple[bytes, str] | None:
        """``(body, etag)``, or None when the object's ETag is still ``etag``; NotFoundError if absent."""
        ...

    def open(self, key: str, start: int = 0) -> Body:
        """A streaming body from byte ``start``; StorageError if a ranged read is not honoured."""
        ...

    def head(self, key: str) -> ObjectInfo | None: ...

    def exists(self, key: str) -> bool: ...

    def delete(self, keys: builtins.list[str]) -> None:
        """Delete these keys (absent ones are fine)."""
        ...

    def list(
        self, prefix: str = "", *, start_after: str | None = None, delimiter: str | None = None
    ) -> Iterator[ObjectInfo]:
        """Objects under ``prefix``, in key order, after ``start_after`` (a relative key)."""
        ...

    def list_prefixes(self, prefix: str) -> Iterator[str]:
        """Immediate 'folders' under ``prefix`` (relative, with a trailing slash)."""
        ...

    def get_lifecycle(self) -> builtins.list[dict[str, Any]]:
        """The bucket's lifecycle rules (bucket-wide); [] when it has none."""
        ...

    def put_lifecycle(self, rules: builtins.list[dict[str, Any]]) -> None:
        """Replace the bucket's lifecycle rules (all of them)."""
        ...

    def incomplete_uploads(self, prefix: str) -> builtins.list[tuple[str, str, datetime]]:
        """(relative key, upload id, initiated) of multipart uploads never completed."""
        ...

    def abort_upload(self, key: str, upload_id: str) -> None: ...


def encode_json(obj: Any) -> bytes:
    """How every store writes a JSON object (records are read by other processes and versions)."""
    return json.dumps(obj, indent=1, sort_keys=True, default=str).encode()


def safe_key(key: str) -> str:
    """A relative key that cannot leave the prefix."""
    if key.startswith("/") or ".." in key.split("/"):
        raise StorageError(f"refusing unsafe key {key[:80]!r}", "keys come from validated names only")
    return key
