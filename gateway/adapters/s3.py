"""BlobStore on S3 (AWS or a compatible server: SeaweedFS, MinIO, Ceph RGW) through boto3.

boto3 blocks, so every call runs in a worker thread behind one CapacityLimiter sized like the
connection pool; botocore errors are translated to :mod:`gateway.errors` in one place
(:func:`_translate`), keeping the original as ``__cause__``. Retries, and failing fast while the
store is down, are :mod:`gateway.adapters.s3_retry`'s (botocore's own retries are off).

How long a call can keep a request waiting on a failing store (defaults in brackets):

* store down (refused, reset): the attempts and their backoff, about 0.15 s [3 attempts];
* store hung (accepts, never answers) or unreachable (packets dropped): one ``read_timeout``
  [6 s] or ``connect_timeout`` [3 s]: a timeout is not retried;
* throttled: ``max_attempts`` answers and at most 1 + 2 + 4 ... s of backoff [3 s];
* then, for ``s3_retry.COOLDOWN`` [3 s], every call fails at once.

``read_timeout`` is how long the socket may stay silent, not a bound on a transfer: an upload
or download that keeps moving bytes never hits it, however slow. What it bounds is the wait
for the answer once a request is sent: S3 answers a PUT of a 16 MiB part within a second or
so (SeaweedFS here: 0.5 s), and AWS's own guidance is to retry small GETs and PUTs not answered
within 2 s; 6 s leaves room for a slow but alive store and keeps a STOW on a hung one under 10 s.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import anyio
import anyio.to_thread
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from gateway import observability
from gateway.adapters.filestore import validate_key, validate_prefix
from gateway.adapters.s3_client import s3_client, s3_config
from gateway.adapters.s3_retry import THROTTLING_CODES, StoreBreaker, StoreUnavailable, backoff, classify
from gateway.adapters.s3_retry import error_code as _error_code
from gateway.errors import AlreadyExists, GatewayError, MetadataNotWritten, NotFound, StorageError
from gateway.ports import ListedObject, ObjectInfo, UnfinishedWrite

if TYPE_CHECKING:
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef

P = ParamSpec("P")
T = TypeVar("T")

_log = logging.getLogger(__name__)

MiB = 1 << 20
_MIN_PART_SIZE = 5 * MiB  # S3: every part but the last must be at least 5 MiB
_MAX_PARTS = 10_000  # S3: parts per upload
_PART_CONCURRENCY = 4  # parts in flight per multipart upload (memory: this many parts)
_COMPLETE_LOCK_STRIPES = 64
_PROBE_TIMEOUT = 2.0  # readiness probes are themselves bounded by a few seconds


def _storage_error(reason: str) -> GatewayError:
    return StorageError(reason)


def _throttled(reason: str) -> GatewayError:
    return StorageError(reason, retry_after=2)


# S3 error code -> gateway error. HEAD responses have no body, so botocore reports their HTTP
# status as the code ("404", "412"). Anything not listed (AccessDenied, NoSuchBucket, 5xx,
# connection failures) means the store itself failed: StorageError.
_ERRORS: dict[str, Callable[[str], GatewayError]] = {
    "NoSuchKey": NotFound,
    "NotFound": NotFound,
    "404": NotFound,
    "PreconditionFailed": AlreadyExists,  # If-None-Match: * found the key taken
    "412": AlreadyExists,
    "ConditionalRequestConflict": AlreadyExists,  # AWS: a concurrent conditional write won (409)
    **dict.fromkeys(THROTTLING_CODES, _throttled),  # SlowDown, 503, ... (after the retries)
}


def _translate(exc: ClientError | BotoCoreError | OSError, what: str) -> GatewayError:
    """The one place where S3 client failures become gateway errors."""
    if isinstance(exc, ClientError):
        code = _error_code(exc)
        message = exc.response.get("Error", {}).get("Message", "")
        return _ERRORS.get(code, _storage_error)(f"S3 {what}: {code} {message}".rstrip())
    # BotoCoreError: endpoint unreachable, timeouts, truncated bodies (after botocore's own
    # retries); OSError: the local file being uploaded or downloaded.
    return StorageError(f"S3 {what}: {exc}")


class S3BlobStore:
    """:class:`gateway.ports.BlobStore` on one S3 bucket, with every key under ``prefix``.

    Create-only writes use ``If-None-Match: *`` (``PutObject``, and ``CompleteMultipartUpload``
    for files above ``multipart_threshold``); the SHA-256 travels as user metadata ``sha256``.
    A multipart upload that fails or is cancelled is aborted, so no unfinished upload stays
    behind to be billed. Credentials left as None come from boto3's usual chain (environment,
    instance role).
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        max_threads: int = 16,
        multipart_threshold: int = 64 * MiB,
        part_size: int = 16 * MiB,
        connect_timeout: float = 3.0,
        read_timeout: float = 6.0,
        max_attempts: int = 3,
    ) -> None:
        if part_size < _MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {_MIN_PART_SIZE} bytes (S3 minimum)")
        if max_threads < 1:
            raise ValueError("max_threads must be at least 1")
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        prefix = prefix.strip("/")
        self._bucket = bucket
        self._prefix = (validate_key(prefix) + "/") if prefix else ""
        self._region = region
        self._multipart_threshold = multipart_threshold
        self._part_size = part_size
        self._limiter = anyio.CapacityLimiter(max_threads)
        self._max_attempts = max_attempts
        self._breaker = StoreBreaker(f"S3 bucket {bucket}")
        # SeaweedFS 4.48 checks If-None-Match on CompleteMultipartUpload, but not atomically:
        # concurrent completes of one key can all succeed (measured: 2-7 winners of 8), while
        # its PutObject check is atomic. So completes of a key are serialised within this
        # process (striped locks), which makes the server's check effective; across processes
        # a digest check after the complete detects most losers (see _put_multipart).
        self._complete_locks = [anyio.Lock() for _ in range(_COMPLETE_LOCK_STRIPES)]
        config = s3_config(
            region=region,
            attempts=1,  # our loop retries (see _attempt)
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_pool_connections=max_threads,
        )
        self._client = s3_client(
            config, endpoint_url=endpoint_url, region=region, access_key=access_key, secret_key=secret_key
        )
        # Readiness probes: one attempt with short timeouts, whatever the calls' settings.
        probe = Config(
            connect_timeout=min(connect_timeout, _PROBE_TIMEOUT),
            read_timeout=min(read_timeout, _PROBE_TIMEOUT),
            max_pool_connections=1,
        )
        self._probe_client = s3_client(
            config.merge(probe), endpoint_url=endpoint_url, region=region, access_key=access_key, secret_key=secret_key
        )

    @property
    def bucket(self) -> str:
        return self._bucket

    # -- writes ---------------------------------------------------------------------------------

    async def put_file(self, key: str, path: Path, *, sha256: str, content_type: str) -> None:
        name = self._name(key)
        size = await self._call(f"stat {path}", os.path.getsize, path)
        if size <= self._multipart_threshold:
            await self._call(f"PutObject {key}", self._put_small, name, Path(path), sha256, content_type)
        else:
            await self._put_multipart(key, name, Path(path), size, sha256, content_type)

    async def put_bytes(self, key: str, data: bytes, *, content_type: str) -> None:
        name = self._name(key)
        await self._call(
            f"PutObject {key}",
            self._client.put_object,
            Bucket=self._bucket,
            Key=name,
            Body=data,
            ContentType=content_type,
        )

    async def put_instance(self, key: str, path: Path, *, sha256: str, metadata_key: str, metadata: bytes) -> None:
        await self.put_file(key, path, sha256=sha256, content_type="application/dicom")
        try:
            await self.put_bytes(metadata_key, metadata, content_type="application/dicom+json")
        except GatewayError as exc:
            raise MetadataNotWritten(exc.reason, retry_after=getattr(exc, "retry_after", 5)) from exc

    async def delete(self, key: str) -> None:
        name = self._name(key)
        # S3 answers 204 for absent keys; some compatible servers say 404.
        with contextlib.suppress(NotFound):
            await self._call(f"DeleteObject {key}", self._client.delete_object, Bucket=self._bucket, Key=name)

    # -- reads ----------------------------------------------------------------------------------

    async def stat(self, key: str) -> ObjectInfo | None:
        name = self._name(key)
        try:
            head = await self._call(f"HeadObject {key}", self._client.head_object, Bucket=self._bucket, Key=name)
        except NotFound:
            return None
        return ObjectInfo(key=key, size=head["ContentLength"], sha256=head.get("Metadata", {}).get("sha256"))

    async def stream(self, key: str, *, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        name = self._name(key)
        what = f"GetObject {key}"
        response = await self._call(what, self._client.get_object, Bucket=self._bucket, Key=name)
        body = response["Body"]
        try:
            # One attempt per read, and no breaker: a broken body cannot be read again, and bytes
            # arriving show the store is alive, whatever other calls saw.
            while chunk := await self._attempt(what, functools.partial(body.read, chunk_size), 1, guarded=False):
                yield chunk
        finally:
            body.close()  # releases (or drops) the pooled connection when the reader stops early

    async def read_range(self, key: str, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise ValueError(f"invalid range offset={offset} length={length}")
        name = self._name(key)
        if length == 0:
            return b""
        data = await self._call(f"GetObject {key} bytes={offset}+{length}", self._get, name, offset, length)
        if len(data) != length:
            # The caller's spans come from the index: an object shorter than that is damaged.
            # (A range starting past the end fails above as InvalidRange, also a StorageError.)
            raise StorageError(f"S3 object {key}: range {offset}+{length} lies beyond its end")
        return data

    async def read_all(self, key: str) -> bytes:
        name = self._name(key)
        return await self._call(f"GetObject {key}", self._get, name, None, None)

    async def download(self, key: str, path: Path) -> None:
        name = self._name(key)
        await self._call(f"GetObject {key}", self._download, name, Path(path))

    async def list_keys(self, prefix: str = "") -> AsyncIterator[str]:
        async for listed in self.list_objects(prefix):
            yield listed.key

    # -- lifecycle ------------------------------------------------------------------------------

    async def ping(self) -> None:
        """One HeadBucket with short timeouts, asked even while calls fail fast: readiness
        probes are how a store that came back is noticed when no request arrives."""
        probe = functools.partial(self._probe_client.head_bucket, Bucket=self._bucket)
        try:
            await self._attempt("HeadBucket", probe, 1, guarded=False)
        except NotFound as exc:
            raise StorageError(f"S3 bucket {self._bucket} does not exist") from exc.__cause__

    async def ensure_bucket(self) -> None:
        """Create the bucket when it is missing (start-up, tests); an existing one is fine."""
        try:
            await self._call("HeadBucket", self._client.head_bucket, Bucket=self._bucket)
        except NotFound:
            await self._call("CreateBucket", self._create_bucket)

    async def aclose(self) -> None:
        await anyio.to_thread.run_sync(self._client.close)
        await anyio.to_thread.run_sync(self._probe_client.close)

    # -- internals ------------------------------------------------------------------------------

    def _name(self, key: str) -> str:
        return self._prefix + validate_key(key)

    async def _call(self, what: str, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run one blocking client call in a worker thread, with retries; translate its failure."""
        return await self._attempt(what, functools.partial(fn, *args, **kwargs), self._max_attempts)

    async def _attempt(self, what: str, call: Callable[[], T], attempts: int, *, guarded: bool = True) -> T:
        """The one retry loop (gateway.adapters.s3_retry): retry what is worth it, with backoff,
        up to ``attempts``; while the breaker is open (``guarded``), fail without asking."""
        run = functools.partial(self._guarded, call) if guarded else call
        attempt = 1
        while True:
            try:
                result = await anyio.to_thread.run_sync(run, limiter=self._limiter)
            except StoreUnavailable:
                observability.store_error("circuit_open")
                raise
            except (ClientError, BotoCoreError, OSError) as exc:
                failure = classify(exc)
                if failure.retryable and attempt < attempts:
                    observability.store_retry(failure.value)
                    await anyio.sleep(backoff(failure, attempt))
                    attempt += 1
                    continue
                error = _translate(exc, what)
                if isinstance(error, StorageError):  # not NotFound, AlreadyExists: answers, not faults
                    observability.store_error(failure.value)
                self._breaker.failed(failure, error.reason)
                raise error from exc
            self._breaker.succeeded()
            return result

    def _guarded(self, call: Callable[[], T]) -> T:
        # Checked in the worker thread, so that a call queued behind the limiter while the store
        # was found down fails at once too.
        self._breaker.check()
        return call()

    def _put_small(self, name: str, path: Path, sha256: str, content_type: str) -> None:
        with open(path, "rb") as body:
            self._client.put_object(
                Bucket=self._bucket,
                Key=name,
                Body=body,
                IfNoneMatch="*",
                Metadata={"sha256": sha256},
                ContentType=content_type,
            )

    async def _put_multipart(self, key: str, name: str, path: Path, size: int, sha256: str, content_type: str) -> None:
        # A duplicate is the common case for large instances (a STOW retried): answer it before
        # sending the bytes. The conditional complete below stays the real guard.
        if await self.stat(key) is not None:
            raise AlreadyExists(f"object {key} already exists")
        created = await self._call(
            f"CreateMultipartUpload {key}",
            self._client.create_multipart_upload,
            Bucket=self._bucket,
            Key=name,
            Metadata={"sha256": sha256},
            ContentType=content_type,
        )
        upload_id = created["UploadId"]
        try:
            parts = await self._upload_parts(key, name, upload_id, path, size)
            async with self._complete_locks[hash(name) % _COMPLETE_LOCK_STRIPES]:
                await self._call(
                    f"CompleteMultipartUpload {key}",
                    self._client.complete_multipart_upload,
                    Bucket=self._bucket,
                    Key=name,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                    IfNoneMatch="*",
                )
        except BaseException:
            # Also on cancellation: an unfinished upload keeps its parts (and their cost) forever.
            with anyio.CancelScope(shield=True):
                await self._abort(key, name, upload_id)
            raise
        # Where the server's conditional complete is not atomic (see __init__), a writer in
        # another process may have completed too and replaced our object. If the stored digest
        # is not ours we lost: say so, rather than let the caller index bytes that are not there.
        stored = await self.stat(key)
        if stored is not None and stored.sha256 != sha256:
            raise AlreadyExists(f"object {key} already exists (a concurrent upload completed too)")

    async def _upload_parts(
        self, key: str, name: str, upload_id: str, path: Path, size: int
    ) -> list[CompletedPartTypeDef]:
        part_size = max(self._part_size, math.ceil(size / _MAX_PARTS))
        count = math.ceil(size / part_size)
        etags: list[str] = [""] * count
        numbers = iter(range(count))
        failure: Exception | None = None

        async def worker() -> None:
            nonlocal failure
            try:
                for index in numbers:  # shared iterator: each part goes to exactly one worker
                    offset = index * part_size
                    etags[index] = await self._call(
                        f"UploadPart {key} #{index + 1}",
                        self._upload_part,
                        name,
                        upload_id,
                        index + 1,
                        path,
                        offset,
                        min(part_size, size - offset),
                    )
            except Exception as exc:
                # Keep the first failure as is (a task group would wrap it in an ExceptionGroup).
                failure = failure or exc
                tg.cancel_scope.cancel()

        async with anyio.create_task_group() as tg:
            for _ in range(min(_PART_CONCURRENCY, count)):
                tg.start_soon(worker)
        if failure is not None:
            raise failure
        return [{"ETag": etag, "PartNumber": index + 1} for index, etag in enumerate(etags)]

    def _upload_part(self, name: str, upload_id: str, number: int, path: Path, offset: int, length: int) -> str:
        with open(path, "rb", buffering=0) as f:
            data = _pread_exactly(f.fileno(), offset, length)
        response = self._client.upload_part(
            Bucket=self._bucket, Key=name, UploadId=upload_id, PartNumber=number, Body=data
        )
        return response["ETag"]

    async def _abort(self, key: str, name: str, upload_id: str) -> None:
        try:
            await self._call(
                f"AbortMultipartUpload {key}",
                self._client.abort_multipart_upload,
                Bucket=self._bucket,
                Key=name,
                UploadId=upload_id,
            )
        except GatewayError as exc:
            # NoSuchUpload here means it is gone already; anything else is left for a bucket
            # lifecycle rule (AbortIncompleteMultipartUpload) to clean, so say so loudly.
            _log.warning("could not abort multipart upload %s of %s: %s", upload_id, key, exc.reason)

    def _get(self, name: str, offset: int | None, length: int | None) -> bytes:
        kwargs: dict[str, Any] = {}
        if offset is not None and length is not None:
            kwargs["Range"] = f"bytes={offset}-{offset + length - 1}"
        body = self._client.get_object(Bucket=self._bucket, Key=name, **kwargs)["Body"]
        with body:
            return body.read()

    def _download(self, name: str, path: Path) -> None:
        # GetObject first: a missing key fails before the destination is touched.
        body = self._client.get_object(Bucket=self._bucket, Key=name)["Body"]
        with body:
            try:
                with open(path, "wb") as out:
                    for chunk in body.iter_chunks(MiB):
                        out.write(chunk)
            except BaseException:
                path.unlink(missing_ok=True)  # a partial copy is worse than none
                raise

    def _create_bucket(self) -> None:
        kwargs: dict[str, Any] = {}
        if self._region and self._region != "us-east-1":
            # AWS rejects an explicit us-east-1 constraint and requires one everywhere else.
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self._region}
        try:
            self._client.create_bucket(Bucket=self._bucket, **kwargs)
        except ClientError as exc:
            # A concurrent start-up may have created it; BucketAlreadyExists (someone else's
            # bucket) is a real error.
            if _error_code(exc) != "BucketAlreadyOwnedByYou":
                raise

    # -- crash recovery (reindex --repair) --------------------------------------------------------

    async def list_objects(self, prefix: str = "", *, page_size: int = 1000) -> AsyncIterator[ListedObject]:
        validate_prefix(prefix)
        # Page by page with the continuation token, each page a call of its own with retries
        # (boto3's paginator cannot resume after a page failed: a throttled page would end a
        # repair's listing).
        request: dict[str, Any] = {"Bucket": self._bucket, "Prefix": self._prefix + prefix, "MaxKeys": page_size}
        while True:
            page = await self._call("ListObjectsV2", self._client.list_objects_v2, **request)
            for item in page.get("Contents", []):
                name = item.get("Key", "")
                if name.startswith(self._prefix) and "LastModified" in item:
                    yield ListedObject(name[len(self._prefix) :], item.get("Size", 0), item["LastModified"].timestamp())
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return
            request["ContinuationToken"] = token

    async def list_unfinished(self, started_before: float, *, page_size: int = 1000) -> AsyncIterator[UnfinishedWrite]:
        # Multipart uploads a killed process never completed nor aborted: S3 keeps (and bills)
        # their parts until an AbortMultipartUpload, and lists them here with their start time.
        request: dict[str, Any] = {"Bucket": self._bucket, "Prefix": self._prefix, "MaxUploads": page_size}
        while True:
            page = await self._call("ListMultipartUploads", self._client.list_multipart_uploads, **request)
            for upload in page.get("Uploads", []):
                name, upload_id, initiated = upload.get("Key", ""), upload.get("UploadId"), upload.get("Initiated")
                if not name.startswith(self._prefix) or upload_id is None or initiated is None:
                    continue
                if initiated.timestamp() < started_before:
                    yield UnfinishedWrite(name[len(self._prefix) :], initiated.timestamp(), upload_id)
            key_marker, upload_marker = page.get("NextKeyMarker"), page.get("NextUploadIdMarker")
            if not page.get("IsTruncated") or not (key_marker or upload_marker):
                return
            request["KeyMarker"], request["UploadIdMarker"] = key_marker or "", upload_marker or ""

    async def discard_unfinished(self, write: UnfinishedWrite) -> None:
        # The key is the listed one, not necessarily a valid object key (any writer may have
        # started an upload under our prefix): S3 keys are opaque, so it is used unvalidated.
        await self._call(
            f"AbortMultipartUpload {write.key}", self._abort_if_present, self._prefix + write.key, write.handle
        )

    def _abort_if_present(self, name: str, upload_id: str) -> None:
        try:
            self._client.abort_multipart_upload(Bucket=self._bucket, Key=name, UploadId=upload_id)
        except ClientError as exc:
            if _error_code(exc) not in ("NoSuchUpload", "404"):
                raise


def _pread_exactly(fd: int, offset: int, length: int) -> bytes:
    parts: list[bytes] = []
    got = 0
    while got < length:
        chunk = os.pread(fd, length - got, offset + got)
        if not chunk:
            raise OSError(f"file shrank while uploading: {length - got} bytes missing at {offset + got}")
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)
