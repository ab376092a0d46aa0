"""The storage adapter against the real S3 server, with a fault-injecting proxy in front of it for
the Spaces behaviours moto does not have (503 SlowDown, NoSuchKey on an empty listing)."""

from __future__ import annotations

import http.client
import http.server
import os
import threading
from collections.abc import Iterator
from urllib.parse import urlparse

import pytest

from coldcopy.config import load_settings
from coldcopy.core.manifest import StoredObject
from coldcopy.errors import ConflictError, IntegrityError, StorageError
from coldcopy.storage.s3 import S3Store, make_client, open_store
from coldcopy.storage.store import ObjectStore
from coldcopy.storage.volumes import VolumeWriter, read_volumes

SLOWDOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)
CONFLICT = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>ConditionalRequestConflict</Code>'
    b"<Message>A conflicting operation is in progress.</Message></Error>"
)
NOSUCHKEY = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>NoSuchKey</Code>'
    b"<Message>The specified key does not exist.</Message></Error>"
)


class FaultProxy:
    """Forwards to the S3 server; ``faults`` is a list of (method, path-substring, status, body) consumed
    in order, each answering one matching request instead of forwarding it.  ``lost`` (method,
    path-substring) entries forward one matching request and then answer 500 anyway: a reply lost
    on the way back, after the write landed.  ``cut`` (method, path-substring, fraction) entries
    forward one matching request and send only that fraction of the reply's body before closing
    the connection."""

    def __init__(self, upstream: str) -> None:
        self.upstream = urlparse(upstream)
        self.faults: list[tuple[str, str, int, bytes]] = []
        self.lost: list[tuple[str, str]] = []
        self.cut: list[tuple[str, str, float]] = []
        self.ignore_range = False  # forward without the Range header: the whole object comes back
        self.seen: list[tuple[str, str, int]] = []
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a: object) -> None:
                pass

            def _any(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                for i, (method, part, status, payload) in enumerate(proxy.faults):
                    if method == self.command and part in self.path:
                        del proxy.faults[i]
                        proxy.seen.append((self.command, self.path, status))
                        self.send_response(status)
                        self.send_header("content-type", "application/xml")
                        self.send_header("content-length", str(len(payload)))
                        self.end_headers()
                        self.wfile.write(payload)
                        return
                conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=30)
                dropped = {"host", "range"} if proxy.ignore_range else {"host"}
                headers = {k: v for k, v in self.headers.items() if k.lower() not in dropped}
                headers["Host"] = proxy.upstream.netloc
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                proxy.seen.append((self.command, self.path, resp.status))
                for i, (method, part) in enumerate(proxy.lost):
                    if method == self.command and part in self.path:
                        del proxy.lost[i]
                        self.send_response(500)
                        self.send_header("content-length", "0")
                        self.end_headers()
                        return
                cut = next((c for c in proxy.cut if c[0] == self.command and c[1] in self.path), None)
                if cut is not None:
                    proxy.cut.remove(cut)
                    data = data[: int(len(data) * cut[2])]
                    self.close_connection = True
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                length = resp.getheader("content-length") if self.command == "HEAD" or cut else None
                self.send_header("content-length", length or str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        ).start()


@pytest.fixture
def proxy(s3_server) -> Iterator[FaultProxy]:  # type: ignore[no-untyped-def]
    p = FaultProxy(s3_server.endpoint_url)
    yield p
    p.server.shutdown()


def _storage(env: dict[str, str], endpoint: str | None = None) -> ObjectStore:
    return open_store(
        load_settings({**env, **({"DO_SPACES_ENDPOINT": endpoint} if endpoint else {})}, need=("storage",))
    )


def _impatient(env: dict[str, str], endpoint: str) -> S3Store:
    """The store of ``_storage`` with a client that retries once."""
    s = load_settings({**env, "DO_SPACES_ENDPOINT": endpoint}, need=("storage",))
    client = make_client(s, attempts=2)
    return S3Store(s.spaces_bucket, s.prefix, client)


def test_create_only_and_round_trip(coldcopy_env) -> None:  # type: ignore[no-untyped-def]
    st = _storage(coldcopy_env)
    st.put_json("records/a.json", {"x": 1}, create_only=True)
    with pytest.raises(ConflictError):
        st.put_json("records/a.json", {"x": 2}, create_only=True)
    assert st.get_json("records/a.json") == {"x": 1}
    assert [o.key for o in st.list("records/")] == ["records/a.json"]


def test_retries_slowdown_and_5xx(proxy, coldcopy_env) -> None:  # type: ignore[no-untyped-def]
    st = _storage(coldcopy_env, proxy.url)
    proxy.faults = [
        ("PUT", "/retry.json", 503, SLOWDOWN),
        ("PUT", "/retry.json", 500, b""),
        ("GET", "/retry.json", 503, SLOWDOWN),
    ]
    st.put_json("retry.json", {"ok": True})
    assert st.get_json("retry.json") == {"ok": True}
    statuses = [s for m, p, s in proxy.seen if "retry.json" in p]
    assert statuses == [503, 500, 200, 503, 200]


def test_volumes_retry_and_are_removed_on_failure(proxy, coldcopy_env) -> None:  # type: ignore[no-untyped-def]
    st = _storage(coldcopy_env, proxy.url)
    mb = 1 << 20
    proxy.faults = [("PUT", "/big/ok.000001", 503, SLOWDOWN)]
    proxy.lost = [("PUT", "/big/ok.000002")]  # stored, but the reply is lost: the retry answers 412
    w = VolumeWriter(st, "big/ok", volume_size=mb, concurrency=2)
    for i in range(7):
        w.write(bytes([i]) * (mb // 2))
    sizes = w.complete()
    assert sizes == [mb] * 3 + [mb // 2]
    stored = b"".join(st.get_bytes(f"big/ok.{i:06d}") for i in range(4))
    assert stored == b"".join(bytes([i]) * (mb // 2) for i in range(7))
    assert [s for m, p, s in proxy.seen if "/big/ok.000002" in p and m == "PUT"] == [200, 412]
    # A volume that keeps failing: the volumes already stored are deleted again.  (A client that gives
    # up after two attempts: what is tested is the writer, not botocore's backoff.)
    proxy.faults = [("PUT", "/big/bad.000001", 500, b"")] * 10
    st = _impatient(coldcopy_env, proxy.url)
    w = VolumeWriter(st, "big/bad", volume_size=mb, concurrency=1)
    with pytest.raises(StorageError):
        for _ in range(6):
            w.write(b"y" * (mb // 2))
        w.complete()
    assert st.head("big/bad.000000") is None and not list(st.list("big/bad"))


def test_a_conflicting_write_still_in_progress_is_waited_for(proxy, coldcopy_env) -> None:  # type: ignore[no-untyped-def]
    """409 ConditionalRequestConflict: a first attempt may still be landing; nothing to see yet."""
    st = _storage(coldcopy_env, proxy.url)
    proxy.faults = [("PUT", "/busy/data.000000", 409, CONFLICT)]
    w = VolumeWriter(st, "busy/data", volume_size=1 << 20, concurrency=1)
    w.write(b"ours")
    assert w.complete() == [4]
    assert st.get_bytes("busy/data.000000") == b"ours"
    assert [s for m, p, s in proxy.seen if m == "PUT"] == [409, 200]


def test_reading_volumes_resumes_a_broken_connection(proxy, coldcopy_env) -> None:  # type: ignore[no-untyped-def]
    st = _storage(coldcopy_env, proxy.url)
    body = os.urandom(3 << 20)
    w = VolumeWriter(st, "resume/data", volume_size=1 << 20, concurrency=2)
    for i in range(0, len(body), 256 << 10):
        w.write(body[i : i + (256 << 10)])
    sizes = w.complete()
    obj = StoredObject("resume/data", len(body), "", 0, "", tuple(sizes))
    proxy.cut = [("GET", "/resume/data.000001", 0.5)]
    assert b"".join(read_volumes(st, obj, 64 << 10)) == body
    ranged = [p for m, p, s in proxy.seen if m == "GET" and "/resume/data.000001" in p]
    assert len(ranged) == 2, proxy.seen  # the broken read, then the rest of it
    # Broken again and again, but moving on each time: every stall gets its attempts, and it ends.
    proxy.cut = [("GET", "/resume/data.000002", 0.5)] * 6
    assert b"".join(read_volumes(st, obj, 64 << 10)) == body
    # Broken before any byte, every time: a clear storage error, not a silently short stream.
    proxy.cut = [("GET", "/resume/data.000002", 0.0)] * 10
    with pytest.raises(StorageError, match="reading resume/data.000002 failed at byte"):
        b"".join(read_volumes(st, obj, 64 << 10))
    # A server that ignores Range would send the volume from its start again: refused, not repeated.
    proxy.cut, proxy.ignore_range = [("GET", "/resume/data.000000", 0.5)], True
    with pytest.raises(StorageError, match="ignored a ranged read of resume/data.000000"):
        b"".join(read_volumes(st, obj, 64 << 10))


def test_a_volume_with_other_content_is_not_taken_for_ours(coldcopy_env) -> None:  # type: ignore[no-untyped-def]
    st = _storage(coldcopy_env)
    st.put_bytes("clash/data.000000", b"someone else's bytes")
    w = VolumeWriter(st, "clash/data", volume_size=1 << 20, concurrency=1)
    w.write(b"ours")
    with pytest.raises(IntegrityError, match="already exists with other content"):
        w.complete()
    assert st.get_bytes("clash/data.000000") == b"someone else's bytes"  # not ours to delete


def test_empty_listing_answered_with_nosuchkey(proxy, coldcopy_env) -> None:  # type: ignore[no-untyped-def]
    st = _storage(coldcopy_env, proxy.url)
    proxy.faults = [("GET", "list-type=2", 404, NOSUCHKEY)]
    assert list(st.list("nothing-here/")) == []


def test_bad_credentials_and_missing_bucket_are_clear(coldcopy_env) -> None:  # type: ignore[no-untyped-def]
    st = _storage({**coldcopy_env, "DO_SPACES_BUCKET": "no-such-bucket-here"})
    with pytest.raises(StorageError) as err:
        st.put_json("x.json", {})
    assert "does not exist" in str(err.value) and "DO_SPACES_BUCKET" in str(err.value)
    st = _storage({**coldcopy_env, "DO_SPACES_ENDPOINT": "http://127.0.0.1:9"})
    with pytest.raises(StorageError) as err:
        list(st.list("x/"))
    assert "DO_SPACES_ENDPOINT" in str(err.value)
