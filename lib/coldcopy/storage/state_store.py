"""The tick's monitor state in the bucket (the I/O half of ``core.monitor_state``)."""

from __future__ import annotations

import logging

from coldcopy.core.monitor_state import STATE_KEY, MonitorState, parse
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
