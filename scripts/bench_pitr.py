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


def bench_push(pg: PgCluster, env: dict[str, str], s3: S3Server, base: Path, n: int) -> dict[str, object]:
    """Seconds per segment, one process per segment as archive_command runs it, sequentially.

    walclient + wal-pushd (warm daemon), plain `coldcopy wal-push`, and barman-cloud-wal-archive
    (uncompressed, its default) when it is installed in this venv.  Real segments from pg_wal.
    """
    seg_dir = base / "segs"
    seg_dir.mkdir()
    real = sorted(p for p in (pg.data_dir / "pg_wal").iterdir() if len(p.name) == 24)
    segs = []
    for i in range(n):  # real pgbench WAL content, under fresh names on timeline 0xF
        seg = seg_dir / f"0000000F0000000000000{i:03X}"
        shutil.copyfile(real[i % len(real)], seg)
        segs.append(seg)
    warm = seg_dir / "0000000F0000000100000000"  # one push before timing: the daemon is long-lived
    shutil.copyfile(real[0], warm)
    out: dict[str, object] = {"push_segments_compared": len(segs)}

    def timed(argvs: list[list[str]], run_env: dict[str, str]) -> float:
        t0 = time.monotonic()
        for argv in argvs:
            subprocess.run(argv, env=run_env, check=True, capture_output=True)
        return (time.monotonic() - t0) / len(argvs)

    sock = base / "run" / "walpushd.sock"
    daemon_env = {**env, "COLDCOPY_CLUSTER": "bench-daemon"}
    daemon = subprocess.Popen(
        [sys.executable, "-m", "coldcopy", "wal-pushd", "--socket", str(sock)], env=daemon_env,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not sock.exists():
            if time.monotonic() > deadline or daemon.poll() is not None:
                raise SystemExit("wal-pushd did not start")
            time.sleep(0.05)
        client = [sys.executable, "-S", "-m", "coldcopy.walclient", "--socket", str(sock)]
        client_env = {"PYTHONPATH": str(REPO / "lib"), "PATH": os.defpath}
        timed([[*client, str(warm)]], client_env)
        per = timed([[*client, str(p)] for p in segs], client_env)
        out["walclient_daemon_s_per_segment"] = round(per, 4)
        out["walclient_daemon_segments_per_s"] = round(1 / per, 1)
    finally:
        daemon.terminate()
        daemon.wait(30)
    per = timed(
        [[sys.executable, "-m", "coldcopy", "wal-push", str(p)] for p in segs],
        {**env, "COLDCOPY_CLUSTER": "bench-plain"},
    )
    out["wal_push_s_per_segment"] = round(per, 4)
    out["wal_push_segments_per_s"] = round(1 / per, 1)
    barman = Path(sys.executable).parent / "barman-cloud-wal-archive"
    if barman.exists():
        s3.create_bucket("barman")
        aws = {
            **env, "AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key,
            "AWS_DEFAULT_REGION": s3.region,
        }  # fmt: skip
        cmd = [str(barman), "--endpoint-url", s3.endpoint_url, "s3://barman/pg", "pg1"]
        per = timed([[*cmd, str(p)] for p in segs], aws)
        out["barman_cloud_wal_archive_s_per_segment"] = round(per, 4)
        out["barman_cloud_wal_archive_segments_per_s"] = round(1 / per, 1)
        out["speedup_vs_barman"] = round(per / float(str(out["walclient_daemon_s_per_segment"])), 1)
    else:
        out["barman_cloud_wal_archive"] = "not installed (pip install 'barman[cloud]')"
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=int, default=20)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--segments", type=int, default=20, help="segments per archiving tool compared")
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
        # Per-segment cost of archive_command, on the same real segments for every tool.
        report.update(bench_push(pg, env, s3, base, a.segments))
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
