"""The fault suite's S3 half: the real commands through ``s3_faults.FaultProxy`` in front of moto.

Every command a user runs against the bucket (backup, list-backups, show, verify, restore) must
come through the faults a real endpoint and network produce (500, 503 SlowDown, a reply reset or
cut short mid-body, a stalled reply, a lost reply to a PUT that landed, response headers cut
short) with the same result as without them, and without a traceback on stderr.  A verification
the storage keeps interrupting is a storage failure (exit 6), not a damaged backup (exit 4), and
raises no integrity alert.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from cli_helpers import run_cli
from coldcopy.config import load_settings
from coldcopy.context import open_context
from coldcopy.core.alerts import evaluate
from coldcopy.core.thresholds import Thresholds
from coldcopy.localstack.dbcompare import compare_databases
from coldcopy.storage.s3 import READ_ATTEMPTS
from s3_faults import FaultProxy, cut_headers, fault_proxy, lost, reset, slowdown, stall, status, truncate


@pytest.fixture
def proxy(s3_server) -> Iterator[FaultProxy]:  # type: ignore[no-untyped-def]
    with fault_proxy(s3_server.endpoint_url) as p:
        yield p


@pytest.fixture
def env(coldcopy_env, proxy) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """coldcopy_env through the proxy, with a storage timeout short enough for a stall to cost 1 s."""
    return {**coldcopy_env, "DO_SPACES_ENDPOINT": proxy.url, "COLDCOPY_STORAGE_TIMEOUT_SECONDS": "1"}


def _no_traceback(err: str) -> None:
    assert "Traceback" not in err and 'File "' not in err, err


def test_every_command_comes_through_transient_faults(pg, env, proxy) -> None:  # type: ignore[no-untyped-def]
    # backup: a volume refused twice, the manifest's create-only PUT lost after it landed, a journal
    # record's reply cut inside its headers, the catalog's first read reset midway.
    proxy.inject("PUT", "/data.000000", slowdown())
    proxy.inject("PUT", "/data.000000", status(500))
    proxy.inject("PUT", "/manifest.json", lost())
    proxy.inject("PUT", "/journal/", cut_headers())
    proxy.inject("GET", "/catalog.json", reset(0.5))
    r = run_cli(env, "backup", "--json")
    assert r.rc == 0, r.err
    _no_traceback(r.err)
    name = json.loads(r.out)["name"]
    assert not proxy.pending(), proxy.pending()
    assert [s for m, p, s in proxy.seen if m == "PUT" and p.endswith("/manifest.json")] == ["lost", "412"]

    # list-backups: the catalog cut short, the journal listing cut before its first byte.
    proxy.inject("GET", "/catalog.json", truncate(0.4))
    proxy.inject("GET", "list-type=2", truncate(0.0))
    r = run_cli(env, "list-backups", "--json")
    assert r.rc == 0, r.err
    assert [b["name"] for b in json.loads(r.out)] == [name]

    # show: the manifest reset, then stalled.
    proxy.inject("GET", f"/backups/{name}/manifest.json", reset(0.2))
    proxy.inject("GET", f"/backups/{name}/manifest.json", stall(0.5))
    r = run_cli(env, "show", name, "--json")
    assert r.rc == 0, r.err
    assert json.loads(r.out)["name"] == name

    # verify: the manifest cut short, the volume reset midway (resumed), the listing refused.
    proxy.inject("GET", f"/backups/{name}/manifest.json", truncate(0.5))
    proxy.inject("GET", f"/backups/{name}/data.000000", reset(0.5))
    proxy.inject("GET", "list-type=2", status(503))
    r = run_cli(env, "verify", name, "--json")
    assert r.rc == 0, r.out + r.err
    assert json.loads(r.out)["ok"] is True

    # restore into a new database: the manifest cut, the listing of its objects reset, the volume
    # truncated.
    proxy.inject("GET", f"/backups/{name}/manifest.json", truncate(0.3))
    proxy.inject("GET", f"/backups/{name}/data.000000", truncate(0.6))
    proxy.inject("GET", "list-type=2", reset(0.1))
    r = run_cli(env, "restore", "--backup-name", name, "--target-db", "faults_copy", "--json")
    try:
        assert r.rc == 0, r.err
        _no_traceback(r.err)
        a, b = pg.connect(env["DB_NAME"]), pg.connect("faults_copy")
        try:
            assert compare_databases(a, b) == []
        finally:
            a.close()
            b.close()
    finally:
        pg.drop_database("faults_copy")
    assert not proxy.pending(), proxy.pending()


def test_a_verification_the_storage_interrupts_is_not_damage(env, proxy) -> None:  # type: ignore[no-untyped-def]
    r = run_cli(env, "backup", "--json")
    assert r.rc == 0, r.err
    name = json.loads(r.out)["name"]
    # Every read of the volume breaks before its first byte: the storage, not the backup.
    proxy.inject("GET", f"/backups/{name}/data.000000", truncate(0.0), times=READ_ATTEMPTS + 4)
    r = run_cli(env, "verify", name)
    assert r.rc == 6, r.out + r.err
    assert "NOT VERIFIED: the storage could not be read" in r.out and "VERIFICATION FAILED" not in r.out
    _no_traceback(r.err)
    ctx = open_context(load_settings(env, need=("storage",)))
    record = ctx.catalog.read().verifications[name]
    assert record["ok"] is False
    assert all(c["storage"] for c in record["checks"] if not c["ok"])
    alerts = evaluate(ctx.catalog.read(), [], None, Thresholds(), datetime.now(UTC))
    assert not [a for a in alerts if a.id.startswith("verification-failed")], alerts
    status_ = json.loads(run_cli(env, "status", "--json").out)
    assert f"verification of {name} could not read the storage; run it again" in status_["problems"]
    # The same backup damaged (a volume cut short in the bucket) is still damage: exit 4 and an alert.
    proxy.rules.clear()
    client = ctx.storage
    key = f"backups/{name}/data.000000"
    client.put_bytes(key, client.get_bytes(key)[:-40])
    r = run_cli(env, "verify", name)
    assert r.rc == 4, r.out + r.err
    alerts = evaluate(ctx.catalog.read(), [], None, Thresholds(), datetime.now(UTC))
    assert [a for a in alerts if a.id == f"verification-failed:{name}"], alerts


def test_a_lost_reply_to_the_in_flight_markers_put_leaves_no_marker(pg, env, proxy) -> None:  # type: ignore[no-untyped-def]
    """Issue 13, item 11: the marker's create-only PUT lands but its reply is lost; the retry finds
    our own marker (not another backup's), the backup goes on, and its marker is gone at the end."""
    proxy.inject("PUT", "/inflight/", lost())
    r = run_cli(env, "backup", "--json")
    assert r.rc == 0, r.err
    assert [s for m, p, s in proxy.seen if m == "PUT" and "/inflight/" in p][:2] == ["lost", "412"]
    storage = open_context(load_settings(env)).storage
    assert [o.key for o in storage.list("inflight/")] == []
    # Every attempt lost: the backup fails, and takes its marker away rather than leaving it.
    proxy.inject("PUT", "/inflight/", lost(500), times=20)
    r = run_cli(env, "backup", "--json")
    assert r.rc == 6, r.err
    _no_traceback(r.err)
    assert [o.key for o in storage.list("inflight/")] == []
