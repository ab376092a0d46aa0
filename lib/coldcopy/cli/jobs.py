"""Command-line commands for the job queue: `worker`, `tick`, `enqueue`, `runs`."""

from __future__ import annotations

import argparse
from typing import Any

from coldcopy.cli.common import AddCommand, settings_for, utc_time
from coldcopy.cli.output import emit_json, table
from coldcopy.config import Settings


def _settings(args: argparse.Namespace) -> Settings:
    return settings_for(args)


def cmd_worker(args: argparse.Namespace) -> int:
    from coldcopy.ops.worker import DEFAULT_HEARTBEAT_SECONDS, run_worker

    s = _settings(args)
    report = run_worker(
        s,
        max_jobs=args.max_jobs,
        worker_id=args.worker_id,
        heartbeat_seconds=args.heartbeat_seconds or DEFAULT_HEARTBEAT_SECONDS,
    )
    if args.json:
        emit_json(report.to_dict())
    elif not report.runs:
        print("queue empty: nothing to do")
    else:
        for r in report.runs:
            print(f"{r['run_id']}  {r['kind']:18} {r['state']}" + (f": {r['error']}" if r["error"] else ""))
        print(f"{report.count} job(s), {report.failed} failed")
    return 1 if report.failed else 0


def cmd_tick(args: argparse.Namespace) -> int:
    from coldcopy.functions.tick import tick

    s = _settings(args)
    summary = tick(s, args.now, wake_runner=not args.no_wake, env_file=args.env_file)
    if args.json:
        emit_json(summary)
    else:
        for e in summary["enqueued"]:
            print(f"queued {e['kind']} ({e['slot']}): run {e['run_id']}")
        for run_id in summary["stale"]:
            print(f"marked stale run {run_id} failed")
        woken = summary["woken"]
        if woken:
            print(f"runner: {woken.get('detail') or woken.get('error')}")
        for err in summary["errors"]:
            print(f"error: {err['message']}")
        print(f"{summary['pending']} job(s) waiting for a worker")
    return 1 if summary["errors"] else 0


def cmd_enqueue(args: argparse.Namespace) -> int:
    from coldcopy.errors import InvalidNameError
    from coldcopy.functions.tick import wake
    from coldcopy.ops.queue import enqueue
    from coldcopy.ops.worker import HANDLERS
    from coldcopy.storage.s3 import Storage

    if args.kind not in HANDLERS:
        raise InvalidNameError(
            f"unknown job kind {args.kind[:40]!r}", f"use one of: {', '.join(sorted(HANDLERS))}"
        )
    s = _settings(args)
    params: dict[str, Any] = {"name": args.name} if args.name else {}
    run_id = enqueue(Storage(s), args.kind, params)
    woken = wake(s, env_file=args.env_file) if args.wake else None
    if args.json:
        emit_json({"run_id": run_id, "kind": args.kind, "params": params, "woken": woken})
    else:
        print(f"queued {args.kind} job: run {run_id}")
        if woken:
            print(f"runner: {woken.get('detail') or woken.get('error')}")
        elif args.wake:
            print("no launcher configured (COLDCOPY_LAUNCHER=none): start `coldcopy worker` yourself")
    return 1 if woken and woken.get("error") else 0


def cmd_runs(args: argparse.Namespace) -> int:
    from coldcopy.errors import NotFoundError
    from coldcopy.ops.queue import get_run, list_runs
    from coldcopy.storage.s3 import Storage

    s = _settings(args)
    storage = Storage(s)
    if args.run_id:
        run = get_run(storage, args.run_id)
        if run is None:
            raise NotFoundError(f"no run {args.run_id}", "`coldcopy runs` lists the recent runs")
        if args.json:
            emit_json(run)
        else:
            for k in (
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
            ):
                if run.get(k) not in (None, {}, ""):
                    print(f"{k:17} {run[k]}")
        return 0
    runs = list_runs(storage, limit=args.limit)
    if args.json:
        emit_json(runs)
    elif not runs:
        print("no runs yet")
    else:
        print(
            table(
                [
                    [
                        str(r.get("run_id")),
                        str(r.get("kind")),
                        str(r.get("state")),
                        str(r.get("enqueued_at") or ""),
                        str(r.get("finished_at") or ""),
                        str(r.get("error") or "")[:60],
                    ]
                    for r in runs
                ],
                ["RUN", "KIND", "STATE", "QUEUED (UTC)", "FINISHED (UTC)", "ERROR"],
            )
        )
    return 0


def add_job_commands(add: AddCommand) -> None:
    # No heavy imports here: building the parser must stay fast for every command.
    w = add("worker", cmd_worker, "run queued jobs one at a time until the queue is empty")
    w.add_argument("--max-jobs", type=int, help="stop after this many jobs")
    w.add_argument("--worker-id", help="name recorded in claims and runs (default: host-pid)")
    w.add_argument(
        "--heartbeat-seconds", type=float, help="how often a running job's heartbeat is written (default: 60)"
    )
    t = add("tick", cmd_tick, "enqueue due scheduled jobs, fail stale runs, wake the runner")
    t.add_argument("--now", type=utc_time, help="evaluate the schedule as of this UTC time (default: now)")
    t.add_argument("--no-wake", action="store_true", help="do not wake the runner")
    e = add("enqueue", cmd_enqueue, "queue one job for the runner")
    e.add_argument("kind", help="backup-full, backup-compliance, verify, cleanup or restore-test")
    e.add_argument("--name", help="backup name (verify; default: the newest backup)")
    e.add_argument("--wake", action="store_true", help="wake the runner with the configured launcher")
    r = add("runs", cmd_runs, "recent job runs, or one run in full")
    r.add_argument("run_id", nargs="?")
    r.add_argument("--limit", type=int, default=20)
