"""The scheduler tick and the wal-sweep schedule: moto's S3 server over HTTP (the queue is real)."""

from __future__ import annotations

import os
import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cli_helpers import stored_run
from coldcopy.config import Settings, load_settings
from coldcopy.functions import tick as tick_fn
from coldcopy.ops import queue as jobs
from coldcopy.storage.memory import MemoryStore
from coldcopy.storage.store import ObjectStore

TUESDAY_NOON = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)  # no default schedule fires at noon
STRONG_SECRET = "moto-ignores-this-secret-" + secrets.token_hex(8)


def settings(env: dict[str, str], **extra: str) -> Settings:
    return load_settings({**env, "DO_SPACES_SECRET": STRONG_SECRET, **extra}, env_file=Path(os.devnull))


def queued_kinds(storage: ObjectStore) -> list[str]:
    out = []
    for run_id in jobs.queued_ids(storage):
        run = stored_run(storage, run_id)
        assert run is not None
        out.append(str(run["kind"]))
    return sorted(out)


def test_tick_enqueues_wal_sweep_when_scheduled(memory_env: dict[str, str]) -> None:
    s = settings(memory_env, COLDCOPY_SCHEDULE_WAL_SWEEP="*/5 * * * *", COLDCOPY_LAUNCHER="none")
    storage = MemoryStore(prefix=s.prefix)
    out = tick_fn.tick(s, TUESDAY_NOON + timedelta(minutes=1), storage=storage)
    assert [(e["kind"], e["slot"]) for e in out["enqueued"]] == [("wal-sweep", "wal-sweep/2026-11-24T12:00Z")]
    assert queued_kinds(storage) == ["wal-sweep"]
    # the same slot again (an overlapping tick) adds nothing; the next slot adds one more
    assert tick_fn.tick(s, TUESDAY_NOON + timedelta(minutes=4), storage=storage)["enqueued"] == []
    nxt = tick_fn.tick(s, TUESDAY_NOON + timedelta(minutes=6), storage=storage)
    assert [e["slot"] for e in nxt["enqueued"]] == ["wal-sweep/2026-11-24T12:05Z"]
    assert queued_kinds(storage) == ["wal-sweep", "wal-sweep"]


def test_tick_never_enqueues_wal_sweep_when_unset(memory_env: dict[str, str]) -> None:
    s = settings(memory_env, COLDCOPY_LAUNCHER="none")
    assert s.schedule_wal_sweep == ""
    storage = MemoryStore(prefix=s.prefix)
    for minutes in (1, 6, 31, 61):  # every 5-minute tick of an hour would catch any */N schedule
        out = tick_fn.tick(s, TUESDAY_NOON + timedelta(minutes=minutes), storage=storage)
        assert out["enqueued"] == [] and out["errors"] == []
    # a due default schedule still runs, alone
    out = tick_fn.tick(s, TUESDAY_NOON.replace(hour=2, minute=3), storage=storage)
    assert [e["kind"] for e in out["enqueued"]] == ["backup-full"]
    assert queued_kinds(storage) == ["backup-full"]
