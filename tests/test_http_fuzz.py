"""Property-based fuzzing of the monitor API: whatever arrives, never a 5xx, always JSON, no leaks.

Two layers: real HTTP requests (paths, query strings, headers, bodies) through the local host, and
raw events of both shapes straight into ``handle`` (what the platform could hand a function).
The catalog behind them is real (moto's S3 server), so authorised requests reach the handlers.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coldcopy.api.protocol import ROUTES, encode_cursor
from coldcopy.functions import web
from test_http_api import TOKEN, Api, Response, history, request, seed, settings_of, start_host

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]
ENTRIES = history(12)
NAMES = [e.name for e in ENTRIES]
RUN_ID = "0123456789abcdefghjkmnpqrs"
ROUTE_PATHS = [
    "/",
    "/health",
    "/status",
    "/backups",
    "/metrics",
    "/alerts",
    "/restore-test",
    "/recovery-time",
    f"/backup/{NAMES[0]}",
    f"/backup/{NAMES[-1]}",
    f"/verify/{NAMES[1]}",
    f"/runs/{RUN_ID}",
    "/api/v1/web/fn-x/monitor/status",
    "/api/v1/web/fn-x/monitor/backups",
    f"/api/v1/web/fn-x/monitor/backup/{NAMES[2]}",
    "/api/v1/web/fn-x/scheduler/tick",
]
ARG_PREFIXES = [
    "/backup/",
    "/verify/",
    "/runs/",
    "/api/v1/web/fn-x/monitor/backup/",
    "/api/v1/web/fn-x/monitor/",
    "/api/v1/web/",
    "/status/",
]
PARAM_NAMES = ["limit", "cursor", "kind", "name", "run_id", "http", "__ow_method", "__ow_headers", "x"]
INTERESTING = [
    "",
    "0",
    "1",
    "50",
    "500",
    "501",
    "-1",
    "1e3",
    "full",
    "compliance",
    "base",
    "..",
    "../../x",
    NAMES[0],
    NAMES[-1],
    encode_cursor(("2026-01-01T02:00:00Z", NAMES[3])),
    "null",
    "[]",
    "{}",
]
TEXT = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=40)
HEADER_TEXT = st.text(st.characters(min_codepoint=0x21, max_codepoint=0xFF), max_size=40)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12,
)
JSON_OBJECTS = st.dictionaries(
    st.sampled_from(PARAM_NAMES) | TEXT, JSON_VALUES | st.sampled_from(INTERESTING), max_size=5
)


@pytest.fixture
def fuzz_api(api_env: dict[str, str]) -> Iterator[Api]:
    seed(api_env, ENTRIES, in_snapshot=8)
    running = start_host(settings_of(api_env))
    try:
        yield Api(running.server.url)
    finally:
        running.stop()


def secrets_of(env: dict[str, str]) -> list[str]:
    # moto's secret is the word "test", which legitimately occurs in "/restore-test": skip short ones.
    values = [TOKEN, env["DO_SPACES_SECRET"], env["BACKUP_ENCRYPTION_KEY"], env["DB_PASSWORD"]]
    return [v for v in values if len(v) >= 12]


def check(status: int, ctype: str, body: bytes, *, head: bool, secrets: list[str]) -> None:
    assert 200 <= status < 500, (status, body[:300])
    text = body.decode("utf-8", "replace")
    assert "Traceback" not in text and 'File "' not in text
    for secret in secrets:
        assert secret not in text
    if head:
        assert body == b""
        return
    if status >= 300 or ctype.startswith("application/json"):
        assert ctype.startswith("application/json"), (status, ctype)
        value = json.loads(body)
        if status >= 300:
            assert set(value) == {"error"} and isinstance(value["error"]["code"], str)
            assert isinstance(value["error"]["message"], str) and value["error"]["message"]
    else:  # /metrics and the dashboard answer text on success
        assert ctype.startswith(("text/plain; version=0.0.4", "text/html")), ctype


@st.composite
def http_requests(draw: st.DrawFn) -> tuple[str, str, dict[str, Any], bytes | None]:
    method = draw(st.sampled_from(["GET"] * 4 + ["POST"] * 3 + METHODS))
    routes = st.sampled_from(ROUTE_PATHS)
    path = draw(
        st.one_of(
            routes,
            routes,
            routes,  # mostly real endpoints, so the handlers themselves get fuzzed
            st.builds(
                lambda p, x: p + quote(x, safe="/.~-_"),
                st.sampled_from(ARG_PREFIXES),
                TEXT | st.sampled_from(INTERESTING),
            ),
            TEXT.map(lambda x: "/" + quote(x, safe="/.~-_")),
        )
    )
    keys = st.sampled_from(PARAM_NAMES[:5]) | st.sampled_from(PARAM_NAMES) | TEXT
    query = draw(st.lists(st.tuples(keys, st.sampled_from(INTERESTING) | TEXT), max_size=4))
    if query:
        path += "?" + urlencode(query)
    headers: dict[str, Any] = {}
    auth = draw(st.sampled_from(["good"] * 4 + ["none", "bad", "text"]))
    if auth == "good":
        headers["Authorization"] = f"Bearer {TOKEN}"
    elif auth == "bad":
        headers["Authorization"] = f"Bearer {TOKEN[:-2]}"
    elif auth == "text":
        headers["Authorization"] = draw(HEADER_TEXT).encode("latin-1")
    ctype = draw(
        st.sampled_from(
            [
                None,
                "application/json",
                "text/plain",
                "application/x-www-form-urlencoded",
                "application/octet-stream",
                "application/merge-patch+json",
                "nonsense",
            ]
        )
    )
    if ctype:
        headers["Content-Type"] = ctype
    for name, value in draw(
        st.dictionaries(st.from_regex(r"X-[A-Za-z0-9-]{1,20}", fullmatch=True), HEADER_TEXT, max_size=3)
    ).items():
        headers[name] = value.encode("latin-1")
    body = draw(
        st.one_of(
            st.none(),
            st.none(),
            st.binary(max_size=300),
            JSON_OBJECTS.map(lambda o: json.dumps(o).encode()),
            JSON_VALUES.map(lambda v: json.dumps(v).encode()),
            st.sampled_from([b"{", b"[]", b"null", b"x" * 70_000, b'{"name": "' + b"a" * 70_000 + b'"}']),
        )
    )
    return method, path, headers, body


@FUZZ
@given(req=http_requests())
def test_any_http_request_gets_a_4xx_or_success_in_json(
    fuzz_api: Api, api_env: dict[str, str], req: tuple[str, str, dict[str, Any], bytes | None]
) -> None:
    method, path, headers, body = req
    r: Response = request(fuzz_api.url, method, path, headers=headers, body=body)
    check(
        r.status_code,
        r.headers.get("Content-Type", ""),
        r.content,
        head=method == "HEAD",
        secrets=secrets_of(api_env),
    )


@st.composite
def endpoint_requests(draw: st.DrawFn) -> tuple[str, str, dict[str, Any], bytes | None]:
    """Well-formed calls (right method, good token) with fuzzed arguments: the handlers' own checks."""
    route = draw(st.sampled_from(ROUTES))
    path = route.short
    if route.arg is not None:
        arg = draw(st.sampled_from([*NAMES[:3], RUN_ID, *INTERESTING]) | TEXT)
        path = path + "/" + quote(arg, safe="")
    params = draw(
        st.dictionaries(st.sampled_from(PARAM_NAMES[:5]), st.sampled_from(INTERESTING) | TEXT, max_size=3)
    )
    if params:
        path += "?" + urlencode(params)
    body = None
    headers: dict[str, Any] = {"Authorization": f"Bearer {TOKEN}"}
    if route.methods[0] == "POST" and draw(st.booleans()):
        fields = st.dictionaries(
            st.sampled_from(PARAM_NAMES[:5]), JSON_VALUES | st.sampled_from(INTERESTING), max_size=3
        )
        body = json.dumps(draw(fields)).encode()
        headers["Content-Type"] = "application/json"
    return route.methods[0], path, headers, body


@FUZZ
@given(req=endpoint_requests())
def test_fuzzed_arguments_to_real_endpoints_get_a_4xx_or_success(
    fuzz_api: Api, api_env: dict[str, str], req: tuple[str, str, dict[str, Any], bytes | None]
) -> None:
    method, path, headers, body = req
    r = request(fuzz_api.url, method, path, headers=headers, body=body)
    assert r.status_code not in (401, 405), (path, r.text)  # well-formed calls get past auth and routing
    check(
        r.status_code, r.headers.get("Content-Type", ""), r.content, head=False, secrets=secrets_of(api_env)
    )


@st.composite
def events(draw: st.DrawFn) -> Any:
    headers = draw(st.dictionaries(TEXT, TEXT | JSON_VALUES, max_size=3))
    if draw(st.booleans()):
        headers["authorization"] = f"Bearer {TOKEN}"
    method = draw(st.sampled_from([*METHODS, *(m.lower() for m in METHODS)]) | JSON_VALUES)
    path = draw(
        st.sampled_from(["", "/", *(f"/{n}" for n in NAMES[:2]), "/0123456789abcdefghjkmnpqrs"])
        | TEXT
        | JSON_VALUES
    )
    shape = draw(st.sampled_from(["do", "do-raw", "ow", "junk"]))
    params = draw(JSON_OBJECTS)
    if shape == "do":
        return {**params, "http": {"method": method, "headers": headers, "path": path}}
    if shape == "do-raw":
        return {
            "http": {
                "method": method,
                "headers": headers,
                "path": path,
                "queryString": draw(TEXT),
                "body": draw(TEXT | JSON_VALUES),
                "isBase64Encoded": draw(st.booleans()),
            }
        }
    if shape == "ow":
        return {
            **params,
            "__ow_method": method,
            "__ow_headers": headers,
            "__ow_path": path,
            "__ow_body": draw(st.none() | TEXT | JSON_VALUES),
            "__ow_query": draw(st.none() | TEXT),
        }
    return draw(JSON_VALUES)


@FUZZ
@given(function=st.sampled_from([*(r for r in web.HANDLERS), "nope"]), event=events())
def test_any_event_gets_a_4xx_or_success_in_json(
    fuzz_api: Api, api_env: dict[str, str], function: str, event: Any
) -> None:
    r = web.handle(function, event, None)
    assert set(r) == {"statusCode", "headers", "body"}
    body = r["body"].encode() if isinstance(r["body"], str) else b""
    check(
        r["statusCode"], r["headers"].get("Content-Type", ""), body, head=False, secrets=secrets_of(api_env)
    )


def test_the_fuzz_checks_can_fail() -> None:
    """The checker itself rejects what the properties forbid."""
    ok = json.dumps({"error": {"code": "x", "message": "y"}}).encode()
    check(400, "application/json", ok, head=False, secrets=["s3cret"])
    for status, ctype, body in [
        (500, "application/json", ok),
        (400, "text/html", b"<html>"),
        (400, "application/json", b"Traceback (most recent call last)"),
        (200, "application/json", b'{"leak": "s3cret"}'),
    ]:
        with pytest.raises(AssertionError):
            check(status, ctype, body, head=False, secrets=["s3cret"])
