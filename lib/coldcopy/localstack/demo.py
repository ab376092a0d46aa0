"""`coldcopy demo`: the whole product on one machine, with nothing but PostgreSQL binaries installed.

Starts a throwaway PostgreSQL cluster and an S3 server on 127.0.0.1, loads cold-email SaaS demo
data, then runs backup → list-backups → verify → restore into a new database → compare every table,
and prints a short report with timings.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from coldcopy.backup.logical import run_backup
from coldcopy.config import Settings, load_settings
from coldcopy.context import open_context
from coldcopy.core.humanize import human_bytes
from coldcopy.core.manifest import Manifest
from coldcopy.localstack.dbcompare import compare_databases
from coldcopy.localstack.demodata import load_demo_data
from coldcopy.localstack.functions_host import serve as serve_functions
from coldcopy.localstack.s3server import S3Server
from coldcopy.postgres.cluster import PgCluster
from coldcopy.restore.logical import run_restore
from coldcopy.verify.run import run_verify

DEMO_DB = "saas"
DEMO_BUCKET = "coldcopy-demo"


class Report:
    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.steps: list[dict[str, Any]] = []

    @contextmanager
    def step(self, title: str) -> Iterator[dict[str, Any]]:
        if not self.as_json:
            print(f"• {title} …", end="", flush=True)
        info: dict[str, Any] = {"step": title}
        t0 = time.monotonic()
        try:
            yield info
        finally:
            info["seconds"] = round(time.monotonic() - t0, 2)
            self.steps.append(info)
            if not self.as_json:
                detail = info.get("detail", "")
                print(f" {info['seconds']:.2f} s" + (f"  ({detail})" if detail else ""), flush=True)


def demo_env(pg: Any, s3: Any, key: str) -> dict[str, str]:
    return {
        "DB_HOST": pg.host,
        "DB_PORT": str(pg.port),
        "DB_NAME": DEMO_DB,
        "DB_USER": pg.user,
        "DB_PASSWORD": pg.password,
        "DB_SSLMODE": "disable",
        **s3.spaces_env(DEMO_BUCKET),
        "BACKUP_ENCRYPTION_KEY": key,
        "PG_BIN_DIR": str(pg.bin_dir),
        "MONITOR_TOKEN": secrets.token_urlsafe(18),
    }


def run_demo(scale: float = 1.0, as_json: bool = False, serve: bool = False, port: int = 8090) -> int:
    # SIGTERM (a `timeout`, a closed terminal) must still stop the throwaway servers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    rep = Report(as_json)
    with rep.step("starting PostgreSQL and an S3 server on 127.0.0.1") as info:
        pg = PgCluster().start()
        s3 = S3Server().start()
        s3.create_bucket(DEMO_BUCKET)
        info["detail"] = f"postgres :{pg.port}, s3 {s3.endpoint_url}"
    try:
        key = secrets.token_urlsafe(24)
        env = demo_env(pg, s3, key)
        settings: Settings = load_settings(env, env_file=Path(os.devnull))
        _load_data(rep, pg, scale)
        m = _backup(rep, settings)
        ok = _verify_and_restore(rep, pg, settings, m)
        if as_json:
            print(json.dumps({"ok": ok, "steps": rep.steps}, indent=2, default=str))
        else:
            print("\n" + ("demo passed: the restored database equals the original" if ok else "DEMO FAILED"))
            _print_next_steps(env, key)
        if serve and ok:
            _serve_forever(settings, env, port)
        return 0 if ok else 1
    finally:
        s3.stop()
        pg.destroy()


def _load_data(rep: Report, pg: PgCluster, scale: float) -> None:
    with rep.step(f"loading demo data (scale {scale:g})") as info:
        pg.create_database(DEMO_DB)
        conn = pg.connect(DEMO_DB)
        counts = load_demo_data(conn, scale)
        size = int(conn.run("SELECT pg_database_size(current_database())")[0][0])
        conn.close()
        info.update(
            detail=f"{sum(counts.values()):,} rows in {len(counts)} tables, {human_bytes(size)}",
            database_bytes=size,
            rows=counts,
        )


def _backup(rep: Report, settings: Settings) -> Manifest:
    """`coldcopy backup`, then `coldcopy list-backups`."""
    with rep.step("coldcopy backup") as info:
        m = run_backup(settings)
        info.update(
            detail=f"{m.name}: {human_bytes(m.raw_size)} dump → {human_bytes(m.stored_size)} stored, "
            "compressed and encrypted",
            name=m.name,
            stored_bytes=m.stored_size,
            raw_bytes=m.raw_size,
        )
    with rep.step("coldcopy list-backups") as info:
        entries = open_context(settings).catalog.read().entries()
        info.update(detail=", ".join(e.name for e in entries), count=len(entries))
    return m


def _verify_and_restore(rep: Report, pg: PgCluster, settings: Settings, m: Manifest) -> bool:
    """`coldcopy verify` and `coldcopy restore` of ``m``; whether it verified and restored identical."""
    with rep.step("coldcopy verify") as info:
        v = run_verify(settings, m.name)
        info.update(detail="all checks passed" if v.ok else "FAILED", ok=v.ok)
    target = f"{DEMO_DB}_restored"
    with rep.step(f"coldcopy restore --target-db {target}") as info:
        r = run_restore(settings, m.name, target)
        info.update(detail=f"{r['tables_checked']} tables' row counts match the manifest")
    with rep.step("comparing every table, row for row") as info:
        a, b = pg.connect(DEMO_DB), pg.connect(target)
        diffs = compare_databases(a, b)
        a.close()
        b.close()
        info.update(detail="identical" if not diffs else f"{len(diffs)} differences", differences=diffs)
    return v.ok and not diffs


def _print_next_steps(env: dict[str, str], key: str) -> None:
    print("\nTo keep the stack and the monitor running and try every command and endpoint yourself:")
    print(f"  {_me()} demo --serve")
    print(f"(this run's throwaway encryption key was {key[:4]}…; it is gone with the demo)")


def _me() -> str:
    """How this coldcopy was started, so the printed commands work without an activated venv."""
    argv0 = Path(sys.argv[0])
    return shlex.quote(str(argv0.absolute())) if argv0.name == "coldcopy" else "coldcopy"


def _serve_forever(settings: Settings, env: dict[str, str], port: int) -> None:
    env_file = Path(tempfile.mkdtemp(prefix="coldcopy-demo-")) / "demo.env"
    env_file.write_text("".join(f"{k}={shlex.quote(v)}\n" for k, v in sorted(env.items())))
    env_file.chmod(0o600)
    token = env["MONITOR_TOKEN"]
    base = f"http://127.0.0.1:{port}"
    print(
        f"\nThe local stack is running (Ctrl-C stops it). Its settings are in {env_file}; in another shell:"
    )
    print(f"  {_me()} --env-file {env_file} list-backups")
    print(f"  curl {base}/health")
    print(f"  curl -H 'Authorization: Bearer {token}' {base}/status")
    print(f"  curl -H 'Authorization: Bearer {token}' {base}/backups")
    print(f"  dashboard: {base}/  (token: {token})")
    with suppress(KeyboardInterrupt):
        serve_functions(settings, port)
