"""The monitor API over real HTTP.

``coldcopy serve``'s host (in a thread, or as a real ``coldcopy serve`` process) calls the
``main(event, context)`` of ``packages/monitor/<fn>/__main__.py`` exactly as DigitalOcean would;
the catalog lives in moto's S3 server, written by real backups or by realistic journal records.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from cli_helpers import run_cli, spawn_serve
from coldcopy.api.protocol import MAX_BODY_BYTES, ROUTES, encode_cursor
from coldcopy.config import Settings, load_settings
from coldcopy.core.catalog import Catalog
from coldcopy.core.manifest import CatalogEntry
from coldcopy.core.times import iso
from coldcopy.functions import web
from coldcopy.localstack.functions_host import LocalHost, make_server
from coldcopy.loopback import free_port, wait_until
from coldcopy.storage.catalog_store import CatalogStore
from coldcopy.storage.s3 import open_store
from conftest import API_TOKEN

TOKEN = API_TOKEN
REPO = Path(__file__).resolve().parents[1]
JSON = "application/json"


# -- the local host and a plain HTTP client -------------------------------------------------------
class Response:
    def __init__(self, status: int, headers: http.client.HTTPMessage, content: bytes) -> None:
        self.status_code, self.headers, self.content = status, headers, content

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.content)


def request(
    url: str, method: str, path: str, *, headers: dict[str, Any] | None = None, body: bytes | None = None
) -> Response:
    """One request with http.client: the path goes out exactly as given (no dot-segment clean-up)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=60)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for k, v in (headers or {}).items():
            conn.putheader(k, v)
        if body is not None or method in ("POST", "PUT", "PATCH"):
            conn.putheader("Content-Length", str(len(body or b"")))
        conn.endheaders(body)
        resp = conn.getresponse()
        return Response(resp.status, resp.headers, resp.read())
    finally:
        conn.close()


@dataclass
class Api:
    url: str
    token: str | None = TOKEN

    def call(
        self,
        method: str,
        path: str,
        *,
        token: str | None | bool = True,
        headers: dict[str, Any] | None = None,
        data: bytes | None = None,
        json_body: Any = None,
    ) -> Response:
        headers = dict(headers or {})
        tok = self.token if token is True else token
        if tok:
            headers["Authorization"] = f"Bearer {tok}"
        if json_body is not None:
            data = json.dumps(json_body).encode()
            headers.setdefault("Content-Type", JSON)
        return request(self.url, method, path, headers=headers, body=data)

    def get(self, path: str, **kw: Any) -> Response:
        return self.call("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> Response:
        return self.call("POST", path, **kw)

    def json(self, method: str, path: str, status: int = 200, **kw: Any) -> Any:
        r = self.call(method, path, **kw)
        assert r.status_code == status, (r.status_code, r.text[:500])
        assert r.headers["Content-Type"].startswith(JSON)
        return r.json()


def settings_of(env: dict[str, str]) -> Settings:
    return load_settings(env, env_file=Path(os.devnull))


@dataclass
class Running:
    server: LocalHost
    thread: threading.Thread

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)
        web.use_settings(None)


def start_host(settings: Settings, project_dir: Path | None = None) -> Running:
    server = make_server(settings, port=0, project_dir=project_dir)
    # A short poll: shutdown() waits for it, after every test.
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.02}, name="coldcopy-serve", daemon=True
    )
    thread.start()
    return Running(server, thread)


@pytest.fixture
def api(api_env: dict[str, str]) -> Iterator[Api]:
    running = start_host(settings_of(api_env))
    try:
        yield Api(running.server.url)
    finally:
        running.stop()


# -- seeding a catalog ----------------------------------------------------------------------------
T0 = datetime(2026, 1, 1, 2, 0, tzinfo=UTC)


def entry(kind: str, db: str, when: datetime, size: int = 123_456) -> CatalogEntry:
    name = f"{kind}_backup_{db}_{when:%Y%m%d_%H%M%S}"
    return CatalogEntry(
        name=name,
        kind=kind,
        database=db,
        created_at=iso(when),
        finished_at=iso(when + timedelta(seconds=42)),
        duration_seconds=42.0,
        size_bytes=size,
        raw_size_bytes=size * 3,
        encrypted=True,
        key_id="k-2026",
        server_version="15.18",
    )


def history(n: int, start: datetime = T0) -> list[CatalogEntry]:
    """``n`` backups, three per timestamp (ties on created_at, broken by name), every 4th compliance."""
    out = []
    for i in range(n):
        when = start + timedelta(hours=i // 3)
        out.append(entry("compliance" if i % 4 == 0 else "full", f"db{i % 3}", when))
    return out


def seed(env: dict[str, str], entries: list[CatalogEntry], *, in_snapshot: int) -> CatalogStore:
    """The first ``in_snapshot`` entries in catalog.json, the rest as journal records (both paths)."""
    store = CatalogStore(open_store(settings_of(env)))
    cat = Catalog(backups={e.name: e for e in entries[:in_snapshot]})
    store.save(cat)
    journal = entries[in_snapshot:]
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda e: record_backup(store, e), journal))
    return store


def record_backup(store: CatalogStore, e: CatalogEntry) -> None:
    store.record("backup", e.name, {"name": e.name, "entry": e.to_dict()})


def newest_first(entries: list[CatalogEntry]) -> list[str]:
    return [e.name for e in sorted(entries, key=lambda e: (e.created_at, e.name), reverse=True)]


def walk(api: Api, query: str, between: Any = None, max_pages: int = 1000) -> list[str]:
    names: list[str] = []
    path = f"/backups?{query}"
    pages = 0
    while True:
        body = api.json("GET", path)
        names += [b["name"] for b in body["backups"]]
        pages += 1
        if pages == max_pages:
            return names
        if body["next_cursor"] is None:
            assert "next" not in body["links"]
            return names
        assert body["links"]["next"].startswith("/backups?")
        if between is not None:
            between(pages)
        path = body["links"]["next"]


# -- happy paths ----------------------------------------------------------------------------------
def test_health_answers_without_a_token_and_leaks_nothing(api: Api, api_env: dict[str, str]) -> None:
    r = api.get("/health", token=None)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["ok"] is True and body["catalog_reachable"] is True
    assert body["monitor_token_configured"] is True
    for var in (
        "DO_SPACES_SECRET",
        "BACKUP_ENCRYPTION_KEY",
        "DB_PASSWORD",
        "DO_SPACES_BUCKET",
        "DO_SPACES_ENDPOINT",
    ):
        assert api_env[var] not in r.text
    assert TOKEN not in r.text


def test_every_endpoint_with_a_real_backup(api: Api, api_env: dict[str, str]) -> None:
    r = run_cli(api_env, "backup", "--json")
    assert r.rc == 0, r.err
    name = json.loads(r.out)["name"]

    status = api.json("GET", "/status")
    assert status["backup_count"] == 1 and status["last_backup"]["name"] == name
    assert status["ok"] is True, status["problems"]
    assert status["encryption_configured"] is True

    listing = api.json("GET", "/backups")
    assert [b["name"] for b in listing["backups"]] == [name]
    assert listing["backups"][0]["verification_ok"] is None and listing["next_cursor"] is None

    manifest = api.json("GET", f"/backup/{name}")
    assert manifest["name"] == name and manifest["kind"] == "full" and manifest["tables"]
    assert manifest["encryption"]["algorithm"] != "none"
    # The platform's URL answers the same, through the same function.
    long_form = api.json("GET", f"/api/v1/web/fn-test/monitor/backup/{name}")
    assert long_form == manifest

    metrics = api.get("/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert any(line.startswith("coldcopy_backup_count") for line in metrics.text.splitlines())
    assert "# TYPE " in metrics.text

    alerts = api.json("GET", "/alerts")  # what they say is the alert rules' business (tests/test_alerts.py)
    assert isinstance(alerts["alerts"], list)
    recovery = api.json("GET", "/recovery-time")
    assert recovery["estimated"] is False and "no test restores" in recovery["reason"]
    page = api.get("/")
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")

    queued = api.json("POST", f"/verify/{name}", status=202)
    assert queued["status"] == "queued" and queued["woken"] is False  # COLDCOPY_LAUNCHER=none
    run_id = queued["run_id"]
    assert queued["links"]["run"] == f"/runs/{run_id}"
    run = api.json("GET", f"/runs/{run_id}")
    assert run["state"] == "queued" and run["kind"] == "verify" and run["params"] == {"name": name}

    # A worker drains the queue; the API follows the run to its end and shows the verification.
    w = run_cli(api_env, "worker", "--json")
    assert w.rc == 0, w.err
    run = api.json("GET", f"/runs/{run_id}")
    assert run["state"] == "succeeded", run
    row = api.json("GET", "/backups")["backups"][0]
    assert row["verification_ok"] is True and row["last_verification"]

    test_run = api.json("POST", "/restore-test", status=202, json_body={"name": name})
    assert api.json("GET", f"/runs/{test_run['run_id']}")["params"] == {"name": name}
    any_run = api.json("POST", "/restore-test", status=202)
    assert api.json("GET", f"/runs/{any_run['run_id']}")["kind"] == "restore-test"


def test_head_answers_like_get_without_a_body(api: Api) -> None:
    r = api.call("HEAD", "/status")
    assert r.status_code == 200 and r.content == b""
    assert int(r.headers["Content-Length"]) > 0


def test_pagination_loses_and_repeats_nothing(api: Api, api_env: dict[str, str]) -> None:
    entries = history(137)
    store = seed(api_env, entries, in_snapshot=100)
    expected = newest_first(entries)

    assert walk(api, "limit=10") == expected
    assert walk(api, "limit=1", max_pages=5) == expected[:5]
    assert walk(api, "limit=500") == expected
    compliance = [e for e in entries if e.kind == "compliance"]
    assert walk(api, "limit=7&kind=compliance") == newest_first(compliance)
    assert walk(api, "kind=base") == []

    # Backups arriving between pages (newer, and one older than the cursor) shift no page.
    newer = [entry("full", "late", T0 + timedelta(days=30, minutes=i)) for i in range(5)]
    older = entry("full", "old", T0 - timedelta(days=1))

    def add(page: int) -> None:
        if page == 1:
            for e in [*newer, older]:
                store.record("backup", e.name, {"name": e.name, "entry": e.to_dict()})

    names = walk(api, "limit=10", between=add)
    assert len(names) == len(set(names))
    assert names == [*expected, older.name]  # the older one is after the cursor: it shows up, once
    assert walk(api, "limit=10")[:5] == newest_first(newer)


def test_listing_carries_the_last_verification(api: Api, api_env: dict[str, str]) -> None:
    entries = history(6)
    store = seed(api_env, entries, in_snapshot=3)
    store.record("verification", entries[0].name, {"name": entries[0].name, "ok": False, "checks": []})
    store.record("verification", entries[5].name, {"name": entries[5].name, "ok": True, "checks": []})
    rows = {b["name"]: b for b in api.json("GET", "/backups")["backups"]}
    assert rows[entries[0].name]["verification_ok"] is False
    assert rows[entries[5].name]["verification_ok"] is True and rows[entries[5].name]["last_verification"]
    assert rows[entries[1].name]["verification_ok"] is None
    assert "verification of " + entries[0].name + " failed" in api.json("GET", "/status")["problems"]


def test_openwhisk_and_digitalocean_event_shapes_answer_alike(api: Api, api_env: dict[str, str]) -> None:
    entries = history(5)
    seed(api_env, entries, in_snapshot=5)
    auth = {"authorization": f"Bearer {TOKEN}"}
    do_event = {"http": {"method": "GET", "headers": auth, "path": ""}, "limit": "2", "kind": "full"}
    ow_event = {
        "__ow_method": "get",
        "__ow_headers": auth,
        "__ow_path": "",
        "__ow_query": "limit=2&kind=full",
    }
    raw_event = {
        "http": {
            "method": "GET",
            "headers": auth,
            "path": "",
            "queryString": "limit=2&kind=full",
            "body": "",
            "isBase64Encoded": False,
        }
    }
    answers = [web.handle("backups", e) for e in (do_event, ow_event, raw_event)]
    assert all(a["statusCode"] == 200 for a in answers), answers
    bodies = [json.loads(a["body"]) for a in answers]
    assert bodies[0] == bodies[1] == bodies[2]
    full = newest_first([e for e in entries if e.kind == "full"])
    assert [b["name"] for b in bodies[0]["backups"]] == full[:2]
    # OpenWhisk raw mode hands a JSON body over base64-encoded.
    body = base64.b64encode(json.dumps({"name": "bad/../name"}).encode()).decode()
    r = web.handle(
        "restore-test", {"__ow_method": "post", "__ow_headers": auth, "__ow_path": "", "__ow_body": body}
    )
    assert r["statusCode"] == 400 and json.loads(r["body"])["error"]["code"] == "invalid_name"


# -- errors ---------------------------------------------------------------------------------------
def error_of(r: Response, status: int) -> str:
    assert r.status_code == status, (r.status_code, r.text[:300])
    assert r.headers["Content-Type"].startswith(JSON)
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert "Traceback" not in r.text
    code: str = body["error"]["code"]
    return code


VALID_ABSENT = "full_backup_nothere_20250101_000000"


@pytest.mark.parametrize(
    ("method", "path", "code"),
    [
        ("GET", "/backup/..", "invalid_name"),
        ("GET", "/backup/%2E%2E%2F%2E%2E%2Fcatalog.json", "invalid_name"),
        ("GET", "/backup/full_backup_db_20260101_000000%2F..", "invalid_name"),
        ("GET", "/backup/full_backup_../../x_20260101_000000", "invalid_name"),
        ("POST", "/verify/..%2Fjobs", "invalid_name"),
        ("GET", "/backups?cursor=not-a-cursor", "bad_cursor"),
        ("GET", "/backups?cursor=" + base64.urlsafe_b64encode(b'["v1", 1, 2]').decode(), "bad_cursor"),
        ("GET", "/backups?cursor=" + "A" * 1000, "bad_cursor"),
        ("GET", "/backups?limit=0", "bad_limit"),
        ("GET", "/backups?limit=501", "bad_limit"),
        ("GET", "/backups?limit=-1", "bad_limit"),
        ("GET", "/backups?limit=1.5", "bad_limit"),
        ("GET", "/backups?limit=ten", "bad_limit"),
        ("GET", "/backups?kind=weekly", "bad_kind"),
        ("GET", "/runs/not-a-run-id", "invalid_name"),
        ("GET", "/runs/" + "Z" * 26, "invalid_name"),
        ("GET", "/backup", "missing_name"),
    ],
)
def test_bad_input_is_400(api: Api, method: str, path: str, code: str) -> None:
    assert error_of(api.call(method, path), 400) == code


@pytest.mark.parametrize(
    ("body", "ctype", "code"),
    [
        (b"{not json", JSON, "bad_json"),
        (b"[1, 2]", JSON, "bad_json"),
        (b'"just a string"', JSON, "bad_json"),
        (b"\xff\xfe\x00garbage", "application/octet-stream", "bad_json"),
        (b'{"name": "../../etc/passwd"}', JSON, "invalid_name"),
        (b'{"name": 42}', JSON, "bad_name"),
        (b'{"http": {"method": "GET"}}', JSON, "reserved_parameter"),
        (b'{"__ow_headers": {}}', JSON, "reserved_parameter"),
    ],
)
def test_bad_bodies_are_400(api: Api, body: bytes, ctype: str, code: str) -> None:
    r = api.post("/restore-test", data=body, headers={"Content-Type": ctype})
    assert error_of(r, 400) == code


def test_oversized_bodies_are_413(api: Api) -> None:
    big = json.dumps({"name": "x" * (MAX_BODY_BYTES + 10)}).encode()
    r = api.post("/restore-test", data=big, headers={"Content-Type": JSON})
    assert error_of(r, 413) == "body_too_large"
    # Over the platform's own 1 MB limit the host answers before any function runs.
    huge = b"{" + b" " * (2 * 1024 * 1024) + b"}"
    r = api.post("/restore-test", data=huge, headers={"Content-Type": JSON})
    assert error_of(r, 413) == "body_too_large"
    assert api.get("/status").status_code == 200  # and the host is still fine


@pytest.mark.parametrize(
    "auth",
    [
        None,
        "Bearer",
        "Bearer ",
        f"Bearer {TOKEN[:-1]}",
        f"Bearer {TOKEN}x",
        f"Basic {TOKEN}",
        TOKEN,
        f"Bearer {TOKEN.upper() if TOKEN.upper() != TOKEN else TOKEN.lower()}",
        "Bearer ünïcødé".encode("latin-1"),
        "Bearer ☃".encode(),
    ],
    # Named, not shown: the token is random (and a secret), and every process must collect the same ids.
    ids=[
        "none",
        "scheme-only",
        "scheme-space",
        "short",
        "long",
        "basic",
        "no-scheme",
        "case",
        "latin1",
        "utf8",
    ],
)
def test_missing_or_wrong_token_is_401_everywhere(api: Api, auth: str | bytes | None) -> None:
    headers = {"Authorization": auth} if auth is not None else {}
    for route in ROUTES:
        if not route.auth:
            continue
        path = route.short + ("/full_backup_db_20260101_000000" if route.arg == "name" else "")
        path = path + ("/" + "0" * 26 if route.arg == "run_id" else "")
        r = api.call(route.methods[0], path, token=None, headers=headers)
        assert error_of(r, 401) == "unauthorized", path
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
        assert TOKEN not in r.text


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", f"/backup/{VALID_ABSENT}"),
        ("POST", f"/verify/{VALID_ABSENT}"),
        ("POST", "/restore-test?name=" + VALID_ABSENT),
        ("GET", "/runs/" + "0" * 26),
        ("GET", "/nothing-here"),
        ("GET", "/status/extra"),
        ("GET", "/api/v1/web/fn-test/monitor/nothing"),
        ("GET", "/api/v1/web/fn-test/scheduler/tick"),  # web: false is not served
        ("GET", "/api/v1/web/fn-test"),
    ],
)
def test_unknown_things_are_404(api: Api, method: str, path: str) -> None:
    assert error_of(api.call(method, path), 404) == "not_found"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/status"),
        ("GET", f"/verify/{VALID_ABSENT}"),
        ("GET", "/restore-test"),
        ("DELETE", "/backups"),
        ("PUT", "/health"),
        ("PATCH", f"/backup/{VALID_ABSENT}"),
        ("OPTIONS", "/metrics"),
        ("BREW", "/status"),
    ],
)
def test_wrong_method_is_405(api: Api, method: str, path: str) -> None:
    r = api.call(method, path)
    assert error_of(r, 405) == "method_not_allowed"


def test_without_a_monitor_token_the_api_refuses_to_serve(api_env: dict[str, str]) -> None:
    running = start_host(settings_of({k: v for k, v in api_env.items() if k != "MONITOR_TOKEN"}))
    try:
        a = Api(running.server.url)
        for route in ROUTES:
            if route.auth:
                r = a.call(route.methods[0], route.short, token="anything")
                assert error_of(r, 503) == "monitor_token_not_set", route
        health = a.json("GET", "/health", token=None)
        assert health["monitor_token_configured"] is False and health["ok"] is False
        assert health["catalog_reachable"] is True
    finally:
        running.stop()


def test_storage_problems_are_a_json_503_never_a_traceback(api_env: dict[str, str]) -> None:
    env = {**api_env, "DO_SPACES_BUCKET": "no-such-bucket-here"}
    running = start_host(settings_of(env))
    try:
        a = Api(running.server.url)
        health = a.json("GET", "/health", status=503, token=None)
        assert health["catalog_reachable"] is False and "no-such-bucket" not in json.dumps(health)
        assert error_of(a.get("/status"), 503) == "storage_unavailable"
        assert error_of(a.get("/status", token=None), 401) == "unauthorized"  # auth still comes first
    finally:
        running.stop()
    incomplete = start_host(settings_of({k: v for k, v in api_env.items() if k != "DO_SPACES_BUCKET"}))
    try:
        a = Api(incomplete.server.url)
        r = a.get("/backups")
        assert error_of(r, 503) == "misconfigured" and "DO_SPACES_BUCKET" in r.json()["error"]["message"]
        assert error_of(a.get("/backups", token=None), 401) == "unauthorized"
    finally:
        incomplete.stop()


def test_without_project_yml_the_builtin_table_serves_the_same(
    api_env: dict[str, str], tmp_path: Path
) -> None:
    running = start_host(settings_of(api_env), project_dir=tmp_path)
    try:
        assert all(fn.source is None for fn in running.server.functions.values())
        a = Api(running.server.url)
        assert a.json("GET", "/status")["backup_count"] == 0
        assert a.json("GET", "/api/v1/web/ns/monitor/backups")["backups"] == []
    finally:
        running.stop()


def test_the_host_calls_the_packaged_functions() -> None:
    from coldcopy.localstack.functions_host import find_project, load_functions

    functions = load_functions(find_project())
    assert {f for (p, f) in functions if p == "monitor"} == {r.function for r in ROUTES}
    assert ("scheduler", "tick") not in functions  # web: false
    assert all(fn.source is not None and fn.source.name == "__main__.py" for fn in functions.values())


def test_a_cursor_from_another_catalog_state_still_pages_forward(api: Api, api_env: dict[str, str]) -> None:
    entries = history(9)
    seed(api_env, entries, in_snapshot=9)
    expected = newest_first(entries)
    cut = sorted(entries, key=lambda e: (e.created_at, e.name), reverse=True)[3]
    # A cursor at a backup that has since been deleted: the page starts just after its sort key.
    gone = encode_cursor((cut.created_at, cut.name + "-deleted"))
    names = [b["name"] for b in api.json("GET", f"/backups?limit=50&cursor={gone}")["backups"]]
    assert names == expected[3:]


# -- a real `coldcopy serve` process waking a real worker -----------------------------------------
def test_coldcopy_serve_process_wakes_the_local_runner(api_env: dict[str, str], tmp_path: Path) -> None:
    r = run_cli(api_env, "backup", "--json")
    assert r.rc == 0, r.err
    name = json.loads(r.out)["name"]
    port = free_port()
    env = {**api_env, "COLDCOPY_LAUNCHER": "local"}
    log = tmp_path / "serve.log"
    proc = spawn_serve(env, port, log, REPO)
    try:
        a = Api(f"http://127.0.0.1:{port}")

        def up() -> bool:
            try:
                return a.get("/health", token=None).status_code == 200
            except OSError:
                return False

        assert wait_until(up, 30), log.read_text()
        queued = a.json("POST", f"/verify/{name}", status=202)
        assert queued["woken"] is True, queued
        run_path = queued["links"]["run"]

        def finished() -> bool:
            return bool(a.json("GET", run_path)["state"] in ("succeeded", "failed"))

        assert wait_until(finished, 120, interval=0.25)
        run = a.json("GET", run_path)
        assert run["state"] == "succeeded", run
        assert a.json("GET", "/backups")["backups"][0]["verification_ok"] is True
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# -- the parsed-catalog cache -----------------------------------------------------------------------
def recorded_calls(storage: Any) -> list[tuple[str, int]]:
    """The S3 operations ``storage`` makes from now on, with their HTTP status, as they happen."""
    calls: list[tuple[str, int]] = []

    def seen(http_response: Any, model: Any, **_: Any) -> None:
        calls.append((model.name, http_response.status_code))

    storage.client.meta.events.register("after-call.s3", seen)
    return calls


def test_catalog_cache_revalidates_with_one_conditional_get_and_one_listing(api_env: dict[str, str]) -> None:
    entries = history(30)
    seed(api_env, entries, in_snapshot=25)
    storage = open_store(settings_of(api_env))
    calls = recorded_calls(storage)
    store = CatalogStore(storage)

    first = store.read_cached()
    assert sorted(first.backups) == sorted(e.name for e in entries)
    snapshot = store._snapshot[1]
    calls.clear()
    again = store.read_cached()
    assert calls == [("GetObject", 304), ("ListObjectsV2", 200)]
    assert store._snapshot[1] is snapshot  # not downloaded, not parsed again
    assert again.backups == first.backups and again is not first

    # A changed catalog.json is fetched and parsed again; the answer equals a plain read().
    late = entry("full", "late", T0 + timedelta(days=400))
    cat = store.read()
    cat.backups[late.name] = late
    store.save(cat)
    calls.clear()
    fresh = store.read_cached()
    assert ("GetObject", 200) in calls and store._snapshot[1] is not snapshot
    assert late.name in fresh.backups
    assert fresh.backups == store.read().backups
    # Changing what read_cached returned does not change the cache.
    fresh.backups.clear()
    assert late.name in store.read_cached().backups


def test_a_writer_that_read_ahead_updates_the_catalog_without_fetching_it_or_its_own_record(
    api_env: dict[str, str],
) -> None:
    """A backup reads the catalog while its dump streams; its update at the end then neither
    downloads catalog.json again nor GETs the journal record it has just written."""
    entries = history(30)
    seed(api_env, entries, in_snapshot=25)
    storage = open_store(settings_of(api_env))
    calls = recorded_calls(storage)
    store = CatalogStore(storage)
    store.read_cached()  # the read-ahead
    late = entry("full", "late", T0 + timedelta(days=400))
    calls.clear()
    record_backup(store, late)
    cat = store.refresh()
    assert calls == [
        ("PutObject", 200),  # the record
        ("GetObject", 304),  # catalog.json, unchanged since the read-ahead
        ("ListObjectsV2", 200),  # the journal since its watermark
        ("PutObject", 200),  # catalog.json
        ("GetObject", 200),  # the page index
        ("ListObjectsV2", 200),  # the pages
        ("PutObject", 200),  # the pages the merged records are on: the new backup's month
        ("PutObject", 200),  # and the month of the five backups only the journal held
        ("PutObject", 200),  # the page index
        ("PutObject", 200),  # its digest
    ]
    assert late.name in cat.backups
    assert CatalogStore(storage).read().backups == cat.backups  # what a fresh reader finds


# -- the event the local host builds, and the one the functions read ------------------------------
def test_the_host_builds_digitaloceans_event_and_the_functions_read_every_shape() -> None:
    from coldcopy.api.protocol import parse_event
    from coldcopy.localstack.functions_host import RequestRefused, build_event

    headers = {"content-type": "application/json", "authorization": "Bearer x"}
    body = b'{"name": "n", "limit": "7"}'
    event = build_event("POST", "/rest", "limit=5&kind=full", headers, body, raw=False)
    assert event == {
        "limit": "7",
        "kind": "full",
        "name": "n",  # the body wins over the query, as on DO
        "http": {"method": "POST", "headers": headers, "path": "/rest"},
    }
    form = build_event(
        "POST", "", "", {"content-type": "application/x-www-form-urlencoded"}, b"name=a&x=1", raw=False
    )
    assert form["name"] == "a" and form["x"] == "1" and "body" not in form["http"]
    unreadable = build_event("POST", "", "", {"content-type": "application/json"}, b"[1]", raw=False)
    assert unreadable["http"]["body"] == "[1]"  # handed over so the function answers 400 itself
    raw = build_event("GET", "", "a=1", {}, b"\xff\x00", raw=True)
    assert raw["http"]["queryString"] == "a=1" and raw["http"]["isBase64Encoded"] is True
    assert set(raw) == {"http"}
    with pytest.raises(RequestRefused):
        build_event("GET", "", "__ow_path=/x", {}, b"", raw=False)

    req = parse_event(event)
    assert (req.method, req.path, req.params["name"], req.headers["authorization"]) == (
        "POST",
        "/rest",
        "n",
        "Bearer x",
    )
    encoded = base64.b64encode(b'{"name": "b"}').decode()
    req = parse_event(
        {
            "http": {
                "method": "post",
                "headers": {"Content-Type": JSON},
                "path": "",
                "body": encoded,
                "isBase64Encoded": True,
            }
        }
    )
    assert req.method == "POST" and req.params["name"] == "b" and req.headers["content-type"] == JSON
    req = parse_event(
        {
            "__ow_method": "post",
            "__ow_headers": {},
            "__ow_path": "/p",
            "__ow_body": '{"name": "c"}',
            "__ow_query": "limit=3",
            "extra": 1,
        }
    )
    assert (req.method, req.path, req.params) == ("POST", "/p", {"name": "c", "limit": "3", "extra": 1})
    assert parse_event(None).method == "GET"  # a bare invocation (doctl sls fn invoke) is a GET


# What a function's cold start must not import: third-party weights, and ColdCopy's modules that
# only other endpoints use (each function is a process of its own serving one endpoint).
OTHER_ENDPOINTS = (
    "coldcopy.alerting",
    "coldcopy.ops",
    "coldcopy.api.dashboard",
    "coldcopy.core.recovery_time",
)


@pytest.mark.parametrize(
    ("function", "also_not"),
    [("status", OTHER_ENDPOINTS), ("health", (*OTHER_ENDPOINTS, "coldcopy.wal"))],
)
def test_the_web_path_stays_light(api_env: dict[str, str], function: str, also_not: tuple[str, ...]) -> None:
    """A function's cold start imports no PostgreSQL driver, compression, crypto or YAML, and none
    of the modules of other endpoints."""
    code = (
        "import json, sys\n"
        "from coldcopy.functions.web import handle\n"
        "event = {'http': {'method': 'GET', 'path': '', 'headers': {'authorization': sys.argv[1]}}}\n"
        f"r = handle({function!r}, event)\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & "
        "{'pg8000', 'zstandard', 'cryptography', 'yaml', 'croniter', 'dotenv', 'docker', 'requests',"
        " 'smtplib'})\n"
        f"other = sorted(m for m in sys.modules if m.startswith({also_not!r}))\n"
        "print(json.dumps({'status': r['statusCode'], 'heavy': heavy, 'other': other}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, f"Bearer {TOKEN}"],
        env=api_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert json.loads(out.stdout) == {"status": 200, "heavy": [], "other": []}, out.stderr[-2000:]
