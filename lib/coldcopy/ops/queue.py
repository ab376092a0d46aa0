"""The job queue and run records in the bucket: the I/O half of :mod:`coldcopy.core.jobs`.

Keys, relative to the cluster prefix:

``jobs/slots/<kind>/<YYYY-MM-DDTHH:MMZ>.json``
    create-only: a scheduled slot is enqueued at most once, however many ticks overlap.
``jobs/queue/<YYYYmmddTHHMMSSZ>-<run_id>.json``
    the job (run_id, kind, params, enqueued_at, slot); deleted once its run is finished.
``jobs/claims/<run_id>.json``
    create-only: exactly one worker runs a job even when workers race.  Claims are kept (a run
    id is never claimed twice) until cleanup prunes them with finished runs and old slots, after
    COLDCOPY_JOB_HISTORY_DAYS (``prunable``).
``runs/<run_id>.json``
    the run's state: queued → running → succeeded | failed, with started_at, heartbeat_at,
    finished_at, and result or error.  After it is queued, only its own worker rewrites it (a
    heartbeat at most once a minute: Spaces limits writes to one object), except that the tick
    rewrites it once to mark a silent run failed.

A finished run is also written to the journal (``CatalogStore.record("run", …)``) so monitoring
reads outcomes from there.  docs/architecture.md shows where the queue sits.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any

from coldcopy.core.jobs import (
    CLAIMS,
    QUEUE,
    QUEUED,
    RUNNING,
    RUNS,
    SLOTS,
    STALE_MARK,
    Job,
    Run,
    check_params,
    claim_key,
    new_run_id,
    queue_key,
    queued_run_id,
    run_id_of,
    run_ids_after,
    run_key,
    select_prunable,
    slot_key,
    validate_kind,
)
from coldcopy.core.schedule import parse_slot_time
from coldcopy.core.times import iso, utc_now
from coldcopy.errors import ColdCopyError, ConflictError, IntegrityError, InvalidNameError, NotFoundError
from coldcopy.storage.catalog_store import CatalogStore
from coldcopy.storage.store import ObjectStore

log = logging.getLogger(__name__)


def _create(storage: ObjectStore, key: str, obj: Any) -> bool:
    """Create-only write; False when the key already exists."""
    try:
        storage.put_json(key, obj, create_only=True)
        return True
    except ConflictError:
        return False


# -- enqueueing ------------------------------------------------------------------------------------
def enqueue(
    storage: ObjectStore,
    kind: str,
    params: dict[str, Any] | None = None,
    *,
    slot: str | None = None,
    now: datetime | None = None,
) -> str | None:
    """Queue a job; returns its run id, or None when ``slot`` was already enqueued."""
    at = now or utc_now()
    kind = validate_kind(kind)
    checked = check_params(params)
    if slot is None:
        job = Job(new_run_id(at), kind, checked, iso(at), None)
    else:
        slot_kind, _, slot_at = slot.partition("/")
        if slot_kind != kind:
            raise InvalidNameError(f"slot {slot!r} does not belong to job kind {kind!r}")
        job = Job(new_run_id(parse_slot_time(slot_at), seed=slot), kind, checked, iso(at), slot)
        if not _create(storage, slot_key(slot), job.to_dict()):
            _complete_slot(storage, slot)
            return None
    _publish(storage, job)
    log.info("queued %s job %s%s", kind, job.run_id, f" for slot {slot}" if slot else "")
    return job.run_id


def _publish(storage: ObjectStore, job: Job) -> None:
    # The run record first, then the queue entry: a queued job always has a run record.
    _create(storage, run_key(job.run_id), job.run().to_dict())
    _create(storage, job.queue_key, job.to_dict())


def _complete_slot(storage: ObjectStore, slot: str) -> None:
    """A slot already taken: finish its enqueueing if the tick that took it died half-way."""
    try:
        job = Job.from_dict(storage.get_json(slot_key(slot)))
    except (NotFoundError, ValueError) as exc:
        log.warning("slot %s is taken but its record is unreadable (%s)", slot, exc)
        return
    run = get_run(storage, job.run_id)
    if run is None or (run.state == QUEUED and not storage.exists(job.queue_key)):
        log.warning("slot %s was taken but its job %s was never queued; queueing it now", slot, job.run_id)
        _publish(storage, job)


# -- reading ---------------------------------------------------------------------------------------
def get_run(storage: ObjectStore, run_id: str) -> Run | None:
    """The run record, or None when there is none; IntegrityError when it cannot be read."""
    key = run_key(run_id)  # validates the grammar first
    try:
        raw = storage.get_json(key)
    except NotFoundError:
        return None
    except ValueError:
        raise IntegrityError(f"the record of run {run_id} is not valid JSON") from None
    if not isinstance(raw, dict):
        raise IntegrityError(f"the record of run {run_id} is not a JSON object")
    return Run.from_dict(raw)


def list_runs(storage: ObjectStore, *, limit: int = 20, since: datetime | None = None) -> list[Run]:
    """The newest runs first (at most ``limit``), optionally only those queued after ``since``."""
    after = f"{RUNS}{run_ids_after(since)}" if since else None
    ids = sorted(
        (i for o in storage.list(RUNS, start_after=after) if (i := run_id_of(o.key, RUNS))), reverse=True
    )

    def one(run_id: str) -> Run:
        try:
            run = get_run(storage, run_id)
            return run or Run.unreadable(run_id, "record vanished")
        except ColdCopyError as exc:
            return Run.unreadable(run_id, exc.message)

    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(one, ids[: max(0, limit)]))


def queued_ids(storage: ObjectStore) -> list[str]:
    """Run ids in the queue, oldest first (claimed ones included)."""
    return sorted(i for o in storage.list(QUEUE) if (i := queued_run_id(o.key)))


def claimed_ids(storage: ObjectStore, among: Iterable[str]) -> set[str]:
    """Which of ``among`` have a claim: one listing, starting at the oldest id's time."""
    wanted = set(among)
    if not wanted:
        return set()
    after = f"{CLAIMS}{min(wanted)[:10]}"
    return {i for o in storage.list(CLAIMS, start_after=after) if (i := run_id_of(o.key, CLAIMS))} & wanted


def pending(storage: ObjectStore) -> list[str]:
    """Queued run ids that no worker has claimed yet."""
    ids = queued_ids(storage)
    claimed = claimed_ids(storage, ids)
    return [i for i in ids if i not in claimed]


# -- claiming and running --------------------------------------------------------------------------
def claim_next(
    storage: ObjectStore, worker_id: str, *, now: datetime | None = None
) -> tuple[Job, Run] | None:
    """Claim the oldest unclaimed job; returns it with its (running) run record, or None."""
    for run_id in pending(storage):
        key = queue_key(run_id)
        try:
            raw = storage.get_json(key)
        except NotFoundError:
            continue  # finished or cleaned up since the listing
        except ValueError:
            raw = None
        at = now or utc_now()
        claim = {"run_id": run_id, "worker": worker_id, "claimed_at": iso(at)}
        if not _create(storage, claim_key(run_id), claim):
            continue  # another worker won it
        try:
            job = Job.from_dict(raw)
            if job.run_id != run_id:
                raise ValueError(f"the entry names run {job.run_id}")
        except (ValueError, ColdCopyError) as exc:
            log.error("queue entry %s is unreadable (%s); recorded as failed", key, exc)
            bad = Run(run_id, "unknown")
            finish(storage, bad, ok=False, error=f"the queue entry is unreadable: {exc}", now=at)
            continue
        run = job.run().claimed(worker_id, at)
        storage.put_json(run_key(run_id), run.to_dict())
        log.info("worker %s claimed %s job %s", worker_id, job.kind, run_id)
        return job, run
    return None


def heartbeat(storage: ObjectStore, run: Run, *, now: datetime | None = None) -> Run | None:
    """Refresh the run's heartbeat in the bucket; the refreshed run.

    None, without writing, when the stored run is no longer running: the tick marked it failed
    because it was silent too long.
    """
    current = get_run(storage, run.run_id)
    if current is not None and current.state != RUNNING:
        return None
    beat = run.beat(now or utc_now())
    storage.put_json(run_key(run.run_id), beat.to_dict())
    return beat


def finish(
    storage: ObjectStore,
    run: Run,
    *,
    ok: bool,
    result: dict[str, Any] | None = None,
    error: str | None = None,
    now: datetime | None = None,
) -> Run:
    """Record the outcome: the run record, a journal record, then the queue entry goes away."""
    at = now or utc_now()
    done = run.outcome(ok=ok, at=at, result=result, error=error)
    storage.put_json(run_key(done.run_id), done.to_dict())
    try:
        CatalogStore(storage).record("run", done.run_id, done.journal_entry(), when=at)
    except ColdCopyError as exc:
        log.warning(
            "run %s is recorded, but its journal record could not be written: %s", done.run_id, exc.message
        )
    try:
        storage.delete([queue_key(done.run_id)])
    except ColdCopyError as exc:
        log.warning(
            "could not remove the queue entry of finished run %s (%s); the tick will",
            done.run_id,
            exc.message,
        )
    return done


# -- the tick's housekeeping -----------------------------------------------------------------------
def mark_stale(storage: ObjectStore, now: datetime, stale_after: timedelta) -> list[str]:
    """Mark claimed runs whose worker went silent as failed; drop queue entries of finished runs."""
    out = []
    for run_id in sorted(claimed_ids(storage, queued_ids(storage))):
        run = get_run(storage, run_id)
        if run is not None and run.finished:
            storage.delete([queue_key(run_id)])  # its worker died between recording and cleaning up
            continue
        probe = run
        if run is None or run.state == QUEUED:
            # Claimed, but the worker never wrote "running": its claim time is its last sign of life.
            try:
                claim = storage.get_json(claim_key(run_id))
            except (NotFoundError, ValueError):
                claim = {}
            claimed_at = claim.get("claimed_at") if isinstance(claim, dict) else None
            probe = Run(run_id, "unknown", state=RUNNING, heartbeat_at=claimed_at)
            run = run or Run(run_id, "unknown", state=RUNNING)
        if probe is None or not probe.is_stale(now, stale_after):
            continue
        last = probe.heartbeat_at or probe.started_at or "never"
        minutes = int(stale_after.total_seconds() // 60)
        error = (
            f"{STALE_MARK} {last} (more than {minutes} min): worker {run.worker or '?'} "
            f"presumably died; marked failed by the scheduler tick"
        )
        log.warning("run %s (%s): %s", run_id, run.kind, error)
        finish(storage, run, ok=False, error=error, now=now)
        out.append(run_id)
    return out


# -- pruning old records (the cleanup job) ---------------------------------------------------------
def prunable(storage: ObjectStore, cutoff: datetime) -> list[tuple[str, str]]:
    """The job records older than ``cutoff`` that may be deleted (reads only what is that old)."""
    stop = f"{RUNS}{run_ids_after(cutoff)}"
    runs: dict[str, str | None] = {}
    for o in storage.list(RUNS):
        if o.key >= stop:
            break  # run ids sort by time
        run_id = run_id_of(o.key, RUNS)
        if run_id is None:
            continue
        try:
            run = get_run(storage, run_id)
            runs[run_id] = run.state if run else None
        except ColdCopyError:
            runs[run_id] = None
    claims = [i for o in storage.list(CLAIMS) if (i := run_id_of(o.key, CLAIMS))]
    slots = []
    for o in storage.list(SLOTS):
        at = o.key.rsplit("/", 1)[-1].removesuffix(".json")
        try:
            slots.append((o.key, parse_slot_time(at)))
        except ValueError:
            continue
    return select_prunable(runs, claims, slots, set(queued_ids(storage)), cutoff)
