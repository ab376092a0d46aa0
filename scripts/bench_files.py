#!/usr/bin/env python3
"""Benchmark files snapshots: many small objects plus a few large ones in a Storage stand-in (a moto
S3 server on loopback), the bucket another moto server.  Prints, in one run and side by side:

- a plain copy loop with boto3 (list, then GET and PUT one object at a time into the bucket):
  time and requests;
- ColdCopy's first snapshot (`take_snapshot`: listing, one GET per content, compressed and
  encrypted volumes and a meta.json per content, the index and commit): time and requests, and
  the ratios to the copy loop;
- after ``--changed`` (1%) of the small objects are rewritten, the second snapshot: time and
  requests against the project (the target: the listing plus one GET per changed object);
- the restore of the second snapshot into an empty Storage stand-in: time.

    .venv/bin/python scripts/bench_files.py                      # 2,000 small + 3 large of 16 MiB
    .venv/bin/python scripts/bench_files.py --objects 10000      # the issue's 10,000
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))

from coldcopy.backup.files import take_snapshot  # noqa: E402
from coldcopy.config import load_settings  # noqa: E402
from coldcopy.context import open_context  # noqa: E402
from coldcopy.core.times import utc_now  # noqa: E402
from coldcopy.localstack.s3server import Counted, S3Server  # noqa: E402
from coldcopy.restore.files import restore_files  # noqa: E402
from coldcopy.storage.project_files import open_project_storage  # noqa: E402

BUCKETS = ("avatars", "attachments", "exports")


def seed(storage: S3Server, objects: int, large: int, large_mb: int) -> list[tuple[str, str]]:
    """``objects`` small objects (0.5–4 KiB, a tenth of them duplicates of others) over three
    buckets, and ``large`` objects of ``large_mb`` MiB in the last; returns the small ones' keys."""
    c = storage.client()
    for b in BUCKETS:
        c.create_bucket(Bucket=b)
    rnd = random.Random(16)
    bodies: list[bytes] = []
    small: list[tuple[str, str]] = []
    jobs: list[tuple[str, str, bytes]] = []
    for i in range(objects):
        body = (
            bodies[rnd.randrange(len(bodies))]
            if bodies and i % 10 == 9
            else rnd.randbytes(rnd.randint(512, 4096))
        )
        bodies.append(body)
        bucket = BUCKETS[i % 2]
        key = f"user-{i % 500:03d}/file {i:05d}.bin"
        small.append((bucket, key))
        jobs.append((bucket, key, body))
    for i in range(large):
        jobs.append((BUCKETS[2], f"big/export-{i}.bin", os.urandom(large_mb << 20)))

    def put(job: tuple[str, str, bytes]) -> None:
        c.put_object(Bucket=job[0], Key=job[1], Body=job[2], ContentType="application/octet-stream")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, jobs))
    return small


def copy_loop(src: Any, dst: Any, bucket: str) -> None:
    """The plain way: list each bucket, then GET and PUT one object at a time."""
    for b in (x["Name"] for x in src.list_buckets()["Buckets"]):
        for page in src.get_paginator("list_objects_v2").paginate(Bucket=b):
            for o in page.get("Contents", []):
                body = src.get_object(Bucket=b, Key=o["Key"])["Body"].read()
                dst.put_object(Bucket=bucket, Key=f"plain/{b}/{o['Key']}", Body=body)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--objects", type=int, default=2000, help="small objects (the issue's figure: 10000)")
    ap.add_argument("--large", type=int, default=3, help="large objects")
    ap.add_argument("--large-mb", type=int, default=16, help="size of each large object")
    ap.add_argument("--changed", type=float, default=0.01, help="share of small objects changed")
    a = ap.parse_args()
    with S3Server() as storage, S3Server() as spaces:
        bucket = "bench-files"
        spaces.create_bucket(bucket)
        env = {
            **spaces.spaces_env(bucket),
            "COLDCOPY_CLUSTER": "bench",
            "BACKUP_ENCRYPTION_KEY": secrets.token_urlsafe(32),
            "SUPABASE_STORAGE_ENDPOINT": storage.endpoint_url,
            "SUPABASE_STORAGE_REGION": storage.region,
            "SUPABASE_STORAGE_KEY": "bench",
            "SUPABASE_STORAGE_SECRET": "bench-secret",
            "COLDCOPY_ENV_FILE": os.devnull,
        }
        settings = load_settings(env)
        t_seed, small = timed(lambda: seed(storage, a.objects, a.large, a.large_mb))
        total = a.objects + a.large
        size = a.large * (a.large_mb << 20)
        print(f"seeded {a.objects} small + {a.large} × {a.large_mb} MiB objects in {t_seed:.1f} s")

        src, dst = storage.client(), spaces.client()
        cs, cd = Counted(src), Counted(dst)
        t_plain, _ = timed(lambda: copy_loop(src, dst, bucket))
        plain_req = cs.total + cd.total
        print(
            f"plain boto3 copy loop:      {t_plain:7.2f} s  {plain_req:6d} requests "
            f"({dict(cs.calls | cd.calls)})"
        )

        ctx = open_context(settings)
        project = open_project_storage(settings)
        cp, cb = Counted(project.client), Counted(ctx.storage.client)  # type: ignore[attr-defined]
        first_at = utc_now()
        t1, r1 = timed(lambda: take_snapshot(ctx, project, now=first_at))
        req1 = cp.total + cb.total
        print(
            f"ColdCopy first snapshot:    {t1:7.2f} s  {req1:6d} requests (project {dict(cp.calls)}; "
            f"bucket {dict(cb.calls)}); {r1.copied_contents} contents, {r1.deduplicated} deduplicated"
        )
        print(f"  vs the copy loop: time {t1 / t_plain:.2f}×, requests {req1 / plain_req:.2f}×")

        rnd = random.Random(61)
        changed = rnd.sample(small, max(1, int(len(small) * a.changed)))
        c = storage.client()
        for b, k in changed:
            c.put_object(Bucket=b, Key=k, Body=rnd.randbytes(2048))
        project = open_project_storage(settings)
        cp, cb = Counted(project.client), Counted(ctx.storage.client)  # type: ignore[attr-defined]
        later = max(utc_now(), first_at + timedelta(seconds=1))  # snapshot ids are per second
        t2, r2 = timed(lambda: take_snapshot(ctx, project, now=later))
        per_bucket = (a.objects - a.objects // 2, a.objects // 2, a.large)
        pages = sum(max(1, -(-n // 1000)) for n in per_bucket)  # 1,000 keys per listing page
        target = 1 + pages + len(changed)
        print(
            f"ColdCopy second snapshot ({len(changed)} changed): {t2:.2f} s; project requests "
            f"{cp.total} ({dict(cp.calls)}), target {target} (1 ListBuckets + {pages} listing pages + "
            f"{len(changed)} GETs); bucket requests {cb.total}; {r2.copied_contents} contents copied"
        )
        print(f"  vs the first snapshot: time {t2 / t1:.3f}×, requests {(cp.total + cb.total) / req1:.3f}×")

        storage.reset()  # the disaster: an empty Storage
        t3, r3 = timed(lambda: restore_files(ctx, open_project_storage(settings), r2.snapshot))
        print(
            f"ColdCopy restore:           {t3:7.2f} s  {r3.restored} objects, "
            f"{r3.bytes_written / 2**20:.1f} MiB, checked {r3.checked}, ok={r3.ok}"
        )
        print(
            f"summary: {total} objects ({size / 2**20:.0f} MiB large + small); plain {t_plain:.1f} s / "
            f"{plain_req} req; first {t1:.1f} s / {req1} req; second {t2:.2f} s / {cp.total} project req "
            f"(target {target}); restore {t3:.1f} s"
        )
        return 0 if r3.ok and cp.total == target else 1


if __name__ == "__main__":
    sys.exit(main())
