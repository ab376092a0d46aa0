"""Reading the change archive's stored health (light: no PostgreSQL driver, for the web functions)."""

from __future__ import annotations

from coldcopy.core.changes import STATUS_KEY, ChangesHealth
from coldcopy.errors import NotFoundError
from coldcopy.storage.store import ObjectStore


def load_health(storage: ObjectStore) -> ChangesHealth | None:
    """The stored health; None when the change archive was never drained here (its rules stay off)."""
    try:
        return ChangesHealth.from_dict(storage.get_json(STATUS_KEY))
    except NotFoundError:
        return None
