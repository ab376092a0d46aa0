"""The scheduler tick, the job queue and the worker: moto's S3 server over HTTP, real PostgreSQL."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
import pytest

from cli_helpers import run_cli, stored_run
from coldcopy.config import Settings, load_settings
from coldcopy.context import Context
from coldcopy.errors import ColdCopyError, InvalidNameError
from coldcopy.functions import tick as tick_fn
from coldcopy.ops import queue as jobs
from coldcopy.ops.launchers import LauncherError, LaunchResult, launcher_for, wake
from coldcopy.ops.worker import HANDLERS, Handler, WorkerReport, run_worker
from coldcopy.storage.memory import MemoryStore
from coldcopy.storage.s3 import open_store
from coldcopy.storage.store import ObjectStore

SUNDAY_FIRST = datetime(2026, 11, 1, 4, 0, tzinfo=UTC)  # a Sunday and the 1st: all four schedules fire
TUESDAY = datetime(2026, 11, 24, tzinfo=UTC)
FAST_BEAT = 0.05


# moto does not check signatures; the fixture's secret ("test") would make redaction hide the word "test".
STRONG_SECRET = "moto-ignores-this-secret-" + secrets.token_hex(8)


def settings(env: dict[str, str], **extra: str) -> Settings:
    return load_settings({**env, "DO_SPACES_SECRET": STRONG_SECRET, **extra}, env_file=Path(os.devnull))


def t(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def keys(storage: ObjectStore, prefix: str) -> list[str]:
    return sorted(o.key for o in storage.list(prefix))


def wait_for(what: str, check: Callable[[], Any], timeout: float = 30.0) -> Any:
    """Poll ``check`` until it returns something truthy (a deadline, not a sleep, synchronises)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class FakeLauncher:
    name = "fake"

    def __init__(self, fail: bool = False) -> None:
        self.calls = 0
        self.fail = fail

    def wake(self) -> LaunchResult:
        self.calls += 1
        if self.fail:
            raise LauncherError("the fake API is down", "try later")
        return LaunchResult(True, f"fake runner {self.calls}", str(self.calls))


def journal_runs(storage: ObjectStore) -> dict[str, dict[str, Any]]:
    out = {}
    for key in keys(storage, "journal/"):
        rec = storage.get_json(key)
        if rec.get("type") == "run":
            assert rec["run_id"] not in out, "one journal record per finished run"
            out[rec["run_id"]] = rec
    return out


# -- the tick --------------------------------------------------------------------------------------
def test_overlapping_ticks_enqueue_each_due_slot_exactly_once(coldcopy_env: dict[str, str]) -> None:
    s = settings(coldcopy_env, COLDCOPY_SCHEDULE_GRACE_MINUTES="240")
    launchers = [FakeLauncher() for _ in range(8)]
    barrier = threading.Barrier(8)
    results: list[dict[str, Any]] = [{} for _ in range(8)]

    def one(i: int) -> None:
        storage = open_store(s)  # each tick is its own function invocation with its own client
        barrier.wait()
        results[i] = tick_fn.tick(s, SUNDAY_FIRST, launcher=launchers[i], storage=storage)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert all(r for r in results), "every tick finished"
    storage = open_store(s)
    again = tick_fn.tick(s, SUNDAY_FIRST + timedelta(minutes=5), launcher=FakeLauncher(), storage=storage)
    assert again["enqueued"] == []

    expected = {
        "backup-compliance/2026-11-01T01:00Z",
        "backup-full/2026-11-01T02:00Z",
        "verify/2026-11-01T03:00Z",
        "cleanup/2026-11-01T04:00Z",
    }
    reported = [e for r in results for e in r["enqueued"]]
    assert sorted(e["slot"] for e in reported) == sorted(expected), "each slot reported by exactly one tick"
    assert all(r["errors"] == [] for r in results)
    queue = keys(storage, jobs.QUEUE)
    assert len(queue) == 4
    queued = [storage.get_json(k) for k in queue]
    assert {q["slot"] for q in queued} == expected
    assert {q["run_id"] for q in queued} == {e["run_id"] for e in reported}
    assert len(keys(storage, jobs.SLOTS)) == 4
    runs = [stored_run(storage, q["run_id"]) for q in queued]
    for r in runs:
        assert r is not None and r["state"] == "queued" and r["kind"] == r["slot"].split("/")[0]
    assert len(keys(storage, jobs.RUNS)) == 4
    assert sum(launcher.calls for launcher in launchers) >= 1


def test_missed_slot_runs_once_within_grace(memory_env: dict[str, str]) -> None:
    s = settings(memory_env, COLDCOPY_SCHEDULE_GRACE_MINUTES="60")
    storage = MemoryStore(prefix=s.prefix)
    slot = TUESDAY + timedelta(hours=2)
    # The ticks at 02:00…02:25 never happened; the one at 02:30 catches up.
    first = tick_fn.tick(s, slot + timedelta(minutes=30), launcher=FakeLauncher(), storage=storage)
    assert [e["slot"] for e in first["enqueued"]] == ["backup-full/2026-11-24T02:00Z"]
    for later in (35, 59, 61, 120):
        again = tick_fn.tick(s, slot + timedelta(minutes=later), launcher=FakeLauncher(), storage=storage)
        assert [e for e in again["enqueued"] if e["kind"] == "backup-full"] == [], f"again at +{later} min"
    assert [storage.get_json(k)["slot"] for k in keys(storage, jobs.QUEUE)] == [
        "backup-full/2026-11-24T02:00Z",
        "cleanup/2026-11-24T04:00Z",
    ]
    # Outside the grace window a missed slot is skipped, not run late.
    late = tick_fn.tick(
        s, TUESDAY + timedelta(days=1, hours=3, minutes=1), launcher=FakeLauncher(), storage=storage
    )
    assert late["enqueued"] == []


def test_a_slot_taken_by_a_tick_that_died_is_queued_by_the_next(memory_env: dict[str, str]) -> None:
    s = settings(memory_env)
    storage = MemoryStore(prefix=s.prefix)
    slot = "backup-full/2026-11-24T02:00Z"
    orphan = jobs.Job(
        jobs.new_run_id(TUESDAY + timedelta(hours=2), seed=slot),
        "backup-full",
        {},
        "2026-11-24T02:01:00Z",
        slot,
    )
    storage.put_json(jobs.slot_key(slot), orphan.to_dict(), create_only=True)  # …and then the tick died
    out = tick_fn.tick(s, TUESDAY + timedelta(hours=2, minutes=6), launcher=FakeLauncher(), storage=storage)
    assert out["enqueued"] == []
    assert keys(storage, jobs.QUEUE) == [orphan.queue_key]
    run = stored_run(storage, orphan.run_id)
    assert run is not None and run["state"] == "queued"


def test_stale_heartbeat_is_marked_failed_and_a_fresh_one_left_alone(memory_env: dict[str, str]) -> None:
    s = settings(memory_env, COLDCOPY_HEARTBEAT_STALE_SECONDS="600")
    storage = MemoryStore(prefix=s.prefix)
    now = TUESDAY + timedelta(hours=12)
    ids = [jobs.enqueue(storage, "verify", {}, now=now - timedelta(hours=1, seconds=-i)) for i in range(4)]
    stale = jobs.claim_next(storage, "dead-worker", now=now - timedelta(minutes=30))
    fresh = jobs.claim_next(storage, "live-worker", now=now - timedelta(minutes=30))
    silent = jobs.claim_next(storage, "crashed-at-claim", now=now - timedelta(minutes=30))
    assert stale and fresh and silent
    jobs.heartbeat(storage, stale[1], now=now - timedelta(minutes=11))
    jobs.heartbeat(storage, fresh[1], now=now - timedelta(minutes=9))
    # This worker died between its claim and its first "running" write.
    storage.put_json(jobs.run_key(silent[0].run_id), silent[0].run().to_dict())

    out = tick_fn.tick(s, now, launcher=FakeLauncher(), storage=storage)

    assert sorted(out["stale"]) == sorted([stale[0].run_id, silent[0].run_id])
    dead = stored_run(storage, stale[0].run_id)
    assert dead is not None and dead["state"] == "failed"
    assert "no heartbeat since 2026-11-24T11:49:00Z" in dead["error"] and "dead-worker" in dead["error"]
    assert dead["finished_at"] == "2026-11-24T12:00:00Z"
    crashed = stored_run(storage, silent[0].run_id)
    assert crashed is not None and crashed["state"] == "failed" and "no heartbeat" in crashed["error"]
    alive = stored_run(storage, fresh[0].run_id)
    assert alive is not None and alive["state"] == "running"
    assert alive["heartbeat_at"] == "2026-11-24T11:51:00Z"
    # Failed runs leave the queue and reach the journal; the live one and the unclaimed one stay.
    assert sorted(jobs.queued_ids(storage)) == sorted([fresh[0].run_id, str(ids[3])])
    assert set(journal_runs(storage)) == {stale[0].run_id, silent[0].run_id}
    # A later tick does not mark them again; the live worker's next heartbeat finds it still running.
    later = tick_fn.tick(s, now + timedelta(minutes=1), launcher=FakeLauncher(), storage=storage)
    assert later["stale"] == []
    assert jobs.heartbeat(storage, fresh[1], now=now)
    assert not jobs.heartbeat(storage, stale[1], now=now), "a worker learns that its run was marked failed"


def test_tick_wakes_the_runner_only_when_jobs_wait(memory_env: dict[str, str]) -> None:
    s = settings(memory_env)
    storage = MemoryStore(prefix=s.prefix)
    fake = FakeLauncher()
    quiet = TUESDAY + timedelta(hours=12)  # nothing scheduled at noon
    out = tick_fn.tick(s, quiet, launcher=fake, storage=storage)
    assert (out["enqueued"], out["pending"], out["woken"], fake.calls) == ([], 0, None, 0)

    due = tick_fn.tick(s, TUESDAY + timedelta(hours=2, minutes=3), launcher=fake, storage=storage)
    assert len(due["enqueued"]) == 1 and due["pending"] == 1
    assert due["woken"] == {"launcher": "fake", "started": True, "detail": "fake runner 1", "id": "1"}
    assert fake.calls == 1
    # Still unclaimed: the next tick wakes again (the last wake may have been lost).
    tick_fn.tick(s, quiet, launcher=fake, storage=storage)
    assert fake.calls == 2
    # Claimed by a worker: nothing waits, nobody is woken.
    assert jobs.claim_next(storage, "w1", now=quiet) is not None
    out = tick_fn.tick(s, quiet, launcher=fake, storage=storage)
    assert (out["pending"], out["woken"], fake.calls) == (0, None, 2)

    # A launcher that fails is reported, not raised; launcher "none" never wakes anything.
    jobs.enqueue(storage, "cleanup", {})
    broken = tick_fn.tick(s, quiet, launcher=FakeLauncher(fail=True), storage=storage)
    assert broken["woken"] == {"started": False, "error": "the fake API is down"}
    none = settings(memory_env, COLDCOPY_LAUNCHER="none")
    assert tick_fn.tick(none, quiet, storage=storage)["woken"] is None


def test_tick_function_answers_a_summary_never_a_traceback(
    coldcopy_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLDCOPY_ENV_FILE", os.devnull)
    for var in ("DO_SPACES_KEY", "DO_SPACES_SECRET", "DO_SPACES_BUCKET"):
        monkeypatch.delenv(var, raising=False)
    out = tick_fn.run({"trigger": "coldcopy-tick"}, None)
    assert out["error"]["code"] == "ConfigError" and "DO_SPACES_BUCKET is not set" in out["error"]["message"]
    assert "Traceback" not in json.dumps(out)

    for k, v in {**coldcopy_env, "DO_SPACES_SECRET": STRONG_SECRET, "COLDCOPY_LAUNCHER": "none"}.items():
        monkeypatch.setenv(k, v)
    ok = tick_fn.run({"trigger": "coldcopy-tick"}, None)
    assert set(ok) >= {"enqueued", "stale", "pending", "woken", "errors"}, ok
    json.dumps(ok)

    monkeypatch.setenv("DO_SPACES_BUCKET", "no-such-bucket-here")
    missing = tick_fn.run({}, None)
    assert missing["error"]["code"] == "StorageError" and "no-such-bucket-here" in missing["error"]["message"]
    assert STRONG_SECRET not in json.dumps(missing)


def test_tick_module_imports_stay_light() -> None:
    code = (
        "import sys, coldcopy.functions.tick; "
        "print(sorted(m for m in ('pg8000', 'zstandard', 'cryptography', "
        "'coldcopy.backup.logical', 'croniter') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out.replace("'", '"')) == []


# -- the worker ------------------------------------------------------------------------------------
def test_worker_exits_at_once_on_an_empty_queue(memory_env: dict[str, str]) -> None:
    s = settings(memory_env)
    storage = MemoryStore(prefix=s.prefix)
    report = run_worker(s, heartbeat_seconds=FAST_BEAT, storage=storage)
    assert (report.count, report.failed, report.runs) == (0, 0, [])
    assert keys(storage, "") == []


def test_failing_jobs_are_recorded_and_the_next_job_still_runs(coldcopy_env: dict[str, str]) -> None:
    s = settings(coldcopy_env)
    storage = open_store(s)
    t0 = datetime.now(UTC)

    def leaky(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
        raise RuntimeError(f"connection to {ctx.settings.encryption_key.reveal()} refused")

    handlers: dict[str, Handler] = {**HANDLERS, "probe-leaky": leaky}
    plan = [
        ("verify", {"name": "full_backup_nosuch_20260101_000000"}),
        ("no-such-kind", {}),
        ("cleanup", {}),
        ("restore-test", {}),
        ("probe-leaky", {}),
        ("backup-full", {}),
        ("verify", {}),
    ]
    ids = [
        jobs.enqueue(storage, kind, params, now=t0 + timedelta(seconds=i))
        for i, (kind, params) in enumerate(plan)
    ]

    report = run_worker(s, heartbeat_seconds=FAST_BEAT, handlers=handlers)

    assert [r["run_id"] for r in report.runs] == ids, "in queue order, each once"
    states = [r["state"] for r in report.runs]
    assert states == ["failed"] * 2 + ["succeeded"] + ["failed"] * 2 + ["succeeded"] * 2, report.runs
    runs = {i: stored_run(storage, str(i)) for i in ids}
    err = [str((runs[i] or {}).get("error")) for i in ids]
    assert "verification of full_backup_nosuch_20260101_000000 failed" in err[0]
    assert "manifest readable" in err[0] and "no backup named" in err[0]
    assert "unknown job kind 'no-such-kind'" in err[1]
    assert (runs[ids[2]] or {}).get("result", {}).get("deleted") == []
    assert "there is no backup to test-restore" in err[3]
    assert "RuntimeError: connection to *** refused" in err[4]
    assert coldcopy_env["BACKUP_ENCRYPTION_KEY"] not in json.dumps(runs)
    backup = runs[ids[5]]
    assert backup is not None and backup["state"] == "succeeded" and backup["error"] is None
    name = backup["result"]["name"]
    assert name.startswith(f"full_backup_{coldcopy_env['DB_NAME']}_")
    assert storage.exists(f"backups/{name}/manifest.json")
    verified = runs[ids[6]]
    assert verified is not None and verified["result"]["name"] == name and verified["result"]["ok"] is True
    for r in runs.values():
        assert r is not None and r["started_at"] and r["finished_at"] and r["worker"] == report.worker_id
    # Outcomes reach the journal; the queue is empty; every job was claimed once.
    recorded = journal_runs(storage)
    assert {k: v["state"] for k, v in recorded.items()} == {r["run_id"]: r["state"] for r in report.runs}
    assert keys(storage, jobs.QUEUE) == []
    assert len(keys(storage, jobs.CLAIMS)) == len(ids)


def test_racing_workers_run_each_job_once(coldcopy_env: dict[str, str]) -> None:
    s = settings(coldcopy_env)
    storage = open_store(s)
    ran: list[tuple[str, str]] = []
    lock = threading.Lock()

    def record(worker: str) -> Handler:
        def handler(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
            with lock:
                ran.append((params["n"], worker))
            return {"n": params["n"]}

        return handler

    t0 = datetime.now(UTC)
    ids = [
        str(jobs.enqueue(storage, "probe-count", {"n": str(i)}, now=t0 + timedelta(milliseconds=i)))
        for i in range(12)
    ]
    barrier = threading.Barrier(4)
    reports: list[WorkerReport] = []

    def worker(i: int) -> None:
        barrier.wait()
        reports.append(
            run_worker(
                s,
                worker_id=f"w{i}",
                heartbeat_seconds=FAST_BEAT,
                handlers={"probe-count": record(f"w{i}")},
                storage=open_store(s),
            )
        )

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(reports) == 4
    assert sorted(n for n, _ in ran) == sorted(str(i) for i in range(12)), "every job ran exactly once"
    assert sorted(r["run_id"] for rep in reports for r in rep.runs) == sorted(ids)
    for run_id in ids:
        run = stored_run(storage, str(run_id))
        assert run is not None and run["state"] == "succeeded"
        claim = storage.get_json(jobs.claim_key(str(run_id)))
        assert (run["worker"], run["result"]["n"]) in {(w, n) for n, w in ran}
        assert claim["worker"] == run["worker"]


def test_heartbeat_is_written_while_a_job_runs(memory_env: dict[str, str]) -> None:
    s = settings(memory_env)
    storage = MemoryStore(prefix=s.prefix)
    started, release = threading.Event(), threading.Event()

    def blocking(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
        started.set()
        if not release.wait(60):
            raise RuntimeError("the test never released the job")
        return {"released": True}

    run_id = str(jobs.enqueue(storage, "probe-block", {}))
    box: list[Any] = []
    w = threading.Thread(
        target=lambda: box.append(
            run_worker(s, heartbeat_seconds=FAST_BEAT, handlers={"probe-block": blocking}, storage=storage)
        )
    )
    w.start()
    try:
        assert started.wait(30)
        first = wait_for(
            "the run to be running",
            lambda: (r := stored_run(storage, run_id)) and r["state"] == "running" and r,
        )
        beats = wait_for(
            "a heartbeat after the start",
            lambda: (
                (r := stored_run(storage, run_id)) and t(r["heartbeat_at"]) > t(first["started_at"]) and r
            ),
        )
        assert beats["state"] == "running" and beats["worker"] == first["worker"]
        later = wait_for(
            "a newer heartbeat",
            lambda: (
                (r := stored_run(storage, run_id)) and t(r["heartbeat_at"]) > t(beats["heartbeat_at"]) and r
            ),
        )
        assert later["state"] == "running"
    finally:
        release.set()
        w.join(timeout=60)
    done = stored_run(storage, run_id)
    assert done is not None and done["state"] == "succeeded" and done["result"] == {"released": True}
    assert box[0].count == 1 and box[0].failed == 0


def test_a_run_marked_stale_while_alive_stops_beating_and_keeps_its_real_outcome(
    memory_env: dict[str, str],
) -> None:
    s = settings(memory_env)
    storage = MemoryStore(prefix=s.prefix)
    started, release = threading.Event(), threading.Event()

    def blocking(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
        started.set()
        release.wait(60)
        return {}

    run_id = str(jobs.enqueue(storage, "probe-block", {}))
    # No heartbeat during the test (it would race the tick's write): the worker notices at the end.
    w = threading.Thread(
        target=run_worker,
        args=(s,),
        kwargs={"heartbeat_seconds": 3600, "handlers": {"probe-block": blocking}, "storage": storage},
    )
    w.start()
    try:
        assert started.wait(30)
        later = datetime.now(UTC) + timedelta(hours=1)
        assert jobs.mark_stale(storage, later, timedelta(minutes=10)) == [run_id]
        failed = stored_run(storage, run_id)
        assert failed is not None and failed["state"] == "failed"
    finally:
        release.set()
        w.join(timeout=60)
    final = stored_run(storage, run_id)
    assert final is not None and final["state"] == "succeeded" and "marked this run failed" in final["note"]


def test_bad_run_ids_never_reach_a_key(memory_env: dict[str, str]) -> None:
    storage = MemoryStore(prefix=settings(memory_env).prefix)
    for bad in ("../catalog", "x" * 26 + "/", "ABCDEFGHJKMNPQRSTVWXYZ0123"):
        with pytest.raises(InvalidNameError):
            stored_run(storage, bad)
    assert stored_run(storage, "0" * 26) is None
    with pytest.raises(ColdCopyError):
        jobs.enqueue(storage, "verify", {"name": "../../catalog.json"})
    assert keys(storage, "") == []


# -- the command line ------------------------------------------------------------------------------
def test_cli_enqueue_runs_tick_and_worker(coldcopy_env: dict[str, str]) -> None:
    env = {**coldcopy_env, "DO_SPACES_SECRET": STRONG_SECRET, "COLDCOPY_LAUNCHER": "none"}
    bad = run_cli(env, "enqueue", "verify", "--name", "../etc")
    assert bad.rc == 2 and "invalid backup name" in bad.err
    r = run_cli(env, "enqueue", "cleanup", "--json")
    assert r.rc == 0, r.err
    run_id = json.loads(r.out)["run_id"]
    listed = run_cli(env, "runs", "--json")
    assert [x["run_id"] for x in json.loads(listed.out)] == [run_id]
    t = run_cli(env, "tick", "--json", "--now", "2026-11-24T02:10Z")
    assert t.rc == 0, t.err
    summary = json.loads(t.out)
    assert [e["slot"] for e in summary["enqueued"]] == ["backup-full/2026-11-24T02:00Z"]
    assert summary["pending"] == 2 and summary["woken"] is None
    w = run_cli(env, "worker", "--json", "--heartbeat-seconds", "0.05")
    assert w.rc == 0, w.err
    report = json.loads(w.out)
    # The slot's job is older (its run id carries the slot time), so it runs first.
    assert [(x["kind"], x["state"]) for x in report["runs"]] == [
        ("backup-full", "succeeded"),
        ("cleanup", "succeeded"),
    ]
    assert report["runs"][1]["run_id"] == run_id
    shown = run_cli(env, "runs", run_id, "--json")
    assert json.loads(shown.out)["state"] == "succeeded"
    assert "succeeded" in run_cli(env, "runs", run_id).out
    assert run_cli(env, "runs", "../../catalog").rc == 2
    assert run_cli(env, "runs", "0" * 26).rc == 3


def test_tick_wakes_a_real_local_worker(coldcopy_env: dict[str, str], tmp_path: Path) -> None:
    """End to end: the tick (launcher local) starts `python -m coldcopy worker`, which drains the queue.

    Settings come from --env-file only, so the runner must be handed the same file.
    """
    env_file = tmp_path / "coldcopy.env"
    settings_env = {**coldcopy_env, "DO_SPACES_SECRET": STRONG_SECRET, "COLDCOPY_LAUNCHER": "local"}
    carried = ("PATH", "HOME", "LANG")
    env_file.write_text("".join(f"{k}={v}\n" for k, v in settings_env.items() if k not in carried))
    env = {k: coldcopy_env[k] for k in carried}
    r = run_cli(env, "enqueue", "cleanup", "--json", "--env-file", str(env_file))
    assert r.rc == 0, r.err
    run_id = json.loads(r.out)["run_id"]
    t = run_cli(env, "tick", "--json", "--now", "2026-11-24T12:00Z", "--env-file", str(env_file))
    assert t.rc == 0, t.err
    woken = json.loads(t.out)["woken"]
    assert woken["launcher"] == "local" and woken["started"] is True
    storage = open_store(settings(coldcopy_env))
    done = wait_for(
        "the local worker to finish the job",
        lambda: (x := stored_run(storage, run_id)) and x["state"] == "succeeded" and x,
        timeout=60,
    )
    assert done["result"]["deleted"] == []
    wait_for("the queue to drain", lambda: not keys(storage, jobs.QUEUE))
    # The runner exits by itself once the queue is empty.
    assert psutil.Process(int(woken["id"])).wait(timeout=60) == 0


def test_launchers_are_built_from_settings(
    coldcopy_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from coldcopy.ops.launchers import AppPlatformLauncher, DockerLauncher, LocalLauncher

    env_file = tmp_path / "runner.env"
    env_file.write_text(
        f"DB_HOST=db.internal\nDO_SPACES_BUCKET=from-file\nBACKUP_ENCRYPTION_KEY={STRONG_SECRET}\n"
    )
    # The settings as the tick loads them: the process environment over its .env file.
    environ = {
        "DO_SPACES_BUCKET": "from-environment",
        "UNRELATED_SECRET": "not-for-the-runner",
        "DO_API_TOKEN": "dop_v1_the-launchers-own",  # the tick's, never a job's
        "MONITOR_TOKEN": "the-monitors-own",
        "SMTP_PASSWORD": " spaced secret ",  # handed on as given
    }
    docker = launcher_for(
        load_settings({**environ, "COLDCOPY_LAUNCHER": "docker", "RUNNER_IMAGE": "cc:1"}, env_file=env_file),
        str(env_file),
    )
    assert isinstance(docker, DockerLauncher) and docker.image == "cc:1"
    assert docker._env["DB_HOST"] == "db.internal" and docker._env["DO_SPACES_BUCKET"] == "from-environment"
    assert docker._env["BACKUP_ENCRYPTION_KEY"] == STRONG_SECRET and "UNRELATED_SECRET" not in docker._env
    assert "DO_API_TOKEN" not in docker._env and "MONITOR_TOKEN" not in docker._env
    assert docker._env["SMTP_PASSWORD"] == " spaced secret "
    local = launcher_for(settings(coldcopy_env), str(env_file))
    assert isinstance(local, LocalLauncher) and local._env == {"COLDCOPY_ENV_FILE": str(env_file)}
    app = launcher_for(
        settings(
            coldcopy_env,
            COLDCOPY_LAUNCHER="app-platform",
            DO_API_TOKEN="dop_v1_x",
            RUNNER_APP_ID="abc-123",
            DO_API_URL="http://127.0.0.1:9",
        )
    )
    assert isinstance(app, AppPlatformLauncher) and app.app_id == "abc-123"
    assert app.base_url == "http://127.0.0.1:9"
    assert launcher_for(settings(coldcopy_env, COLDCOPY_LAUNCHER="none")) is None
    # Misconfigured: reported by wake, never raised.
    missing = wake(settings(coldcopy_env, COLDCOPY_LAUNCHER="app-platform", RUNNER_APP_ID="abc"))
    assert missing == {"started": False, "error": "no DigitalOcean API token is set"}
