"""The ``ObjectStore`` on Spaces (or any S3 endpoint): the one module that talks to botocore.

Spaces quirks handled here, once: checksum headers limited to ``when_required`` (older S3 stores
reject the new CRC headers), path-style addressing (works for Spaces and for loopback endpoints),
an empty prefix listing answered with ``NoSuchKey``, retries with backoff on 5xx and SlowDown
(botocore's standard retry mode) and create-only writes with ``If-None-Match: *``.  Every error
botocore raises reaches the caller as a StorageError with a hint (exit code 6), never as itself.
Large payloads are written as volumes (``coldcopy.storage.volumes``).

What botocore's retries do not cover is handled here too: a small object (a manifest, the catalog,
a journal record) whose body breaks off, is cut short or stalls is read again whole, and so is a
listing page that came back broken or empty-bodied (``READ_ATTEMPTS`` in all); a create-only PUT
whose reply was lost after it landed answers 412 to botocore's retry, and is recognised as ours
by its content (the ETag of a single PUT is the MD5 of its body).
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar, cast

import botocore.session
import urllib3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    IncompleteReadError,
    ReadTimeoutError,
    ResponseStreamingError,
)

from coldcopy.config import Settings
from coldcopy.errors import ConflictError, NotFoundError, StorageError
from coldcopy.storage.store import ObjectInfo, ReadInterrupted, encode_json, safe_key

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import LifecycleRuleOutputTypeDef

_PRECONDITION = {"PreconditionFailed", "412", "ConditionalRequestConflict"}
_NOT_FOUND = {"NoSuchKey", "404", "NotFound", "NoSuchUpload"}
_CREDENTIALS = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403"}
_NOT_MODIFIED = {"304", "NotModified"}
# What reading an open body raises when the connection breaks or stalls (botocore wraps most of
# them; urllib3's and the socket's own can still come through).
_READ_ERRORS = (BotoCoreError, urllib3.exceptions.HTTPError, OSError)
# botocore's errors for a reply that broke off after botocore's own retries (read again whole).
_BROKEN_READS = (ConnectionClosedError, IncompleteReadError, ReadTimeoutError, ResponseStreamingError)
_NETWORK_HINT = "check DO_SPACES_ENDPOINT and the network"
#: How many times a small object or a listing page is read before a broken read is an error.
READ_ATTEMPTS = 4
T = TypeVar("T")
log = logging.getLogger(__name__)


def make_client(settings: Settings, *, attempts: int = 6, files: bool = False) -> S3Client:
    """The one S3 client factory (retries, checksum and addressing settings for Spaces).

    botocore's own session, not boto3's: boto3 adds resources and s3transfer, which ColdCopy does
    not use, and importing them cost a backup 0.1-0.2 s (``python -X importtime``).

    ``attempts``: how many times a request is tried, with backoff on 5xx, 429 and SlowDown.
    ``files``: a client of the project's Storage S3 endpoint (``SUPABASE_STORAGE_*``) instead of
    the bucket's; the same settings otherwise.
    """
    cfg = Config(
        region_name=(settings.files_region or settings.spaces_region) if files else settings.spaces_region,
        retries={"max_attempts": attempts, "mode": "standard"},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        s3={"addressing_style": "path"},
        connect_timeout=10,
        read_timeout=settings.storage_timeout_seconds,
        max_pool_connections=max(10, settings.upload_concurrency * 2),
    )
    if files:
        endpoint, key, secret = settings.files_endpoint, settings.files_key, settings.files_secret
    else:
        endpoint, key, secret = settings.spaces_endpoint, settings.spaces_key, settings.spaces_secret
    client = botocore.session.Session().create_client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=key,
        aws_secret_access_key=secret.reveal(),
        config=cfg,
    )
    return cast("S3Client", client)


def open_store(settings: Settings) -> S3Store:
    """The store of these settings: bucket, prefix and a client of their own."""
    try:
        client = make_client(settings)
    except BotoCoreError as exc:  # e.g. a DO_SPACES_REGION botocore refuses
        raise StorageError(
            f"the storage client cannot be set up: {type(exc).__name__}",
            "check DO_SPACES_REGION and DO_SPACES_ENDPOINT",
        ) from None
    return S3Store(settings.spaces_bucket, settings.prefix, client)


def _code(exc: ClientError) -> str:
    err = exc.response.get("Error", {})
    return str(err.get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))


def _retried(exc: ClientError) -> bool:
    """Whether botocore sent the request more than once before this answer."""
    return int(exc.response.get("ResponseMetadata", {}).get("RetryAttempts") or 0) > 0


def _broken(what: str, exc: BaseException) -> ReadInterrupted:
    return ReadInterrupted(
        f"reading {what} broke off ({type(exc).__name__})",
        "check the network to the storage endpoint and run the command again",
        cause=type(exc).__name__,
    )


def read_again(what: str, attempt: Callable[[], T], attempts: int = READ_ATTEMPTS) -> T:
    """``attempt()``, tried again from the start while its read breaks off (``ReadInterrupted``),
    at most ``attempts`` times in all, with a short pause between (0.1 s, doubling)."""
    for n in range(1, attempts + 1):
        try:
            return attempt()
        except ReadInterrupted as exc:
            if n == attempts:
                raise StorageError(
                    f"reading {what} broke off {attempts} times in a row ({exc.cause or 'broken'})",
                    "check the network to the storage endpoint and run the command again",
                ) from None
            log.warning("reading %s broke off (%s); reading it again", what, exc.cause or "broken")
            time.sleep(0.1 * 2 ** (n - 1))
    raise AssertionError("unreachable")


def storage_error(exc: Exception, action: str, bucket: str) -> StorageError:
    """Translate a boto error into an operator message with what to do (never credentials)."""
    if isinstance(exc, EndpointConnectionError):
        return StorageError(f"cannot reach the storage endpoint while trying to {action}", _NETWORK_HINT)
    if isinstance(exc, ClientError):
        code = _code(exc)
        if code == "NoSuchBucket":
            return StorageError(f"bucket {bucket!r} does not exist", "create it or fix DO_SPACES_BUCKET")
        if code in _CREDENTIALS:
            return StorageError(
                f"storage refused the credentials ({code}) while trying to {action}",
                "check DO_SPACES_KEY / DO_SPACES_SECRET and the key's bucket grants",
            )
        return StorageError(
            f"storage error {code} while trying to {action}",
            "the storage service refused the request; check its status and run the command again",
        )
    return StorageError(f"storage failure while trying to {action}: {type(exc).__name__}", _NETWORK_HINT)


class _Body:
    """A boto3 StreamingBody whose read failures are ``ReadInterrupted`` (resumable)."""

    def __init__(self, raw: Any, key: str) -> None:
        self._raw, self._key = raw, key

    def iter_chunks(self, chunk_size: int) -> Iterator[bytes]:
        try:
            yield from self._raw.iter_chunks(chunk_size)
        except _READ_ERRORS as exc:
            raise _broken(self._key, exc) from None

    def read(self, amt: int | None = None) -> bytes:
        try:
            data: bytes = self._raw.read(amt)
        except _READ_ERRORS as exc:
            raise _broken(self._key, exc) from None
        return data

    def close(self) -> None:
        self._raw.close()


class S3Store:
    """An ``ObjectStore`` over one bucket and prefix of an S3 endpoint."""

    def __init__(self, bucket: str, prefix: str, client: S3Client) -> None:
        self.bucket, self.prefix, self.client = bucket, prefix, client

    # -- keys -------------------------------------------------------------------------------------
    def full_key(self, key: str) -> str:
        return self.prefix + safe_key(key)

    def _rel(self, full: str) -> str:
        return full[len(self.prefix) :]

    def _call(self, action: str, fn: Callable[[], T], where: str = "") -> T:
        """Run one client call; every botocore error becomes one of ours (``where``: the bucket key
        or prefix the call is about, for the not-found and conflict messages)."""
        try:
            return fn()
        except ClientError as exc:
            code = _code(exc)
            if code in _NOT_FOUND:
                raise NotFoundError(f"{where} not found") from None
            if code in _PRECONDITION:
                raise ConflictError(f"{where} already exists") from None
            raise storage_error(exc, action, self.bucket) from None
        except BotoCoreError as exc:
            raise storage_error(exc, action, self.bucket) from None
        except _READ_ERRORS as exc:
            # A reply (an error's too) that broke off while botocore read it is not wrapped by it.
            cause = type(exc).__name__
            message = f"trying to {action} broke off ({cause})"
            raise ReadInterrupted(message, _NETWORK_HINT, cause=cause) from None

    # -- single objects -----------------------------------------------------------------------------
    def put_bytes(
        self,
        key: str,
        data: bytes,
        *,
        create_only: bool = False,
        content_type: str = "application/octet-stream",
    ) -> None:
        full = self.full_key(key)
        extra: dict[str, Any] = {"IfNoneMatch": "*"} if create_only else {}

        def put() -> Any:
            try:
                return self.client.put_object(
                    Bucket=self.bucket, Key=full, Body=data, ContentType=content_type, **extra
                )
            except ClientError as exc:
                # A retry of a create-only PUT whose first attempt landed (its reply lost) is
                # refused with 412: the write is done if what is there is what we wrote.
                if create_only and _code(exc) in _PRECONDITION and _retried(exc) and self._holds(full, data):
                    log.debug("%s: a retried create-only write found its own first attempt", key)
                    return None
                raise

        self._call(f"write {key}", put, full)

    def _holds(self, full: str, data: bytes) -> bool:
        """Whether the object at ``full`` is ``data`` (by the ETag of a single PUT: its MD5)."""
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=full)
        except (ClientError, BotoCoreError):
            return False
        return str(head.get("ETag", "")).strip('"') == hashlib.md5(data, usedforsecurity=False).hexdigest()

    def put_json(self, key: str, obj: Any, *, create_only: bool = False) -> None:
        self.put_bytes(key, encode_json(obj), create_only=create_only, content_type="application/json")

    def _get(self, key: str, byte_range: str | None = None) -> Any:
        extra: dict[str, Any] = {"Range": byte_range} if byte_range else {}
        full = self.full_key(key)
        return self._call(
            f"read {key}", lambda: self.client.get_object(Bucket=self.bucket, Key=full, **extra), full
        )

    def get_bytes(self, key: str, byte_range: tuple[int, int] | None = None) -> bytes:
        rng = f"bytes={byte_range[0]}-{byte_range[1]}" if byte_range else None
        return read_again(key, lambda: _Body(self._get(key, rng)["Body"], key).read())

    def get_json(self, key: str) -> Any:
        return json.loads(self.get_bytes(key))

    def get_bytes_if_changed(self, key: str, etag: str | None) -> tuple[bytes, str] | None:
        """For readers that keep a parsed copy of a hot object (catalog.json): a conditional GET.
        A store that ignores If-None-Match just answers 200; callers compare the returned ETag."""
        full = self.full_key(key)
        extra: dict[str, Any] = {"IfNoneMatch": etag} if etag else {}

        def get() -> Any:
            try:
                return self.client.get_object(Bucket=self.bucket, Key=full, **extra)
            except ClientError as exc:
                if etag and _code(exc) in _NOT_MODIFIED:
                    return None
                raise

        def read() -> tuple[bytes, str] | None:
            resp = self._call(f"read {key}", get, full)
            if resp is None:
                return None
            return _Body(resp["Body"], key).read(), str(resp.get("ETag", ""))

        return read_again(key, read)

    def open(self, key: str, start: int = 0) -> _Body:
        resp = self._get(key, f"bytes={start}-" if start else None)
        body = _Body(resp["Body"], key)
        if start and not str(resp.get("ContentRange", "")).startswith(f"bytes {start}-"):
            body.close()  # the whole object again: resuming would repeat bytes
            raise StorageError(
                f"the storage ignored a ranged read of {key} (from byte {start})",
                "the endpoint does not honour Range requests; use an S3-compatible endpoint that does",
            )
        return body

    def head(self, key: str) -> ObjectInfo | None:
        full = self.full_key(key)
        try:
            resp = self._call(
                f"inspect {key}", lambda: self.client.head_object(Bucket=self.bucket, Key=full), full
            )
        except NotFoundError:
            return None
        return ObjectInfo(key, int(resp["ContentLength"]), resp["LastModified"], str(resp.get("ETag", "")))

    def exists(self, key: str) -> bool:
        return self.head(key) is not None

    def delete(self, keys: builtins.list[str]) -> None:
        for i in range(0, len(keys), 1000):
            resp = self._call("delete objects", functools.partial(self._delete_batch, keys[i : i + 1000]))
            if resp.get("Errors"):
                first = resp["Errors"][0]
                raise StorageError(
                    f"could not delete {len(resp['Errors'])} objects "
                    f"(first: {self._rel(first.get('Key', ''))}: {first.get('Code')})",
                    "check the key's delete permission on the bucket, then run the command again",
                )

    def _delete_batch(self, keys: builtins.list[str]) -> Any:
        batch: Any = [{"Key": self.full_key(k)} for k in keys]
        return self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})

    # -- listings -----------------------------------------------------------------------------------
    def _pages(self, **kwargs: Any) -> Iterator[Any]:
        """ListObjectsV2 pages; an empty prefix answered with NoSuchKey (Spaces) is an empty listing.
        Each page is read again whole when its reply breaks off or comes back without a body."""
        token: str | None = None
        what = f"the listing of {kwargs.get('Prefix', '')}"
        while True:
            more = {"ContinuationToken": token} if token else {}
            page = read_again(what, functools.partial(self._page, what, **kwargs, **more))
            if page is None:
                return
            yield page
            token = page.get("NextContinuationToken") if page.get("IsTruncated") else None
            if not token:
                return

    def _page(self, what: str, **kwargs: Any) -> Any:
        try:
            page = self.client.list_objects_v2(Bucket=self.bucket, **kwargs)
        except ClientError as exc:
            if _code(exc) in _NOT_FOUND:
                return None
            raise storage_error(exc, "list objects", self.bucket) from None
        except _READ_ERRORS as exc:
            if isinstance(exc, BotoCoreError) and not isinstance(exc, _BROKEN_READS):
                raise storage_error(exc, "list objects", self.bucket) from None
            raise _broken(what, exc) from None
        # A reply whose body was cut before its first byte parses as an empty page: every real
        # ListObjectsV2 answer names the bucket and says whether it is truncated.
        if "IsTruncated" not in page and "Name" not in page:
            raise _broken(what, EOFError())
        return page

    def list(
        self, prefix: str = "", *, start_after: str | None = None, delimiter: str | None = None
    ) -> Iterator[ObjectInfo]:
        kwargs: dict[str, Any] = {"Prefix": self.full_key(prefix) if prefix else self.prefix}
        if start_after:
            kwargs["StartAfter"] = self.full_key(start_after)
        if delimiter:
            kwargs["Delimiter"] = delimiter
        for page in self._pages(**kwargs):
            for item in page.get("Contents", []):
                yield ObjectInfo(
                    self._rel(item["Key"]), int(item["Size"]), item["LastModified"], str(item.get("ETag", ""))
                )

    def list_prefixes(self, prefix: str) -> Iterator[str]:
        for page in self._pages(Prefix=self.full_key(prefix), Delimiter="/"):
            for cp in page.get("CommonPrefixes", []):
                yield self._rel(cp["Prefix"])

    # -- bucket lifecycle -----------------------------------------------------------------------------
    def get_lifecycle(self) -> builtins.list[dict[str, Any]]:
        try:
            resp = self.client.get_bucket_lifecycle_configuration(Bucket=self.bucket)
        except ClientError as exc:
            if _code(exc) == "NoSuchLifecycleConfiguration":
                return []
            raise storage_error(exc, "read the bucket lifecycle", self.bucket) from None
        except BotoCoreError as exc:
            raise storage_error(exc, "read the bucket lifecycle", self.bucket) from None
        rules: builtins.list[LifecycleRuleOutputTypeDef] = resp.get("Rules", [])
        return [dict(r) for r in rules]

    def put_lifecycle(self, rules: builtins.list[dict[str, Any]]) -> None:
        if not rules:
            self._call(
                "remove the bucket lifecycle", lambda: self.client.delete_bucket_lifecycle(Bucket=self.bucket)
            )
            return
        config: Any = {"Rules": rules}
        self._call(
            "write the bucket lifecycle",
            lambda: self.client.put_bucket_lifecycle_configuration(
                Bucket=self.bucket, LifecycleConfiguration=config
            ),
        )

    # -- multipart leftovers (from versions before volumes, or other tools) -------------------------
    def incomplete_uploads(self, prefix: str) -> builtins.list[tuple[str, str, datetime]]:
        out: builtins.list[tuple[str, str, datetime]] = []
        kwargs: dict[str, Any] = {"Prefix": self.full_key(prefix)}
        while True:
            resp = self._call(
                "list multipart uploads",
                lambda: self.client.list_multipart_uploads(Bucket=self.bucket, **kwargs),
                kwargs["Prefix"],
            )
            for up in resp.get("Uploads", []):
                out.append((self._rel(up["Key"]), up["UploadId"], up["Initiated"]))
            if not resp.get("IsTruncated"):
                return out
            kwargs["KeyMarker"] = resp.get("NextKeyMarker")
            kwargs["UploadIdMarker"] = resp.get("NextUploadIdMarker")

    def abort_upload(self, key: str, upload_id: str) -> None:
        full = self.full_key(key)
        with contextlib.suppress(NotFoundError):
            self._call(
                f"abort upload of {key}",
                lambda: self.client.abort_multipart_upload(Bucket=self.bucket, Key=full, UploadId=upload_id),
                full,
            )
