#!/usr/bin/env python3
"""Physical backup and PITR benchmark, in one run on one cluster and one local S3 server (moto).

The cluster archives through the recommended fast path: ``coldcopy wal-pushd`` (as the postgres OS
user) and ``python3 -S -m coldcopy.walclient`` as archive_command, with archive_timeout set, and
realistic settings (full_page_writes and synchronous_commit on).  Measured:

  base backup      ``coldcopy basebackup`` vs ``barman-cloud-backup --lz4`` (as the postgres user):
                   time and stored size, of a pgbench database of --scale (20 ≈ 300 MB)
  WAL push         seconds per segment as archive_command runs it (one process per segment, one
                   after the other): walclient + warm daemon, plain ``coldcopy wal-push`` and
                   ``barman-cloud-wal-archive`` (its default: uncompressed), on the same real
                   pgbench segments and on random (incompressible) 16 MiB segments
  PITR             ``coldcopy pitr --start`` to a promoted server, split against PostgreSQL's own
                   replay ('redo starts at' → 'redo done at' in the recovered server's log)
  data-loss window with archive_timeout = --archive-timeout: single-row commits at random moments;
                   for each, the delay until the segment holding it is in the bucket

    .venv/bin/python scripts/bench_pitr.py                       # ~2 minutes, archive_timeout 10 s
    .venv/bin/python scripts/bench_pitr.py --only loss --archive-timeout 60 --commits 8   # the 60 s run
    .venv/bin/python scripts/bench_pitr.py --only pitr           # the PITR part (load, backup, recovery)

Needs barman[cloud] and lz4 in the venv for the comparisons (``pip install 'barman[cloud]' lz4``);
without them those lines say so and the rest runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pwd
import random
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from coldcopy.localstack.s3server import S3Server
from coldcopy.loopback import free_port
from coldcopy.postgres.cluster import PgCluster

REPO = Path(__file__).resolve().parents[1]
BUCKET = "bench-pitr"
BARMAN_BUCKET = "barman"
SEG_SIZE = 16 << 20
TARGET_PUSH_SPEEDUP = 10.0
TARGET_LOSS_WINDOW_S = 60.0


# -- running things as the postgres OS user ------------------------------------------------------
def as_postgres() -> bool:
    return os.geteuid() == 0


def system_python() -> str:
    """An interpreter the postgres OS user can run (ours may sit under a private /root)."""
    if not as_postgres():
        return sys.executable
    ok = subprocess.run(["runuser", "-u", "postgres", "--", "test", "-x", sys.executable], check=False)
    if ok.returncode == 0:
        return sys.executable
    return f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"


def python_path() -> str:
    site = [p for p in sys.path if p.endswith("site-packages")]
    return os.pathsep.join([str(REPO / "lib"), *site])


def coldcopy_command() -> str:
    """How the postgres OS user runs coldcopy."""
    return shlex.join(["env", f"PYTHONPATH={python_path()}", system_python(), "-m", "coldcopy"])


def walclient_argv(sock: Path) -> list[str]:
    """archive_command's client as ``coldcopy wal-pushd`` recommends it: a file, ``-I -S``, stdlib only."""
    return [
        system_python(),
        "-I",
        "-S",
        str(REPO / "lib" / "coldcopy" / "walclient.py"),
        "--socket",
        str(sock),
    ]


def walclient_archive_command(sock: Path) -> str:
    return f"{shlex.join(walclient_argv(sock))} %p"


def postgres_argv(argv: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *argv] if as_postgres() else argv


def chown_postgres(path: Path) -> None:
    if as_postgres():
        owner = pwd.getpwnam("postgres")
        os.chown(path, owner.pw_uid, owner.pw_gid)


def barman_argv(tool: str) -> list[str] | None:
    """barman-cloud-<tool> through its entry point, runnable by the postgres user; None if absent."""
    try:
        import barman  # noqa: F401
        import lz4  # noqa: F401
    except ImportError:
        return None
    module = {"backup": "cloud_backup", "wal-archive": "cloud_walarchive"}[tool]
    code = (
        f"import sys; from barman.clients.{module} import main; sys.argv[0] = 'barman-cloud-{tool}'; main()"
    )
    return ["env", f"PYTHONPATH={python_path()}", system_python(), "-c", code]


# -- small helpers -------------------------------------------------------------------------------
def sql(pg: PgCluster, query: str) -> list[list[Any]]:
    conn = pg.connect()
    try:
        return list(conn.run(query) or [])
    finally:
        conn.close()


def coldcopy(env: dict[str, str], *args: str) -> tuple[float, dict[str, Any]]:
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "coldcopy", "--json", *args], env=env, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise SystemExit(f"coldcopy {' '.join(args)} failed:\n{proc.stderr}")
    return time.monotonic() - t0, json.loads(proc.stdout)


def wait_archived(pg: PgCluster, timeout: float = 600) -> float:
    t0 = time.monotonic()
    seg = sql(pg, "SELECT pg_walfile_name(pg_switch_wal())")[0][0]
    while time.monotonic() - t0 < timeout:
        last = sql(pg, "SELECT last_archived_wal FROM pg_stat_archiver")[0][0]
        if last is not None and str(last) >= str(seg):
            return time.monotonic() - t0
        time.sleep(0.1)
    raise SystemExit(f"segment {seg} was not archived within {timeout} s")


def stored_bytes(s3: S3Server, bucket: str, prefix: str) -> int:
    total = 0
    for page in s3.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        total += sum(int(o["Size"]) for o in page.get("Contents", []))
    return total


def stored_ratio(s3: S3Server, prefix: str, count: int) -> float:
    """Stored bytes / raw bytes of ``count`` full segments under ``prefix``."""
    return round(stored_bytes(s3, BUCKET, prefix) / (count * SEG_SIZE), 3)


@contextlib.contextmanager
def daemon(env: dict[str, str], sock: Path, *, postgres: bool, log: Path | None = None) -> Iterator[None]:
    """``coldcopy wal-pushd`` in its own process group (as the postgres user when ``postgres``)."""
    if postgres:
        argv = postgres_argv([*shlex.split(coldcopy_command()), "wal-pushd", "--socket", str(sock)])
    else:
        argv = [sys.executable, "-m", "coldcopy", "wal-pushd", "--socket", str(sock)]
    err = log.open("wb") if log else subprocess.DEVNULL
    proc = subprocess.Popen(argv, env=env, stderr=err, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not sock.exists():
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit("wal-pushd did not start")
            time.sleep(0.05)
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
        if log:
            err.close()  # type: ignore[union-attr]


PUSH_LOG = re.compile(
    r"(\w{24}) stored .* in ([\d.]+) ms \(read ([\d.]+) ms, pack ([\d.]+) ms, put ([\d.]+) ms\)"
)


def daemon_breakdown(log: Path, timeline: str) -> dict[str, float]:
    """Median milliseconds per phase inside the daemon, from its log, for one timeline's segments."""
    rows = [
        m.groups()[1:]
        for m in map(PUSH_LOG.search, log.read_text().splitlines())
        if m and m[1][:8] == timeline
    ]
    if not rows:
        return {}
    phases = ("daemon_total", "read", "pack", "put")
    return {f"{p}_ms": round(statistics.median(float(r[i]) for r in rows), 1) for i, p in enumerate(phases)}


# -- WAL push throughput -------------------------------------------------------------------------
def bench_push(
    pg: PgCluster, env: dict[str, str], s3: S3Server, base: Path, n: int, n_random: int
) -> dict[str, Any]:
    """Seconds per segment, one process per segment as archive_command runs it, sequentially."""
    seg_dir = base / "segs"
    seg_dir.mkdir(mode=0o755)
    real = sorted(p for p in (pg.data_dir / "pg_wal").iterdir() if len(p.name) == 24)
    sets: dict[str, list[Path]] = {"real": [], "random": []}
    for i in range(n):  # real pgbench WAL content, under fresh names on timeline 0xF
        seg = seg_dir / f"0000000F0000000000000{i:03X}"
        shutil.copyfile(real[i % len(real)], seg)
        sets["real"].append(seg)
    for i in range(n_random):  # incompressible: the worst case for the PUT and the cipher
        seg = seg_dir / f"0000000E0000000000000{i:03X}"
        seg.write_bytes(os.urandom(SEG_SIZE))
        sets["random"].append(seg)
    warm = seg_dir / "0000000F0000000100000000"  # one push before timing: the daemon is long-lived
    shutil.copyfile(real[0], warm)
    out: dict[str, Any] = {"segments_real": n, "segments_random": n_random}

    def timed(argvs: list[list[str]], run_env: dict[str, str]) -> float:
        t0 = time.monotonic()
        for argv in argvs:
            subprocess.run(argv, env=run_env, check=True, capture_output=True)
        return (time.monotonic() - t0) / len(argvs)

    sock = base / "run-bench" / "walpushd.sock"
    client, client_env = walclient_argv(sock), {"PATH": os.defpath}
    log = base / "walpushd-bench.log"
    with daemon({**env, "COLDCOPY_CLUSTER": "bench-daemon"}, sock, postgres=False, log=log):
        timed([[*client, str(warm)]], client_env)
        for kind, segs in sets.items():
            out[f"{kind}_walclient_daemon_s"] = round(timed([[*client, str(p)] for p in segs], client_env), 4)
    # where the time goes: inside the daemon (from its log) and the client's share (start, round trip)
    for kind, tli in (("real", "0000000F"), ("random", "0000000E")):
        parts = daemon_breakdown(log, tli)
        if parts:
            parts["client_start_and_round_trip_ms"] = round(
                out[f"{kind}_walclient_daemon_s"] * 1000 - parts["daemon_total_ms"], 1
            )
            out[f"{kind}_breakdown"] = parts
    out["stored_ratio_real"] = stored_ratio(s3, "coldcopy/bench-daemon/wal/0000000F/", len(sets["real"]) + 1)
    t0 = time.monotonic()
    for _ in range(10):
        subprocess.run([*client[:-2], "--help"], env=client_env, capture_output=True)
    out["client_start_alone_ms"] = round((time.monotonic() - t0) * 100, 1)
    plain_env = {**env, "COLDCOPY_CLUSTER": "bench-plain"}
    for kind, segs in sets.items():
        argvs = [[sys.executable, "-m", "coldcopy", "wal-push", str(p)] for p in segs]
        out[f"{kind}_wal_push_s"] = round(timed(argvs, plain_env), 4)
    barman = barman_argv("wal-archive")
    if barman is None:
        out["barman"] = "not installed (pip install 'barman[cloud]' lz4)"
        return out
    aws = {
        **env, "AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key,
        "AWS_DEFAULT_REGION": s3.region,
    }  # fmt: skip
    cmd = [*barman, "--endpoint-url", s3.endpoint_url, f"s3://{BARMAN_BUCKET}/wal", "pg1"]
    for kind, segs in sets.items():
        out[f"{kind}_barman_cloud_wal_archive_s"] = round(timed([[*cmd, str(p)] for p in segs], aws), 4)
        out[f"{kind}_speedup_vs_barman"] = round(
            out[f"{kind}_barman_cloud_wal_archive_s"] / out[f"{kind}_walclient_daemon_s"], 1
        )
    return out


# -- base backups --------------------------------------------------------------------------------
def bench_basebackup(pg: PgCluster, env: dict[str, str], s3: S3Server) -> dict[str, Any]:
    out: dict[str, Any] = {}
    before = stored_bytes(s3, BUCKET, "coldcopy/bench/backups/")
    seconds, res = coldcopy(env, "basebackup")
    out["coldcopy_s"] = round(seconds, 2)
    out["raw_mb"] = round(int(res["raw_size_bytes"]) / 1e6, 1)
    out["coldcopy_stored_mb"] = round((stored_bytes(s3, BUCKET, "coldcopy/bench/backups/") - before) / 1e6, 1)
    barman = barman_argv("backup")
    if barman is None:
        out["barman"] = "not installed (pip install 'barman[cloud]' lz4)"
        return out
    aws = {
        **env, "AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key,
        "AWS_DEFAULT_REGION": s3.region, "PGPASSWORD": pg.password,
    }  # fmt: skip
    argv = postgres_argv(
        [
            *barman, "--lz4", "--immediate-checkpoint", "-h", pg.host, "-p", str(pg.port), "-U", pg.user,
            "--endpoint-url", s3.endpoint_url, f"s3://{BARMAN_BUCKET}/base", "pg1",
        ]
    )  # fmt: skip
    t0 = time.monotonic()
    proc = subprocess.run(argv, env=aws, capture_output=True, text=True, cwd="/")
    if proc.returncode != 0:
        raise SystemExit(f"barman-cloud-backup failed:\n{proc.stderr[-2000:]}")
    out["barman_lz4_s"] = round(time.monotonic() - t0, 2)
    out["barman_lz4_stored_mb"] = round(stored_bytes(s3, BARMAN_BUCKET, "base/pg1/base/") / 1e6, 1)
    out["speedup_vs_barman"] = round(out["barman_lz4_s"] / out["coldcopy_s"], 2)
    out["stored_size_vs_barman"] = round(out["coldcopy_stored_mb"] / out["barman_lz4_stored_mb"], 2)
    return out


# -- PITR: coldcopy's time against PostgreSQL's replay ---------------------------------------------
MISS_LINE = "not in the spool: fetching it from the archive"  # wal-fetch's line for a spool miss
LOG_TS = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) UTC")


def log_times(text: str) -> dict[str, float]:
    """POSIX times of the first line, 'redo starts at', 'redo done at' and the last 'ready' line."""
    out: dict[str, float] = {}
    marks = {
        "redo starts at": "redo_start",
        "redo done at": "redo_done",
        "database system is ready to accept connections": "ready",
    }
    for line in text.splitlines():
        m = LOG_TS.match(line)
        if not m:
            continue
        ts = datetime.strptime(m[1] + "+0000", "%Y-%m-%d %H:%M:%S.%f%z").timestamp()
        out.setdefault("first", ts)
        for needle, key in marks.items():
            if needle in line:
                out[key] = ts
    return out


def bench_pitr(env: dict[str, str], base: Path) -> dict[str, Any]:
    target = base / "rec" / "data"
    target.parent.mkdir(mode=0o755)
    fetch_log = base / "rec" / "wal-fetch-times"
    fetch_log.touch()
    chown_postgres(fetch_log)
    wrapper = base / "timed-coldcopy"  # restore_command's coldcopy, timing each wal-fetch call
    wrapper.write_text(
        "#!/bin/sh\nt0=$(date +%s.%N)\n"
        f'{coldcopy_command()} "$@"\nrc=$?\n'
        f'echo "$1 $t0 $(date +%s.%N) $rc $*" >> {shlex.quote(str(fetch_log))}\nexit $rc\n'
    )
    wrapper.chmod(0o755)
    port = free_port()
    rec = PgCluster(base_dir=target.parent, port=port)  # only to stop whatever runs there afterwards
    out: dict[str, Any] = {}
    try:
        wall0 = time.time()
        seconds, res = coldcopy(
            env, "pitr", "--target-name", "bench", "--target-dir", str(target), "--port", str(port),
            "--start", "--coldcopy-command", str(wrapper),
        )  # fmt: skip
        wall1 = wall0 + seconds
        out["segments"] = f"{res['first_segment']} .. {res['last_segment']}"
        text = Path(res["log_file"]).read_text(errors="replace")
        t = log_times(text)
        calls = [line.split() for line in fetch_log.read_text().splitlines()]
    finally:
        rec.destroy()
    if not {"first", "redo_start", "redo_done", "ready"} <= set(t):
        raise SystemExit(f"the recovered server's log lacks the redo or ready lines:\n{text[-3000:]}")
    fetches = [(float(c[1]), float(c[2])) for c in calls if c and c[0] == "wal-fetch"]
    in_redo = [(a, b) for a, b in fetches if t["redo_start"] <= b and a <= t["redo_done"]]
    after_redo = [(a, b) for a, b in fetches if a > t["redo_done"]]
    replay = t["redo_done"] - t["redo_start"]
    fetch_in_redo = sum(b - a for a, b in in_redo)
    out.update(
        total_s=round(seconds, 2),
        restore_base_backup_s=round(t["first"] - wall0, 2),  # download, decrypt, untar, write config
        startup_to_redo_s=round(t["redo_start"] - t["first"], 2),
        replay_s=round(replay, 2),
        wal_fetch_calls=len(fetches),
        wal_fetch_calls_during_replay=len(in_redo),
        wal_fetch_time_during_replay_s=round(fetch_in_redo, 2),
        redo_done_to_ready_s=round(t["ready"] - t["redo_done"], 2),
        wal_fetch_calls_after_redo=len(after_redo),
        wal_fetch_time_after_redo_s=round(sum(b - a for a, b in after_redo), 2),
        ready_to_reported_s=round(wall1 - t["ready"], 2),
        # each call: the file asked for, milliseconds, exit code (1: not archived, a probe)
        wal_fetch_each=[f"{c[-2]} {(float(c[2]) - float(c[1])) * 1000:.0f} ms rc {c[3]}" for c in calls if c],
        wal_fetch_misses=text.count(MISS_LINE),
        coldcopy_overhead_s=round(seconds - replay, 2),
    )
    return out


# -- the data-loss window ------------------------------------------------------------------------
def bench_loss_window(pg: PgCluster, s3: S3Server, commits: int, archive_timeout: int) -> dict[str, Any]:
    """Single-row commits at random moments; each one's delay until its segment is in the bucket."""
    sql(pg, "CREATE TABLE IF NOT EXISTS bench_loss (id serial PRIMARY KEY, at timestamptz DEFAULT now())")
    wait_archived(pg)  # start from a fresh segment: nothing pending
    client = s3.client()
    conn = pg.connect()
    pending: list[tuple[float, str]] = []
    delays: list[float] = []
    rng = random.Random(4)
    spacing = archive_timeout * 0.5  # mean gap: some segments hold several commits, some one
    next_commit = time.monotonic() + rng.uniform(0, spacing)
    deadline = time.monotonic() + commits * spacing + 4 * archive_timeout + 60
    try:
        while (len(delays) < commits) and time.monotonic() < deadline:
            now = time.monotonic()
            if len(pending) + len(delays) < commits and now >= next_commit:
                conn.run("INSERT INTO bench_loss DEFAULT VALUES")  # autocommit: returns once committed
                committed = time.time()
                seg = str(conn.run("SELECT pg_walfile_name(pg_current_wal_insert_lsn())")[0][0])
                pending.append((committed, seg))
                next_commit = now + rng.uniform(0.2, 2 * spacing)
            for item in list(pending):
                key = f"coldcopy/bench/wal/{item[1][:8]}/{item[1]}"
                try:
                    client.head_object(Bucket=BUCKET, Key=key)
                except ClientError:
                    continue
                delays.append(time.time() - item[0])
                pending.remove(item)
            time.sleep(0.05)
    finally:
        conn.close()
    if len(delays) < commits:
        raise SystemExit(f"only {len(delays)} of {commits} commits reached the bucket before the deadline")
    return {
        "archive_timeout_s": archive_timeout,
        "commits": commits,
        "delays_s": [round(d, 2) for d in delays],
        "max_s": round(max(delays), 2),
        "median_s": round(statistics.median(delays), 2),
        "promise": f"archive_timeout + ~1 s + one push = {archive_timeout + 1} s + push",
    }


# -- main ----------------------------------------------------------------------------------------
def summary(report: dict[str, Any]) -> list[str]:
    lines = []
    push = report.get("push", {})
    for kind in ("real", "random"):
        if f"{kind}_speedup_vs_barman" in push:
            d, b = push[f"{kind}_walclient_daemon_s"], push[f"{kind}_barman_cloud_wal_archive_s"]
            ratio = push[f"{kind}_speedup_vs_barman"]
            lines.append(
                f"WAL push ({kind} segments): coldcopy {d * 1000:.0f} ms/segment ({1 / d:.1f}/s) vs barman "
                f"{b * 1000:.0f} ms ({1 / b:.1f}/s) = {ratio}x (target >= {TARGET_PUSH_SPEEDUP:.0f}x: "
                f"{'met' if ratio >= TARGET_PUSH_SPEEDUP else 'NOT met'}); plain wal-push "
                f"{push[f'{kind}_wal_push_s'] * 1000:.0f} ms"
            )
    bb = report.get("basebackup", {})
    if "speedup_vs_barman" in bb:
        ok = bb["speedup_vs_barman"] > 1 and bb["stored_size_vs_barman"] <= 1
        lines.append(
            f"base backup of {bb['raw_mb']} MB: coldcopy {bb['coldcopy_s']} s, {bb['coldcopy_stored_mb']} MB "
            f"stored vs barman --lz4 {bb['barman_lz4_s']} s, {bb['barman_lz4_stored_mb']} MB: "
            f"{bb['speedup_vs_barman']}x faster, {bb['stored_size_vs_barman']}x the size "
            f"(target faster at a size no larger: {'met' if ok else 'NOT met'})"
        )
    p = report.get("pitr", {})
    if p:
        lines.append(
            f"PITR: coldcopy pitr --start to promoted {p['total_s']} s; PostgreSQL replay {p['replay_s']} s "
            f"(of which wal-fetch {p['wal_fetch_time_during_replay_s']} s); "
            f"coldcopy overhead = total - replay = {p['coldcopy_overhead_s']} s "
            f"(restoring the base backup {p['restore_base_backup_s']} s)"
        )
    lw = report.get("loss_window", {})
    if lw:
        kept = lw["max_s"] <= min(TARGET_LOSS_WINDOW_S, lw["archive_timeout_s"] + 2)
        lines.append(
            f"data-loss window with archive_timeout = {lw['archive_timeout_s']} s: commit -> in the bucket "
            f"max {lw['max_s']} s, median {lw['median_s']} s over {lw['commits']} commits "
            f"(promise: archive_timeout + ~1 s + one push; target <= {TARGET_LOSS_WINDOW_S:.0f} s: "
            f"{'met' if kept else 'NOT met'})"
        )
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=int, default=20, help="pgbench scale of the database (20 ≈ 300 MB)")
    ap.add_argument("--seconds", type=int, default=10, help="pgbench write load before the PITR target")
    ap.add_argument("--segments", type=int, default=20, help="real segments per archiving tool compared")
    ap.add_argument("--random-segments", type=int, default=5, help="random 16 MiB segments per tool")
    ap.add_argument("--archive-timeout", type=int, default=10, help="seconds (the documented run uses 60)")
    ap.add_argument("--commits", type=int, default=6, help="commits timed for the data-loss window")
    ap.add_argument(
        "--only",
        choices=["all", "loss", "pitr"],
        default="all",
        help="'loss': only the data-loss window; 'pitr': only the PITR (a coldcopy base backup, no barman)",
    )
    a = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="coldcopy-bench-pitr-"))
    base.chmod(0o755)
    env_file = base / "coldcopy.env"
    run = base / "run"
    run.mkdir(mode=0o700)
    chown_postgres(run)
    sock = run / "walpushd.sock"
    report: dict[str, Any] = {"scale": a.scale, "archive_command": "walclient + wal-pushd"}
    with S3Server() as s3:
        s3.create_bucket(BUCKET)
        s3.create_bucket(BARMAN_BUCKET)
        storage = {
            "COLDCOPY_CLUSTER": "bench",
            **s3.spaces_env(BUCKET),
            "BACKUP_ENCRYPTION_KEY": "bench-pitr-key",
        }
        env_file.write_text("".join(f"{k}='{v}'\n" for k, v in storage.items()))
        env_file.chmod(0o600)
        chown_postgres(env_file)
        daemon_env = {
            "PATH": os.environ.get("PATH", os.defpath),
            "COLDCOPY_ENV_FILE": str(env_file),
            "LANG": "C.UTF-8",
        }
        settings = {
            "archive_mode": "on",
            "archive_command": walclient_archive_command(sock),
            "archive_timeout": str(a.archive_timeout),
            "full_page_writes": "on",
            "synchronous_commit": "on",
            "log_line_prefix": "%m [%p] ",
            "log_timezone": "UTC",
        }
        with (
            daemon(daemon_env, sock, postgres=True),
            PgCluster(base_dir=base / "src", settings=settings) as pg,
        ):
            env = {
                **os.environ, **storage, "COLDCOPY_ENV_FILE": os.devnull, "DB_HOST": pg.host,
                "DB_PORT": str(pg.port), "DB_NAME": "postgres", "DB_USER": pg.user,
                "DB_PASSWORD": pg.password, "DB_SSLMODE": "disable",
            }  # fmt: skip
            if a.only in ("all", "pitr"):
                pgbench = str(pg.bin_dir / "pgbench")
                init = [pgbench, "-i", "-q", "-s", str(a.scale), "postgres"]
                subprocess.run(init, env={**env, **pg.env()}, check=True, capture_output=True)
                report["archive_after_load_s"] = round(wait_archived(pg), 2)
                if a.only == "all":
                    report["basebackup"] = bench_basebackup(pg, env, s3)
                else:
                    report["basebackup"] = {"coldcopy_s": round(coldcopy(env, "basebackup")[0], 2)}
                before = int(sql(pg, "SELECT archived_count FROM pg_stat_archiver")[0][0])
                t0 = time.monotonic()
                subprocess.run(
                    [pgbench, "-n", "-T", str(a.seconds), "-c", "2", "postgres"], env={**env, **pg.env()},
                    check=True, capture_output=True,
                )  # fmt: skip
                sql(pg, "SELECT pg_create_restore_point('bench')")
                lag = wait_archived(pg)
                report["workload"] = {
                    "pgbench_s": round(time.monotonic() - t0 - lag, 2),
                    "segments_archived": int(sql(pg, "SELECT archived_count FROM pg_stat_archiver")[0][0])
                    - before,
                    "archive_lag_after_load_s": round(lag, 2),
                    "archive_failures": int(sql(pg, "SELECT failed_count FROM pg_stat_archiver")[0][0]),
                }
                if a.only == "all":
                    report["push"] = bench_push(pg, env, s3, base, a.segments, a.random_segments)
            if a.only in ("all", "loss"):
                report["loss_window"] = bench_loss_window(pg, s3, a.commits, a.archive_timeout)
            if a.only in ("all", "pitr"):
                report["pitr"] = bench_pitr(env, base)
    shutil.rmtree(base, ignore_errors=True)
    print(json.dumps(report, indent=1))
    print()
    print("\n".join(summary(report)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
