"""Small state objects in the bucket: the tick's monitor state (the I/O half of
``core.monitor_state``) and the intent records of restores between their renames (written and
acted on by ``restore/guard.py``, read by status and the alert check)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from coldcopy.core.keys import KEYS_STATE_KEY, parse_keys_state
from coldcopy.core.monitor_state import STATE_KEY, MonitorState, parse
from coldcopy.core.times import iso
from coldcopy.errors import NotFoundError
from coldcopy.storage.store import ObjectStore

log = logging.getLogger(__name__)


def load_monitor_state(storage: ObjectStore) -> MonitorState | None:
    """The stored state (one GET); None before the first tick or when it cannot be read."""
    try:
        raw = storage.get_json(STATE_KEY)
    except NotFoundError:
        return None
    except ValueError:
        log.warning("%s is not JSON; ignored until the next tick rewrites it", STATE_KEY)
        return None
    state = parse(raw)
    if state is None:
        log.warning("%s is not a monitor state this version reads; ignored", STATE_KEY)
    return state


def save_monitor_state(storage: ObjectStore, state: MonitorState) -> None:
    """Rewrite the state (the tick, once per run: one small object, one writer)."""
    storage.put_json(STATE_KEY, state.to_dict())


INTENTS = "state/restore-intents/"


def intent_key(database: str) -> str:
    return f"{INTENTS}{database}.json"


def write_intent(storage: ObjectStore, database: str, renamed_to: str, staging: str) -> None:
    """Before the live database is renamed aside: where it goes, and what replaces it."""
    storage.put_json(
        intent_key(database),
        {"database": database, "renamed_to": renamed_to, "staging": staging, "at": iso(datetime.now(UTC))},
    )


def clear_intent(storage: ObjectStore, database: str) -> None:
    storage.delete([intent_key(database)])


def pending_intents(storage: ObjectStore) -> list[dict[str, Any]]:
    """Restores that were interrupted between their renames and not yet put right (for status)."""
    out = []
    for info in storage.list(INTENTS):
        try:
            record = storage.get_json(info.key)
        except NotFoundError:
            continue
        if isinstance(record, dict):
            out.append(record)
    return out


def load_keys_state(storage: ObjectStore) -> dict[str, Any] | None:
    """The last count of streams per key id (``core/keys.py``), or None (never counted, unreadable)."""
    try:
        return parse_keys_state(storage.get_json(KEYS_STATE_KEY))
    except NotFoundError:
        return None
    except ValueError:
        log.warning("%s is not JSON; ignored until `coldcopy key status` rewrites it", KEYS_STATE_KEY)
        return None
