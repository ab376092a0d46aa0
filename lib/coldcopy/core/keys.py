"""The stored count of streams per key id (``state/keys.json``): written by ``coldcopy key status``
and ``coldcopy key rotate`` (which hold the keys), read by ``coldcopy status`` and by the tick for
the ``key-unheld`` alert (which need not hold them).  Pure: no I/O.  Key ids are not secrets (a
hash of the key, docs/encryption-format.md)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

KEYS_STATE_KEY = "state/keys.json"


def keys_state(at: str, census: Mapping[str, Mapping[str, int]], held: Iterable[str]) -> dict[str, Any]:
    """The record to store: when it was counted, the streams per key id and kind, and the key ids
    the counting command's settings held."""
    return {"at": at, "census": {k: dict(v) for k, v in census.items()}, "held_key_ids": sorted(set(held))}


def parse_keys_state(raw: Any) -> dict[str, Any] | None:
    """A stored count, or None when it is missing or not one."""
    return raw if isinstance(raw, dict) and isinstance(raw.get("census"), dict) else None


def stale_key_ids(census: Mapping[str, Mapping[str, int]], held: Iterable[str]) -> dict[str, int]:
    """Key ids with stored streams that none of ``held`` is (``none``, unencrypted, excluded)."""
    have = set(held)
    return {k: sum(v.values()) for k, v in census.items() if k != "none" and k not in have}


def unheld_at_count(state: Mapping[str, Any] | None) -> dict[str, int]:
    """The key ids of a stored count that the counting command's settings did not hold (an older
    record without ``held_key_ids``: none)."""
    if state is None or not isinstance(state.get("held_key_ids"), list):
        return {}
    return stale_key_ids(state["census"], [str(k) for k in state["held_key_ids"]])
