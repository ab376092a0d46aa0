"""The change archive's health (``state/changes-status.json``) and the drain loop the schedule runs.

Each drain run writes the health once (one small rewrite per run: Spaces limits writes to one
object), success or failure; the tick, ``/status``, ``/metrics`` and ``/alerts`` read it.  The
window runs from the oldest logical backup whose snapshot the stream extends (taken after the
stream began) to the newest archived commit.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pg8000.native

from coldcopy.changes.drain import DrainResult, Fault, drain
from coldcopy.changes.health import load_health
from coldcopy.changes.slot import setup, slot_state
from coldcopy.config import Settings, redact
from coldcopy.context import Context
from coldcopy.core.changes import (
    STATUS_KEY,
    ChangesHealth,
    SnapshotVisibility,
    slot_name,
    torn_down,
    window_backup,
)
from coldcopy.core.lsn import parse_lsn
from coldcopy.core.manifest import manifest_key
from coldcopy.core.names import LOGICAL_KINDS
from coldcopy.core.times import Clock, iso, parse_iso, utc_now
from coldcopy.errors import ColdCopyError, DatabaseError, NotFoundError
from coldcopy.postgres.client import Postgres

log = logging.getLogger(__name__)


def archive_slot(settings: Settings) -> str:
    return slot_name(settings.cluster, settings.db_name)


#: A logical backup's recorded snapshot never changes: read each manifest once per process (the
#: scheduled function drains four times a run, and a warm one runs again), not at every drain.
_visibility_lock = threading.Lock()
_visibility: dict[str, SnapshotVisibility | None] = {}  # "<bucket>/<prefix><name>" -> its snapshot


def dumps_with_visibility(ctx: Context) -> list[tuple[str, str, SnapshotVisibility]]:
    """Every catalogued logical backup that recorded its snapshot's visibility (each manifest read
    once per process)."""
    out = []
    for e in ctx.catalog.read_cached().entries():
        if e.kind not in LOGICAL_KINDS:
            continue
        key = f"{ctx.storage.bucket}/{ctx.storage.prefix}{e.name}"
        with _visibility_lock:
            known = key in _visibility
            vis = _visibility.get(key)
        if not known:
            try:
                extra = ctx.storage.get_json(manifest_key(e.name)).get("extra") or {}
            except (NotFoundError, ValueError):
                continue  # not cached: a manifest being written may appear later
            raw = extra.get("snapshot_visibility")
            vis = SnapshotVisibility.from_dict(raw) if isinstance(raw, dict) else None
            with _visibility_lock:
                _visibility[key] = vis
        if vis is not None:
            out.append((e.name, e.finished_at, vis))
    return out


def after_drain(ctx: Context, prev: ChangesHealth | None, r: DrainResult, now: datetime) -> ChangesHealth:
    """The health after a successful drain (after a teardown, a new stream: nothing carries over)."""
    h = prev if prev is not None and prev.in_use else ChangesHealth(r.slot, iso(now))
    h.slot, h.checked_at = r.slot, iso(now)
    h.slot_exists, h.slot_invalidated, h.wal_status = True, False, "reserved"
    h.lag_bytes, h.confirmed_lsn = r.lag_bytes, r.confirmed_lsn
    h.last_drain_at = r.heartbeat_at
    h.last_error, h.last_error_at, h.failing_since = "", None, None
    h.consecutive_failures = 0
    h.fingerprint = r.fingerprint or h.fingerprint
    h.left_out, h.large_objects = r.left_out, r.large_objects
    h.batches_stored = len(r.batches)
    for b in r.batches:
        if h.last_end_lsn and parse_lsn(b.start_lsn) != parse_lsn(h.last_end_lsn) and not b.resumed:
            log.warning(
                "the change stream restarts at %s (the previous batch ended at %s)",
                b.start_lsn,
                h.last_end_lsn,
            )
            h.gap_since = h.gap_since or iso(now)
            h.stream_start_lsn = b.start_lsn
        h.stream_start_lsn = h.stream_start_lsn or b.start_lsn
        h.last_end_lsn = b.end_lsn
    if r.untracked_ddl:
        h.untracked_ddl = (h.untracked_ddl + r.untracked_ddl)[-20:]
        h.untracked_since = h.untracked_since or iso(now)
    h.window_end = r.heartbeat_at if h.stream_start_lsn else None
    dumps = dumps_with_visibility(ctx)
    fit = window_backup(dumps, h.stream_start_lsn)
    h.window_backup, h.window_start = fit if fit else ("", None)
    newest_dump = max((f for _, f, _ in dumps), default=None)
    if h.gap_since and fit and parse_iso(fit[1]) > parse_iso(h.gap_since):
        h.gap_since = None  # a dump after the gap: the window restarted there
    if h.untracked_since and newest_dump and parse_iso(newest_dump) > parse_iso(h.untracked_since):
        h.untracked_ddl, h.untracked_since = [], None
    return h


def after_failure(
    ctx: Context, prev: ChangesHealth | None, slot: str, message: str, now: datetime
) -> ChangesHealth:
    """The health after a drain that failed with ``message`` (already redacted)."""
    h = prev if prev is not None and prev.in_use else ChangesHealth(slot, iso(now))
    h.checked_at = iso(now)
    h.last_error, h.last_error_at = message[:500], iso(now)
    h.failing_since = h.failing_since or iso(now)
    h.consecutive_failures += 1
    try:
        with Postgres(ctx.settings).session() as conn:
            st = slot_state(conn, slot)
        h.slot_exists, h.wal_status, h.lag_bytes, h.max_keep_bytes = (
            st.exists,
            st.wal_status,
            st.lag_bytes,
            st.max_keep_bytes,
        )
        h.slot_invalidated = st.invalidated
        if not st.exists or st.invalidated:
            h.gap_since = h.gap_since or iso(now)
    except ColdCopyError:
        pass  # the database is unreachable: the error says so
    return h


def drain_and_record(
    ctx: Context, now: Clock = utc_now, fault: Fault | None = None, max_batches: int | None = None
) -> DrainResult:
    """One drain of this cluster's slot, its health written whatever happens.  A slot lost without
    a teardown (missing, or invalidated by max_slot_wal_keep_size) is re-created first: the stream
    restarts there with a gap, which the slot-lost alert reports until a logical backup taken
    after it (the tick enqueues one: ``core/changes.restart_backup_at``) starts the window again."""
    settings = ctx.settings
    slot = archive_slot(settings)
    prev = load_health(ctx.storage)
    try:
        with Postgres(settings).session() as conn:
            st = slot_state(conn, slot)
            if prev is not None and not st.exists and not prev.in_use:
                raise DatabaseError(
                    f"the change archive was torn down at {prev.torn_down_at} (no slot {slot})",
                    "run `coldcopy changes setup` to start it again, then take a logical backup",
                )
            fp = _fingerprint_of(prev)
            if prev is not None and prev.in_use and (not st.exists or st.invalidated):
                prev, fp = restart_stream(conn, prev, st.invalidated, now()), ""
            result = drain(ctx, conn, slot, now, fault, max_batches, fp)
            keep = slot_state(conn, slot).max_keep_bytes
    except ColdCopyError as exc:
        _record_failure(ctx, prev, slot, redact(exc.message, settings), now())
        raise
    except Exception as exc:
        _record_failure(ctx, prev, slot, redact(f"{type(exc).__name__}: {exc}", settings), now())
        raise
    h = after_drain(ctx, prev, result, now())
    h.max_keep_bytes = keep
    last = [b for b in result.batches if b.transactions]
    if last:
        rec = ctx.storage.get_json(last[-1].key)
        h.newest_commit_at = rec.get("last_commit_at") or h.newest_commit_at
    ctx.storage.put_json(STATUS_KEY, h.to_dict())
    return result


def restart_stream(
    conn: pg8000.native.Connection, prev: ChangesHealth, invalidated: bool, now: datetime
) -> ChangesHealth:
    """Re-create a slot lost without a teardown (dropping an invalidated one first; the capture too,
    if it went with it); the health marks the gap from now."""
    what = "was invalidated (it fell behind max_slot_wal_keep_size)" if invalidated else "is missing"
    log.warning(
        "the replication slot %s %s: re-creating it; changes since %s are lost and the change window "
        "restarts at the next logical backup",
        prev.slot,
        what,
        prev.window_end or "the start",
    )
    if invalidated:
        conn.run("SELECT pg_drop_replication_slot(:s)", s=prev.slot)
    setup(conn, prev.slot)
    prev.gap_since = prev.gap_since or iso(now)
    return prev


def _fingerprint_of(prev: ChangesHealth | None) -> str | None:
    """The schema fingerprint the stream ended with at the last drain; None: look it up in the
    newest batch; "": none to compare with (a new stream after a teardown)."""
    if prev is not None and not prev.in_use:
        return ""
    return prev.fingerprint if prev is not None and prev.fingerprint else None


def _record_failure(ctx: Context, prev: ChangesHealth | None, slot: str, message: str, now: datetime) -> None:
    """Store the health after a failed drain, unless a teardown recorded itself meanwhile (a drain
    that loses its slot to ``coldcopy changes teardown`` mid-run is not a lost slot)."""
    current = load_health(ctx.storage)
    if current is not None and not current.in_use:
        return
    ctx.storage.put_json(STATUS_KEY, after_failure(ctx, prev, slot, message, now).to_dict())


def record_setup(ctx: Context, slot: str, now: datetime) -> ChangesHealth:
    """Store that the archive is set up (kept as is when it already is in use): from now on the
    stale rule watches it, so a slot that no drain ever reads alerts instead of filling the disk."""
    prev = load_health(ctx.storage)
    if prev is not None and prev.in_use:
        return prev
    h = ChangesHealth(slot, iso(now))
    ctx.storage.put_json(STATUS_KEY, h.to_dict())
    return h


def record_teardown(ctx: Context, slot: str, now: datetime) -> ChangesHealth:
    """Store that the archive is being torn down on purpose (before the slot is dropped: a drain
    that then finds no slot stands down instead of raising the slot-lost alert)."""
    h = torn_down(slot, iso(now))
    ctx.storage.put_json(STATUS_KEY, h.to_dict())
    return h


def archive_in_use(ctx: Context) -> bool:
    """Whether this cluster has a change archive to drain: its health was stored and it was not
    torn down since (then a missing slot is a lost one, and the drain records it for the alert),
    or its slot exists (set up, perhaps again after a teardown).

    False is a deployment that never ran ``coldcopy changes setup``, or ran ``teardown`` since:
    the archive is optional, so the scheduled drain then does nothing and stores nothing."""
    h = load_health(ctx.storage)
    if h is not None and h.in_use:
        return True
    with Postgres(ctx.settings).session() as conn:
        return slot_state(conn, archive_slot(ctx.settings)).exists


def drain_loop(
    ctx: Context,
    budget_seconds: float,
    now: Clock = utc_now,
    sleep: Callable[[float], None] = time.sleep,
    monotonic: Callable[[], float] = time.monotonic,
) -> dict[str, Any]:
    """Drain every ``COLDCOPY_CHANGES_INTERVAL_SECONDS`` until ``budget_seconds`` would pass (the
    scheduled function: triggered every minute, it drains four times a minute by default)."""
    interval = ctx.settings.changes_interval_seconds
    t0 = monotonic()
    runs: list[dict[str, Any]] = []
    while True:
        started = monotonic()
        try:
            r = drain_and_record(ctx, now)
            runs.append({"at": r.heartbeat_at, "transactions": r.transactions, "batches": len(r.batches)})
        except ColdCopyError as exc:
            runs.append({"error": redact(exc.message, ctx.settings)})
            break
        took = monotonic() - started
        if monotonic() - t0 + max(interval - took, 0) + took > budget_seconds:
            break
        sleep(max(interval - took, 0))
    return {"drains": runs}
