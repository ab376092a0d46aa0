"""The job system's grammar: run ids, the keys of queue, claims, slots and runs, jobs and their
typed run records, and which old records may be pruned.  Pure: no I/O (``coldcopy.ops.queue`` is
the bucket half).

Run ids are 26 characters of lowercase Crockford base32 — 48 bits of milliseconds then 80 bits
of randomness — so keys sort by time.  A scheduled slot's run id is derived from the slot, so
even two ticks that both believed they won a slot would write the same job, not two.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from coldcopy.core.names import validate_name
from coldcopy.core.schedule import parse_slot_time
from coldcopy.core.times import iso, parse_iso
from coldcopy.errors import InvalidNameError

QUEUE = "jobs/queue/"
SLOTS = "jobs/slots/"
CLAIMS = "jobs/claims/"
RUNS = "runs/"
QUEUED, RUNNING, SUCCEEDED, FAILED = "queued", "running", "succeeded", "failed"
TERMINAL = frozenset({SUCCEEDED, FAILED})
MAX_PARAMS_BYTES = 4096
STALE_MARK = "no heartbeat since"  # how the error of a run the tick failed for silence begins

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lowercase
RUN_ID_RE = re.compile(r"[0-9a-z]{26}")
_KIND_RE = re.compile(r"[a-z][a-z0-9-]{0,39}")
_STAMP = "%Y%m%dT%H%M%SZ"
_QUEUE_RE = re.compile(r"jobs/queue/\d{8}T\d{6}Z-(?P<id>[0-9a-z]{26})\.json")
# What the journal keeps of a finished run.
_JOURNALED = (
    "run_id", "kind", "state", "slot", "params", "started_at", "finished_at", "duration_seconds",
    "worker", "error", "result",
)  # fmt: skip


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
    """When a run id was made (its first 48 bits)."""
    ms = 0
    for ch in validate_run_id(run_id)[:10]:
        index = _ALPHABET.find(ch)
        if index < 0:
            raise InvalidNameError(f"invalid run id {run_id!r}")
        ms = ms * 32 + index
    return datetime.fromtimestamp(ms / 1000, UTC)


def run_ids_after(when: datetime) -> str:
    """The prefix every run id made at or after ``when`` sorts after (for listings' StartAfter)."""
    return new_run_id(when)[:10]


def validate_run_id(text: object) -> str:
    """Run ids arrive from URLs and the command line: check them before they touch a key."""
    if not isinstance(text, str) or not RUN_ID_RE.fullmatch(text):
        shown = text[:40] if isinstance(text, str) else type(text).__name__
        raise InvalidNameError(
            f"invalid run id {shown!r}",
            "run ids are 26 lowercase letters and digits; `coldcopy runs` lists them",
        )
    return text


def validate_kind(text: object) -> str:
    """A job kind's grammar (``backup-full``, ``verify`` …), checked before it reaches a key."""
    if not isinstance(text, str) or not _KIND_RE.fullmatch(text):
        shown = text[:40] if isinstance(text, str) else type(text).__name__
        raise InvalidNameError(f"invalid job kind {shown!r}", "kinds look like backup-full or verify")
    return text


def run_key(run_id: str) -> str:
    """``runs/<run_id>.json``: the run's record."""
    return f"{RUNS}{validate_run_id(run_id)}.json"


def queue_key(run_id: str) -> str:
    """``jobs/queue/<time>-<run_id>.json``: the job while it waits or runs."""
    return f"{QUEUE}{run_id_time(run_id).strftime(_STAMP)}-{run_id}.json"


def claim_key(run_id: str) -> str:
    """``jobs/claims/<run_id>.json``: written create-only by the one worker that runs the job."""
    return f"{CLAIMS}{validate_run_id(run_id)}.json"


def slot_key(slot: str) -> str:
    """``jobs/slots/<kind>/<time>.json``: written create-only by the one tick that enqueues the slot."""
    kind, _, at = slot.partition("/")
    parse_slot_time(at)  # ValueError on anything but YYYY-MM-DDTHH:MMZ
    return f"{SLOTS}{validate_kind(kind)}/{at}.json"


def run_id_of(key: str, prefix: str) -> str | None:
    """The run id of ``<prefix><run_id>.json`` (runs/, jobs/claims/), or None for another key."""
    run_id = key[len(prefix) : -5] if key.startswith(prefix) and key.endswith(".json") else ""
    return run_id if RUN_ID_RE.fullmatch(run_id) else None


def queued_run_id(key: str) -> str | None:
    """The run id of a queue entry's key, or None for another key."""
    m = _QUEUE_RE.fullmatch(key)
    return m["id"] if m else None


def check_params(params: Mapping[str, Any] | None) -> dict[str, Any]:
    """Params are a small JSON object; a ``name`` is a backup name and must follow its grammar."""
    out = dict(params or {})
    if not all(isinstance(k, str) for k in out):
        raise InvalidNameError("job parameters must have string keys")
    if len(json.dumps(out, default=str)) > MAX_PARAMS_BYTES:
        raise InvalidNameError(f"job parameters are larger than {MAX_PARAMS_BYTES} bytes")
    if out.get("name") is not None:
        out["name"] = validate_name(out["name"])
    return out


# -- the job and its run ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Job:
    """A queue entry: what to run."""

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
        """A stored queue entry; ValueError or InvalidNameError when it is not one."""
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

    def run(self) -> Run:
        """Its run record while it waits in the queue."""
        return Run(self.run_id, self.kind, dict(self.params), self.enqueued_at, self.slot)


@dataclass(frozen=True)
class Run:
    """A run record (``runs/<run_id>.json``): queued → running → succeeded | failed.

    Each change is a new Run (:meth:`claimed`, :meth:`beat`, :meth:`finished`); the stored JSON has
    the same keys it always had (``duration_seconds`` once finished after a start, ``note`` when a
    worker has one).
    """

    run_id: str
    kind: str
    params: dict[str, Any] = field(default_factory=dict)
    enqueued_at: str = ""
    slot: str | None = None
    state: str = QUEUED
    started_at: str | None = None
    heartbeat_at: str | None = None
    finished_at: str | None = None
    worker: str | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    duration_seconds: float | None = None
    note: str | None = None
    readable: bool = True  # False: a listing's stand-in for a record that vanished or cannot be read

    @classmethod
    def unreadable(cls, run_id: str, error: str) -> Run:
        """What a listing shows for a record it cannot read: the id, the state "unknown", why."""
        return cls(run_id, "", state="unknown", error=error, readable=False)

    def to_dict(self) -> dict[str, Any]:
        if not self.readable:
            return {"run_id": self.run_id, "state": self.state, "error": self.error}
        d: dict[str, Any] = {
            "run_id": self.run_id,
            "kind": self.kind,
            "params": self.params,
            "enqueued_at": self.enqueued_at,
            "slot": self.slot,
            "state": self.state,
            "started_at": self.started_at,
            "heartbeat_at": self.heartbeat_at,
            "finished_at": self.finished_at,
            "worker": self.worker,
            "result": self.result,
            "error": self.error,
        }
        if self.duration_seconds is not None:
            d["duration_seconds"] = self.duration_seconds
        if self.note is not None:
            d["note"] = self.note
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Run:
        """A stored record, read leniently (a field of the wrong type reads as absent)."""

        def text(key: str) -> str | None:
            value = d.get(key)
            return str(value) if value not in (None, "") else None

        duration = d.get("duration_seconds")
        params, result = d.get("params"), d.get("result")
        return cls(
            run_id=str(d.get("run_id", "")),
            kind=str(d.get("kind", "unknown")),
            params=dict(params) if isinstance(params, dict) else {},
            enqueued_at=str(d.get("enqueued_at") or ""),
            slot=text("slot"),
            state=str(d.get("state", "unknown")),
            started_at=text("started_at"),
            heartbeat_at=text("heartbeat_at"),
            finished_at=text("finished_at"),
            worker=text("worker"),
            result=dict(result) if isinstance(result, dict) else None,
            error=text("error"),
            duration_seconds=float(duration) if isinstance(duration, int | float) else None,
            note=text("note"),
        )

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL

    def claimed(self, worker: str, at: datetime) -> Run:
        """Running on ``worker`` from ``at``."""
        return replace(self, state=RUNNING, started_at=iso(at), heartbeat_at=iso(at), worker=worker)

    def beat(self, at: datetime) -> Run:
        return replace(self, heartbeat_at=iso(at))

    def outcome(
        self, *, ok: bool, at: datetime, result: dict[str, Any] | None = None, error: str | None = None
    ) -> Run:
        """Finished at ``at``: succeeded with ``result``, or failed with ``error``."""
        duration = self.duration_seconds
        if self.started_at is not None:
            with contextlib.suppress(ValueError, TypeError):  # a start time we cannot read: no duration
                duration = round((at - parse_iso(self.started_at)).total_seconds(), 3)
        return replace(
            self,
            state=SUCCEEDED if ok else FAILED,
            finished_at=iso(at),
            result=result,
            error=None if ok else (error or "failed"),
            duration_seconds=duration,
        )

    def journal_entry(self) -> dict[str, Any]:
        """What the journal keeps of a finished run (monitoring reads outcomes from there)."""
        d = self.to_dict()
        return {k: d.get(k) for k in _JOURNALED}

    def is_stale(self, now: datetime, stale_after: timedelta) -> bool:
        """A running run whose last sign of life (heartbeat, else start) is older than ``stale_after``.

        Queued, finished and unreadable runs are never stale: only a worker that claimed a job and
        then went silent is.
        """
        if self.state != RUNNING:
            return False
        last = self.heartbeat_at or self.started_at
        if last is None:
            return True  # running with no time at all: nothing will ever refresh it
        try:
            beat = parse_iso(last)
        except ValueError:
            return True
        if beat.tzinfo is None:
            beat = beat.replace(tzinfo=UTC)
        return now - beat > stale_after


# -- pruning old records (the cleanup job) ---------------------------------------------------------
def select_prunable(
    runs: Mapping[str, str | None],
    claims: Iterable[str],
    slots: Iterable[tuple[str, datetime]],
    queued: set[str],
    cutoff: datetime,
) -> list[tuple[str, str]]:
    """Which job records older than ``cutoff`` can go, with why.

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
