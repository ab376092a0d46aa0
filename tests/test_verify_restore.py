"""Test restores (`verify --level full|restore`), sanity queries and the weekly verification job."""

from __future__ import annotations

import json
import os
import secrets
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from cli_helpers import run_cli
from coldcopy.config import load_settings
from coldcopy.context import open_context
from coldcopy.core.manifest import CatalogEntry
from coldcopy.core.sanity import parse_one, parse_sanity_queries
from coldcopy.core.verification import restore_proof, schedule_selection, week_seed
from coldcopy.localstack.s3server import S3Server
from coldcopy.ops.worker import HANDLERS
from coldcopy.postgres.cluster import PgCluster

GOOD_SANITY = "SELECT count(*) FROM workspaces > 0; SELECT count(*) FROM users >= 1"


# -- pure: sanity queries ---------------------------------------------------------------------------
def test_sanity_queries_parse_into_query_operator_and_number() -> None:
    qs = parse_sanity_queries(GOOD_SANITY + "; select max(id) from users where id > 3 != -2.5 ;")
    assert [(q.sql, q.op, q.expected) for q in qs] == [
        ("SELECT count(*) FROM workspaces", ">", Decimal(0)),
        ("SELECT count(*) FROM users", ">=", Decimal(1)),
        ("select max(id) from users where id > 3", "!=", Decimal("-2.5")),
    ]
    assert parse_sanity_queries("") == [] and parse_sanity_queries(" ; ") == []
    q = qs[0]
    assert q.check(3) == (True, "3 > 0")
    assert q.check(0)[0] is False and "is false" in q.check(0)[1]
    assert q.check(None)[0] is False and q.check("abc")[0] is False and q.check(True)[0] is False


@pytest.mark.parametrize(
    "bad",
    [
        "DROP TABLE users",
        "SELECT count(*) FROM users > 0; DROP TABLE users",
        "SELECT count(*) FROM users",  # no comparison
        "SELECT 1 INTO evil > 0",
        "SELECT count(*) FROM users FOR UPDATE > 0",
        "SELECT pg_sleep(100) > 0",
        "SELECT count(*) FROM users -- > 0",
        "SELECT count(*) FROM (DELETE FROM users RETURNING 1) d > 0",
        "SELECT pg_read_file('/etc/passwd') > 0",
        "SELECT $$x$$ > 0",
        "WITH d AS (DELETE FROM users RETURNING 1) SELECT count(*) FROM d > 0",
    ],
)
def test_unsafe_or_malformed_sanity_queries_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_sanity_queries(bad)


def test_a_malicious_sanity_query_is_refused_at_configuration_load(coldcopy_env: dict[str, str]) -> None:
    env = {**coldcopy_env, "VERIFY_SANITY_QUERIES": "SELECT count(*) FROM users > 0; DROP TABLE users"}
    r = run_cli(env, "verify", "full_backup_demo_20260101_000000", "--level", "restore")
    assert r.rc == 2 and "VERIFY_SANITY_QUERIES" in r.err and "DROP TABLE users" in r.err, r.err
    with pytest.raises(Exception, match="VERIFY_SANITY_QUERIES"):
        load_settings(env, env_file=Path(os.devnull))
    assert parse_one("SELECT 1 = 1").text == "SELECT 1 = 1"


# -- pure: what verification remembers, and the weekly selection -------------------------------------
def _entry(name: str, created: str, kind: str = "full") -> CatalogEntry:
    return CatalogEntry(name, kind, "demo", created, created, 1.0, 100, 1000, True, "k", "17")


def test_a_checksum_verification_carries_the_last_test_restore_forward() -> None:
    m = {"restore_seconds": 2.0, "raw_bytes": 1000}
    first = restore_proof({"level": "restore", "ok": True, "measurement": m}, "2026-11-01T00:00:00Z", None)
    assert first == {
        "at": "2026-11-01T00:00:00Z",
        "level": "restore",
        "ok": True,
        "measurement": m,
        "restore_level_at": "2026-11-01T00:00:00Z",
    }
    prev = {"level": "restore", "restore_proof": first}
    assert restore_proof({"level": "checksum", "ok": True}, "2026-11-02T00:00:00Z", prev) == first
    broken = {"level": "restore", "ok": False, "measurement": None}  # e.g. no scratch target
    assert restore_proof(broken, "2026-11-03T00:00:00Z", prev) == first, "an attempt that restored nothing"
    later = restore_proof({"level": "full", "ok": False, "measurement": m}, "2026-11-03T00:00:00Z", prev)
    assert later is not None and later["ok"] is False and later["restore_level_at"] == first["at"]
    assert later["level"] == "full" and later["at"] == "2026-11-03T00:00:00Z"
    assert restore_proof({"level": "checksum", "ok": True}, "2026-11-02T00:00:00Z", None) is None


def test_the_weekly_selection_takes_every_new_backup_and_a_seeded_sample_of_older_ones() -> None:
    entries = [
        _entry(f"full_backup_demo_202611{d:02d}_020000", f"2026-11-{d:02d}T02:00:00Z") for d in range(1, 11)
    ]
    entries.append(_entry("compliance_backup_demo_20261101_010000", "2026-11-01T01:00:00Z", "compliance"))
    entries.append(_entry("base_backup_demo_20261105_010000", "2026-11-05T01:00:00Z", "base"))
    proven = {"restore_proof": {"restore_level_at": "2026-11-09T00:00:00Z", "ok": True}}
    only_checksum = {"level": "checksum", "ok": True}
    verifications: dict[str, dict[str, Any]] = {e.name: proven for e in entries[:8]}
    verifications[entries[8].name] = only_checksum
    new, sampled = schedule_selection(entries, verifications, 3, "2026-W47")
    assert new == [
        "full_backup_demo_20261110_020000",
        "full_backup_demo_20261109_020000",
        "base_backup_demo_20261105_010000",  # drilled like a dump is test-restored
        "compliance_backup_demo_20261101_010000",
    ], "never test-restored at level restore, newest first"
    assert len(sampled) == 3 and set(sampled) <= {e.name for e in entries[:8]}
    assert sampled == sorted(sampled, reverse=True), "newest first"
    assert schedule_selection(entries, verifications, 3, "2026-W47")[1] == sampled, "deterministic per week"
    weeks = {tuple(schedule_selection(entries, verifications, 3, f"2026-W{w}")[1]) for w in range(10, 30)}
    assert len(weeks) > 1, "a different sample in other weeks"
    assert schedule_selection(entries, verifications, 0, "2026-W47")[1] == []
    assert schedule_selection(entries, verifications, 50, "x")[1] == [e.name for e in reversed(entries[:8])]
    assert week_seed(datetime(2026, 11, 24, tzinfo=UTC)) == "2026-W48"


# -- against real clusters --------------------------------------------------------------------------
@pytest.fixture
def env(coldcopy_env: dict[str, str], pg: PgCluster) -> dict[str, str]:
    """coldcopy_env with the session cluster as the scratch server (VERIFY_DB_*)."""
    return {
        **coldcopy_env,
        "DO_SPACES_SECRET": "moto-ignores-this-" + secrets.token_hex(8),
        "VERIFY_DB_HOST": pg.host,
        "VERIFY_DB_PORT": str(pg.port),
        "VERIFY_DB_USER": pg.user,
        "VERIFY_DB_PASSWORD": pg.password,
        "VERIFY_DB_SSLMODE": "disable",
    }


def _backup(env: dict[str, str]) -> str:
    r = run_cli(env, "backup", "--json")
    assert r.rc == 0, r.err
    return str(json.loads(r.out)["name"])


def _scratch_dbs(pg: PgCluster) -> list[str]:
    conn = pg.connect()
    try:
        return [
            str(r[0]) for r in conn.run("SELECT datname FROM pg_database WHERE datname LIKE 'cc_verify_%'")
        ]
    finally:
        conn.close()


def _checks(out: str) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in json.loads(out)["checks"]}


def test_restore_level_restores_checks_measures_records_and_drops(env: dict[str, str], pg: PgCluster) -> None:
    name = _backup(env)
    # Leftovers of killed runs: the stale one is dropped, a recent one (maybe still running) is kept.
    stale, recent = "cc_verify_20200101000000_abcdef", f"cc_verify_{datetime.now(UTC):%Y%m%d%H%M%S}_000000"
    pg.create_database(stale)
    pg.create_database(recent)
    ok_env = {**env, "VERIFY_SANITY_QUERIES": GOOD_SANITY}
    r = run_cli(ok_env, "verify", name, "--level", "restore", "--json")
    assert r.rc == 0, r.out + r.err
    out = json.loads(r.out)
    checks = _checks(r.out)
    assert out["ok"] is True and out["level"] == "restore"
    assert checks["every table's row count equals the manifest's"]["ok"] is True
    amcheck = checks["amcheck on B-tree indexes"]
    assert amcheck["ok"] and int(amcheck["detail"].split()[0]) >= 2, amcheck  # at least the primary keys
    assert checks["sanity: SELECT count(*) FROM workspaces > 0"]["ok"] is True
    assert checks["sanity: SELECT count(*) FROM users >= 1"]["ok"] is True
    assert checks["scratch database dropped"]["ok"] is True
    assert "VERIFY_DB_HOST" in checks["scratch database created"]["detail"]
    assert "dropped 1 stale scratch database" in checks["scratch database created"]["detail"]
    m = out["measurement"]
    assert m["restore_seconds"] > 0 and m["throughput_bytes_per_second"] > 0 and m["raw_bytes"] > 0
    assert _scratch_dbs(pg) == [recent]
    pg.drop_database(recent)
    rows = json.loads(run_cli(env, "list-backups", "--json").out)
    assert rows[0]["name"] == name and rows[0]["verification_ok"] is True
    assert rows[0]["verification_level"] == "restore"
    assert "ok (restore)" in run_cli(env, "list-backups").out

    # A sanity query that does not hold (and one that errors) fails the verification; still dropped.
    bad_env = {
        **env,
        "VERIFY_SANITY_QUERIES": "SELECT count(*) FROM workspaces > 1000000000; "
        "SELECT count(*) FROM no_such_table = 0; " + GOOD_SANITY,
    }
    r = run_cli(bad_env, "verify", name, "--level", "restore", "--json")
    assert r.rc == 4, r.out
    checks = _checks(r.out)
    assert checks["sanity: SELECT count(*) FROM workspaces > 1000000000"]["ok"] is False
    assert "does not exist" in checks["sanity: SELECT count(*) FROM no_such_table = 0"]["detail"]
    assert checks["sanity: SELECT count(*) FROM users >= 1"]["ok"] is True, (
        "each query in its own transaction"
    )
    assert checks["scratch database dropped"]["ok"] is True and _scratch_dbs(pg) == []
    assert "FAILED (restore)" in run_cli(env, "list-backups").out


def test_a_backup_whose_counts_no_longer_match_fails_and_the_scratch_is_dropped(
    env: dict[str, str], pg: PgCluster, s3_server: S3Server
) -> None:
    name = _backup(env)
    client = s3_server.client()
    key = f"coldcopy/{env['DB_NAME']}/backups/{name}/manifest.json"
    manifest = json.loads(client.get_object(Bucket=env["DO_SPACES_BUCKET"], Key=key)["Body"].read())
    manifest["tables"]["public.users"] += 7
    client.put_object(Bucket=env["DO_SPACES_BUCKET"], Key=key, Body=json.dumps(manifest).encode())

    assert run_cli(env, "verify", name, "--level", "checksum").rc == 0, "the stream itself is intact"
    r = run_cli(env, "verify", name, "--level", "full", "--json")
    assert r.rc == 4, r.out
    counts = _checks(r.out)["every table's row count equals the manifest's"]
    assert counts["ok"] is False and "public.users: backup" in counts["detail"], counts
    assert "amcheck on B-tree indexes" not in _checks(r.out), "full: no amcheck"
    assert _checks(r.out)["scratch database dropped"]["ok"] is True and _scratch_dbs(pg) == []
    rows = json.loads(run_cli(env, "list-backups", "--json").out)
    assert rows[0]["verification_ok"] is False and rows[0]["verification_level"] == "full"

    # A restore that cannot even start (a dump from a newer pg_dump): failed, and still dropped.
    manifest["tool"] = "pg_dump 99.1"
    client.put_object(Bucket=env["DO_SPACES_BUCKET"], Key=key, Body=json.dumps(manifest).encode())
    r = run_cli(env, "verify", name, "--level", "restore", "--json")
    assert (
        r.rc == 4 and "cannot read a dump made with pg_dump 99.1" in _checks(r.out)["test restore"]["detail"]
    )
    assert _checks(r.out)["scratch database dropped"]["ok"] is True and _scratch_dbs(pg) == []


def test_without_a_verify_server_a_throwaway_local_cluster_is_the_scratch_target(
    coldcopy_env: dict[str, str],
) -> None:
    env = {**coldcopy_env, "DO_SPACES_SECRET": "moto-ignores-this-" + secrets.token_hex(8)}
    name = _backup(env)
    r = run_cli(env, "verify", name, "--level", "full", "--json")
    assert r.rc == 0, r.out + r.err
    checks = _checks(r.out)
    assert "throwaway local cluster" in checks["scratch database created"]["detail"]
    assert checks["every table's row count equals the manifest's"]["ok"] is True


def test_restore_test_and_the_weekly_job_verify_new_backups_then_a_sample(env: dict[str, str]) -> None:
    s = load_settings({**env, "VERIFY_SAMPLE_OLDER": "0"}, env_file=Path(os.devnull))
    with pytest.raises(Exception, match="no backup"):
        HANDLERS["verify"](open_context(s), {})
    name = _backup(env)
    # POST /restore-test without a name: the newest backup
    older = HANDLERS["restore-test"](open_context(s), {})
    assert older["name"] == name and older["level"] == "restore" and older["ok"] is True

    newer = _backup(env)
    report = HANDLERS["verify"](open_context(s), {})
    assert report["new"] == [newer] and report["sampled"] == [], "the proven backup is not re-read"
    assert [r["name"] for r in report["results"]] == [newer] and report["ok"] is True

    report = HANDLERS["verify"](open_context(s), {})
    assert report["new"] == [] and report["results"] == [], "nothing new, no sample asked for"

    s2 = load_settings({**env, "VERIFY_SAMPLE_OLDER": "1"}, env_file=Path(os.devnull))
    report = HANDLERS["verify"](open_context(s2), {})
    assert report["new"] == [] and len(report["sampled"]) == 1 and report["sampled"][0] in (name, newer)
    assert report["results"][0]["why"] == "sample" and report["results"][0]["measurement"]["raw_bytes"] > 0
