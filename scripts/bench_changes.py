#!/usr/bin/env python3
"""Benchmark the change archive: pgbench at full speed against a local cluster (wal_level=logical)
while the drain runs on the deployed schedule (every COLDCOPY_CHANGES_INTERVAL_SECONDS), into a
moto S3 server over HTTP.  Prints, in one run: pgbench TPS, WAL bytes written, drain CPU seconds
per GB of WAL, bytes stored per transaction, and the data-loss window (max, median) from commit to
stored batch (a batch's stored_at minus each transaction's commit time).  With ``--pitr``: a
logical backup before pgbench starts, and after the run ``coldcopy pitr`` to the newest archived
commit into a new database: the end-to-end time split into restore and replay, the replay's
transactions and rows per second against pgbench's own rate in the same run (the ratio is what
counts on a busy machine), an hour of changes projected at that ratio, and where the replay's time
went (reading the batches, parsing and writing SQL, the server).

    .venv/bin/python scripts/bench_changes.py --seconds 120 --scale 10
    .venv/bin/python scripts/bench_changes.py --pitr --seconds 60 --scale 10
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))

from coldcopy.backup.logical import run_backup  # noqa: E402
from coldcopy.changes.monitor import archive_slot, drain_and_record  # noqa: E402
from coldcopy.changes.slot import setup  # noqa: E402
from coldcopy.config import Settings, load_settings  # noqa: E402
from coldcopy.context import open_context  # noqa: E402
from coldcopy.core.changes import BATCHES_PREFIX  # noqa: E402
from coldcopy.core.lsn import parse_lsn  # noqa: E402
from coldcopy.core.recovery_plan import Target  # noqa: E402
from coldcopy.localstack.s3server import S3Server  # noqa: E402
from coldcopy.postgres.cluster import PgCluster, find_bin_dir  # noqa: E402
from coldcopy.restore.replay import run_logical_pitr  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=120)
    ap.add_argument("--scale", type=int, default=10)
    ap.add_argument("--interval", type=int, default=15)
    ap.add_argument("--clients", type=int, default=2)
    ap.add_argument("--pitr", action="store_true", help="also measure a logical PITR over the run")
    a = ap.parse_args()
    settings = {"wal_level": "logical", "max_replication_slots": "10", "synchronous_commit": "on"}
    with PgCluster(settings=settings) as pg, S3Server() as s3:
        bucket = "bench-changes"
        s3.create_bucket(bucket)
        env = {
            **pg.env(),
            "DB_HOST": pg.host,
            "DB_PORT": str(pg.port),
            "DB_USER": pg.user,
            "DB_PASSWORD": pg.password,
            "DB_NAME": "postgres",
            "DB_SSLMODE": "disable",
            "COLDCOPY_CLUSTER": "bench",
            **s3.spaces_env(bucket),
            "BACKUP_ENCRYPTION_KEY": secrets.token_urlsafe(32),
            "COLDCOPY_CHANGES_INTERVAL_SECONDS": str(a.interval),
        }
        bench_env = {"PGPASSWORD": pg.password, "PATH": "/usr/bin:/bin"}
        pgbench = [str(find_bin_dir() / "pgbench"), "-h", pg.host, "-p", str(pg.port), "-U", pg.user]
        subprocess.run(
            [*pgbench, "-i", "-q", "-s", str(a.scale), "postgres"],
            env=bench_env,
            check=True,
            capture_output=True,
        )
        ctx = open_context(load_settings(env))
        conn = pg.connect()
        setup(conn, archive_slot(ctx.settings))
        if a.pitr:
            run_backup(ctx.settings, ctx=ctx)
        wal0 = parse_lsn(str(conn.run("SELECT pg_current_wal_lsn()::text")[0][0]))
        stop = threading.Event()
        cpu = [0.0]
        drains = [0]

        def drainer() -> None:
            while not stop.is_set():
                c0 = time.thread_time()
                t0 = time.monotonic()
                drain_and_record(ctx)
                cpu[0] += time.thread_time() - c0
                drains[0] += 1
                stop.wait(max(a.interval - (time.monotonic() - t0), 0))

        th = threading.Thread(target=drainer)
        th.start()
        out = subprocess.run(
            [*pgbench, "-c", str(a.clients), "-j", str(a.clients), "-T", str(a.seconds), "postgres"],
            env=bench_env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        stop.set()
        th.join()
        c0 = time.thread_time()
        drain_and_record(ctx)  # the tail
        cpu[0] += time.thread_time() - c0
        wal = parse_lsn(str(conn.run("SELECT pg_current_wal_lsn()::text")[0][0])) - wal0
        tps = next(line for line in out.splitlines() if line.startswith("tps"))
        windows, stored, txns = [], 0, 0
        for info in ctx.storage.list(BATCHES_PREFIX):
            rec = ctx.storage.get_json(info.key)
            stored += rec["stored_size"]
            txns += rec["transactions"]
            at = datetime.fromisoformat(rec["stored_at"].replace("Z", "+00:00"))
            for key in ("first_commit_at", "last_commit_at"):
                if rec.get(key):
                    windows.append((at - datetime.fromisoformat(rec[key])).total_seconds())
        report = {
            "pgbench": tps,
            "seconds": a.seconds,
            "drains": drains[0] + 1,
            "wal_bytes": wal,
            "drain_cpu_seconds_per_gb_wal": round(cpu[0] / (wal / 1e9), 1) if wal else None,
            "transactions_archived": txns,
            "stored_bytes_per_transaction": round(stored / txns, 1) if txns else None,
            "window_seconds_max": round(max(windows), 2) if windows else None,
            "window_seconds_median": round(statistics.median(windows), 2) if windows else None,
        }
        if a.pitr:
            report["pitr"] = measure_pitr(ctx.settings, pg, tps, a.seconds)
        print(json.dumps(report, indent=1))
        conn.close()
    return 0


#: pgbench's tables the archive holds (pgbench_history has no key: `changes setup` leaves it out)
KEYED = ("pgbench_accounts", "pgbench_tellers", "pgbench_branches")


def fingerprint(conn: Any) -> dict[str, list[Any]]:
    """Each keyed pgbench table's row count and an order-independent hash of its rows."""
    return {t: conn.run(f"SELECT count(*), sum(hashtext(x::text)::bigint) FROM {t} x")[0] for t in KEYED}


def measure_pitr(settings: Settings, pg: PgCluster, tps_line: str, seconds: int) -> dict[str, Any]:
    """``pitr`` to the newest archived commit into a new database: the end-to-end time split into
    restore and replay, the replay's throughput against pgbench's own rate (same run), where the
    replay's time went, and whether the recovered tables equal the source's."""
    conn = pg.connect()
    newest = Target("lsn", lsn=parse_lsn(str(conn.run("SELECT pg_current_wal_lsn()::text")[0][0])))
    t0 = time.monotonic()
    r = run_logical_pitr(settings, newest, "pitr_target")
    total = time.monotonic() - t0
    rp = r.replay
    rate = float(tps_line.split("=")[1].split()[0])  # pgbench's transactions per second
    per_txn = rp.rows / rp.transactions if rp.transactions else 0.0
    ratio = rp.transactions / rp.seconds / rate if rate and rp.seconds else None
    got = pg.connect("pitr_target")
    same = fingerprint(got) == fingerprint(conn)
    got.close()
    conn.close()
    return {
        "recovered_tables_equal_the_source": same,
        "total_seconds": round(total, 2),
        "restore_seconds": r.restore_seconds,
        "replay_seconds": rp.seconds,
        "other_seconds": round(total - r.restore_seconds - rp.seconds, 2),  # planning, listing
        "replayed_transactions": rp.transactions,
        "replayed_rows": rp.rows,
        "replayed_transactions_per_second": rp.per_second,
        "replayed_rows_per_second": round(rp.rows / rp.seconds, 1) if rp.seconds else None,
        "pgbench_transactions_per_second": rate,
        "pgbench_rows_per_second": round(rate * per_txn, 1),
        "replay_vs_pgbench": round(ratio, 2) if ratio else None,
        # an hour of pgbench at this rate: its replay, and the whole pitr with this run's restore
        "hour_of_changes_replay_seconds": round(3600 / ratio) if ratio else None,
        "hour_of_changes_pitr_seconds": round(3600 / ratio + total - rp.seconds) if ratio else None,
        "statements": rp.statements,
        "round_trips": rp.round_trips,
        # the replay's own thread: waiting for the batches (fetched, decrypted and decompressed in
        # a thread of their own), parsing and writing SQL, waiting for the server; the server's
        # time overlaps the others (a sending thread)
        "replay_time": {
            "waiting_for_batches_seconds": rp.read_seconds,
            "parse_and_build_sql_seconds": rp.build_seconds,
            "waiting_for_server_seconds": rp.wait_seconds,
            "rest_seconds": round(rp.seconds - rp.read_seconds - rp.build_seconds - rp.wait_seconds, 3),
            "server_busy_seconds": rp.server_seconds,
        },
        "pgbench_seconds": seconds,
    }


if __name__ == "__main__":
    raise SystemExit(main())
