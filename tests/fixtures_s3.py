"""Fixtures for tests that need a real S3: one SeaweedFS per session, a fresh bucket per test."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest
from botocore.exceptions import BotoCoreError, ClientError

from tests.peers.seaweed import SeaweedS3, run_seaweed, s3_client

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


@dataclass(frozen=True, kw_only=True)
class S3Bucket(SeaweedS3):
    """A bucket on the test S3 server, with everything a client needs to reach it."""

    bucket: str


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    """A SeaweedFS S3 server shared by the whole session (it takes ~1 s to start)."""
    with run_seaweed(tmp_path_factory.mktemp("seaweed")) as peer:
        yield peer


@pytest.fixture(scope="session")
def s3_admin(seaweed: SeaweedS3) -> Iterator[S3Client]:
    """A plain boto3 client on the test server, for set-up and inspection (thread-safe)."""
    client = s3_client(seaweed)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def s3_bucket(seaweed: SeaweedS3, s3_admin: S3Client) -> Iterator[S3Bucket]:
    """A new, empty, uniquely named bucket; deleted with its objects afterwards."""
    name = f"test-{uuid.uuid4().hex[:24]}"
    s3_admin.create_bucket(Bucket=name)
    yield S3Bucket(
        endpoint_url=seaweed.endpoint_url,
        access_key=seaweed.access_key,
        secret_key=seaweed.secret_key,
        region=seaweed.region,
        bucket=name,
    )
    # SeaweedFS deletes non-empty buckets (-s3.allowDeleteBucketNotEmpty, on by default), which
    # frees the bucket's volumes: a long session would otherwise run out of them. A failure here
    # is no test's fault (the session's tmp dir goes anyway).
    with contextlib.suppress(BotoCoreError, ClientError):
        s3_admin.delete_bucket(Bucket=name)
