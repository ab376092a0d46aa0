"""The job queue and run records in the bucket (DESIGN.md §2 and §3).

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

Run ids are 26 characters of lowercase Crockford base32 — 48 bits of milliseconds then 80 bits
of randomness — so keys sort by time.  A scheduled slot's run id is derived from the slot, so
even two ticks that both believed they won a slot would write the same job, not two.

A finished run is also written to the journal (``CatalogStore.record("run", …)``) so monitoring
reads outcomes from there.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import secrets
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from coldcopy.core.schedule import is_stale, parse_slot_time
from coldcopy.errors import ColdCopyError, ConflictError, IntegrityError, InvalidNameError, NotFoundError
from coldcopy.storage.s3 import Storage

log = logging.getLogger(__name__)

QUEUE = "jobs/queue/"
SLOTS = "jobs/slots/"
CLAIMS = "jobs/claims/"
RUNS = "runs/"
QUEUED, RUNNING, SUCCEEDED, FAILED = "queued", "running", "succeeded", "failed"
TERMINAL = frozenset({SUCCEEDED, FAILED})
MAX_PARAMS_BYTES = 4096

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lowercase
_RUN_ID_RE = re.compile(r"[0-9a-z]{26}")
_KIND_RE = re.compile(r"[a-z][a-z0-9-]{0,39}")
_STAMP = "%Y%m%dT%H%M%SZ"
_QUEUE_RE = re.compile(r"jobs/queue/\d{8}T\d{6}Z-(?P<id>[0-9a-z]{26})\.json")


# -- names -----------------------------------------------------------------------------------------
def _b32(value: int, length: int) -> str:
    out = []
    for _ in range(length):
        out.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(out))


def new_run_id(when: datetime, seed: str | None = None) -> str:
    """A time-ordered run id; deterministic when ``seed`` is given (scheduled slots)."""
    ms = int(when.timestamp() * 1000)
    rand = hashlib.sha256(seed.encode()).digest()[:10] if seed is not None else secrets.token_bytes(10)
    return _b32(ms, 10) + _b32(int.from_bytes(rand, "big"), 16)


def run_id_time(run_id: str) -> datetime:
    ms = 0
    for ch in validate_run_id(run_id)[:10]:
        index = _ALPHABET.find(ch)
        if index < 0:
            raise InvalidNameError(f"invalid run id {run_id!r}")
        ms = ms * 32 + index
    return datetime.fromtimestamp(ms / 1000, UTC)


def validate_run_id(text: object) -> str:
    """Run ids arrive from URLs and the command line: check them before they touch a key."""
    if not isinstance(text, str) or not _RUN_ID_RE.fullmatch(text):
        shown = text[:40] if isinstance(text, str) else type(text).__name__
        raise InvalidNameError(
            f"invalid run id {shown!r}",
            "run ids are 26 lowercase letters and digits; `coldcopy runs` lists them",
        )
    return text


def validate_kind(text: object) -> str:
    if not isinstance(text, str) or not _KIND_RE.fullmatch(text):
        shown = text[:40] if isinstance(text, str) else type(text).__name__
        raise InvalidNameError(f"invalid job kind {shown!r}", "kinds look like backup-full or verify")
    return text


def run_key(run_id: str) -> str:
    return f"{RUNS}{validate_run_id(run_id)}.json"


def queue_key(run_id: str) -> str:
    return f"{QUEUE}{run_id_time(run_id).strftime(_STAMP)}-{run_id}.json"


def claim_key(run_id: str) -> str:
    return f"{CLAIMS}{validate_run_id(run_id)}.json"


def slot_key(slot: str) -> str:
    kind, _, at = slot.partition("/")
    parse_slot_time(at)  # ValueError on anything but YYYY-MM-DDTHH:MMZ
    return f"{SLOTS}{validate_kind(kind)}/{at}.json"


def iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _now(now: datetime | None) -> datetime:
    return (now or datetime.now(UTC)).astimezone(UTC)


# -- the job ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Job:
    run_id: str
    kind: str
    params: dict[str, Any] = field(default_factory=dict)
    enqueued_at: str = ""
    slot: str | None = None

    @property
    def queue_key(self) -> str:
        return queue_key(self.run_id)

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "kind": self.kind,
            "params": self.params,
            "enqueued_at": self.enqueued_at,
            "slot": self.slot,
        }

    @classmethod
    def from_dict(cls, d: Any) -> Job:
        if not isinstance(d, dict) or not isinstance(d.get("params", {}), dict):
            raise ValueError("a job must be a JSON object with object params")
        slot = d.get("slot")
        return cls(
            validate_run_id(d.get("run_id")),
            validate_kind(d.get("kind")),
            dict(d.get("params") or {}),
            str(d.get("enqueued_at", "")),
            str(slot) if slot else None,
        )

    def run_record(self) -> dict[str, Any]:
        return {
            **self.to_dict(),
            "state": QUEUED,
            "started_at": None,
            "heartbeat_at": None,
            "finished_at": None,
            "worker": None,
            "result": None,
            "error": None,
        }


def check_params(params: dict[str, Any] | None) -> dict[str, Any]:
    """Params are a small JSON object; a ``name`` is a backup name and must follow its grammar."""
    from coldcopy.core.names import validate_name

    params = dict(params or {})
    if not all(isinstance(k, str) for k in params):
        raise InvalidNameError("job parameters must have string keys")
    if len(json.dumps(params, default=str)) > MAX_PARAMS_BYTES:
        raise InvalidNameError(f"job parameters are larger than {MAX_PARAMS_BYTES} bytes")
    if params.get("name") is not None:
        params["name"] = validate_name(params["name"])
    return params


def _create(storage: Storage, key: str, obj: Any) -> bool:
    """Create-only write; False when the key already exists."""
    try:
        storage.put_json(key, obj, create_only=True)
        return True
    except ConflictError:
        return False


# -- enqueueing ------------------------------------------------------------------------------------
def enqueue(
    storage: Storage,
    kind: str,
    params: dict[str, Any] | None = None,
    *,
    slot: str | None = None,
    now: datetime | None = None,
) -> str | None:
    """Queue a job; returns its run id, or None when ``slot`` was already enqueued."""
    now = _now(now)
    kind = validate_kind(kind)
    params = check_params(params)
    if slot is None:
        job = Job(new_run_id(now), kind, params, iso(now), None)
    else:
        slot_kind, _, at = slot.partition("/")
        if slot_kind != kind:
            raise InvalidNameError(f"slot {slot!r} does not belong to job kind {kind!r}")
        job = Job(new_run_id(parse_slot_time(at), seed=slot), kind, params, iso(now), slot)
        if not _create(storage, slot_key(slot), job.to_dict()):
            _complete_slot(storage, slot)
            return None
    _publish(storage, job)
    log.info("queued %s job %s%s", kind, job.run_id, f" for slot {slot}" if slot else "")
    return job.run_id


def _publish(storage: Storage, job: Job) -> None:
    # The run record first, then the queue entry: a queued job always has a run record.
    _create(storage, run_key(job.run_id), job.run_record())
    _create(storage, job.queue_key, job.to_dict())


def _complete_slot(storage: Storage, slot: str) -> None:
    """A slot already taken: finish its enqueueing if the tick that took it died half-way."""
    try:
        job = Job.from_dict(storage.get_json(slot_key(slot)))
    except (NotFoundError, ValueError) as exc:
        log.warning("slot %s is taken but its record is unreadable (%s)", slot, exc)
        return
    run = get_run(storage, job.run_id)
    if run is None or (run.get("state") == QUEUED and not storage.exists(job.queue_key)):
        log.warning("slot %s was taken but its job %s was never queued; queueing it now", slot, job.run_id)
        _publish(storage, job)


# -- reading ---------------------------------------------------------------------------------------
def get_run(storage: Storage, run_id: str) -> dict[str, Any] | None:
    key = run_key(run_id)  # validates the grammar first
    try:
        run = storage.get_json(key)
    except NotFoundError:
        return None
    except ValueError:
        raise IntegrityError(f"the record of run {run_id} is not valid JSON") from None
    if not isinstance(run, dict):
        raise IntegrityError(f"the record of run {run_id} is not a JSON object")
    return run


def list_runs(storage: Storage, *, limit: int = 20, since: datetime | None = None) -> list[dict[str, Any]]:
    """The newest runs first (at most ``limit``), optionally only those queued after ``since``."""
    after = f"{RUNS}{new_run_id(since)[:10]}" if since else None
    ids = sorted(
        (
            o.key[len(RUNS) : -5]
            for o in storage.list(RUNS, start_after=after)
            if o.key.endswith(".json") and _RUN_ID_RE.fullmatch(o.key[len(RUNS) : -5])
        ),
        reverse=True,
    )

    def one(run_id: str) -> dict[str, Any]:
        try:
            run = get_run(storage, run_id)
            return run or {"run_id": run_id, "state": "unknown", "error": "record vanished"}
        except ColdCopyError as exc:
            return {"run_id": run_id, "state": "unknown", "error": exc.message}

    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(one, ids[: max(0, limit)]))


def queued_ids(storage: Storage) -> list[str]:
    """Run ids in the queue, oldest first (claimed ones included)."""
    out = []
    for obj in storage.list(QUEUE):
        m = _QUEUE_RE.fullmatch(obj.key)
        if m:
            out.append(m["id"])
    return sorted(out)


def claimed_ids(storage: Storage, among: Iterable[str]) -> set[str]:
    """Which of ``among`` have a claim: one listing, starting at the oldest id's time."""
    wanted = set(among)
    if not wanted:
        return set()
    after = f"{CLAIMS}{min(wanted)[:10]}"
    return {o.key[len(CLAIMS) : -5] for o in storage.list(CLAIMS, start_after=after)} & wanted


def pending(storage: Storage) -> list[str]:
    """Queued run ids that no worker has claimed yet."""
    ids = queued_ids(storage)
    claimed = claimed_ids(storage, ids)
    return [i for i in ids if i not in claimed]


# -- claiming and running --------------------------------------------------------------------------
def claim_next(
    storage: Storage, worker_id: str, *, now: datetime | None = None
) -> tuple[Job, dict[str, Any]] | None:
    """Claim the oldest unclaimed job; returns it with its (running) run record, or None."""
    for run_id in pending(storage):
        key = queue_key(run_id)
        try:
            raw = storage.get_json(key)
        except NotFoundError:
            continue  # finished or cleaned up since the listing
        except ValueError:
            raw = None
        at = _now(now)
        claim = {"run_id": run_id, "worker": worker_id, "claimed_at": iso(at)}
        if not _create(storage, claim_key(run_id), claim):
            continue  # another worker won it
        try:
            job = Job.from_dict(raw)
            if job.run_id != run_id:
                raise ValueError(f"the entry names run {job.run_id}")
        except (ValueError, ColdCopyError) as exc:
            log.error("queue entry %s is unreadable (%s); recorded as failed", key, exc)
            bad = Job(run_id, "unknown", {}, "", None)
            finish(storage, bad.run_record(), ok=False, error=f"the queue entry is unreadable: {exc}", now=at)
            continue
        run = {
            **job.run_record(),
            "state": RUNNING,
            "started_at": iso(at),
            "heartbeat_at": iso(at),
            "worker": worker_id,
        }
        storage.put_json(run_key(run_id), run)
        log.info("worker %s claimed %s job %s", worker_id, job.kind, run_id)
        return job, run
    return None


def heartbeat(storage: Storage, run: dict[str, Any], *, now: datetime | None = None) -> bool:
    """Refresh ``run["heartbeat_at"]`` in the bucket (``run`` is updated in place).

    Returns False, without writing, when the stored run is no longer running: the tick marked it
    failed because it was silent too long.
    """
    current = get_run(storage, str(run["run_id"]))
    if current is not None and current.get("state") != RUNNING:
        return False
    run["heartbeat_at"] = iso(_now(now))
    storage.put_json(run_key(str(run["run_id"])), run)
    return True


def finish(
    storage: Storage,
    run: dict[str, Any],
    *,
    ok: bool,
    result: dict[str, Any] | None = None,
    error: str | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Record the outcome: the run record, a journal record, then the queue entry goes away."""
    from coldcopy.storage.catalog_store import CatalogStore

    at = _now(now)
    done = {
        **run,
        "state": SUCCEEDED if ok else FAILED,
        "finished_at": iso(at),
        "result": result,
        "error": None if ok else (error or "failed"),
    }
    started = done.get("started_at")
    if isinstance(started, str):
        done["duration_seconds"] = round(
            (at - datetime.fromisoformat(started.replace("Z", "+00:00"))).total_seconds(), 3
        )
    run_id = str(done["run_id"])
    storage.put_json(run_key(run_id), done)
    try:
        CatalogStore(storage).record(
            "run",
            run_id,
            {
                k: done.get(k)
                for k in (
                    "run_id",
                    "kind",
                    "state",
                    "slot",
                    "params",
                    "started_at",
                    "finished_at",
                    "duration_seconds",
                    "worker",
                    "error",
                    "result",
                )
            },
            when=at,
        )
    except ColdCopyError as exc:
        log.warning(
            "run %s is recorded, but its journal record could not be written: %s", run_id, exc.message
        )
    try:
        storage.delete([queue_key(run_id)])
    except ColdCopyError as exc:
        log.warning(
            "could not remove the queue entry of finished run %s (%s); the tick will", run_id, exc.message
        )
    return done


# -- the tick's housekeeping -----------------------------------------------------------------------
def mark_stale(storage: Storage, now: datetime, stale_after: timedelta) -> list[str]:
    """Mark claimed runs whose worker went silent as failed; drop queue entries of finished runs."""
    ids = queued_ids(storage)
    out = []
    for run_id in sorted(claimed_ids(storage, ids)):
        run = get_run(storage, run_id)
        if run is not None and run.get("state") in TERMINAL:
            storage.delete([queue_key(run_id)])  # its worker died between recording and cleaning up
            continue
        probe = run
        if run is None or run.get("state") == QUEUED:
            # Claimed, but the worker never wrote "running": its claim time is its last sign of life.
            try:
                claim = storage.get_json(claim_key(run_id))
            except (NotFoundError, ValueError):
                claim = {}
            claimed_at = claim.get("claimed_at") if isinstance(claim, dict) else None
            probe = {"state": RUNNING, "heartbeat_at": claimed_at}
            run = run or {**Job(run_id, "unknown").run_record(), "state": RUNNING}
        if probe is None or not is_stale(probe, now, stale_after):
            continue
        last = probe.get("heartbeat_at") or probe.get("started_at") or "never"
        minutes = int(stale_after.total_seconds() // 60)
        error = (
            f"no heartbeat since {last} (more than {minutes} min): worker {run.get('worker') or '?'} "
            f"presumably died; marked failed by the scheduler tick"
        )
        log.warning("run %s (%s): %s", run_id, run.get("kind"), error)
        finish(storage, run, ok=False, error=error, now=now)
        out.append(run_id)
    return out


# -- pruning old records (the cleanup job) ---------------------------------------------------------
def select_prunable(
    runs: dict[str, str | None],
    claims: Iterable[str],
    slots: Iterable[tuple[str, datetime]],
    queued: set[str],
    cutoff: datetime,
) -> list[tuple[str, str]]:
    """Which job records older than ``cutoff`` can go, with why.  Pure.

    ``runs`` maps run ids to their state (None: unreadable).  A run record goes once it is finished;
    a claim once its job left the queue (only queued jobs are ever claimed); a slot once it is older
    than any grace window, so no tick can find it due again.  Unreadable or unfinished runs stay.
    """
    out: list[tuple[str, str]] = []
    for run_id, state in sorted(runs.items()):
        if run_id_time(run_id) < cutoff and state in TERMINAL and run_id not in queued:
            out.append((run_key(run_id), f"run {state}, queued before {iso(cutoff)}"))
    for run_id in sorted(claims):
        if run_id_time(run_id) < cutoff and run_id not in queued:
            out.append((claim_key(run_id), f"claim of a job no longer queued, before {iso(cutoff)}"))
    for key, at in sorted(slots):
        if at < cutoff:
            out.append((key, f"schedule slot before {iso(cutoff)}: never due again"))
    return out


def prunable(storage: Storage, cutoff: datetime) -> list[tuple[str, str]]:
    """The job records older than ``cutoff`` that may be deleted (reads only what is that old)."""
    stop = f"{RUNS}{new_run_id(cutoff)[:10]}"
    runs: dict[str, str | None] = {}
    for o in storage.list(RUNS):
        run_id = o.key[len(RUNS) : -5]
        if o.key >= stop:
            break  # run ids sort by time
        if not (o.key.endswith(".json") and _RUN_ID_RE.fullmatch(run_id)):
            continue
        try:
            run = get_run(storage, run_id)
            runs[run_id] = str(run.get("state")) if run else None
        except ColdCopyError:
            runs[run_id] = None
    claims = [
        o.key[len(CLAIMS) : -5]
        for o in storage.list(CLAIMS)
        if o.key.endswith(".json") and _RUN_ID_RE.fullmatch(o.key[len(CLAIMS) : -5])
    ]
    slots = []
    for o in storage.list(SLOTS):
        at = o.key.rsplit("/", 1)[-1].removesuffix(".json")
        try:
            slots.append((o.key, parse_slot_time(at)))
        except ValueError:
            continue
    return select_prunable(runs, claims, slots, set(queued_ids(storage)), cutoff)
