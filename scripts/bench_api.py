#!/usr/bin/env python3
"""Monitor API benchmark: GET /status and GET /backups over a big history, through the local host.

Seeds an S3 bucket with 10,000 backups (catalog.json snapshot + one manifest each) and 100,000
other records (journal, runs, verifications, WAL segments), plus a few fresh journal records the
snapshot has not applied yet.  Then, through `coldcopy serve` (a separate process calling the
packaged functions over real HTTP), measures:

  warm   median / p95 of GET /status, GET /backups, GET /backups?limit=500 and a cursor page,
         over one keep-alive connection          (target: under 100 ms)
  cold   a fresh process's first answer, imports included (target: under 1 s), two ways:
         - a fresh `python` that loads packages/monitor/status/__main__.py and calls main(event),
           as a new function container would (interpreter start to exit);
         - a fresh `coldcopy serve` process, from spawn to its first GET /status answer.

and the S3 calls one warm catalog read makes (a conditional GET plus one listing).

Seeding: moto's S3 server runs in this process (ThreadedMotoServer), and the 120,000 objects are
written straight into its in-memory backend (no HTTP; seconds instead of the ~6 minutes 340 PUT/s
would take).  Everything that is measured goes over HTTP: client → coldcopy serve → moto.

    .venv/bin/python scripts/bench_api.py [--backups 10000] [--others 100000] [--requests 200]
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BUCKET = "bench-api"
CLUSTER = "bench"
TOKEN = "bench-token-0123456789"
PREFIX = f"coldcopy/{CLUSTER}/"
WARM_TARGET_MS = 100.0
COLD_TARGET_S = 1.0


# -- seeding --------------------------------------------------------------------------------------
def seed(backend: Any, n_backups: int, n_others: int) -> dict[str, Any]:
    from coldcopy.core.catalog import Catalog, journal_key, start_after
    from coldcopy.core.manifest import Manifest, StoredObject
    from coldcopy.core.times import iso
    from coldcopy.ops.queue import new_run_id

    now = datetime.now(UTC)
    put = backend.put_object
    started = time.monotonic()
    cat = Catalog()
    names: list[str] = []
    manifests = 0
    for i in range(n_backups):
        when = (now - timedelta(hours=2, minutes=30 * (n_backups - i))).replace(microsecond=0)
        kind = "compliance" if i % 10 == 0 else "full"
        name = f"{kind}_backup_app_{when:%Y%m%d_%H%M%S}"
        data = StoredObject(f"backups/{name}/data", 52_000_000 + i, "ab" * 32, 180_000_000 + i, "cd" * 32)
        m = Manifest(
            name=name,
            kind=kind,
            database="app",
            cluster=CLUSTER,
            started_at=iso(when),
            finished_at=iso(when + timedelta(seconds=95)),
            duration_seconds=95.0,
            server_version="15.18",
            server_version_num=150018,
            tool="pg_dump 15.18",
            data=data,
            compression={"algorithm": "zstd", "level": 3},
            encryption={"algorithm": "AES-256-GCM", "key_id": "k1"},
            tables={f"public.t{t}": 1000 * t for t in range(40)},
            coldcopy_version="0.1.0",
        )
        put(BUCKET, f"{PREFIX}backups/{name}/manifest.json", json.dumps(m.to_dict()).encode())
        manifests += 1
        names.append(name)
        if i < n_backups - 2:  # the two newest arrive through the journal, after the snapshot
            cat.backups[name] = m.entry()
        if i % 2 == 0:
            cat.verifications[name] = {
                "name": name,
                "ok": True,
                "at": iso(when + timedelta(hours=1)),
                "level": "checksum",
                "checks": [],
            }

    # 100,000 other records, all older than the snapshot's watermark.
    old = now - timedelta(hours=1)
    counts = {"journal": 0, "runs": 0, "verifications": 0, "wal": 0}
    shares = {"journal": 0.2, "runs": 0.2, "verifications": 0.1}
    newest_journal = ""
    journal_keys: list[str] = []
    n_journal = int(n_others * shares["journal"])
    for i in range(n_journal):
        when = old - timedelta(minutes=20 * (n_journal - i))  # a few records an hour, as in real life
        name = names[i % len(names)]
        key = journal_key("backup" if i % 2 else "verification", name, when)
        put(
            BUCKET,
            PREFIX + key,
            json.dumps({"type": "verification", "name": name, "ok": True, "at": iso(when)}).encode(),
        )
        newest_journal = max(newest_journal, key)
        journal_keys.append(key)
        counts["journal"] += 1
    for i in range(int(n_others * shares["runs"])):
        run_id = new_run_id(old - timedelta(minutes=i))
        put(
            BUCKET,
            f"{PREFIX}runs/{run_id}.json",
            json.dumps({"run_id": run_id, "kind": "backup-full", "state": "succeeded"}).encode(),
        )
        counts["runs"] += 1
    for i in range(int(n_others * shares["verifications"])):
        name = names[i % len(names)]
        put(BUCKET, f"{PREFIX}verifications/{name}/{i:08d}.json", b'{"ok": true}')
        counts["verifications"] += 1
    for i in range(n_others - sum(counts.values())):
        put(BUCKET, f"{PREFIX}wal/00000001/{i:016X}{i % 256:08X}.zst", b"w" * 64)
        counts["wal"] += 1

    cat.watermark = newest_journal
    # As a writer leaves it: the keys inside the skew window below the watermark are marked applied.
    floor = start_after(newest_journal) or ""
    cat.applied = {k for k in journal_keys if k > floor}
    put(BUCKET, PREFIX + "catalog.json", json.dumps(cat.to_dict(now=old)).encode())
    # Fresh journal records (newer than the watermark): two new backups and a verification.
    for name in names[-2:]:
        e = Manifest.from_dict(
            json.loads(backend.get_object(BUCKET, f"{PREFIX}backups/{name}/manifest.json").value)
        ).entry()
        put(
            BUCKET,
            PREFIX + journal_key("backup", name, now),
            json.dumps({"type": "backup", "at": iso(now), "name": name, "entry": e.to_dict()}).encode(),
        )
    put(
        BUCKET,
        PREFIX + journal_key("verification", names[-1], now),
        json.dumps({"type": "verification", "at": iso(now), "name": names[-1], "ok": True}).encode(),
    )
    return {
        "backups": manifests,
        "others": counts,
        "seconds": time.monotonic() - started,
        "catalog_bytes": len(json.dumps(cat.to_dict())),
    }


# -- moto's listing -------------------------------------------------------------------------------
def index_moto_listing(backend_cls: Any) -> Any:
    """Make moto list like S3 and Spaces do: a seek into a sorted index, not a scan of the bucket.

    moto's list_objects_v2 walks every key of the bucket for every call (about 150 ms at 120,000
    keys, however few it returns); a real store's cost depends on what it returns.  This replaces
    it, for prefix/StartAfter listings without a delimiter that fit in one page, by a bisect into a
    sorted copy of the key names (rebuilt whenever the number of keys changes).  Anything else goes
    to moto's own code.  Returns the original so the caller can compare the two.
    """
    import bisect

    original = backend_cls.list_objects_v2
    cache: dict[int, tuple[int, list[str]]] = {}

    def list_objects_v2(
        self: Any,
        bucket: Any,
        prefix: str | None,
        delimiter: str | None,
        continuation_token: str | None,
        start_after: str | None,
        max_keys: int,
    ) -> Any:
        if delimiter or continuation_token or not prefix:
            return original(self, bucket, prefix, delimiter, continuation_token, start_after, max_keys)
        size, names = cache.get(id(bucket), (-1, []))
        if size != len(bucket.keys):
            names = sorted(bucket.keys.keys())
            cache[id(bucket)] = (len(names), names)
        lo = (
            bisect.bisect_right(names, start_after)
            if start_after and start_after >= prefix
            else bisect.bisect_left(names, prefix)
        )
        found = []
        for name in names[lo:]:
            if not name.startswith(prefix):
                break
            found.append(bucket.keys[name])
            if len(found) > max_keys:
                return original(self, bucket, prefix, delimiter, continuation_token, start_after, max_keys)
        return found, False, None

    backend_cls.list_objects_v2 = list_objects_v2
    return original


# -- measuring ------------------------------------------------------------------------------------
def get(conn: http.client.HTTPConnection, path: str) -> tuple[int, bytes, float]:
    t0 = time.perf_counter()
    conn.request("GET", path, headers={"Authorization": f"Bearer {TOKEN}"})
    resp = conn.getresponse()
    body = resp.read()
    return resp.status, body, (time.perf_counter() - t0) * 1000


def warm(port: int, path: str, n: int) -> dict[str, float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        status, body, _ = get(conn, path)  # warm-up: the process has parsed the catalog once
        if status != 200:
            raise SystemExit(f"GET {path} answered {status}: {body[:300]!r}")
        times = []
        for _ in range(n):
            status, body, ms = get(conn, path)
            assert status == 200, (status, body[:200])
            times.append(ms)
    finally:
        conn.close()
    times.sort()
    return {
        "median": statistics.median(times),
        "p95": times[int(0.95 * (len(times) - 1))],
        "max": times[-1],
        "bytes": float(len(body)),
    }


def wait_first_answer(port: int, proc: subprocess.Popen[bytes], started: float) -> float:
    while True:
        if proc.poll() is not None:
            raise SystemExit("coldcopy serve exited before answering")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            status, body, _ = get(conn, "/status")
            conn.close()
            if status != 200:
                raise SystemExit(f"first answer was {status}: {body[:300]!r}")
            return time.perf_counter() - started
        except ConnectionRefusedError:
            time.sleep(0.002)  # polling for the listening socket, not a synchronisation guess


COLD_FUNCTION = """
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location("main__", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
event = {"http": {"method": "GET", "path": "", "headers": {"authorization": "Bearer " + sys.argv[2]}}}
result = module.main(event, None)
print(result["statusCode"], time.time(), flush=True)
"""


def cold_function(env: dict[str, str]) -> float:
    """A fresh interpreter loads packages/monitor/status/__main__.py and calls main(event) once.

    Timed from just before the spawn to the moment the child has the answer (its clock, the same
    machine's); the interpreter's exit afterwards is not part of answering.
    """
    main_py = str(REPO / "packages/monitor/status/__main__.py")
    t0 = time.time()
    out = subprocess.run(
        [sys.executable, "-c", COLD_FUNCTION, main_py, TOKEN],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    status, answered = out.stdout.split()
    if status != "200":
        raise SystemExit(f"cold function call failed: {out.stdout} {out.stderr[-1000:]}")
    return float(answered) - t0


def cold_serve(env: dict[str, str]) -> float:
    from coldcopy.loopback import free_port

    port = free_port()
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "coldcopy", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=REPO,
    )
    try:
        return wait_first_answer(port, proc, t0)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def s3_calls_per_read(env: dict[str, str]) -> dict[str, int]:
    """Count the S3 operations of one warm catalog read (in this process, same code)."""
    from coldcopy.config import load_settings
    from coldcopy.storage.catalog_store import CatalogStore
    from coldcopy.storage.s3 import open_store

    storage = open_store(load_settings(env))
    calls: dict[str, int] = {}

    def count(model: Any, **_: Any) -> None:
        calls[model.name] = calls.get(model.name, 0) + 1

    storage.client.meta.events.register("before-call.s3", count)
    store = CatalogStore(storage)
    store.read_cached()  # cold: full GET + listing + the fresh journal records
    calls.clear()
    store.read_cached()  # warm
    return dict(calls)


def s3_listing_ms(env: dict[str, str], n: int = 5) -> float:
    """Median time of the one listing a warm read makes, measured from this process."""
    from coldcopy.config import load_settings
    from coldcopy.core.catalog import JOURNAL, start_after
    from coldcopy.storage.catalog_store import CatalogStore
    from coldcopy.storage.s3 import open_store

    storage = open_store(load_settings(env))
    after = start_after(CatalogStore(storage).read_cached().watermark)
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        list(storage.list(JOURNAL, start_after=after))
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def check_listing(backend: Any, original: Any) -> bool:
    bucket = backend.get_bucket(BUCKET)
    for prefix, after in (
        (PREFIX + "journal/", None),
        (PREFIX + "journal/", PREFIX + "journal/2"),
        (PREFIX + "runs/", PREFIX + "runs/0"),
        (PREFIX + "nothing/", None),
    ):
        mine = [k.name for k in backend.list_objects_v2(bucket, prefix, None, None, after, 10**9)[0]]
        theirs = [k.name for k in original(backend, bucket, prefix, None, None, after, 10**9)[0]]
        if mine != theirs:
            return False
    return True


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backups", type=int, default=10_000)
    ap.add_argument("--others", type=int, default=100_000)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--cold-runs", type=int, default=5)
    ap.add_argument("--reference-requests", type=int, default=5, help="for /metrics and /health (no target)")
    args = ap.parse_args()

    import boto3
    from moto.core.models import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends
    from moto.server import ThreadedMotoServer

    from coldcopy.loopback import free_port

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's server logs every request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, s3_port = server.get_host_and_port()
    endpoint = f"http://{host}:{s3_port}"
    boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="test",
        aws_secret_access_key="test",
        region_name="us-east-1",
    ).create_bucket(Bucket=BUCKET)
    backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
    seeded = seed(backend, args.backups, args.others)
    others = seeded["others"]
    print(
        f"seeded {seeded['backups']:,} backups and {sum(others.values()):,} other records "
        f"({', '.join(f'{k} {v:,}' for k, v in others.items())}); catalog.json "
        f"{seeded['catalog_bytes'] / 1e6:.1f} MB; {seeded['seconds']:.1f} s"
    )

    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("DO_", "COLDCOPY_", "MONITOR_"))},
        "DO_SPACES_KEY": "test",
        "DO_SPACES_SECRET": "test",
        "DO_SPACES_BUCKET": BUCKET,
        "DO_SPACES_REGION": "us-east-1",
        "DO_SPACES_ENDPOINT": endpoint,
        "COLDCOPY_CLUSTER": CLUSTER,
        "MONITOR_TOKEN": TOKEN,
        "COLDCOPY_LAUNCHER": "none",
        "COLDCOPY_ENV_FILE": os.devnull,
        "BACKUP_ENCRYPTION_KEY": "bench-key-not-used",
    }
    print(f"S3 calls per warm catalog read: {s3_calls_per_read(env)}")
    stock = s3_listing_ms(env)
    original = index_moto_listing(type(backend))
    indexed = s3_listing_ms(env)
    same = check_listing(backend, original)
    print(
        f"one journal listing (StartAfter the watermark): moto's stock scan {stock:.0f} ms, "
        f"indexed {indexed:.1f} ms (same answers: {same}); the figures below use the indexed listing"
    )
    if not same:
        raise SystemExit("the indexed listing disagrees with moto's")

    port = free_port()
    spawned = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "coldcopy", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=REPO,
    )
    ok = True
    try:
        first = wait_first_answer(port, proc, spawned)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        _, body, _ = get(conn, "/backups?limit=50")
        cursor = json.loads(body)["next_cursor"]
        status = json.loads(get(conn, "/status")[1])
        conn.close()
        assert status["backup_count"] == args.backups, status["backup_count"]
        print(
            f"\nwarm answers through the local host ({args.requests} requests each, "
            f"{args.reference_requests} for the untargeted ones; keep-alive):"
        )
        for path in (
            "/status",
            "/backups",
            "/backups?limit=500",
            f"/backups?limit=50&cursor={cursor}",
            "/metrics",
            "/health",
        ):
            targeted = path.startswith(("/status", "/backups"))  # the targets; others for reference
            r = warm(port, path, args.requests if targeted else args.reference_requests)
            verdict = "ok" if r["p95"] < WARM_TARGET_MS else "OVER TARGET"
            ok &= r["p95"] < WARM_TARGET_MS or not targeted
            shown = path if len(path) < 40 else path[:37] + "..."
            print(
                f"  GET {shown:40} median {r['median']:6.1f} ms  p95 {r['p95']:6.1f} ms  "
                f"max {r['max']:6.1f} ms  ({r['bytes'] / 1000:.0f} kB)  "
                + (f"{verdict} (p95 < {WARM_TARGET_MS:.0f} ms)" if targeted else "(no target)")
            )
        print(f"  (the first answer of that serve process came {first:.2f} s after it was spawned)")
    finally:
        proc.terminate()
        proc.wait(timeout=10)

    print(f"\nfirst answer of a fresh process, imports included ({args.cold_runs} runs each):")
    for label, fn in (
        ("function: python + __main__.main(event)", cold_function),
        ("coldcopy serve: spawn → first GET /status", cold_serve),
    ):
        runs = sorted(fn(env) for _ in range(args.cold_runs))
        verdict = "ok" if runs[-1] < COLD_TARGET_S else "OVER TARGET"
        ok &= runs[-1] < COLD_TARGET_S
        print(
            f"  {label:44} median {statistics.median(runs):5.2f} s  max {runs[-1]:5.2f} s  "
            f"{verdict} (< {COLD_TARGET_S:.0f} s)"
        )
    server.stop()
    print("\nall targets met" if ok else "\nSOME TARGETS MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
