#!/usr/bin/env python3
"""Physical backup and PITR benchmark: basebackup, WAL archiving throughput, recovery time.

On a throwaway cluster whose archive_command is `coldcopy wal-push %p`, against a local S3 server:
  coldcopy basebackup          of a pgbench database of --scale (default 20 ≈ 300 MB)
  WAL archiving                pgbench writes for --seconds; then the time until every segment is
                               archived; and wal-push of 16 MB random segments, seconds per segment
  coldcopy pitr --start        to the newest point (a restore point), time to promotion

    .venv/bin/python scripts/bench_pitr.py [--scale 20] [--seconds 10]
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from coldcopy.localstack.net import free_port
from coldcopy.localstack.pgcluster import PgCluster
from coldcopy.localstack.s3server import S3Server

REPO = Path(__file__).resolve().parents[1]
BUCKET = "bench-pitr"


def coldcopy_command() -> str:
    """How the postgres OS user runs coldcopy (our interpreter may sit under a private /root)."""
    me = shlex.join([sys.executable, "-m", "coldcopy"])
    if os.geteuid() != 0:
        return me
    ok = subprocess.run(["runuser", "-u", "postgres", "--", "test", "-x", sys.executable], check=False)
    if ok.returncode == 0:
        return me
    site = [p for p in sys.path if p.endswith("site-packages")]
    path = os.pathsep.join([str(REPO / "lib"), *site])
    system = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
    return shlex.join(["env", f"PYTHONPATH={path}", system, "-m", "coldcopy"])


def sql(pg: PgCluster, query: str) -> list[list[object]]:
    conn = pg.connect()
    try:
        return list(conn.run(query) or [])
    finally:
        conn.close()


def coldcopy(env: dict[str, str], *args: str) -> tuple[float, dict[str, object]]:
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=int, default=20)
    ap.add_argument("--seconds", type=int, default=10)
    a = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="coldcopy-bench-pitr-"))
    base.chmod(0o755)
    env_file = base / "coldcopy.env"
    cmd = coldcopy_command()
    report: dict[str, object] = {"scale": a.scale}
    with (
        S3Server() as s3,
        PgCluster(
            base_dir=base / "src",
            settings={
                "archive_mode": "on",
                "archive_command": f"COLDCOPY_ENV_FILE={env_file} {cmd} wal-push %p",
            },
        ) as pg,
    ):
        s3.create_bucket(BUCKET)
        storage = {
            "COLDCOPY_CLUSTER": "bench",
            "DO_SPACES_KEY": s3.access_key,
            "DO_SPACES_SECRET": s3.secret_key,
            "DO_SPACES_BUCKET": BUCKET,
            "DO_SPACES_REGION": s3.region,
            "DO_SPACES_ENDPOINT": s3.endpoint_url,
            "BACKUP_ENCRYPTION_KEY": "bench-pitr-key",
        }
        env_file.write_text("".join(f"{k}='{v}'\n" for k, v in storage.items()))
        env_file.chmod(0o600)
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(env_file, owner.pw_uid, owner.pw_gid)
        env = {
            **os.environ,
            **storage,
            "COLDCOPY_ENV_FILE": os.devnull,
            "DB_HOST": pg.host,
            "DB_PORT": str(pg.port),
            "DB_NAME": "postgres",
            "DB_USER": pg.user,
            "DB_PASSWORD": pg.password,
            "DB_SSLMODE": "disable",
        }
        pgbench = str(pg.bin_dir / "pgbench")
        subprocess.run(
            [pgbench, "-i", "-q", "-s", str(a.scale), "postgres"], env={**env, **pg.env()}, check=True
        )
        report["archive_after_load_s"] = round(wait_archived(pg), 2)
        seconds, out = coldcopy(env, "basebackup")
        report["basebackup_s"] = round(seconds, 2)
        report["basebackup_raw_mb"] = round(int(str(out["raw_size_bytes"])) / 1e6, 1)
        report["basebackup_stored_mb"] = round(int(str(out["size_bytes"])) / 1e6, 1)
        before = int(str(sql(pg, "SELECT archived_count FROM pg_stat_archiver")[0][0]))
        t0 = time.monotonic()
        subprocess.run(
            [pgbench, "-n", "-T", str(a.seconds), "-c", "2", "postgres"], env={**env, **pg.env()}, check=True,
            capture_output=True,
        )  # fmt: skip
        sql(pg, "SELECT pg_create_restore_point('bench')")
        lag = wait_archived(pg)
        pushed = int(str(sql(pg, "SELECT archived_count FROM pg_stat_archiver")[0][0])) - before
        report["wal_segments_archived"] = pushed
        report["archive_lag_after_load_s"] = round(lag, 2)
        report["workload_s"] = round(time.monotonic() - t0, 2)
        # One wal-push per 16 MB segment, as archive_command does it (random bytes: the worst case).
        seg_dir = base / "segs"
        seg_dir.mkdir()
        push_env = {**env, "COLDCOPY_CLUSTER": "bench-push"}
        t1 = time.monotonic()
        for n in range(5):
            seg = seg_dir / f"0000000F0000000000000{n:03X}"
            seg.write_bytes(os.urandom(16 << 20))
            subprocess.run([sys.executable, "-m", "coldcopy", "wal-push", str(seg)], env=push_env, check=True)
        report["wal_push_s_per_segment"] = round((time.monotonic() - t1) / 5, 2)
        target = base / "rec" / "data"
        target.parent.mkdir(mode=0o755)
        port = free_port()
        rec = PgCluster(base_dir=target.parent, port=port)  # only to stop whatever runs there afterwards
        try:
            seconds, out = coldcopy(
                env, "pitr", "--target-name", "bench", "--target-dir", str(target), "--port", str(port),
                "--start", "--coldcopy-command", cmd,
            )  # fmt: skip
            report["pitr_to_promotion_s"] = round(seconds, 2)
            report["pitr_segments"] = f"{out['first_segment']} .. {out['last_segment']}"
        finally:
            rec.destroy()
    shutil.rmtree(base, ignore_errors=True)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
