#!/usr/bin/env python3
"""Backup and restore benchmark: coldcopy against plain pg_dump / pg_restore, side by side, in one run.

Builds a text-heavy demo database (cold-email SaaS data: JSONB, free text) of about --size-gb,
then measures on the same cluster and the same local S3 server:
  pg_dump -Fc > /dev/null            (how the old scripts did it)
  pg_dump -Fc -Z0 > /dev/null        (the floor: pg_dump alone)
  coldcopy backup                    (zstd + AES-GCM + volumes uploaded to the S3 server)
  pg_restore of a local -Z0 file     (the restore floor)
  coldcopy restore                   (download + decrypt + decompress + pg_restore)
and coldcopy's own peak RSS (ru_maxrss of the coldcopy process itself, not its pg_dump child),
again after the database has doubled.  Prints ratios against the targets.

    .venv/bin/python scripts/bench_backup.py [--size-gb 1.0] [--small-gb 0.3] [--skip-double] [--repeat 3]

A backup's time is its process's wall time, from exec to exit (the interpreter's start and the
imports included, as pg_dump's own start is in the floor).  Per size it also prints the rows the
backup read (seq_tup_read after pg_stat_reset, as a multiple of the live rows: 1.00 when the dump
is the only scan) and the fixed cost: the backup's time less pg_dump's run inside it (from its
start to its last byte), split into before pg_dump starts and after its last byte, with the
`phase …` lines of `coldcopy --debug` (those marked "in the background" overlap the rest).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from coldcopy.localstack.dbcompare import wait_until_alone
from coldcopy.localstack.demodata import load_demo_data
from coldcopy.localstack.s3server import S3Server
from coldcopy.postgres.client import Postgres
from coldcopy.postgres.cluster import PgCluster

DB = "benchdb"
START = 0.0  # python -c pass, measured once in main()
BASELINE = ""  # --baseline: another version's lib/ folder
BUCKET = "bench-bucket"
RUNNER = """
import resource, sys, json, time
t_imp = time.monotonic()
import coldcopy.cli.main
from coldcopy.__main__ import main
t0 = time.monotonic()
print(f"phase imports: {t0 - t_imp:.3f} s", file=sys.stderr)
rc = main()  # the `coldcopy` command's own entry point
me = resource.getrusage(resource.RUSAGE_SELF)
kids = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"rc": rc, "seconds": time.monotonic() - t0, "cpu_seconds": me.ru_utime + me.ru_stime,
                  "child_cpu_seconds": kids.ru_utime + kids.ru_stime,
                  "maxrss_mb": me.ru_maxrss / 1024}), file=sys.stderr)
"""


PHASE = re.compile(r"phase ([^:]+): ([\d.]+) s")
BACKGROUND = " (in the background)"
DUMP_STARTED = re.compile(r"pg_dump started \(monotonic clock ([\d.]+) s\)")
STREAMED = re.compile(r"dump streamed: \d+ bytes in ([\d.]+) s")
COMPLETED = re.compile(r"upload complete after ([\d.]+) s")


def _phase(debug_log: str, pattern: re.Pattern[str]) -> float:
    """A phase's end, in seconds from the start of the dump, from `coldcopy --debug` output."""
    m = pattern.search(debug_log)
    if m is None:
        raise SystemExit(f"no {pattern.pattern!r} line in the debug output")
    return float(m.group(1))


def timed(args: list[str], env: dict[str, str], stdout: int | None = subprocess.DEVNULL) -> float:
    t0 = time.monotonic()
    subprocess.run(args, env=env, stdout=stdout, check=True)
    return time.monotonic() - t0


def coldcopy(env: dict[str, str], *args: str) -> dict[str, float]:
    """Run coldcopy; ``seconds``: the process's wall time, from exec to exit."""
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", RUNNER, *args], env=env, capture_output=True, text=True)
    wall = time.monotonic() - t0
    started = DUMP_STARTED.search(proc.stderr)  # the same clock as ours (CLOCK_MONOTONIC)
    last = proc.stderr.strip().splitlines()[-1]
    stats = json.loads(last)
    if stats["rc"] != 0:
        raise SystemExit(f"coldcopy {' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    stats["out"], stats["err"], stats["seconds"] = proc.stdout, proc.stderr, wall
    stats["before_dump"] = float(started.group(1)) - t0 if started else 0.0
    return stats  # type: ignore[no-any-return]


def interpreter_start() -> float:
    """The bare interpreter's start and exit (``python -c pass``), median of 5."""
    return statistics.median(timed([sys.executable, "-c", "pass"], dict(os.environ)) for _ in range(5))


def live_rows(pg: PgCluster) -> int:
    """Every user table's rows (count(*): a scan, taken before the statistics are reset)."""
    c = pg.connect(DB)
    try:
        return sum(Postgres.table_row_counts(c).values())
    finally:
        c.close()


def reset_stats(pg: PgCluster) -> None:
    c = pg.connect(DB)
    try:
        wait_until_alone(c, DB)
        c.run("SELECT pg_stat_reset()")
    finally:
        c.close()


def rows_read(pg: PgCluster) -> int:
    """seq_tup_read over the user's tables since ``reset_stats``, once every other session in the
    database has gone (a backend flushes its statistics on exit, before it leaves pg_stat_activity)."""
    c = pg.connect(DB)
    try:
        wait_until_alone(c, DB)
        c.run("SELECT pg_stat_clear_snapshot()")
        return int(c.run("SELECT coalesce(sum(seq_tup_read), 0) FROM pg_stat_user_tables")[0][0])
    finally:
        c.close()


def _cpu(pid: int | None) -> float:
    t = psutil.Process(pid).cpu_times() if pid else None
    if t is None:
        return 0.0
    return float(t.user + t.system)


def db_size(pg: PgCluster, db: str) -> int:
    c = pg.connect(db)
    try:
        return int(c.run("SELECT pg_database_size(current_database())")[0][0])
    finally:
        c.close()


def measure(
    pg: PgCluster,
    s3: S3Server,
    env: dict[str, str],
    pgenv: dict[str, str],
    label: str,
    with_restore: bool,
    repeat: int,
    target: float,
) -> dict[str, float]:
    b = pg.bin_dir
    r: dict[str, float] = {"db_bytes": db_size(pg, DB), "live_rows": live_rows(pg)}
    r["pg_dump_fc"] = timed([str(b / "pg_dump"), "-Fc", DB], pgenv)
    # The floor and the backup alternate `repeat` times; medians are compared (a shared machine is
    # noisy, and a single pair can land on either side of a 1.3x target by chance).
    floors, backups, baselines = [], [], []
    for _ in range(repeat):
        floors.append(timed([str(b / "pg_dump"), "-Fc", "-Z0", DB], pgenv))
        reset_stats(pg)
        cpu0 = _cpu(s3.pid)
        bk = coldcopy(env, "--debug", "backup", "--json")
        bk["s3_cpu"] = _cpu(s3.pid) - cpu0
        bk["rows_read"] = rows_read(pg)
        backups.append(bk)
        if BASELINE:  # another version's backup, in the same turn (the machine's load alike)
            baselines.append(coldcopy({**env, "PYTHONPATH": BASELINE}, "backup", "--json")["seconds"])
    r["pg_dump_z0"] = statistics.median(floors)
    seconds = [x["seconds"] for x in backups]
    r.update(floor_min=min(floors), floor_max=max(floors), backup_min=min(seconds), backup_max=max(seconds))
    bk = sorted(backups, key=lambda x: x["seconds"])[len(backups) // 2]  # the median run
    info = json.loads(str(bk["out"]))
    streamed, completed = _phase(str(bk["err"]), STREAMED), _phase(str(bk["err"]), COMPLETED)
    r.update(
        coldcopy_backup=bk["seconds"],
        backup_rss_mb=max(x["maxrss_mb"] for x in backups),
        backup_cpu=bk["cpu_seconds"],
        backup_child_cpu=bk["child_cpu_seconds"],
        s3_cpu=bk["s3_cpu"],
        stored_bytes=info["size_bytes"],
        dump_bytes=info["raw_size_bytes"],
        stream_seconds=streamed,
        complete_seconds=completed - streamed,
        rows_read=max(x["rows_read"] for x in backups),
    )
    phases = {name: float(sec) for name, sec in PHASE.findall(str(bk["err"]))}
    # pg_dump's run inside the backup: from its start to its last byte; the rest is fixed cost.
    r["fixed_seconds"] = r["coldcopy_backup"] - streamed
    r["before_seconds"] = bk["before_dump"]
    r["after_seconds"] = r["fixed_seconds"] - r["before_seconds"]
    if with_restore:
        with tempfile.TemporaryDirectory() as tmp:
            dump = Path(tmp) / "db.z0"
            subprocess.run([str(b / "pg_dump"), "-Fc", "-Z0", "-f", str(dump), DB], env=pgenv, check=True)
            pg.create_database("plain_restore")
            r["pg_restore_file"] = timed([str(b / "pg_restore"), "-d", "plain_restore", str(dump)], pgenv)
            pg.drop_database("plain_restore")
        rs = coldcopy(env, "restore", "--backup-name", info["name"], "--target-db", "cc_restore", "--json")
        r.update(coldcopy_restore=rs["seconds"], restore_rss_mb=rs["maxrss_mb"])
        pg.drop_database("cc_restore")
    print(
        f"\n== {label}: database {r['db_bytes'] / 1e9:.2f} GB, dump {r['dump_bytes'] / 1e9:.2f} GB, "
        f"stored {r['stored_bytes'] / 1e9:.3f} GB ({r['dump_bytes'] / r['stored_bytes']:.1f}x)"
    )
    print(f"  pg_dump -Fc > /dev/null      {r['pg_dump_fc']:7.2f} s")
    print(
        f"  pg_dump -Fc -Z0 > /dev/null  {r['pg_dump_z0']:7.2f} s   "
        f"(floor; median of {repeat}: {r['floor_min']:.2f}–{r['floor_max']:.2f})"
    )
    print(
        f"  coldcopy backup → S3         {r['coldcopy_backup']:7.2f} s   "
        f"(median of {repeat}: {r['backup_min']:.2f}–{r['backup_max']:.2f}) "
        f"{r['coldcopy_backup'] / r['pg_dump_z0']:.2f}x floor (target ≤ {target:.2f}), "
        f"{r['coldcopy_backup'] / r['pg_dump_fc']:.2f}x pg_dump -Fc (target < 1.00), "
        f"peak RSS {r['backup_rss_mb']:.0f} MB (target ≤ 150)"
    )
    if baselines:
        r["baseline_backup"] = statistics.median(baselines)
        print(
            f"  baseline backup ({BASELINE})  {r['baseline_backup']:7.2f} s   (median of {repeat}: "
            f"{min(baselines):.2f}–{max(baselines):.2f}) {r['baseline_backup'] / r['pg_dump_z0']:.2f}x floor"
        )
    print(
        f"    of which: pg_dump → zstd → AES → upload, from pg_dump's start to its last byte "
        f"{r['stream_seconds']:.2f} s ({r['stream_seconds'] / r['pg_dump_z0']:.2f}x floor); fixed cost "
        f"{r['fixed_seconds']:.2f} s = {r['before_seconds']:.2f} s before pg_dump starts (interpreter, "
        f"imports, connection, snapshot) + {r['after_seconds']:.2f} s after its last byte (the last "
        f"volumes {r['complete_seconds']:.2f} s, roles, manifest, catalog, exit)"
    )
    print(
        f"  rows read per backup: {r['rows_read']:,} of {r['live_rows']:,} live rows = "
        f"{r['rows_read'] / max(r['live_rows'], 1):.2f}x (target 1.00; seq_tup_read after pg_stat_reset)"
    )
    fixed = {"interpreter start": START, **{k: v for k, v in phases.items() if BACKGROUND not in k}}
    print(
        "  phases on the way (median run): "
        + ", ".join(f"{k} {v:.3f}" for k, v in fixed.items())
        + "\n  phases in the background (overlapping the above): "
        + ", ".join(f"{k.replace(BACKGROUND, '')} {v:.3f}" for k, v in phases.items() if BACKGROUND in k)
    )
    r.update({f"phase {k}": v for k, v in fixed.items()})
    print(
        f"  CPU during the backup: coldcopy {r['backup_cpu']:.1f} s, "
        f"its pg_dump {r['backup_child_cpu']:.1f} s, the S3 server {r['s3_cpu']:.1f} s "
        f"(on {os.cpu_count()} cores, shared with the PostgreSQL backend)"
    )
    if with_restore:
        print(f"  pg_restore of a -Z0 file     {r['pg_restore_file']:7.2f} s   (floor)")
        print(
            f"  coldcopy restore ← S3        {r['coldcopy_restore']:7.2f} s   "
            f"{r['coldcopy_restore'] / r['pg_restore_file']:.2f}x (target ≤ 1.30), "
            f"peak RSS {r['restore_rss_mb']:.0f} MB"
        )
    return r


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-gb", type=float, default=1.0)
    ap.add_argument("--skip-double", action="store_true", help="skip the second run on a doubled database")
    ap.add_argument("--json", help="also write the figures to this file")
    ap.add_argument("--repeat", type=int, default=3, help="floor/backup pairs per size (medians compared)")
    ap.add_argument("--small-gb", type=float, default=0.3, help="a smaller database measured first (0: none)")
    ap.add_argument(
        "--baseline",
        help="the lib/ folder of another version (e.g. `git archive main lib | tar -x -C /tmp/main`): its "
        "backup runs in each turn too, so a change is measured against it under the same load",
    )
    a = ap.parse_args()
    global START, BASELINE
    START = interpreter_start()
    BASELINE = str(Path(a.baseline).resolve()) if a.baseline else ""
    with PgCluster(settings={"shared_buffers": "256MB", "max_wal_size": "4GB"}) as pg, S3Server() as s3:
        s3.create_bucket(BUCKET)
        env = {
            "PATH": os.environ["PATH"],
            "HOME": os.environ.get("HOME", "/root"),
            "COLDCOPY_ENV_FILE": os.devnull,
            "DB_HOST": pg.host,
            "DB_PORT": str(pg.port),
            "DB_NAME": DB,
            "DB_USER": pg.user,
            "DB_PASSWORD": pg.password,
            "DB_SSLMODE": "disable",
            **s3.spaces_env(BUCKET),
            "BACKUP_ENCRYPTION_KEY": "bench-key-not-secret",
        }
        pgenv = {**os.environ, **pg.env(), "PGDATABASE": DB}
        results = {}
        if a.small_gb:
            _build(pg, a.small_gb)
            small = measure(
                pg, s3, env, pgenv, "small database", with_restore=False, repeat=a.repeat, target=1.3
            )
            results["small"] = small
            pg.drop_database(DB)
        _build(pg, a.size_gb)
        results["single"] = measure(
            pg, s3, env, pgenv, "database ×1", with_restore=True, repeat=a.repeat, target=1.15
        )
        if not a.skip_double:
            _double(pg)
            results["double"] = measure(
                pg, s3, env, pgenv, "database ×2", with_restore=False, repeat=a.repeat, target=1.15
            )
            one, two = results["single"]["backup_rss_mb"], results["double"]["backup_rss_mb"]
            print(
                f"\npeak RSS of coldcopy backup: {one:.0f} MB at ×1, {two:.0f} MB at ×2 "
                f"({'not larger' if two <= one * 1.05 else 'LARGER'}; 5 % noise allowed)"
            )
        if a.json:
            Path(a.json).write_text(json.dumps(results, indent=2))
    return 0


def _build(pg: PgCluster, size_gb: float) -> None:
    pg.create_database(DB)
    t0 = time.monotonic()
    conn = pg.connect(DB)
    try:
        load_demo_data(conn, size_gb / 0.35)  # demodata scale 1.0 is about 0.35 GB on disk
        _settle(conn)
    finally:
        conn.close()
    print(f"built the database in {time.monotonic() - t0:.0f} s ({db_size(pg, DB) / 1e9:.2f} GB)")


def _settle(conn: Any) -> None:
    """Leave nothing of the load to run during the measurements: the vacuum and analyze that
    autovacuum would start on the new tables within a minute or two (seconds of CPU beside the
    measured runs, which a backup that needs both cores feels more than pg_dump alone), the hint
    bits of the new rows, and the checkpoint of the load's dirty pages."""
    conn.run("VACUUM (ANALYZE)")
    conn.run("CHECKPOINT")


def _double(pg: PgCluster) -> None:
    """Duplicate every user table's rows into a copy table, doubling the database."""
    c = pg.connect(DB)
    try:
        tables = c.run(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' "
            "AND table_type = 'BASE TABLE'"
        )
        for (t,) in tables:
            c.run(f'CREATE TABLE "{t}_copy" AS TABLE "{t}"')
        _settle(c)
    finally:
        c.close()


if __name__ == "__main__":
    sys.exit(main())
