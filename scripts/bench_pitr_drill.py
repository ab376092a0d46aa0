#!/usr/bin/env python3
"""Benchmark the logical PITR drill: a logical backup, pgbench for ``--seconds`` while the change
archive drains every ``--interval`` seconds (local cluster with wal_level=logical, moto S3 over
HTTP), then the weekly job's drill (``verify.pitr_drill``) to a seeded random time of the window,
its scratch database on the same server.  Prints, in one run: pgbench's TPS, the drill's target and
checks, its time split into restore, replay and the rest (the second pass over the archive, the
checks, the scratch), and the replayed transactions per second against pgbench's rate.

    .venv/bin/python scripts/bench_pitr_drill.py --seconds 60 --scale 5
"""

from __future__ import annotations

import argparse
import json
import random
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))

from coldcopy.backup.logical import run_backup  # noqa: E402
from coldcopy.changes.monitor import archive_slot, drain_and_record  # noqa: E402
from coldcopy.changes.slot import setup  # noqa: E402
from coldcopy.config import load_settings  # noqa: E402
from coldcopy.context import open_context  # noqa: E402
from coldcopy.localstack.s3server import S3Server  # noqa: E402
from coldcopy.postgres.cluster import PgCluster, find_bin_dir  # noqa: E402
from coldcopy.verify.pitr_drill import run_pitr_drill  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--scale", type=int, default=5)
    ap.add_argument("--interval", type=int, default=15)
    ap.add_argument("--clients", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    settings = {"wal_level": "logical", "max_replication_slots": "10", "synchronous_commit": "on"}
    with PgCluster(settings=settings) as pg, S3Server() as s3:
        s3.create_bucket("bench-drill")
        server = {"HOST": pg.host, "PORT": str(pg.port), "USER": pg.user, "PASSWORD": pg.password}
        env = {
            **{f"DB_{k}": v for k, v in server.items()},
            **{f"VERIFY_DB_{k}": v for k, v in server.items()},
            "DB_NAME": "postgres",
            "DB_SSLMODE": "disable",
            "VERIFY_DB_SSLMODE": "disable",
            "COLDCOPY_CLUSTER": "bench",
            **s3.spaces_env("bench-drill"),
            "BACKUP_ENCRYPTION_KEY": secrets.token_urlsafe(32),
        }
        bench_env = {"PGPASSWORD": pg.password, "PATH": "/usr/bin:/bin"}
        pgbench = [str(find_bin_dir() / "pgbench"), "-h", pg.host, "-p", str(pg.port), "-U", pg.user]
        subprocess.run([*pgbench, "-i", "-q", "-s", str(a.scale), "postgres"], env=bench_env, check=True,
                       capture_output=True)  # fmt: skip
        ctx = open_context(load_settings(env))
        conn = pg.connect()
        setup(conn, archive_slot(ctx.settings))
        run_backup(ctx.settings, ctx=ctx)
        stop = threading.Event()

        def drainer() -> None:
            while not stop.is_set():
                t0 = time.monotonic()
                drain_and_record(ctx)
                stop.wait(max(a.interval - (time.monotonic() - t0), 0))

        th = threading.Thread(target=drainer)
        th.start()
        out = subprocess.run(
            [*pgbench, "-c", str(a.clients), "-j", str(a.clients), "-T", str(a.seconds), "postgres"],
            env=bench_env, check=True, capture_output=True, text=True,
        ).stdout  # fmt: skip
        stop.set()
        th.join()
        drain_and_record(ctx)  # the tail
        conn.close()
        tps = float(next(x for x in out.splitlines() if x.startswith("tps")).split("=")[1].split()[0])
        t0 = time.monotonic()
        drill = run_pitr_drill(ctx.settings, rng=random.Random(a.seed), ctx=ctx)
        total = time.monotonic() - t0
        assert drill is not None and drill.measurement is not None
        m = drill.measurement
        restore, replay = float(m.get("restore_seconds") or 0), float(m.get("replay_seconds") or 0)
        rate = float(m.get("replay_transactions_per_second") or 0)
        print(json.dumps({
            "pgbench_tps": tps,
            "drill_ok": drill.ok,
            "failed": [f"{c.name}: {c.detail}" for c in drill.checks if not c.ok],
            "target": m["recovery_target_time"],
            "window": [m["window_start"], m["window_end"]],
            "drill_seconds": round(total, 2),
            "restore_seconds": restore,
            "replay_seconds": replay,
            "rest_seconds": round(total - restore - replay, 2),
            "replayed_transactions": m.get("replay_transactions"),
            "replayed_per_second": rate,
            "replay_vs_pgbench": round(rate / tps, 2) if tps else None,
            "history_per_replay_second": m.get("history_per_replay_second"),
        }, indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
