"""The composition root: from settings to what the commands work with.

A :class:`Context` is built once per command, job or request handler: the settings, the bucket
(``ObjectStore``), the catalog over it, and the master key derived from BACKUP_ENCRYPTION_KEY
(None when backups are not encrypted; derived on first use, because the KDF is deliberately slow
and many commands never touch encrypted data).  Everything below takes its parts as arguments.
"""

from __future__ import annotations

from functools import cached_property

from coldcopy.config import Settings
from coldcopy.storage.catalog_store import CatalogStore
from coldcopy.storage.store import ObjectStore
from coldcopy.stream.crypto import MasterKey


class Context:
    def __init__(self, settings: Settings, storage: ObjectStore) -> None:
        self.settings = settings
        self.storage = storage
        self.catalog = CatalogStore(storage)

    @cached_property
    def key(self) -> MasterKey | None:
        return settings_key(self.settings)


def settings_key(settings: Settings) -> MasterKey | None:
    """The key that writes (BACKUP_ENCRYPTION_KEY) holding the previous keys, which still read."""
    if not settings.encrypted:
        return None
    key = MasterKey.from_passphrase(settings.encryption_key.reveal())
    previous = tuple(MasterKey.from_passphrase(p.reveal()) for p in settings.previous_passphrases)
    return key.with_previous(previous) if previous else key


def open_context(settings: Settings, storage: ObjectStore | None = None) -> Context:
    """The context of ``settings``: its bucket (or ``storage``: tests pass a MemoryStore).  Its key
    is derived on first use (a backup derives it in the background and sets it)."""
    if storage is None:
        # Late: botocore takes 0.2-0.4 s to import and set up, so a backup opens its bucket in a
        # thread while pg_dump starts (backup/session.py), and commands given a store never load it.
        from coldcopy.storage.s3 import open_store

        storage = open_store(settings)
    return Context(settings, storage)
