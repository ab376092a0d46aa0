"""A fault-injecting HTTP proxy in front of the S3 server, for the fault suite.

Every request is forwarded to the real S3 server (moto on loopback) unless a rule the test added
matches it first.  A rule names the method, a substring of the path (query string included) and
the fault; it answers ``times`` matching requests, in the order the rules were added, then it is
spent.  The faults are the ones a real endpoint and a real network produce:

* ``status(code, body)``: an error answered instead of forwarding (500, 503 SlowDown, 409 …);
* ``reset(fraction)``: forwarded, then the connection is reset (RST) after that fraction of the
  reply's body;
* ``truncate(fraction)``: forwarded, the full Content-Length announced, the connection closed
  cleanly after that fraction of the body;
* ``stall(fraction)``: forwarded, then nothing more after that fraction of the body (``None``: before
  the status line) until the proxy is closed: the client's read timeout has to end it;
* ``lost()``: forwarded, so the write lands, then the connection is closed with no reply at all;
  ``lost(500)`` answers 500 instead (a reply lost between the store and a gateway);
* ``cut_headers()``: forwarded, then only part of the reply's headers, cut inside a header's name.

Nothing here sleeps: a stalled handler waits on an event that ``close()`` sets.  ``seen`` lists
``(method, path, what)`` for every request, ``what`` being the status forwarded or the fault.
"""

from __future__ import annotations

import http.client
import http.server
import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlparse

SLOWDOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)
INTERNAL = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>InternalError</Code>'
    b"<Message>We encountered an internal error. Please try again.</Message></Error>"
)
CONFLICT = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>ConditionalRequestConflict</Code>'
    b"<Message>A conflicting operation is in progress.</Message></Error>"
)
NOSUCHKEY = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>NoSuchKey</Code>'
    b"<Message>The specified key does not exist.</Message></Error>"
)


@dataclass
class Fault:
    """What a rule does to a request it matches (build one with the functions below)."""

    kind: str  # status | reset | truncate | stall | lost | cut_headers
    status: int = 0
    body: bytes = b""
    fraction: float | None = 0.5


def status(code: int, body: bytes = b"") -> Fault:
    return Fault("status", status=code, body=body or (SLOWDOWN if code == 503 else INTERNAL))


def slowdown() -> Fault:
    return status(503, SLOWDOWN)


def reset(fraction: float = 0.5) -> Fault:
    return Fault("reset", fraction=fraction)


def truncate(fraction: float = 0.5) -> Fault:
    return Fault("truncate", fraction=fraction)


def stall(fraction: float | None = None) -> Fault:
    return Fault("stall", fraction=fraction)


def lost(code: int = 0) -> Fault:
    return Fault("lost", status=code)


def cut_headers() -> Fault:
    return Fault("cut_headers")


@dataclass
class Rule:
    method: str  # an HTTP method, or "*"
    match: str  # a substring of the request's path and query
    fault: Fault
    times: int = 1

    def matches(self, method: str, path: str) -> bool:
        return self.times > 0 and self.method in ("*", method) and self.match in path


class FaultProxy:
    """The proxy; ``url`` is its endpoint (give it as DO_SPACES_ENDPOINT)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = urlparse(upstream)
        self.rules: list[Rule] = []
        self.ignore_range = False  # forward without the Range header: the whole object comes back
        self.seen: list[tuple[str, str, str]] = []
        self._lock = threading.Lock()
        self._released = threading.Event()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a: object) -> None:
                pass

            def _any(self) -> None:
                proxy.handle(self)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()

    # -- what the tests call -------------------------------------------------------------------------
    def inject(self, method: str, match: str, fault: Fault, times: int = 1) -> None:
        with self._lock:
            self.rules.append(Rule(method, match, fault, times))

    def pending(self) -> list[Rule]:
        """The rules not spent yet (a test asserts its faults were met)."""
        with self._lock:
            return [r for r in self.rules if r.times > 0]

    def faults_seen(self) -> list[tuple[str, str, str]]:
        return [s for s in self.seen if not s[2].isdigit()]

    def close(self) -> None:
        self._released.set()
        self.server.shutdown()
        self.server.server_close()

    # -- the handler ---------------------------------------------------------------------------------
    def _take(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for rule in self.rules:
                if rule.matches(method, path):
                    rule.times -= 1
                    return rule.fault
        return None

    def _forward(self, h: http.server.BaseHTTPRequestHandler, body: bytes) -> http.client.HTTPResponse:
        conn = http.client.HTTPConnection(
            self.upstream.hostname or "127.0.0.1", self.upstream.port, timeout=30
        )
        dropped = {"host", "range"} if self.ignore_range else {"host"}
        headers = {k: v for k, v in h.headers.items() if k.lower() not in dropped}
        headers["Host"] = self.upstream.netloc
        conn.request(h.command, h.path, body=body, headers=headers)
        return conn.getresponse()

    def handle(self, h: http.server.BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("content-length") or 0)
        body = h.rfile.read(length) if length else b""
        fault = self._take(h.command, h.path)
        if fault is not None and fault.kind == "status":
            self.seen.append((h.command, h.path, f"status {fault.status}"))
            h.send_response(fault.status)
            h.send_header("content-type", "application/xml")
            h.send_header("content-length", str(len(fault.body)))
            h.end_headers()
            h.wfile.write(fault.body)
            return
        if fault is not None and fault.kind == "stall" and fault.fraction is None:
            self.seen.append((h.command, h.path, "stall"))
            self._released.wait(120)
            h.close_connection = True
            return
        resp = self._forward(h, body)
        data = resp.read()
        if fault is None:
            self.seen.append((h.command, h.path, str(resp.status)))
        else:
            self.seen.append((h.command, h.path, fault.kind))
        if fault is not None and fault.kind == "lost":
            if fault.status:
                h.send_response(fault.status)
                h.send_header("content-length", "0")
                h.end_headers()
            else:
                _reset(h)
            return
        head = f"HTTP/1.1 {resp.status} {resp.reason}\r\n".encode()
        for k, v in resp.getheaders():
            if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                head += f"{k}: {v}\r\n".encode()
        if h.command == "HEAD":
            head += f"content-length: {resp.getheader('content-length') or 0}\r\n".encode()
        else:
            head += f"content-length: {len(data)}\r\n".encode()
        head += b"connection: close\r\n\r\n"
        h.close_connection = True
        if fault is not None and fault.kind == "cut_headers":
            # The status line and part of the headers, cut inside a header's name, then the end.
            lines = head.split(b"\r\n")
            h.wfile.write(b"\r\n".join(lines[:2]) + b"\r\nx-amz-request")
            _reset(h, linger=False)
            return
        h.wfile.write(head)
        if h.command == "HEAD":
            return
        if fault is None:
            h.wfile.write(data)
            return
        assert fault.fraction is not None
        h.wfile.write(data[: int(len(data) * fault.fraction)])
        if fault.kind == "reset":
            _reset(h)
        elif fault.kind == "truncate":
            _reset(h, linger=False)
        elif fault.kind == "stall":
            self._released.wait(120)


def _reset(h: http.server.BaseHTTPRequestHandler, *, linger: bool = True) -> None:
    """Close the client's connection now: with an RST (``linger``), or cleanly."""
    sock: socket.socket = h.connection
    h.close_connection = True
    try:
        h.wfile.flush()
        if linger:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        else:
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()
    except OSError:
        pass


@contextmanager
def fault_proxy(upstream: str) -> Iterator[FaultProxy]:
    p = FaultProxy(upstream)
    try:
        yield p
    finally:
        p.close()
