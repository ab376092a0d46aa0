"""`coldcopy worker`: drain the job queue, one job at a time, then exit.

The runner container (woken by the tick through a launcher) runs this.  For each job: claim it
(create-only, so racing workers never run a job twice), run its handler in this process while a
thread refreshes the run's heartbeat, record the outcome, and go on.  A job that raises is
recorded as failed with its message (secrets redacted) and the next job still runs.

Job kinds live in :data:`HANDLERS`, the one registry: a later kind is one more entry.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from coldcopy.backup.files import storage_rows, take_snapshot
from coldcopy.backup.logical import run_backup
from coldcopy.changes.monitor import drain_and_record
from coldcopy.config import DB, FILES, Settings, missing, redact
from coldcopy.context import Context, open_context
from coldcopy.core.jobs import RUNNING, SUCCEEDED, Job, Run
from coldcopy.core.names import LOGICAL_KINDS, validate_name
from coldcopy.core.times import utc_now
from coldcopy.core.views import backup_summary
from coldcopy.errors import ColdCopyError, ConfigError, NotFoundError
from coldcopy.ops import queue
from coldcopy.ops.cleanup import cleanup_job
from coldcopy.postgres.client import Postgres
from coldcopy.restore.guard import put_right_if_interrupted
from coldcopy.storage.project_files import open_project_storage
from coldcopy.storage.store import ObjectStore
from coldcopy.verify.pitr_drill import run_pitr_drill
from coldcopy.verify.run import run_verify
from coldcopy.verify.scheduled import drill_summary, run_scheduled
from coldcopy.wal.sweep import run_sweep

log = logging.getLogger(__name__)

Handler = Callable[[Context, dict[str, Any]], dict[str, Any]]  # the worker's context, the job's params
DEFAULT_HEARTBEAT_SECONDS = 60.0  # Spaces limits writes to one object: never much more often than this


class JobFailed(ColdCopyError):
    """A job ran to the end and its outcome is a failure (with a result worth keeping)."""

    def __init__(self, message: str, result: dict[str, Any] | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint)
        self.result = result


class UnknownJob(ColdCopyError):
    """A queued job of a kind this runner does not know."""


# -- handlers --------------------------------------------------------------------------------------
def _require_db(settings: Settings) -> None:
    absent = missing(settings, DB)
    if absent:
        raise ConfigError([f"{var} is not set" for var in absent])


def _backup(kind: str) -> Handler:
    def handler(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
        _require_db(ctx.settings)
        put_right_if_interrupted(Postgres(ctx.settings), ctx.storage, ctx.settings.db_name)
        m = run_backup(ctx.settings, kind, ctx=ctx)
        out = backup_summary(m, encrypted=ctx.settings.encrypted)
        if kind == "full" and ctx.settings.files_configured:  # the files go with it, as a job of their own
            out["files_snapshot_run"] = queue.enqueue(ctx.storage, "files-snapshot", {"name": m.name})
            ctx.catalog.record(
                "files_snapshot_due", m.name, {"name": m.name}
            )  # the alerts expect its pair from now
            ctx.catalog.refresh()
        return out

    handler.__name__ = f"backup_{kind}"
    return handler


def _verify(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    """A named backup at ``level`` (default ``restore``); without a name, the weekly selection."""
    settings = ctx.settings
    name = params.get("name")
    level = str(params.get("level") or "restore")
    if name is None:
        report = run_scheduled(settings, ctx=ctx)
        if not report["ok"]:
            drill = report["pitr_drill"]
            failed = ", ".join(
                [r["name"] for r in report["results"] if not r["ok"]]
                + ([f"the PITR drill from {drill['name']}"] if drill and not drill["ok"] else [])
                + (["the files drill"] if report["files"] and not report["files"]["ok"] else [])
            )
            raise JobFailed(f"scheduled verification failed for {failed}", report)
        return report
    result = run_verify(settings, validate_name(name), level=level, ctx=ctx)
    if not result.ok:
        failed = "; ".join(f"{c.name}: {c.detail}" if c.detail else c.name for c in result.checks if not c.ok)
        raise JobFailed(
            f"verification of {result.name} failed: {failed or 'no checks ran'}", result.to_dict()
        )
    return result.to_dict()


def _restore_test(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    """A timed test restore (level ``restore``) of the named backup, or of the newest one; then,
    when a change archive exists, a logical PITR drill (``pitr_drill`` in the result)."""
    name = params.get("name")
    if name is None:
        entries = [e for e in ctx.catalog.read().entries() if e.kind in LOGICAL_KINDS]
        if not entries:
            raise NotFoundError("there is no backup to test-restore", "take a backup first: coldcopy backup")
        name = entries[0].name
    out = _verify(ctx, {"name": name, "level": "restore"})
    drill = run_pitr_drill(ctx.settings, ctx=ctx)
    out["pitr_drill"] = None if drill is None else drill_summary(drill)
    if drill is not None and not drill.ok:
        raise JobFailed(
            f"the PITR drill from {drill.name} failed: {'; '.join(out['pitr_drill']['failed'])}", out
        )
    return out


def _wal_sweep(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    """Stream WAL from the replication slot and archive complete segments (params: dir, slot)."""
    _require_db(ctx.settings)
    folder = params.get("dir")
    return run_sweep(ctx.settings, Path(str(folder)) if folder else None, params.get("slot")).to_dict()


#: Job kind -> handler.  The one place job kinds are defined.
def _changes_drain(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    """One drain of the change archive (the scheduled function drains every minute; this is the
    runner's way to catch up after a long outage)."""
    _require_db(ctx.settings)
    return drain_and_record(ctx).to_dict()


def _files_snapshot(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    """A files snapshot of the project's Storage, tied to the backup ``name`` when given."""
    settings = ctx.settings
    absent = missing(settings, FILES)
    if absent:
        raise ConfigError([f"{var} is not set" for var in absent])
    name = params.get("name")
    report = take_snapshot(
        ctx, open_project_storage(settings), now=utc_now(), backup=name, rows=lambda: storage_rows(settings)
    )
    return report.to_dict()


HANDLERS: dict[str, Handler] = {
    "backup-full": _backup("full"),
    "backup-compliance": _backup("compliance"),
    "verify": _verify,
    "cleanup": cleanup_job,
    "restore-test": _restore_test,
    "wal-sweep": _wal_sweep,
    "changes-drain": _changes_drain,
    "files-snapshot": _files_snapshot,
}


# -- the loop --------------------------------------------------------------------------------------
@dataclass
class WorkerReport:
    worker_id: str
    runs: list[dict[str, Any]] = field(default_factory=list)  # run_id, kind, state, error

    @property
    def count(self) -> int:
        return len(self.runs)

    @property
    def failed(self) -> int:
        return sum(1 for r in self.runs if r["state"] != SUCCEEDED)

    def to_dict(self) -> dict[str, Any]:
        return {"worker_id": self.worker_id, "jobs": self.count, "failed": self.failed, "runs": self.runs}


def default_worker_id() -> str:
    return f"{socket.gethostname()[:40]}-{os.getpid()}"


class _Heartbeat:
    """Refreshes the run's heartbeat every ``interval`` seconds until stopped; ``run`` is the latest."""

    def __init__(self, storage: ObjectStore, run: Run, interval: float) -> None:
        self.storage, self.run, self.interval = storage, run, interval
        self.beats = 0
        self.lost = False  # the tick marked this run failed: it was silent for too long
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"heartbeat-{run.run_id}", daemon=True)

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                beat = queue.heartbeat(self.storage, self.run)
            except ColdCopyError as exc:  # keep going: the next beat may get through
                log.warning("heartbeat of run %s failed: %s", self.run.run_id, exc.message)
                continue
            if beat is None:
                self.lost = True
                log.warning(
                    "run %s was marked failed while it was still running; heartbeats stop", self.run.run_id
                )
                return
            self.run = beat
            self.beats += 1


def _message(exc: BaseException, settings: Settings) -> str:
    if isinstance(exc, ColdCopyError):
        text = str(exc)
    elif isinstance(exc, KeyboardInterrupt):
        text = "interrupted"
    else:
        text = f"{type(exc).__name__}: {exc}"
    return redact(text, settings)[:2000]


def _taken_over(storage: ObjectStore, run_id: str) -> bool:
    """Whether someone else (the tick) finished this run while it was still running here."""
    try:
        current = queue.get_run(storage, run_id)
    except ColdCopyError:
        return False
    return current is not None and current.state != RUNNING


def run_job(
    ctx: Context,
    job: Job,
    run: Run,
    *,
    handlers: Mapping[str, Handler],
    heartbeat_seconds: float,
) -> Run:
    """Run one claimed job and record its outcome; never raises for a job's own failure."""
    settings, storage = ctx.settings, ctx.storage
    handler = handlers.get(job.kind)
    log.info("run %s: %s started", job.run_id, job.kind)
    result: dict[str, Any] | None = None
    error: str | None = None
    ok = False
    beat = _Heartbeat(storage, run, heartbeat_seconds)
    try:
        with beat:
            if handler is None:
                raise UnknownJob(
                    f"unknown job kind {job.kind!r}", f"known kinds: {', '.join(sorted(handlers))}"
                )
            result = handler(ctx, dict(job.params))
            ok = True
    except JobFailed as exc:
        result, error = exc.result, _message(exc, settings)
    except (Exception, KeyboardInterrupt) as exc:
        error = _message(exc, settings)
        if isinstance(exc, KeyboardInterrupt):
            queue.finish(storage, beat.run, ok=False, error=error)
            raise
        if not isinstance(exc, ColdCopyError):
            log.debug("run %s raised", job.run_id, exc_info=True)
    latest = beat.run
    if beat.lost or _taken_over(storage, job.run_id):
        latest = replace(
            latest,
            note="the scheduler tick marked this run failed because its heartbeat was late; "
            "it kept running and this is its real outcome",
        )
    done = queue.finish(storage, latest, ok=ok, result=result, error=error)
    if ok:
        log.info("run %s: %s succeeded", job.run_id, job.kind)
    else:
        log.error("run %s: %s failed: %s", job.run_id, job.kind, error)
    return done


def run_worker(
    settings: Settings,
    *,
    max_jobs: int | None = None,
    worker_id: str | None = None,
    heartbeat_seconds: float = DEFAULT_HEARTBEAT_SECONDS,
    handlers: Mapping[str, Handler] | None = None,
    storage: ObjectStore | None = None,
) -> WorkerReport:
    """Claim and run queued jobs one at a time until the queue is empty (or ``max_jobs`` ran)."""
    ctx = open_context(settings, storage)
    report = WorkerReport(worker_id or default_worker_id())
    table = HANDLERS if handlers is None else handlers
    while max_jobs is None or report.count < max_jobs:
        claimed = queue.claim_next(ctx.storage, report.worker_id)
        if claimed is None:
            break
        job, run = claimed
        try:
            done = run_job(ctx, job, run, handlers=table, heartbeat_seconds=heartbeat_seconds)
        except ColdCopyError as exc:  # recording the outcome failed; the tick will mark it stale
            log.error("run %s: could not record the outcome: %s", job.run_id, exc.message)
            done = replace(run, state="unknown", error=exc.message)
        report.runs.append(
            {"run_id": done.run_id, "kind": done.kind, "state": done.state, "error": done.error}
        )
    log.info(
        "worker %s: %d job(s), %d failed; queue %s",
        report.worker_id,
        report.count,
        report.failed,
        "empty" if max_jobs is None or report.count < max_jobs else "may have more",
    )
    return report
