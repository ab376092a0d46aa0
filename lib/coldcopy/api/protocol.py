"""The monitor API's pure core: one routing table, event parsing, auth, errors, pagination, views.

No I/O here.  ``coldcopy.functions.web`` does the reading and enqueueing;
``coldcopy.localstack.functions_host`` hosts
the same functions locally.  Both the platform and the local host reach a function by its *name*
(``/api/v1/web/<ns>/monitor/<name>[/rest]``); the short paths our users already call
(``/status``, ``/backup/<name>`` …) are derived from the same table, never written twice.

Events come in two shapes (see docs/reference: DigitalOcean §2):

* DigitalOcean: ``event["http"] = {"method", "headers", "path"[, "body", "isBase64Encoded",
  "queryString"]}``; query parameters and JSON/form body fields are merged as top-level keys.
* plain OpenWhisk: ``__ow_method`` (lowercase), ``__ow_headers``, ``__ow_path``, ``__ow_body``
  (a string, base64 for JSON or binary content in raw mode), ``__ow_query`` (raw mode); other
  parameters are top-level keys too.

Every error is ``{"error": {"code", "message"}}`` with a 4xx status for anything the caller sent.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from coldcopy.core.catalog_pages import SortKey
from coldcopy.core.names import KINDS

PACKAGE = "monitor"
MAX_BODY_BYTES = 64 * 1024
DEFAULT_LIMIT = 50
MAX_LIMIT = 500
JSON_TYPE = "application/json; charset=utf-8"
PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
HTML_TYPE = "text/html; charset=utf-8"
_MAX_CURSOR_CHARS = 400
_BASE_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


# -- the routing table ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Route:
    function: str  # the web function's name in project.yml (package `monitor`)
    short: str  # the short path our users call; "/" is the dashboard
    methods: tuple[str, ...]
    auth: bool = True
    arg: str | None = None  # what a path suffix carries: "name" (a backup name), "run_id", or nothing

    @property
    def allowed(self) -> tuple[str, ...]:
        """Methods answered, HEAD included wherever GET is."""
        return self.methods + (("HEAD",) if "GET" in self.methods else ())


ROUTES: tuple[Route, ...] = (
    Route("health", "/health", ("GET",), auth=False),
    Route("status", "/status", ("GET",)),
    Route("backups", "/backups", ("GET",)),
    Route("backup", "/backup", ("GET",), arg="name"),
    Route("verify", "/verify", ("POST",), arg="name"),
    Route("metrics", "/metrics", ("GET",)),
    Route("alerts", "/alerts", ("GET",)),
    Route("restore-test", "/restore-test", ("POST",)),
    Route("recovery-time", "/recovery-time", ("GET",)),
    Route("runs", "/runs", ("GET",), arg="run_id"),
    Route("dashboard", "/", ("GET",), auth=False),  # the page holds no data; it asks for the token
)
BY_FUNCTION: dict[str, Route] = {r.function: r for r in ROUTES}
_BY_SEGMENT: dict[str, Route] = {r.short.strip("/"): r for r in ROUTES if r.short != "/"}


def resolve_short_path(path: str) -> tuple[str, str] | None:
    """``/backup/x`` → ``("backup", "/x")``; ``/`` → ``("dashboard", "")``; unknown → None."""
    if path in ("", "/"):
        return "dashboard", ""
    head, sep, rest = path.lstrip("/").partition("/")
    route = _BY_SEGMENT.get(head)
    if route is None:
        return None
    return route.function, (sep + rest if rest else "")


# -- errors and responses -------------------------------------------------------------------------
class HttpError(Exception):
    """An answer with an error status: ``{"error": {"code", "message"}}``."""

    def __init__(
        self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = dict(headers or {})

    def response(self) -> dict[str, Any]:
        return error_response(self.status, self.code, self.message, self.headers)


def json_response(status: int, obj: Any, headers: Mapping[str, str] | None = None) -> dict[str, Any]:
    body = json.dumps(obj, separators=(",", ":"), sort_keys=True, default=str)
    return {
        "statusCode": status,
        "headers": {"Content-Type": JSON_TYPE, **_BASE_HEADERS, **(headers or {})},
        "body": body,
    }


def text_response(status: int, text: str, content_type: str) -> dict[str, Any]:
    return {"statusCode": status, "headers": {"Content-Type": content_type, **_BASE_HEADERS}, "body": text}


def error_response(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> dict[str, Any]:
    return json_response(status, {"error": {"code": code, "message": message}}, headers)


def bad_request(code: str, message: str) -> HttpError:
    return HttpError(400, code, message)


# -- requests -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Request:
    method: str  # upper case
    path: str  # what follows the function in the URL: "" or "/<something>"
    headers: Mapping[str, str]  # names lower case
    params: Mapping[str, Any]  # query parameters and JSON body fields, merged like the platform does
    body_size: int = 0

    def param(self, name: str) -> Any:
        return self.params.get(name)


def _as_str_dict(value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping):
        return {}
    return {str(k).lower(): v if isinstance(v, str) else str(v) for k, v in value.items()}


def _query(text: Any) -> dict[str, str]:
    if not isinstance(text, str) or not text:
        return {}
    return dict(parse_qsl(text.lstrip("?"), keep_blank_values=True))


def _decode_body(raw: Any, base64_encoded: bool) -> bytes:
    if raw is None or raw == "":
        return b""
    if isinstance(raw, (dict, list)):  # already parsed by a caller
        return json.dumps(raw).encode()
    if not isinstance(raw, str):
        raise bad_request("bad_body", "the request body could not be read")
    if base64_encoded:
        try:
            return base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            raise bad_request("bad_body", "the request body is not valid base64") from None
    return raw.encode("utf-8", "surrogatepass")


def _json_object(body: bytes, *, maybe_base64: bool) -> dict[str, Any]:
    """The body as a JSON object; OpenWhisk's ``__ow_body`` may be base64 of the JSON text."""
    candidates = [body]
    if maybe_base64:
        with contextlib.suppress(binascii.Error, ValueError):
            candidates.append(base64.b64decode(body, validate=True))
    for text in candidates:
        try:
            value = json.loads(text)
        except (ValueError, RecursionError):
            continue
        if isinstance(value, dict):
            return value
        raise bad_request("bad_json", "the request body must be a JSON object")
    raise bad_request("bad_json", "the request body is not valid JSON")


def _declared_length(headers: Mapping[str, str]) -> int:
    try:
        return max(0, int(headers.get("content-length", "0").strip() or 0))
    except ValueError:
        return 0


def parse_event(event: Any) -> Request:
    """Both event shapes → one Request.  Raises HttpError 413 (too large) or 400 (bad body)."""
    if not isinstance(event, Mapping):
        event = {}
    http = event.get("http")
    if isinstance(http, Mapping):
        method = http.get("method")
        headers = _as_str_dict(http.get("headers"))
        path = http.get("path")
        raw_body, b64, query = http.get("body"), bool(http.get("isBase64Encoded")), http.get("queryString")
        maybe_b64 = False
    else:
        method = event.get("__ow_method")
        headers = _as_str_dict(event.get("__ow_headers"))
        path = event.get("__ow_path")
        raw_body, b64, query = event.get("__ow_body"), False, event.get("__ow_query")
        maybe_b64 = True
    method = method.upper() if isinstance(method, str) and method else "GET"
    path = path if isinstance(path, str) else ""
    params: dict[str, Any] = {
        k: v for k, v in event.items() if isinstance(k, str) and k != "http" and not k.startswith("__ow_")
    }
    for k, v in _query(query).items():
        params.setdefault(k, v)
    body = _decode_body(raw_body, b64)
    size = max(len(body), _declared_length(headers))
    if size > MAX_BODY_BYTES:
        raise HttpError(413, "body_too_large", f"the request body is larger than {MAX_BODY_BYTES} bytes")
    if body.strip():
        params.update(_json_object(body, maybe_base64=maybe_b64))
    return Request(method=method, path=path, headers=headers, params=params, body_size=size)


def check_method(route: Route, method: str) -> None:
    if method not in route.allowed:
        allow = ", ".join(route.allowed)
        raise HttpError(
            405, "method_not_allowed", f"{route.short} accepts {allow}, not {method[:20]}", {"Allow": allow}
        )


def path_arg(req: Request, param: str) -> str | None:
    """The path suffix (``/x`` → ``x``), else the named parameter (``?name=x``, a JSON body field)."""
    rest = req.path.strip("/")
    if rest:
        return rest
    value = req.param(param)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise bad_request(f"bad_{param}", f"'{param}' must be a string")
    return value


# -- auth -----------------------------------------------------------------------------------------
def authorize(headers: Mapping[str, str], token: str) -> None:
    """``Authorization: Bearer <token>``, compared in constant time.

    No configured token means we refuse to serve (503 ``monitor_token_not_set``) instead of serving
    openly.  503 and not 401: the caller did nothing wrong and no credential could succeed; the
    server is not configured to serve yet.  It is a server condition, never a verdict on input.
    """
    if not token:
        raise HttpError(
            503, "monitor_token_not_set", "this endpoint is disabled until MONITOR_TOKEN is set on the server"
        )
    scheme, _, given = headers.get("authorization", "").strip().partition(" ")
    presented = given.strip() if scheme.lower() == "bearer" else ""
    # Always compare (bytes, so any character is fine) so the time taken does not say why it failed.
    ok = hmac.compare_digest(
        presented.encode("utf-8", "surrogatepass"), token.encode("utf-8", "surrogatepass")
    )
    if not ok or not presented:
        raise HttpError(
            401,
            "unauthorized",
            "send the header 'Authorization: Bearer <MONITOR_TOKEN>'",
            {"WWW-Authenticate": 'Bearer realm="coldcopy"'},
        )


# -- parameters -----------------------------------------------------------------------------------
def limit_param(value: Any) -> int:
    if value is None or value == "":
        return DEFAULT_LIMIT
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise bad_request("bad_limit", f"limit must be a whole number from 1 to {MAX_LIMIT}")
    text = str(value).strip()
    if not text.isascii() or not text.isdigit() or len(text) > 6 or not 1 <= int(text) <= MAX_LIMIT:
        raise bad_request("bad_limit", f"limit must be a whole number from 1 to {MAX_LIMIT}")
    return int(text)


def kind_param(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or value not in KINDS:
        raise bad_request("bad_kind", f"kind must be one of: {', '.join(KINDS)}")
    return value


# -- pagination -----------------------------------------------------------------------------------
# Pages are cut on the catalog's order (``core.catalog_pages.sort_key``); the cursor carries its key.


def encode_cursor(key: SortKey) -> str:
    raw = json.dumps(["v1", key[0], key[1]], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(text: Any) -> SortKey | None:
    if text is None or text == "":
        return None
    bad = bad_request("bad_cursor", "cursor is not one this API handed out; start again without it")
    if not isinstance(text, str) or len(text) > _MAX_CURSOR_CHARS or not text.isascii():
        raise bad
    try:
        value = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (binascii.Error, ValueError):
        raise bad from None
    if (
        not isinstance(value, list)
        or len(value) != 3
        or value[0] != "v1"
        or not all(isinstance(v, str) for v in value[1:])
    ):
        raise bad
    return value[1], value[2]


# -- views ----------------------------------------------------------------------------------------
def queued_view(run_id: str, kind: str, woken: bool, detail: str) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "kind": kind,
        "status": "queued",
        "woken": woken,
        "wake_detail": detail,
        "links": {"run": f"/runs/{run_id}"},
    }
