"""In-flight markers: how a backup that was killed gets cleaned up by the next run.

A backup writes ``inflight/<name>.json`` (create-only) before its first byte and deletes it at the
end.  The marker names the host and pid and is refreshed while the upload runs.  A marker is stale
when its process is gone from this host, or when it has not been refreshed for
``stale_upload_seconds``; a stale marker's partial objects (volumes) are deleted and any multipart
upload under its name (older versions wrote one) is aborted.  A backup with a manifest is never touched.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from datetime import UTC, datetime, timedelta

from coldcopy.core.manifest import manifest_key
from coldcopy.core.times import iso, parse_iso
from coldcopy.errors import ColdCopyError, ConflictError, NotFoundError
from coldcopy.storage.store import ObjectStore

log = logging.getLogger(__name__)
PREFIX = "inflight/"
HEARTBEAT_SECONDS = 60.0


def marker_key(name: str) -> str:
    return f"{PREFIX}{name}.json"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _pid_namespace() -> str:
    """Pids are only comparable inside one pid namespace (containers share hostnames)."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


class Marker:
    """The in-flight marker, refreshed by a background thread from ``create()`` to ``remove()``
    (through pg_dump, the row counts and the roles alike) so no phase can look abandoned."""

    def __init__(self, storage: ObjectStore, name: str) -> None:
        self.storage, self.name = storage, name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _body(self) -> dict[str, object]:
        return {
            "name": self.name,
            "host": socket.gethostname(),
            "pidns": _pid_namespace(),
            "pid": os.getpid(),
            "heartbeat_at": iso(datetime.now(UTC)),
        }

    def create(self) -> None:
        try:
            self.storage.put_json(marker_key(self.name), self._body(), create_only=True)
        except ConflictError:
            raise ConflictError(f"a backup named {self.name} is already running") from None
        except ColdCopyError:
            # The PUT may have landed with its reply lost: the backup stops here, so take the marker
            # away now rather than leave it to the next backup's clean-up.
            with contextlib.suppress(ColdCopyError):
                self.storage.delete([marker_key(self.name)])
            raise
        self._thread = threading.Thread(target=self._beat, name="inflight-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                self.storage.put_json(marker_key(self.name), self._body())
            except ColdCopyError as exc:  # a missed heartbeat must not fail the backup
                log.warning("could not refresh the in-flight marker: %s", exc.message)

    def remove(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.storage.delete([marker_key(self.name)])


def marker_is_stale(marker: dict[str, object], modified: datetime, stale_after: float, now: datetime) -> bool:
    same_host = (
        marker.get("host") == socket.gethostname()
        and marker.get("pidns") == _pid_namespace()
        and isinstance(marker.get("pid"), int)
    )
    if same_host and not _pid_alive(int(str(marker["pid"]))):
        return True
    beat = marker.get("heartbeat_at")
    last = parse_iso(beat) if isinstance(beat, str) else modified
    return now - max(last, modified) > timedelta(seconds=stale_after)


def remove_partial(storage: ObjectStore, name: str) -> int:
    """Abort the uploads and delete the objects of a backup that never got a manifest."""
    if storage.exists(manifest_key(name)):
        return 0
    for key, upload_id, _ in storage.incomplete_uploads(f"backups/{name}/"):
        storage.abort_upload(key, upload_id)
    keys = [o.key for o in storage.list(f"backups/{name}/")]
    if keys:
        storage.delete(keys)
    return len(keys)


def clean_stale(storage: ObjectStore, stale_after: float, now: datetime | None = None) -> list[str]:
    """Clean up after killed backups; returns the names cleaned."""
    now = now or datetime.now(UTC)
    cleaned: list[str] = []
    for obj in storage.list(PREFIX):
        try:
            marker = storage.get_json(obj.key)
        except (NotFoundError, ValueError):
            continue
        name = str(marker.get("name", ""))
        if (
            not name
            or marker_key(name) != obj.key
            or not marker_is_stale(marker, obj.last_modified, stale_after, now)
        ):
            continue
        remove_partial(storage, name)
        storage.delete([obj.key])
        log.info("cleaned up the interrupted backup %s", name)
        cleaned.append(name)
    # Uploads with no marker at all (for example a marker deleted by hand) once they are old.
    for key, upload_id, initiated in storage.incomplete_uploads("backups/"):
        name = key.split("/")[1] if key.count("/") >= 2 else ""
        if name and not storage.exists(marker_key(name)) and now - initiated > timedelta(seconds=stale_after):
            storage.abort_upload(key, upload_id)
            cleaned.append(name)
    return cleaned
