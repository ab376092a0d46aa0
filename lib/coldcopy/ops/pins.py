"""Pins: ``pins/<name>.json`` keeps a backup from ever being deleted by cleanup.

`coldcopy pin` writes the record create-only (who, when, why); `coldcopy unpin` deletes it.  Both
also leave a journal record, so the catalog's history shows who pinned and unpinned what.
"""

from __future__ import annotations

import getpass
import logging
import socket
from datetime import UTC, datetime
from typing import Any

from coldcopy.core.names import validate_name
from coldcopy.core.times import iso
from coldcopy.errors import ColdCopyError, ConflictError, InvalidNameError, NotFoundError
from coldcopy.storage.catalog_store import CatalogStore
from coldcopy.storage.store import ObjectStore

log = logging.getLogger(__name__)
PREFIX = "pins/"


def pin_key(name: str) -> str:
    return f"{PREFIX}{validate_name(name)}.json"


def default_operator() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def read_pins(storage: ObjectStore) -> dict[str, str]:
    """name -> reason.  A pin record that cannot be read still pins its backup."""
    pins: dict[str, str] = {}
    for obj in storage.list(PREFIX):
        stem = obj.key[len(PREFIX) :].removesuffix(".json")
        try:
            name = validate_name(stem)
        except InvalidNameError:
            log.warning("ignoring %s: not a backup name", obj.key)
            continue
        try:
            record = storage.get_json(obj.key)
            pins[name] = str(record.get("reason") or "no reason given")
        except NotFoundError:
            continue  # unpinned while we listed
        except (ValueError, AttributeError):
            pins[name] = "pin record unreadable (still honoured)"
    return pins


def get_pin(storage: ObjectStore, name: str) -> dict[str, Any] | None:
    try:
        record = storage.get_json(pin_key(name))
    except NotFoundError:
        return None
    except ValueError:
        return {"name": name, "reason": "pin record unreadable (still honoured)"}
    return dict(record) if isinstance(record, dict) else {"name": name, "reason": "unreadable"}


def pin(catalog: CatalogStore, name: str, reason: str, by: str | None = None) -> dict[str, Any]:
    name = validate_name(name)
    reason = reason.strip()
    if not reason:
        raise ColdCopyError("a pin needs a reason", 'say why: coldcopy pin NAME --reason "…"')
    cat = catalog.read()
    if name not in cat.backups and name not in cat.unreadable:
        raise NotFoundError(f"no backup named {name}", "run `coldcopy list-backups` to see the backups")
    record = {
        "name": name,
        "reason": reason[:500],
        "by": by or default_operator(),
        "at": iso(datetime.now(UTC)),
    }
    try:
        catalog.storage.put_json(pin_key(name), record, create_only=True)
    except ConflictError:
        old = get_pin(catalog.storage, name) or {}
        raise ConflictError(
            f"{name} is already pinned (by {old.get('by', '?')} at {old.get('at', '?')}: "
            f"{old.get('reason', '?')})",
            "unpin it first to change the reason",
        ) from None
    catalog.record("backup_pinned", name, record)
    return record


def unpin(catalog: CatalogStore, name: str, by: str | None = None) -> dict[str, Any]:
    name = validate_name(name)
    old = get_pin(catalog.storage, name)
    if old is None:
        raise NotFoundError(f"{name} is not pinned")
    catalog.storage.delete([pin_key(name)])
    record = {"name": name, "by": by or default_operator(), "was": old}
    catalog.record("backup_unpinned", name, record)
    return record
