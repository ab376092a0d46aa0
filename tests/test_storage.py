"""The storage adapter against the real S3 server, with a fault-injecting proxy in front of it for
the Spaces behaviours moto does not have (503 SlowDown, NoSuchKey on an empty listing)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pytest

from coldcopy.config import load_settings
from coldcopy.core.manifest import StoredObject
from coldcopy.errors import ConflictError, IntegrityError, StorageError
from coldcopy.storage.s3 import READ_ATTEMPTS, S3Store, make_client, open_store
from coldcopy.storage.store import ObjectStore
from coldcopy.storage.volumes import VolumeWriter, read_volumes
from s3_faults import CONFLICT, NOSUCHKEY, FaultProxy, fault_proxy, lost, reset, stall, status, truncate


@pytest.fixture
def proxy(s3_server) -> Iterator[FaultProxy]:  # type: ignore[no-untyped-def]
    with fault_proxy(s3_server.endpoint_url) as p:
        yield p


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
    proxy.inject("PUT", "/retry.json", status(503))
    proxy.inject("PUT", "/retry.json", status(500))
    proxy.inject("GET", "/retry.json", status(503))
    st.put_json("retry.json", {"ok": True})
    assert st.get_json("retry.json") == {"ok": True}
    statuses = [s for m, p, s in proxy.seen if "retry.json" in p]
    assert statuses == ["status 503", "status 500", "200", "status 503", "200"]


def test_volumes_retry_and_are_removed_on_failure(proxy, coldcopy_env) -> None:  # type: ignore[no-untyped-def]
    st = _storage(coldcopy_env, proxy.url)
    mb = 1 << 20
    proxy.inject("PUT", "/big/ok.000001", status(503))
    proxy.inject("PUT", "/big/ok.000002", lost(500))  # stored, but the reply is lost: the retry answers 412
    w = VolumeWriter(st, "big/ok", volume_size=mb, concurrency=2)
    for i in range(7):
        w.write(bytes([i]) * (mb // 2))
    sizes = w.complete()
    assert sizes == [mb] * 3 + [mb // 2]
    stored = b"".join(st.get_bytes(f"big/ok.{i:06d}") for i in range(4))
    assert stored == b"".join(bytes([i]) * (mb // 2) for i in range(7))
    assert [s for m, p, s in proxy.seen if "/big/ok.000002" in p and m == "PUT"] == ["lost", "412"]
    # A volume that keeps failing: the volumes already stored are deleted again.  (A client that gives
    # up after two attempts: what is tested is the writer, not botocore's backoff.)
    proxy.inject("PUT", "/big/bad.000001", status(500), times=10)
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
    proxy.inject("PUT", "/busy/data.000000", status(409, CONFLICT))
    w = VolumeWriter(st, "busy/data", volume_size=1 << 20, concurrency=1)
    w.write(b"ours")
    assert w.complete() == [4]
    assert st.get_bytes("busy/data.000000") == b"ours"
    assert [s for m, p, s in proxy.seen if m == "PUT"] == ["status 409", "200"]


def test_reading_volumes_resumes_a_broken_connection(proxy, coldcopy_env) -> None:  # type: ignore[no-untyped-def]
    st = _storage(coldcopy_env, proxy.url)
    body = os.urandom(3 << 20)
    w = VolumeWriter(st, "resume/data", volume_size=1 << 20, concurrency=2)
    for i in range(0, len(body), 256 << 10):
        w.write(body[i : i + (256 << 10)])
    sizes = w.complete()
    obj = StoredObject("resume/data", len(body), "", 0, "", tuple(sizes))
    proxy.inject("GET", "/resume/data.000001", truncate(0.5))
    assert b"".join(read_volumes(st, obj, 64 << 10)) == body
    ranged = [p for m, p, s in proxy.seen if m == "GET" and "/resume/data.000001" in p]
    assert len(ranged) == 2, proxy.seen  # the broken read, then the rest of it
    # Broken again and again, but moving on each time: every stall gets its attempts, and it ends.
    proxy.inject("GET", "/resume/data.000002", truncate(0.5), times=6)
    assert b"".join(read_volumes(st, obj, 64 << 10)) == body
    # Broken before any byte, every time: a clear storage error, not a silently short stream.
    proxy.inject("GET", "/resume/data.000002", truncate(0.0), times=10)
    with pytest.raises(StorageError, match="reading resume/data.000002 failed at byte"):
        b"".join(read_volumes(st, obj, 64 << 10))
    # A server that ignores Range would send the volume from its start again: refused, not repeated.
    proxy.rules.clear()
    proxy.inject("GET", "/resume/data.000000", truncate(0.5))
    proxy.ignore_range = True
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
    proxy.inject("GET", "list-type=2", status(404, NOSUCHKEY))
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


def test_small_reads_are_read_again_whole(proxy, coldcopy_env) -> None:  # type: ignore[no-untyped-def]
    """A manifest, the catalog, a journal record or a listing page whose reply breaks off, is cut
    short or stalls is read again from the start: botocore's retries end when the headers arrive."""
    st = _storage({**coldcopy_env, "COLDCOPY_STORAGE_TIMEOUT_SECONDS": "1"}, proxy.url)
    record = {"pad": "x" * 4000}
    for i in range(3):
        st.put_json(f"small/{i}.json", {**record, "i": i})
    for fault in (truncate(0.5), truncate(0.0), reset(0.3), stall(0.5)):
        proxy.inject("GET", "/small/1.json", fault)
        assert st.get_json("small/1.json")["i"] == 1
        proxy.inject("GET", "/small/2.json", fault)
        got = st.get_bytes_if_changed("small/2.json", None)
        assert got is not None and json.loads(got[0])["i"] == 2
        proxy.inject("GET", "list-type=2", fault)
        assert [o.key for o in st.list("small/")] == [f"small/{i}.json" for i in range(3)]
    assert not proxy.pending()
    assert [s for m, p, s in proxy.seen if m == "GET" and "/small/1.json" in p] == [
        "truncate", "200", "truncate", "200", "reset", "200", "stall", "200"
    ]  # fmt: skip
    # Broken every time: a storage error (exit 6) after a bounded number of attempts, never a hang.
    proxy.inject("GET", "/small/0.json", truncate(0.5), times=READ_ATTEMPTS)
    with pytest.raises(StorageError, match=f"broke off {READ_ATTEMPTS} times"):
        st.get_json("small/0.json")
    assert not proxy.pending()


def test_a_lost_reply_to_a_create_only_put_that_landed_is_ours(proxy, coldcopy_env) -> None:  # type: ignore[no-untyped-def]
    """The PUT landed, its reply was lost, botocore sent it again and got 412: the object is ours."""
    st = _storage(coldcopy_env, proxy.url)
    proxy.inject("PUT", "/claims/a.json", lost())  # the connection dropped without a reply
    st.put_json("claims/a.json", {"who": "us"}, create_only=True)
    proxy.inject("PUT", "/claims/b.json", lost(500))  # a gateway answered 500 after the store took it
    st.put_json("claims/b.json", {"who": "us"}, create_only=True)
    assert [s for m, p, s in proxy.seen if m == "PUT"] == ["lost", "412", "lost", "412"]
    assert st.get_json("claims/a.json") == st.get_json("claims/b.json") == {"who": "us"}
    # Someone else's object under the key, even after a retry: still a conflict.
    st.put_json("claims/c.json", {"who": "them"})
    proxy.inject("PUT", "/claims/c.json", status(500))
    with pytest.raises(ConflictError):
        st.put_json("claims/c.json", {"who": "us"}, create_only=True)
    # The same bytes already there, but no retry of ours: a conflict (a claim is not shared).
    with pytest.raises(ConflictError):
        st.put_json("claims/a.json", {"who": "us"}, create_only=True)
