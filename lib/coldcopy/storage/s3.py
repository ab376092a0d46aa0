"""The one module that talks to Spaces (or any S3 endpoint).

Spaces quirks handled here, once: checksum headers limited to ``when_required`` (older S3 stores
reject the new CRC headers), path-style addressing (works for Spaces and for loopback endpoints),
an empty prefix listing answered with ``NoSuchKey``, retries with backoff on 5xx and SlowDown
(botocore's standard retry mode) and create-only writes with ``If-None-Match: *``.  All keys are
relative to the cluster prefix.  Large payloads are written as volumes (``volumes.py``).
"""

from __future__ import annotations

import builtins
import contextlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import boto3
import urllib3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

from coldcopy.config import Settings
from coldcopy.errors import ConflictError, NotFoundError, StorageError

log = logging.getLogger(__name__)

_PRECONDITION = {"PreconditionFailed", "412", "ConditionalRequestConflict"}
_NOT_FOUND = {"NoSuchKey", "404", "NotFound"}
_CREDENTIALS = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403"}
_NOT_MODIFIED = {"304", "NotModified"}
# What reading an open body raises when the connection breaks or stalls (botocore wraps most of
# them; urllib3's and the socket's own can still come through).
READ_ERRORS = (BotoCoreError, urllib3.exceptions.HTTPError, OSError)


@dataclass(frozen=True)
class ObjectInfo:
    key: str  # relative to the prefix
    size: int
    last_modified: datetime
    etag: str = ""


def _code(exc: ClientError) -> str:
    err = exc.response.get("Error", {})
    return str(err.get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))


def storage_error(exc: Exception, action: str, bucket: str) -> StorageError:
    """Translate a boto error into an operator message (never includes credentials)."""
    if isinstance(exc, EndpointConnectionError):
        return StorageError(
            f"cannot reach the storage endpoint while trying to {action}",
            "check DO_SPACES_ENDPOINT and the network",
        )
    if isinstance(exc, ClientError):
        code = _code(exc)
        if code == "NoSuchBucket":
            return StorageError(f"bucket {bucket!r} does not exist", "create it or fix DO_SPACES_BUCKET")
        if code in _CREDENTIALS:
            return StorageError(
                f"storage refused the credentials ({code}) while trying to {action}",
                "check DO_SPACES_KEY / DO_SPACES_SECRET and the key's bucket grants",
            )
        return StorageError(f"storage error {code} while trying to {action}")
    return StorageError(f"storage failure while trying to {action}: {type(exc).__name__}")


class Storage:
    def __init__(self, settings: Settings, client: Any | None = None) -> None:
        self.bucket = settings.spaces_bucket
        self.prefix = settings.prefix
        self.client = client or make_client(settings)

    # -- keys -------------------------------------------------------------------------------------
    def full_key(self, key: str) -> str:
        if key.startswith("/") or ".." in key.split("/"):
            raise StorageError(f"refusing unsafe key {key[:80]!r}")
        return self.prefix + key

    def _rel(self, full: str) -> str:
        return full[len(self.prefix) :]

    def _call(self, action: str, fn: Any, **kwargs: Any) -> Any:
        try:
            return fn(Bucket=self.bucket, **kwargs)
        except ClientError as exc:
            code = _code(exc)
            if code in _NOT_FOUND:
                raise NotFoundError(f"{kwargs.get('Key', kwargs.get('Prefix', ''))} not found") from None
            if code in _PRECONDITION:
                raise ConflictError(f"{kwargs.get('Key', '')} already exists") from None
            raise storage_error(exc, action, self.bucket) from None
        except BotoCoreError as exc:
            raise storage_error(exc, action, self.bucket) from None

    # -- single objects -----------------------------------------------------------------------------
    def put_bytes(
        self,
        key: str,
        data: bytes,
        *,
        create_only: bool = False,
        content_type: str = "application/octet-stream",
    ) -> None:
        extra: dict[str, Any] = {"IfNoneMatch": "*"} if create_only else {}
        self._call(
            f"write {key}",
            self.client.put_object,
            Key=self.full_key(key),
            Body=data,
            ContentType=content_type,
            **extra,
        )

    def put_json(self, key: str, obj: Any, *, create_only: bool = False) -> None:
        body = json.dumps(obj, indent=1, sort_keys=True, default=str).encode()
        self.put_bytes(key, body, create_only=create_only, content_type="application/json")

    def get_bytes(self, key: str, byte_range: tuple[int, int] | None = None) -> bytes:
        extra = {"Range": f"bytes={byte_range[0]}-{byte_range[1]}"} if byte_range else {}
        resp = self._call(f"read {key}", self.client.get_object, Key=self.full_key(key), **extra)
        return self._read_all(resp, key)

    def _read_all(self, resp: Any, key: str) -> bytes:
        try:
            data: bytes = resp["Body"].read()
        except READ_ERRORS as exc:
            raise StorageError(
                f"reading {key} broke off ({type(exc).__name__})",
                "check the network to the storage endpoint and run the command again",
            ) from None
        return data

    def get_json(self, key: str) -> Any:
        return json.loads(self.get_bytes(key))

    def get_bytes_if_changed(self, key: str, etag: str | None) -> tuple[bytes, str] | None:
        """``(body, etag)`` of an object, or None when its ETag is still ``etag`` (conditional GET, 304).

        For readers that keep a parsed copy of a hot object (catalog.json).  A store that ignores
        If-None-Match just answers 200; callers compare the returned ETag.  NotFoundError if absent.
        """

        def get_object(**kwargs: Any) -> Any:
            try:
                return self.client.get_object(**kwargs)
            except ClientError as exc:
                if etag and _code(exc) in _NOT_MODIFIED:
                    return None
                raise

        extra = {"IfNoneMatch": etag} if etag else {}
        resp = self._call(f"read {key}", get_object, Key=self.full_key(key), **extra)
        if resp is None:
            return None
        return self._read_all(resp, key), str(resp.get("ETag", ""))

    def open(self, key: str, start: int = 0) -> Any:
        """A streaming body (``.iter_chunks(n)``, ``.read(n)``, ``.close()``), from byte ``start``.
        Reading it raises one of ``READ_ERRORS`` when the connection fails midway."""
        extra = {"Range": f"bytes={start}-"} if start else {}
        resp = self._call(f"read {key}", self.client.get_object, Key=self.full_key(key), **extra)
        if start and not str(resp.get("ContentRange", "")).startswith(f"bytes {start}-"):
            resp["Body"].close()  # the whole object again: resuming would repeat bytes
            raise StorageError(f"the storage ignored a ranged read of {key} (from byte {start})")
        return resp["Body"]

    def head(self, key: str) -> ObjectInfo | None:
        try:
            resp = self._call(f"inspect {key}", self.client.head_object, Key=self.full_key(key))
        except NotFoundError:
            return None
        return ObjectInfo(key, int(resp["ContentLength"]), resp["LastModified"], str(resp.get("ETag", "")))

    def exists(self, key: str) -> bool:
        return self.head(key) is not None

    def delete(self, keys: list[str]) -> None:
        for i in range(0, len(keys), 1000):
            batch = [{"Key": self.full_key(k)} for k in keys[i : i + 1000]]
            resp = self._call(
                "delete objects", self.client.delete_objects, Delete={"Objects": batch, "Quiet": True}
            )
            if resp.get("Errors"):
                first = resp["Errors"][0]
                raise StorageError(
                    f"could not delete {len(resp['Errors'])} objects "
                    f"(first: {self._rel(first.get('Key', ''))}: {first.get('Code')})"
                )

    # -- listings -----------------------------------------------------------------------------------
    def list(
        self, prefix: str = "", *, start_after: str | None = None, delimiter: str | None = None
    ) -> Iterator[ObjectInfo]:
        kwargs: dict[str, Any] = {"Prefix": self.full_key(prefix) if prefix else self.prefix}
        if start_after:
            kwargs["StartAfter"] = self.full_key(start_after)
        if delimiter:
            kwargs["Delimiter"] = delimiter
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, **kwargs):
                for item in page.get("Contents", []):
                    yield ObjectInfo(self._rel(item["Key"]), int(item["Size"]), item["LastModified"])
        except ClientError as exc:
            if _code(exc) in _NOT_FOUND:  # Spaces answers an empty prefix this way
                return
            raise storage_error(exc, "list objects", self.bucket) from None
        except BotoCoreError as exc:
            raise storage_error(exc, "list objects", self.bucket) from None

    def list_prefixes(self, prefix: str) -> Iterator[str]:
        """Immediate 'folders' under ``prefix`` (relative, with trailing slash)."""
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.full_key(prefix), Delimiter="/"):
                for cp in page.get("CommonPrefixes", []):
                    yield self._rel(cp["Prefix"])
        except ClientError as exc:
            if _code(exc) in _NOT_FOUND:
                return
            raise storage_error(exc, "list objects", self.bucket) from None

    # -- bucket lifecycle -----------------------------------------------------------------------------
    def get_lifecycle(self) -> builtins.list[dict[str, Any]]:
        """The bucket's lifecycle rules (bucket-wide, not only this prefix); [] when it has none."""
        try:
            resp = self.client.get_bucket_lifecycle_configuration(Bucket=self.bucket)
        except ClientError as exc:
            if _code(exc) == "NoSuchLifecycleConfiguration":
                return []
            raise storage_error(exc, "read the bucket lifecycle", self.bucket) from None
        except BotoCoreError as exc:
            raise storage_error(exc, "read the bucket lifecycle", self.bucket) from None
        return [dict(r) for r in resp.get("Rules", [])]

    def put_lifecycle(self, rules: builtins.list[dict[str, Any]]) -> None:
        """Replace the bucket's lifecycle rules (all of them: merge with get_lifecycle() first)."""
        if not rules:
            self._call("remove the bucket lifecycle", self.client.delete_bucket_lifecycle)
            return
        self._call(
            "write the bucket lifecycle",
            self.client.put_bucket_lifecycle_configuration,
            LifecycleConfiguration={"Rules": rules},
        )

    # -- multipart leftovers (from versions before volumes, or other tools) -------------------------
    def incomplete_uploads(self, prefix: str) -> builtins.list[tuple[str, str, datetime]]:
        """(relative key, upload id, initiated) of multipart uploads that were never completed."""
        out: builtins.list[tuple[str, str, datetime]] = []
        kwargs: dict[str, Any] = {"Prefix": self.full_key(prefix)}
        while True:
            resp = self._call("list multipart uploads", self.client.list_multipart_uploads, **kwargs)
            for up in resp.get("Uploads", []):
                out.append((self._rel(up["Key"]), up["UploadId"], up["Initiated"]))
            if not resp.get("IsTruncated"):
                return out
            kwargs["KeyMarker"] = resp.get("NextKeyMarker")
            kwargs["UploadIdMarker"] = resp.get("NextUploadIdMarker")

    def abort_upload(self, key: str, upload_id: str) -> None:
        with contextlib.suppress(NotFoundError):
            self._call(
                f"abort upload of {key}",
                self.client.abort_multipart_upload,
                Key=self.full_key(key),
                UploadId=upload_id,
            )


def make_client(settings: Settings) -> Any:
    cfg = Config(
        region_name=settings.spaces_region,
        retries={"max_attempts": 6, "mode": "standard"},  # backoff on 5xx, 429 and SlowDown
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        s3={"addressing_style": "path"},
        connect_timeout=10,
        read_timeout=120,
        max_pool_connections=max(10, settings.upload_concurrency * 2),
    )
    return boto3.session.Session().client(
        "s3",
        endpoint_url=settings.spaces_endpoint,
        aws_access_key_id=settings.spaces_key,
        aws_secret_access_key=settings.spaces_secret.reveal(),
        config=cfg,
    )
