"""Records of re-wrapped streams (key rotation, docs/key-rotation.md).

A rotation rewrites only a stream's header (its key envelope), which changes the SHA-256 of the
stream as stored but nothing else.  Manifests, change-batch records and files indexes are
create-only and keep the checksum of the stream as it was written; so before a stream's header is
replaced, a create-only record ``keys/rewrapped/<new key id>/<stream name>.json`` stores the
checksum the stream will have under the new key (and the new header itself, so that an interrupted
rotation writes exactly that header when it resumes).  A reader whose stream does not match the
checksum it was written with takes the checksum from the record of the key id the stream's envelope
names, if there is one (``backup.reader.finish_checked``, the one place that does this).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

from coldcopy.errors import IntegrityError, NotFoundError
from coldcopy.storage.store import ObjectStore

PREFIX = "keys/rewrapped/"


def rekey_key(key_id: str, stream: str) -> str:
    """Where the record of ``stream`` (its name below the prefix, e.g. backups/<name>/data) re-wrapped
    under ``key_id`` is stored."""
    return f"{PREFIX}{key_id}/{stream}.json"


@dataclass(frozen=True)
class Rewrapped:
    stream: str
    from_key_id: str
    key_id: str
    header: bytes  # the new header (params unchanged, envelope under key_id)
    stored_sha256: str  # of the whole stream as stored with that header

    def to_dict(self) -> dict[str, Any]:
        return {
            "stream": self.stream,
            "from_key_id": self.from_key_id,
            "key_id": self.key_id,
            "header": base64.b64encode(self.header).decode("ascii"),
            "stored_sha256": self.stored_sha256,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Rewrapped:
        return cls(
            str(d["stream"]),
            str(d["from_key_id"]),
            str(d["key_id"]),
            base64.b64decode(d["header"], validate=True),
            str(d["stored_sha256"]),
        )


def read_rewrapped(storage: ObjectStore, key_id: str, stream: str) -> Rewrapped | None:
    try:
        raw = storage.get_json(rekey_key(key_id, stream))
    except NotFoundError:
        return None
    try:
        rec = Rewrapped.from_dict(raw)
    except (KeyError, TypeError, ValueError):
        raise IntegrityError(
            f"the re-wrap record of {stream} under key id {key_id} is damaged",
            "run `coldcopy key rotate` again: it rewrites the stream from a fresh record",
        ) from None
    if rec.stream != stream or rec.key_id != key_id:
        raise IntegrityError(f"the re-wrap record of {stream} names another stream or key", None)
    return rec
