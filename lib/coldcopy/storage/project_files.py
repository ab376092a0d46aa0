"""The project's Storage as an S3 endpoint (Supabase Storage: ``https://<ref>.supabase.co/storage/v1/s3``).

What a files snapshot reads (buckets, listings, objects with their metadata) and what a files
restore writes (buckets, objects with their metadata, multipart uploads for large ones).  The
client comes from ``coldcopy.storage.s3.make_client(settings, files=True)``.  Every botocore error
becomes a StorageError naming the SUPABASE_STORAGE_* settings, never carrying a key or secret.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import urllib3
from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

from coldcopy.config import Settings
from coldcopy.core.files import Listed
from coldcopy.core.times import iso
from coldcopy.errors import NotFoundError, StorageError
from coldcopy.storage.s3 import make_client

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

T = TypeVar("T")
_HINT = "check SUPABASE_STORAGE_ENDPOINT, SUPABASE_STORAGE_KEY / SUPABASE_STORAGE_SECRET and the network"
_NOT_FOUND = {"NoSuchKey", "404", "NotFound", "NoSuchBucket"}
_READ_ERRORS = (BotoCoreError, urllib3.exceptions.HTTPError, OSError)
_EXISTS = {"BucketAlreadyOwnedByYou", "BucketAlreadyExists", "ResourceAlreadyExists", "409"}


@dataclass(frozen=True)
class ObjectMeta:
    """What a HEAD or GET tells about an object besides its bytes."""

    size: int
    etag: str
    last_modified: str
    content_type: str = ""
    cache_control: str = ""
    metadata: dict[str, str] = field(default_factory=dict)


def _meta(resp: Any) -> ObjectMeta:
    return ObjectMeta(
        size=int(resp.get("ContentLength", 0)),
        etag=str(resp.get("ETag", "")),
        last_modified=iso(resp["LastModified"]),
        content_type=str(resp.get("ContentType") or ""),
        cache_control=str(resp.get("CacheControl") or ""),
        metadata={str(k): str(v) for k, v in (resp.get("Metadata") or {}).items()},
    )


def _reraise(exc: BaseException) -> bool:
    raise exc


def _extra(meta: ObjectMeta) -> dict[str, Any]:
    extra: dict[str, Any] = {"Metadata": dict(meta.metadata)}
    if meta.content_type:
        extra["ContentType"] = meta.content_type
    if meta.cache_control:
        extra["CacheControl"] = meta.cache_control
    return extra


class ProjectStorage:
    """The buckets of one project's Storage, through its S3 endpoint."""

    def __init__(self, client: S3Client) -> None:
        self.client = client

    def _call(self, action: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _NOT_FOUND:
                raise NotFoundError(
                    f"the project's Storage has no such object or bucket ({action})"
                ) from None
            raise StorageError(f"the project's Storage refused to {action} ({code})", _HINT) from None
        except EndpointConnectionError:
            raise StorageError(f"cannot reach the project's Storage to {action}", _HINT) from None
        except BotoCoreError as exc:
            raise StorageError(
                f"the project's Storage failed to {action}: {type(exc).__name__}", _HINT
            ) from None

    # -- reading ------------------------------------------------------------------------------------
    def buckets(self) -> list[str]:
        resp = self._call("list buckets", self.client.list_buckets)
        return sorted(str(b["Name"]) for b in resp.get("Buckets", []))

    def listing(self, bucket: str) -> Iterator[Listed]:
        """Every object of ``bucket``, in key order (one request per 1,000 objects)."""
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": bucket}
            if token:
                kwargs["ContinuationToken"] = token
            page = self._call(
                f"list bucket {bucket!r}", functools.partial(self.client.list_objects_v2, **kwargs)
            )
            for item in page.get("Contents", []):
                yield Listed(
                    bucket,
                    str(item["Key"]),
                    int(item["Size"]),
                    str(item.get("ETag", "")),
                    iso(item["LastModified"]),
                )
            token = page.get("NextContinuationToken") if page.get("IsTruncated") else None
            if not token:
                return

    def head(self, bucket: str, key: str) -> ObjectMeta | None:
        try:
            return _meta(
                self._call("inspect an object", lambda: self.client.head_object(Bucket=bucket, Key=key))
            )
        except NotFoundError:
            return None

    def open(self, bucket: str, key: str, chunk_size: int) -> tuple[ObjectMeta, Generator[bytes, None, None]]:
        """An object's metadata and its bytes in chunks (read failures are StorageErrors)."""
        resp = self._call("read an object", lambda: self.client.get_object(Bucket=bucket, Key=key))
        body = resp["Body"]

        def chunks() -> Generator[bytes, None, None]:
            try:
                yield from body.iter_chunks(chunk_size)
            except _READ_ERRORS as exc:
                raise StorageError(f"reading an object broke off ({type(exc).__name__})", _HINT) from None
            finally:
                body.close()

        return _meta(resp), chunks()

    # -- writing ------------------------------------------------------------------------------------
    def ensure_bucket(self, bucket: str) -> bool:
        """Create ``bucket`` unless it exists; True when it was created."""
        try:
            self.client.head_bucket(Bucket=bucket)
            return False
        except ClientError:
            pass
        except BotoCoreError as exc:
            raise StorageError(
                f"the project's Storage failed to inspect a bucket: {type(exc).__name__}", _HINT
            ) from None
        try:
            self.client.create_bucket(Bucket=bucket)
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code", "")) in _EXISTS:
                return False  # created meanwhile (a parallel restore)
            return self._call("create a bucket", functools.partial(_reraise, exc))
        except BotoCoreError as exc:
            return self._call("create a bucket", functools.partial(_reraise, exc))
        return True

    def put(self, bucket: str, key: str, data: bytes, meta: ObjectMeta) -> None:
        self._call(
            "write an object",
            lambda: self.client.put_object(Bucket=bucket, Key=key, Body=data, **_extra(meta)),
        )

    def start_upload(self, bucket: str, key: str, meta: ObjectMeta) -> str:
        resp = self._call(
            "start an upload",
            lambda: self.client.create_multipart_upload(Bucket=bucket, Key=key, **_extra(meta)),
        )
        return str(resp["UploadId"])

    def put_part(self, bucket: str, key: str, upload_id: str, number: int, data: bytes) -> str:
        resp = self._call(
            "upload a part",
            lambda: self.client.upload_part(
                Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=data
            ),
        )
        return str(resp["ETag"])

    def complete_upload(self, bucket: str, key: str, upload_id: str, etags: list[str]) -> None:
        parts: Any = {"Parts": [{"ETag": e, "PartNumber": i + 1} for i, e in enumerate(etags)]}
        self._call(
            "complete an upload",
            lambda: self.client.complete_multipart_upload(
                Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload=parts
            ),
        )

    def delete_bucket(self, bucket: str) -> None:
        """Delete every object of ``bucket``, then the bucket (a drill's scratch bucket)."""
        keys = [o.key for o in self.listing(bucket)]
        for i in range(0, len(keys), 1000):
            batch: Any = {"Objects": [{"Key": k} for k in keys[i : i + 1000]], "Quiet": True}
            self._call(
                "delete objects", functools.partial(self.client.delete_objects, Bucket=bucket, Delete=batch)
            )
        self._call("delete a bucket", lambda: self.client.delete_bucket(Bucket=bucket))

    def abort_upload(self, bucket: str, key: str, upload_id: str) -> None:
        self._call(
            "abort an upload",
            lambda: self.client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id),
        )


def open_project_storage(settings: Settings) -> ProjectStorage:
    """The project's Storage of these settings (SUPABASE_STORAGE_*)."""
    try:
        return ProjectStorage(make_client(settings, files=True))
    except BotoCoreError as exc:
        raise StorageError(
            f"the project's Storage client cannot be set up: {type(exc).__name__}", _HINT
        ) from None
