"""An import source on S3 (``s3://bucket/prefix``, any S3-compatible endpoint), for
``dicomweb-gateway import`` (:class:`gateway.ports.ImportSource`).

The bucket is only read: ListObjectsV2 pages under the prefix, then one GetObject per object,
conditional on the ETag the listing gave (``If-Match``), so an object replaced in between is
reported, not imported under the old listing's identity. Endpoint and credentials are the
gateway's ``[s3]`` settings, or boto3's usual chain (``AWS_*`` environment, instance role).
This client is the source's own, apart from the object store's: reads of someone else's bucket
must not trip the store's circuit breaker, so botocore's standard retries do the retrying here.

boto3 blocks: every call runs in a worker thread behind a limiter sized like the connection pool.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
from botocore.exceptions import BotoCoreError, ClientError

from gateway.adapters.import_files import SourceChanged
from gateway.adapters.s3_client import s3_client, s3_config
from gateway.adapters.s3_retry import error_code
from gateway.errors import BadRequest, StorageError
from gateway.ports import SourceEntry

if TYPE_CHECKING:
    pass

_CHUNK = 1 << 20


def split_s3_url(url: str) -> tuple[str, str]:
    """(bucket, prefix) of ``s3://bucket/prefix``; BadRequest for anything else."""
    if not url.startswith("s3://"):
        raise BadRequest(f"{url} is not an s3://bucket/prefix URL")
    bucket, _, prefix = url[len("s3://") :].partition("/")
    if not bucket:
        raise BadRequest(f"{url} names no bucket")
    return bucket, prefix


class S3Source:
    """Every object under ``prefix`` in ``bucket``."""

    def __init__(
        self,
        url: str,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        max_threads: int = 16,
        connect_timeout: float = 3.0,
        read_timeout: float = 30.0,
    ) -> None:
        self._url = url
        self._bucket, self._prefix = split_s3_url(url)
        self._limiter = anyio.CapacityLimiter(max_threads)
        config = s3_config(
            region=region,
            attempts=5,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_pool_connections=max_threads,
        )
        self._client = s3_client(
            config, endpoint_url=endpoint_url, region=region, access_key=access_key, secret_key=secret_key
        )

    @property
    def label(self) -> str:
        return self._url

    async def entries(self) -> AsyncIterator[SourceEntry]:
        request: dict[str, Any] = {"Bucket": self._bucket, "Prefix": self._prefix}
        while True:
            page = await self._run("ListObjectsV2", self._list_page, request)
            for item in page.get("Contents", []):
                key = item.get("Key", "")
                if key.endswith("/"):
                    continue  # a "folder" placeholder some tools create, not a file
                yield SourceEntry(f"s3://{self._bucket}/{key}", item.get("Size", 0), item.get("ETag", "").strip('"'))
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return
            request["ContinuationToken"] = token

    def _list_page(self, request: dict[str, Any]) -> Any:
        return self._client.list_objects_v2(**request)

    async def fetch(self, entry: SourceEntry, target: Path) -> None:
        key = entry.name[len(f"s3://{self._bucket}/") :]
        await self._run("GetObject", self._download, key, entry, target)

    def _download(self, key: str, entry: SourceEntry, target: Path) -> None:
        try:
            response = self._client.get_object(Bucket=self._bucket, Key=key, IfMatch=f'"{entry.version}"')
        except ClientError as exc:
            if error_code(exc) in ("PreconditionFailed", "412", "NoSuchKey", "404"):
                raise SourceChanged(f"{entry.name} changed or went since it was listed") from exc
            raise
        body = response["Body"]
        with body:
            try:
                with target.open("xb") as out:
                    for chunk in body.iter_chunks(_CHUNK):
                        out.write(chunk)
            except BaseException:
                target.unlink(missing_ok=True)  # a partial copy is worse than none
                raise

    async def _run(self, what: str, fn: Any, *args: Any) -> Any:
        try:
            return await anyio.to_thread.run_sync(fn, *args, limiter=self._limiter)
        except (ClientError, BotoCoreError, OSError) as exc:
            code = error_code(exc) if isinstance(exc, ClientError) else ""
            raise StorageError(f"{self._url}: S3 {what}: {code or exc}") from exc

    async def aclose(self) -> None:
        self._client.close()
