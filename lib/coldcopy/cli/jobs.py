"""Commands for the job queue: `worker`, `tick`, `enqueue`, `runs`."""

from __future__ import annotations

import argparse
from typing import Any

from coldcopy.cli.common import settings_for
from coldcopy.cli.output import present
from coldcopy.core.humanize import table
from coldcopy.errors import InvalidNameError, NotFoundError
from coldcopy.functions.tick import tick
from coldcopy.ops.launchers import wake
from coldcopy.ops.queue import enqueue, get_run, list_runs
from coldcopy.ops.worker import DEFAULT_HEARTBEAT_SECONDS, HANDLERS, run_worker
from coldcopy.storage.s3 import open_store

RUN_FIELDS = (
    "run_id",
    "kind",
    "state",
    "slot",
    "params",
    "enqueued_at",
    "started_at",
    "heartbeat_at",
    "finished_at",
    "duration_seconds",
    "worker",
    "error",
    "result",
)


def cmd_worker(args: argparse.Namespace) -> int:
    report = run_worker(
        settings_for(args),
        max_jobs=args.max_jobs,
        worker_id=args.worker_id,
        heartbeat_seconds=args.heartbeat_seconds or DEFAULT_HEARTBEAT_SECONDS,
    )

    def text() -> str:
        if not report.runs:
            return "queue empty: nothing to do"
        lines = [
            f"{r['run_id']}  {r['kind']:18} {r['state']}" + (f": {r['error']}" if r["error"] else "")
            for r in report.runs
        ]
        return "\n".join([*lines, f"{report.count} job(s), {report.failed} failed"])

    present(args, report.to_dict(), text)
    return 1 if report.failed else 0


def cmd_tick(args: argparse.Namespace) -> int:
    summary = tick(settings_for(args), args.now, wake_runner=not args.no_wake, env_file=args.env_file)

    def text() -> str:
        lines = [f"queued {e['kind']} ({e['slot']}): run {e['run_id']}" for e in summary["enqueued"]]
        lines += [f"marked stale run {run_id} failed" for run_id in summary["stale"]]
        woken = summary["woken"]
        if woken:
            lines.append(f"runner: {woken.get('detail') or woken.get('error')}")
        lines += [f"error: {err['message']}" for err in summary["errors"]]
        return "\n".join([*lines, f"{summary['pending']} job(s) waiting for a worker"])

    present(args, summary, text)
    return 1 if summary["errors"] else 0


def cmd_enqueue(args: argparse.Namespace) -> int:
    if args.kind not in HANDLERS:
        raise InvalidNameError(
            f"unknown job kind {args.kind[:40]!r}", f"use one of: {', '.join(sorted(HANDLERS))}"
        )
    s = settings_for(args)
    params: dict[str, Any] = {"name": args.name} if args.name else {}
    run_id = enqueue(open_store(s), args.kind, params)
    woken = wake(s, env_file=args.env_file) if args.wake else None
    lines = [f"queued {args.kind} job: run {run_id}"]
    if woken:
        lines.append(f"runner: {woken.get('detail') or woken.get('error')}")
    elif args.wake:
        lines.append("no launcher configured (COLDCOPY_LAUNCHER=none): start `coldcopy worker` yourself")
    present(args, {"run_id": run_id, "kind": args.kind, "params": params, "woken": woken}, "\n".join(lines))
    return 1 if woken and woken.get("error") else 0


def cmd_runs(args: argparse.Namespace) -> int:
    storage = open_store(settings_for(args))
    if args.run_id:
        run = get_run(storage, args.run_id)
        if run is None:
            raise NotFoundError(f"no run {args.run_id}", "`coldcopy runs` lists the recent runs")
        d = run.to_dict()
        present(args, d, "\n".join(f"{k:17} {d[k]}" for k in RUN_FIELDS if d.get(k) not in (None, {}, "")))
        return 0
    runs = [r.to_dict() for r in list_runs(storage, limit=args.limit)]

    def text() -> str:
        if not runs:
            return "no runs yet"
        rows = [
            [
                str(r.get("run_id")),
                str(r.get("kind")),
                str(r.get("state")),
                str(r.get("enqueued_at") or ""),
                str(r.get("finished_at") or ""),
                str(r.get("error") or "")[:60],
            ]
            for r in runs
        ]
        return table(rows, ["RUN", "KIND", "STATE", "QUEUED (UTC)", "FINISHED (UTC)", "ERROR"])

    present(args, runs, text)
    return 0
