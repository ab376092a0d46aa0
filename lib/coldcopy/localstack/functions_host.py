"""``coldcopy serve``: host the project's web functions locally, the way DigitalOcean calls them.

Every web function of ``project.yml`` (``web`` not false) is answered at
``/api/v1/web/<namespace>/<package>/<function>[/rest]`` (any namespace) and the monitor's
functions also at their short paths (``/status``, ``/backup/<name>``, ``/`` …; the table is
``coldcopy.api.protocol.ROUTES``).  For each request we build DigitalOcean's event — ``http`` with the
method, lower-cased headers and the path after the function; query parameters and JSON or form
body fields merged as top-level keys — import ``packages/<pkg>/<fn>/__main__.py`` and call its
``main(event, context)``, then write ``statusCode``/``headers``/``body`` back.  So the code that
runs is exactly the code that is deployed.

Where the platform itself would refuse a request (a body over 1 MB, a parameter named ``http`` or
``__ow_*``, an unknown method) we answer a JSON error as well.  A body that cannot be merged
(not a JSON object, not valid JSON) is handed to the function as ``http.body``, so the function's
own 400 is what the caller sees.

Without a ``project.yml`` (an installed package, no repository at hand) we fall back to the same
routing table and call ``coldcopy.functions.web.handle`` directly: the same answers, without the
``__main__.py`` hop.
"""

from __future__ import annotations

import base64
import importlib.util
import inspect
import json
import logging
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from coldcopy.api.protocol import BY_FUNCTION, JSON_TYPE, PACKAGE, error_response, resolve_short_path
from coldcopy.config import Settings
from coldcopy.errors import ColdCopyError
from coldcopy.functions.web import handle, use_settings

log = logging.getLogger(__name__)

PLATFORM_MAX_BODY = 1024 * 1024  # DigitalOcean Functions: 1 MB request
_DRAIN_MAX = 16 * 1024 * 1024
DEFAULT_TIMEOUT_MS = 30_000
NAMESPACE = "fn-local"
_API_PREFIX = "/api/v1/web/"
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "upgrade", "te", "trailer"}
_TEXT_TYPES = ("text/", "application/json", "application/xml", "application/javascript", "+json", "+xml")

Main = Callable[..., Any]


# -- the functions ----------------------------------------------------------------------------------
@dataclass
class Function:
    package: str
    name: str
    source: Path | None  # packages/<pkg>/<fn>/__main__.py (or <fn>.py); None: the built-in table
    raw: bool = False  # web: raw — body and query string are passed unparsed
    timeout_ms: int = DEFAULT_TIMEOUT_MS
    _main: Main | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def main(self) -> Main:
        with self._lock:
            if self._main is None:
                self._main = self._load()
            return self._main

    def _load(self) -> Main:
        if self.source is None:
            name = self.name
            return lambda event, context=None: handle(name, event, context)
        mod_name = f"_coldcopy_fn_{self.package}_{self.name}".replace("-", "_")
        spec = importlib.util.spec_from_file_location(mod_name, self.source)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load {self.source}")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        main = getattr(module, "main", None)
        if not callable(main):
            raise ImportError(f"{self.source} has no main()")
        return main  # type: ignore[no-any-return]


def find_project(start: Path | None = None) -> Path | None:
    """The folder holding project.yml: ``start`` if given, else this checkout's root, else the cwd."""
    candidates = [start] if start else [Path(__file__).resolve().parents[3], Path.cwd()]
    for folder in candidates:
        if folder is not None and (folder / "project.yml").is_file():
            return folder
    return None


def load_functions(project: Path | None) -> dict[tuple[str, str], Function]:
    """(package, function) → Function for every web function of project.yml, or the built-in table."""
    builtin = {(PACKAGE, r.function): Function(PACKAGE, r.function, None) for r in BY_FUNCTION.values()}
    if project is None:
        return builtin
    try:
        import yaml  # only the local host needs it (moto[server] brings it; see pyproject's extras)
    except ImportError:
        log.warning("PyYAML is not installed: serving the built-in routing table instead of project.yml")
        return builtin
    try:
        spec = yaml.safe_load((project / "project.yml").read_text()) or {}
        if not isinstance(spec, dict):
            raise ValueError("the top level is not a mapping")
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise ColdCopyError(
            f"{project / 'project.yml'} cannot be read: {str(exc)[:200]}",
            "fix the file (the deployer reads the same one)",
        ) from None
    out: dict[tuple[str, str], Function] = {}
    for pkg in spec.get("packages") or []:
        for fn in (pkg.get("functions") or []) if isinstance(pkg, dict) else []:
            function = _web_function(project, pkg, fn)
            if function is not None:
                out[(function.package, function.name)] = function
    return out


def _web_function(project: Path, pkg: dict[str, Any], fn: Any) -> Function | None:
    """One entry of project.yml as a Function; None if it is not a web function (or has no code)."""
    named = isinstance(fn, dict) and isinstance(pkg.get("name"), str) and isinstance(fn.get("name"), str)
    if not named:
        log.warning("project.yml: skipped a package or function without a name")
        return None
    web = fn.get("web", True)  # the deployer's default is a public web function
    if web is False or str(web).lower() == "false":
        return None
    folder = project / "packages" / pkg["name"]
    source = folder / fn["name"] / "__main__.py"
    if not source.is_file():
        source = folder / f"{fn['name']}.py"
    if not source.is_file():
        log.warning("project.yml lists %s/%s but its code is missing; skipped", pkg["name"], fn["name"])
        return None
    try:
        timeout = int((fn.get("limits") or {}).get("timeout") or DEFAULT_TIMEOUT_MS)
    except (TypeError, ValueError, AttributeError):
        timeout = DEFAULT_TIMEOUT_MS
    return Function(pkg["name"], fn["name"], source, raw=str(web).lower() == "raw", timeout_ms=timeout)


# -- the context object ---------------------------------------------------------------------------
@dataclass(frozen=True)
class FunctionContext:
    """What DigitalOcean passes as ``context`` (the attributes its docs list)."""

    activation_id: str
    api_host: str
    api_key: str
    deadline: int  # ms since the epoch
    function_name: str
    function_version: str
    namespace: str
    request_id: str

    def get_remaining_time_in_millis(self) -> int:
        return max(0, self.deadline - int(time.time() * 1000))


def _call(main: Main, event: dict[str, Any], context: FunctionContext) -> Any:
    try:
        params = inspect.signature(main).parameters
        takes_context = len(params) >= 2 or any(p.kind is p.VAR_POSITIONAL for p in params.values())
    except (TypeError, ValueError):
        takes_context = True
    return main(event, context) if takes_context else main(event)


# -- building the event ---------------------------------------------------------------------------
class RequestRefused(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _reserved(name: str) -> bool:
    return name == "http" or name.startswith("__ow_")


def build_event(
    method: str, rest: str, query: str, headers: Mapping[str, str], body: bytes, *, raw: bool
) -> dict[str, Any]:
    """DigitalOcean's web event for one request (``raw``: ``web: raw``, nothing merged)."""
    http: dict[str, Any] = {"method": method, "headers": dict(headers), "path": rest}
    if raw:
        http["queryString"] = query
        http.update(_body_field(body))
        return {"http": http}
    params: dict[str, Any] = {}
    for k, v in parse_qsl(query, keep_blank_values=True):
        params[k] = v
    ctype = headers.get("content-type", "").split(";")[0].strip().lower()
    merged: dict[str, Any] | None = None
    if body.strip():
        if ctype == "application/x-www-form-urlencoded":
            try:
                merged = dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=True))
            except (UnicodeDecodeError, ValueError):
                merged = None
        elif ctype in ("", "application/json") or ctype.endswith("+json"):
            try:
                value = json.loads(body)
            except (ValueError, RecursionError):
                value = None
            merged = value if isinstance(value, dict) else None
        if merged is None:
            http.update(_body_field(body))  # the function answers 400 for what it cannot read
        else:
            params.update(merged)
    bad = sorted(k for k in params if _reserved(k))
    if bad:
        raise RequestRefused(
            400,
            "reserved_parameter",
            f"parameter names 'http' and '__ow_*' are reserved (got {bad[0][:40]!r})",
        )
    return {**params, "http": http}


def _body_field(body: bytes) -> dict[str, Any]:
    if not body:
        return {"body": ""}
    try:
        return {"body": body.decode("utf-8"), "isBase64Encoded": False}
    except UnicodeDecodeError:
        return {"body": base64.b64encode(body).decode(), "isBase64Encoded": True}


def _response_bytes(result: Any) -> tuple[int, dict[str, str], bytes]:
    """The function's result as the platform turns it into an HTTP response."""
    if not isinstance(result, Mapping):
        raise TypeError("the function did not return a dictionary")
    status = int(result.get("statusCode", 200))
    headers = {
        str(k): str(v) for k, v in (result.get("headers") or {}).items() if str(k).lower() not in _HOP_BY_HOP
    }
    body = result.get("body")
    ctype = next((v for k, v in headers.items() if k.lower() == "content-type"), "")
    if isinstance(body, (dict, list)):
        data = json.dumps(body).encode()
        if not ctype:
            headers["Content-Type"] = JSON_TYPE
    elif body is None:
        data = b""
    elif isinstance(body, str):
        binary = ctype and not any(t in ctype.lower() for t in _TEXT_TYPES)
        data = base64.b64decode(body) if binary else body.encode()
    else:
        data = str(body).encode()
    return status, headers, data


# -- the HTTP server ------------------------------------------------------------------------------
class LocalHost(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], functions: dict[tuple[str, str], Function]) -> None:
        self.functions = functions
        super().__init__(address, _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    def resolve(self, path: str) -> tuple[Function, str] | None:
        """The function a URL path names, and the path after it."""
        if path.startswith(_API_PREFIX):
            parts = path[len(_API_PREFIX) :].split("/", 3)  # namespace, package, function, rest
            if len(parts) >= 3:
                fn = self.functions.get((parts[1], parts[2]))
                if fn is not None:
                    return fn, ("/" + parts[3]) if len(parts) == 4 and parts[3] else ""
            return None
        short = resolve_short_path(path)
        if short is None:
            return None
        fn = self.functions.get((PACKAGE, short[0]))
        return (fn, short[1]) if fn is not None else None


class _Handler(BaseHTTPRequestHandler):
    server: LocalHost
    protocol_version = "HTTP/1.1"
    server_version = "coldcopy-serve"
    sys_version = ""

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._answer()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = do_GET

    def _answer(self) -> None:
        started = time.monotonic()
        try:
            status, headers, data = self._dispatch()
        except RequestRefused as exc:
            status, headers, data = _error(exc.status, exc.code, exc.message)
        except Exception:  # noqa: BLE001 - the platform answers 502 when a function blows up
            log.exception("%s %s failed", self.command, self.path[:200])
            status, headers, data = _error(502, "function_failed", "the function failed; see the server log")
        self._write(status, headers, data)
        log.debug(
            "%s %s → %d in %.1f ms",
            self.command,
            self.path[:200],
            status,
            (time.monotonic() - started) * 1000,
        )

    def _dispatch(self) -> tuple[int, dict[str, str], bytes]:
        url = urlsplit(self.path)
        body = self._read_body()
        target = self.server.resolve(unquote(url.path))
        if target is None:
            return _error(404, "not_found", "no function answers this path")
        fn, rest = target
        headers = self._event_headers()
        event = build_event(self.command.upper(), rest, url.query, headers, body, raw=fn.raw)
        now_ms = int(time.time() * 1000)
        context = FunctionContext(
            activation_id=uuid.uuid4().hex,
            api_host=self.server.url,
            api_key="",
            deadline=now_ms + fn.timeout_ms,
            function_name=f"/{NAMESPACE}/{fn.package}/{fn.name}",
            function_version="0.0.1",
            namespace=NAMESPACE,
            request_id=headers["x-request-id"],
        )
        return _response_bytes(_call(fn.main(), event, context))

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            raise RequestRefused(411, "length_required", "send the body with a Content-Length")
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self.close_connection = True
            raise RequestRefused(400, "bad_content_length", "Content-Length is not a number") from None
        if length < 0:
            self.close_connection = True
            raise RequestRefused(400, "bad_content_length", "Content-Length is negative")
        if length > PLATFORM_MAX_BODY:
            self.close_connection = True
            if length <= _DRAIN_MAX:  # read it away, so the client sees our answer and not a reset
                left = length
                while left > 0:
                    chunk = self.rfile.read(min(left, 65536))
                    if not chunk:
                        break
                    left -= len(chunk)
            raise RequestRefused(
                413, "body_too_large", f"the request body is larger than {PLATFORM_MAX_BODY} bytes"
            )
        return self.rfile.read(length) if length else b""

    def _event_headers(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for name, value in self.headers.items():
            key = name.lower()
            out[key] = f"{out[key]}, {value}" if key in out else value
        # What DigitalOcean always adds.
        out.setdefault("x-forwarded-for", self.client_address[0])
        out.setdefault("x-forwarded-proto", "http")
        out.setdefault("x-request-id", uuid.uuid4().hex)
        for name in ("accept", "accept-encoding", "content-type", "user-agent"):
            out.setdefault(name, "")
        return out

    wbufsize = 1 << 16  # headers and body leave in one send, not two ...

    def setup(self) -> None:
        super().setup()
        # ... and without Nagle's algorithm, so nothing waits for the client's delayed ACK
        # (a 40 ms stall per keep-alive request otherwise).
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _write(self, status: int, headers: dict[str, str], data: bytes) -> None:
        try:
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD" and status not in (204, 304):
                self.wfile.write(data)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own errors (bad request line, unknown method, headers too long) as JSON."""
        if code == HTTPStatus.NOT_IMPLEMENTED:  # an HTTP method no function accepts
            code, message = 405, "this HTTP method is not accepted"
        try:
            phrase = HTTPStatus(code).phrase
        except ValueError:
            phrase = "error"
        self.close_connection = True
        self._write(*_error(code, phrase.lower().replace(" ", "_"), message or phrase))

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        log.debug("%s " + format, self.client_address[0], *args)


def _error(status: int, code: str, message: str) -> tuple[int, dict[str, str], bytes]:
    return _response_bytes(error_response(status, code, message))


# -- entry points ---------------------------------------------------------------------------------
def make_server(
    settings: Settings | None = None,
    port: int = 8090,
    host: str = "127.0.0.1",
    *,
    project_dir: Path | None = None,
) -> LocalHost:
    """Bind (``port=0`` picks a free port) without serving yet; call ``serve_forever()``."""
    if settings is not None:
        use_settings(settings)
    project = find_project(project_dir)
    functions = load_functions(project)
    server = LocalHost((host, port), functions)
    where = f"{project / 'project.yml'}" if project else "the built-in routing table (no project.yml found)"
    log.info("serving %d web functions from %s at %s", len(functions), where, server.url)
    return server


def serve(
    settings: Settings | None = None,
    port: int = 8090,
    host: str = "127.0.0.1",
    *,
    project_dir: Path | None = None,
) -> None:
    """Serve until Ctrl-C.  ``settings`` None: the functions read the environment, as deployed."""
    server = make_server(settings, port, host, project_dir=project_dir)
    print(
        f"ColdCopy functions on {server.url}  (e.g. {server.url}/health, "
        f"{server.url}{_API_PREFIX}{NAMESPACE}/{PACKAGE}/status); Ctrl-C stops",
        file=sys.stderr,
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
