"""The one way a boto3 S3 client is made here (the object store's, its probe's, an import
source's): path-style addressing, SigV4, checksums only where S3 demands them."""

from __future__ import annotations

from typing import TYPE_CHECKING

import boto3
from botocore.config import Config

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


def s3_config(
    *, region: str | None, attempts: int, connect_timeout: float, read_timeout: float, max_pool_connections: int
) -> Config:
    return Config(
        region_name=region,
        signature_version="s3v4",
        s3={"addressing_style": "path"},  # S3-compatible servers rarely have wildcard DNS
        retries={"mode": "standard", "total_max_attempts": attempts},
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        max_pool_connections=max_pool_connections,
        # botocore >= 1.36 adds CRC checksums (aws-chunked trailers) to every upload by
        # default, which several S3-compatible servers reject; the sha256 metadata and
        # Content-MD5 where S3 demands it are enough.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )


def s3_client(
    config: Config,
    *,
    endpoint_url: str | None,
    region: str | None,
    access_key: str | None,
    secret_key: str | None,
) -> S3Client:
    """A client of its own session: boto3's default session is shared and not thread-safe.
    Credentials left as None come from boto3's usual chain (environment, instance role)."""
    client: S3Client = boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=region,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        config=config,
    )
    return client
