"""A small stand-in for the DigitalOcean App Platform deployment API, on 127.0.0.1.

Implements what ColdCopy calls:

    GET  /v2/apps/{app_id}/deployments?page=&per_page=     → {"deployments": [newest first], "links", "meta"}
    POST /v2/apps/{app_id}/deployments  {"force_build": b}  → {"deployment": {...}}
    GET  /v2/apps/{app_id}/deployments/{deployment_id}     → {"deployment": {...}}

with DigitalOcean's error shape ``{"id", "message", "request_id"}``: 401 for a missing or unknown
Bearer token, 403 when the token lacks the scope (``app:read`` for GET, ``app:update`` for POST),
404 for an unknown app or deployment. Tests can queue failures (``fail_next``: e.g. 429 with
``retry-after``, or 503), read every request (``requests``, Authorization redacted) and move a
deployment's phase (``set_phase``).

    with FakeDoApi(tokens={"good": {"app:read", "app:update"}}) as api:
        app_id = api.add_app()
        ...api.url...
"""

from __future__ import annotations

import json
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import SplitResult, parse_qs, urlsplit

ALL_SCOPES = frozenset({"app:read", "app:update"})


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    body: Any
    authorized: bool
    headers: dict[str, str] = field(default_factory=dict)  # lowercased names, Authorization redacted


@dataclass
class _Failure:
    status: int
    headers: dict[str, str]
    remaining: int
    method: str | None
    apply_first: bool


class FakeDoApi:
    def __init__(self, tokens: dict[str, set[str] | frozenset[str]] | None = None) -> None:
        self.tokens: dict[str, frozenset[str]] = {
            t: frozenset(s) for t, s in (tokens or {"test-token": ALL_SCOPES}).items()
        }
        self.apps: dict[str, list[dict[str, Any]]] = {}
        self.requests: list[Recorded] = []
        self._failures: list[_Failure] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, name="fake-do-api", daemon=True
        )

    # -- lifecycle ---------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> FakeDoApi:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> FakeDoApi:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- test controls -----------------------------------------------------------------------------
    def add_app(self, app_id: str | None = None) -> str:
        app_id = app_id or str(uuid.uuid4())
        with self._lock:
            self.apps.setdefault(app_id, [])
        return app_id

    def fail_next(
        self,
        status: int,
        times: int = 1,
        headers: dict[str, str] | None = None,
        *,
        method: str | None = None,
        apply_first: bool = False,
    ) -> None:
        """Answer the next ``times`` authorized requests (of ``method``, if given) with ``status``.

        With ``apply_first`` the request is carried out before the failure is answered (a POST
        creates its deployment), like a server that fails after committing.
        """
        with self._lock:
            self._failures.append(_Failure(status, dict(headers or {}), times, method, apply_first))

    def set_phase(self, app_id: str, deployment_id: str, phase: str) -> None:
        with self._lock:
            for dep in self.apps[app_id]:
                if dep["id"] == deployment_id:
                    dep["phase"] = phase
                    dep["updated_at"] = _now()
                    return
        raise KeyError(deployment_id)

    def deployments(self, app_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(d) for d in self.apps[app_id]]

    def calls(self, method: str | None = None) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if method is None or r.method == method]

    # -- the HTTP side -----------------------------------------------------------------------------
    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
                pass

            def do_GET(self) -> None:
                api._handle(self, "GET")

            def do_POST(self) -> None:
                api._handle(self, "POST")

        return Handler

    def _handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        parts = urlsplit(h.path)
        length = int(h.headers.get("content-length") or 0)
        raw = h.rfile.read(length) if length else b""
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        auth = h.headers.get("authorization") or ""
        token = auth[len("Bearer ") :] if auth.startswith("Bearer ") else None
        scopes = self.tokens.get(token) if token is not None else None
        headers = {
            k.lower(): ("<redacted>" if k.lower() == "authorization" else v) for k, v in h.headers.items()
        }
        with self._lock:
            self.requests.append(
                Recorded(method, parts.path, parse_qs(parts.query), body, scopes is not None, headers)
            )
        if scopes is None:
            return _send(h, 401, {"id": "Unauthorized", "message": "Unable to authenticate you"})
        needed = "app:read" if method == "GET" else "app:update"
        if needed not in scopes:
            return _send(
                h, 403, {"id": "Forbidden", "message": "You are not authorized to perform this operation"}
            )
        with self._lock:
            failure = next((f for f in self._failures if f.method in (None, method)), None)
            if failure is not None:
                failure.remaining -= 1
                if failure.remaining <= 0:
                    self._failures.remove(failure)
        if failure is not None:
            if failure.apply_first:
                self._route(h, method, parts, body, reply=False)
            return _send(
                h, failure.status, {"id": "error", "message": f"injected {failure.status}"}, failure.headers
            )
        self._route(h, method, parts, body, reply=True)

    def _route(
        self, h: BaseHTTPRequestHandler, method: str, parts: SplitResult, body: Any, *, reply: bool
    ) -> None:
        def send(status: int, payload: Any) -> None:
            if reply:
                _send(h, status, payload)

        segments = [s for s in parts.path.split("/") if s]
        if len(segments) < 4 or segments[:2] != ["v2", "apps"] or segments[3] != "deployments":
            return send(404, {"id": "not_found", "message": "The resource you requested could not be found."})
        app_id = segments[2]
        with self._lock:
            deps = self.apps.get(app_id)
            if deps is None:
                return send(
                    404, {"id": "not_found", "message": "The resource you requested could not be found."}
                )
            if len(segments) == 4 and method == "GET":
                page = int(parse_qs(parts.query).get("page", ["1"])[0])
                per_page = int(parse_qs(parts.query).get("per_page", ["20"])[0])
                newest_first = list(reversed(deps))
                chunk = newest_first[(page - 1) * per_page : page * per_page]
                return send(200, {"deployments": chunk, "links": {}, "meta": {"total": len(deps)}})
            if len(segments) == 4 and method == "POST":
                dep = {
                    "id": str(uuid.uuid4()),
                    "cause": "manual",
                    "phase": "PENDING_DEPLOY",
                    "progress": {"pending_steps": 1, "total_steps": 1, "steps": []},
                    "jobs": [{"name": "runner"}],
                    "force_build": bool((body or {}).get("force_build")) if isinstance(body, dict) else False,
                    "created_at": _now(),
                    "updated_at": _now(),
                }
                deps.append(dep)
                return send(200, {"deployment": dep})
            if len(segments) == 5 and method == "GET":
                for dep in deps:
                    if dep["id"] == segments[4]:
                        return send(200, {"deployment": dep})
        return send(404, {"id": "not_found", "message": "The resource you requested could not be found."})


def _send(
    h: BaseHTTPRequestHandler, status: int, payload: Any, headers: dict[str, str] | None = None
) -> None:
    data = json.dumps({**payload, "request_id": str(uuid.uuid4())} if status >= 400 else payload).encode()
    h.send_response(status)
    h.send_header("content-type", "application/json; charset=utf-8")
    h.send_header("content-length", str(len(data)))
    for name, value in (headers or {}).items():
        h.send_header(name, value)
    h.end_headers()
    h.wfile.write(data)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
