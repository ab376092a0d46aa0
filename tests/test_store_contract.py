"""One contract for every ``ObjectStore`` (coldcopy.storage.store): the in-memory store, and the S3
adapter against the real S3 server (moto over HTTP).  A behaviour ColdCopy relies on is written here
once; an implementation that differs fails here, not in some later test that happens to use it."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cli_helpers import run_cli
from coldcopy.config import load_settings
from coldcopy.errors import ConflictError, NotFoundError, StorageError
from coldcopy.localstack.s3server import S3Server
from coldcopy.loopback import free_port
from coldcopy.storage.memory import MemoryStore
from coldcopy.storage.s3 import S3Store, make_client, open_store
from coldcopy.storage.store import ObjectStore

T0 = datetime(2026, 11, 24, 2, 0, tzinfo=UTC)


@pytest.fixture(params=["memory", "s3"])
def store(request: pytest.FixtureRequest) -> Iterator[ObjectStore]:
    if request.param == "memory":
        yield MemoryStore("contract", "coldcopy/contract/", clock=lambda: T0)
        return
    s3: S3Server = request.getfixturevalue("s3_server")
    bucket: str = request.getfixturevalue("bucket")
    yield open_store(
        load_settings({**s3.spaces_env(bucket), "COLDCOPY_CLUSTER": "contract"}, env_file=Path(os.devnull))
    )


def test_keys_live_under_the_prefix_and_cannot_leave_it(store: ObjectStore) -> None:
    assert store.full_key("a/b.json") == f"{store.prefix}a/b.json"
    store.put_bytes("a", b"kept")
    for bad in ("../x", "a/../../x", "/etc/passwd"):
        with pytest.raises(StorageError):
            store.put_bytes(bad, b"x")
        with pytest.raises(StorageError):
            list(store.list(bad))
        with pytest.raises(StorageError):
            list(store.list_prefixes(bad + "/"))
        with pytest.raises(StorageError):
            store.delete(["a", bad])  # refused before anything is deleted
    assert store.get_bytes("a") == b"kept"


def test_create_only_writes_and_plain_overwrites(store: ObjectStore) -> None:
    store.put_json("records/a.json", {"x": 1}, create_only=True)
    with pytest.raises(ConflictError):
        store.put_json("records/a.json", {"x": 2}, create_only=True)
    assert store.get_json("records/a.json") == {"x": 1}
    store.put_json("records/a.json", {"x": 3})
    assert store.get_json("records/a.json") == {"x": 3}


def test_reads_of_what_is_not_there(store: ObjectStore) -> None:
    with pytest.raises(NotFoundError):
        store.get_bytes("nothing")
    with pytest.raises(NotFoundError):
        store.open("nothing")
    with pytest.raises(NotFoundError):
        store.get_bytes_if_changed("nothing", None)
    assert store.head("nothing") is None and not store.exists("nothing")
    store.delete(["nothing"])  # deleting what is absent is fine


def test_bytes_ranges_heads_and_etags(store: ObjectStore) -> None:
    body = bytes(range(256)) * 40
    store.put_bytes("blob", body)
    assert store.get_bytes("blob") == body
    assert store.get_bytes("blob", (10, 19)) == body[10:20]
    with pytest.raises(StorageError):
        store.get_bytes("blob", (len(body), len(body) + 10))  # starts past the end: 416
    info = store.head("blob")
    assert info is not None and info.key == "blob" and info.size == len(body)
    assert info.etag.strip('"') == hashlib.md5(body, usedforsecurity=False).hexdigest()  # a single PUT's
    assert info.last_modified.tzinfo is not None


def test_conditional_reads(store: ObjectStore) -> None:
    store.put_bytes("hot.json", b"{}")
    got = store.get_bytes_if_changed("hot.json", None)
    assert got is not None and got[0] == b"{}"
    etag = got[1]
    unchanged = store.get_bytes_if_changed("hot.json", etag)
    assert unchanged is None or unchanged == (b"{}", etag)  # a store may answer 200 with the same ETag
    store.put_bytes("hot.json", b'{"new": 1}')
    changed = store.get_bytes_if_changed("hot.json", etag)
    assert changed is not None and changed[0] == b'{"new": 1}' and changed[1] != etag


def test_streaming_bodies_from_a_byte_on(store: ObjectStore) -> None:
    body = os.urandom(300_000)
    store.put_bytes("stream", body)
    whole = store.open("stream")
    try:
        assert b"".join(whole.iter_chunks(65536)) == body
    finally:
        whole.close()
    with pytest.raises(StorageError):
        store.open("stream", start=len(body))
    tail = store.open("stream", start=123_456)
    try:
        assert tail.read(10) == body[123_456:123_466]
        assert tail.read() == body[123_466:]
    finally:
        tail.close()


def test_listings_are_in_key_order_after_a_key_and_by_folder(store: ObjectStore) -> None:
    keys = ["b/2", "a/1", "b/1", "b/x/3", "c", "a/2"]
    for k in keys:
        store.put_bytes(k, k.encode())
    assert [o.key for o in store.list()] == sorted(keys)
    assert [o.key for o in store.list("b/")] == ["b/1", "b/2", "b/x/3"]
    assert [o.key for o in store.list("b/", start_after="b/1")] == ["b/2", "b/x/3"]
    assert [o.key for o in store.list("b/", delimiter="/")] == ["b/1", "b/2"]
    assert [o.size for o in store.list("a/")] == [3, 3]
    assert list(store.list_prefixes("")) == ["a/", "b/"]
    assert list(store.list_prefixes("b/")) == ["b/x/"]
    assert list(store.list("nothing-here/")) == [] and list(store.list_prefixes("nothing-here/")) == []
    store.delete(["b/1", "b/2"])
    assert [o.key for o in store.list("b/")] == ["b/x/3"]


def test_many_keys_list_and_delete_past_one_page(store: ObjectStore) -> None:
    keys = [f"many/{i:05d}" for i in range(1100)]  # past ListObjectsV2's and DeleteObjects' 1000
    for k in keys:
        store.put_bytes(k, b"")
    assert [o.key for o in store.list("many/")] == keys
    store.delete(keys)
    assert list(store.list("many/")) == []


def test_lifecycle_rules_round_trip(store: ObjectStore) -> None:
    assert store.get_lifecycle() == []
    rule = {
        "ID": "coldcopy-test",
        "Filter": {"Prefix": store.prefix},
        "Status": "Enabled",
        "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 3},
    }
    store.put_lifecycle([rule])
    [got] = store.get_lifecycle()
    assert got["ID"] == "coldcopy-test" and got["AbortIncompleteMultipartUpload"] == {
        "DaysAfterInitiation": 3
    }
    store.put_lifecycle([])
    assert store.get_lifecycle() == []


def test_multipart_leftovers(store: ObjectStore) -> None:
    """Volumes made multipart uploads unnecessary; the leftovers of older versions are listed and
    aborted, and an upload that is already gone is not an error (a lifecycle rule may be first)."""
    assert store.incomplete_uploads("backups/") == []
    store.abort_upload("backups/x/data", "no-such-upload-id")


def test_the_memory_store_keeps_whole_second_times_from_its_clock() -> None:
    now = [T0 + timedelta(microseconds=999_999)]
    store = MemoryStore(clock=lambda: now[0])
    store.put_bytes("a", b"")
    now[0] += timedelta(hours=1)
    store.put_bytes("b", b"")
    assert [o.last_modified for o in store.list()] == [T0, T0 + timedelta(hours=1)]


# -- failures of the store itself: a StorageError with a hint, exit code 6 -------------------------
def test_an_unreachable_endpoint_is_a_storage_error_everywhere(coldcopy_env: dict[str, str]) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    s = load_settings({**coldcopy_env, "DO_SPACES_ENDPOINT": down}, env_file=Path(os.devnull))
    # Without botocore's retries (they only add time here): what is tested is the translation.
    client = make_client(s, attempts=1)
    store = S3Store(s.spaces_bucket, s.prefix, client)
    calls = {
        "list": lambda: list(store.list("x/")),
        "list_prefixes": lambda: list(store.list_prefixes("backups/")),
        "get": lambda: store.get_bytes("x"),
        "head": lambda: store.head("x"),
        "put": lambda: store.put_bytes("x", b""),
        "delete": lambda: store.delete(["x"]),
        "lifecycle": store.get_lifecycle,
        "uploads": lambda: store.incomplete_uploads("backups/"),
    }
    for what, call in calls.items():
        with pytest.raises(StorageError) as err:
            call()
        assert err.value.hint and "DO_SPACES_ENDPOINT" in err.value.hint, what


def test_a_listing_that_cannot_connect_exits_6_with_a_hint(coldcopy_env: dict[str, str]) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    for args in (["list-backups"], ["catalog", "rebuild"]):  # a listing, and a listing of prefixes
        r = run_cli({**coldcopy_env, "DO_SPACES_ENDPOINT": down}, *args)
        assert r.rc == 6, (args, r.err)
        assert "→" in r.err and "DO_SPACES_ENDPOINT" in r.err and "unexpected" not in r.err, (args, r.err)
