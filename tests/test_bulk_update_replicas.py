"""``$bulkUpdate`` with several replicas (two processes on one S3 bucket and one PostgreSQL
index): a replica killed in the middle of an operation and never started again leaves it to the
other, which marks it failed once its heartbeat is stale and removes what it had not committed."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from tests import factory
from tests.fixtures_gateway import RunningGateway, start_gateway, stop_gateway
from tests.fixtures_s3 import S3Bucket
from tests.http_helpers import stow, uids_of
from tests.test_bulk_update import accessions, anonymous_update

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

pytestmark = [pytest.mark.s3, pytest.mark.timeout(300)]

HEARTBEAT, STALE = 1.0, 3.0


def _replica(tmp_path: Path, name: str, s3_bucket: S3Bucket, postgres_url: str) -> RunningGateway:
    root = tmp_path / name
    root.mkdir()
    env = {
        "DICOMWEB_GATEWAY_BULK_UPDATE_HEARTBEAT_SECONDS": str(HEARTBEAT),
        "DICOMWEB_GATEWAY_BULK_UPDATE_STALE_SECONDS": str(STALE),
    }
    return start_gateway(root, store_kind="s3", s3=s3_bucket, extra_args=("--index-url", postgres_url), env=env)


def _version_keys(s3_admin: S3Client, bucket: str, study: str) -> list[str]:
    pages = s3_admin.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"gw/studies/{study}/")
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []) if "/versions/" in o["Key"])


@pytest.mark.parametrize("fault", ["killed", "paused"])
def test_an_operation_of_a_stopped_replica_is_failed_by_the_other(
    tmp_path: Path, s3_bucket: S3Bucket, s3_admin: S3Client, postgres_url: str, fault: str
) -> None:
    # "killed": SIGKILL, and replica A is never started again. "paused": SIGSTOP until B failed
    # the operation, then SIGCONT: A must neither commit the second study nor revive the operation.
    studies = [
        factory.ct_series(30, 128, 128, seed=seed, study_uid=factory.new_uid("stale-op", seed), AccessionNumber="OLD")
        for seed in (751, 752)
    ]
    first, second = (uids_of(series[0])[0] for series in studies)
    a = _replica(tmp_path, "a", s3_bucket, postgres_url)
    b: RunningGateway | None = None
    try:
        b = _replica(tmp_path, "b", s3_bucket, postgres_url)
        for series in studies:
            assert stow(a.url, series).status_code == 200
        href = anonymous_update(a.url, [first, second], {"00080050": {"vr": "SH", "Value": ["NEW"]}})
        deadline = time.monotonic() + 120
        while not _version_keys(s3_admin, s3_bucket.bucket, second):
            assert time.monotonic() < deadline, "the second study was never started"
            time.sleep(0.005)
        if fault == "killed":
            a.process.kill()
            a.process.wait()
        else:
            a.process.send_signal(signal.SIGSTOP)
        killed = time.monotonic()
        assert _version_keys(s3_admin, s3_bucket.bucket, second)  # what the kill left behind

        on_b = b.url + href[href.index("/operations/") :]
        while (operation := httpx.get(on_b, timeout=30).json())["status"] == "running":
            assert time.monotonic() - killed < STALE + 3 * HEARTBEAT + 10, operation
            time.sleep(0.1)
        assert operation["status"] == "failed"
        assert (operation["results"]["studyUpdated"], operation["results"]["instanceUpdated"]) == (1, 30)
        assert "replica running this operation stopped" in operation["results"]["errors"][-1]
        # The uncommitted objects are gone; the committed study stays corrected, the other as it was.
        assert _version_keys(s3_admin, s3_bucket.bucket, second) == []
        assert len(_version_keys(s3_admin, s3_bucket.bucket, first)) == 60  # Part 10 and metadata JSON
        assert accessions(b.url, first) == ["NEW"] * 30
        assert accessions(b.url, second) == ["OLD"] * 30
        if fault == "paused":
            a.process.send_signal(signal.SIGCONT)
            time.sleep(3 * HEARTBEAT)  # A finds the operation taken over, or its commit refused
            assert httpx.get(on_b, timeout=30).json()["status"] == "failed"
            assert accessions(a.url, second) == ["OLD"] * 30
            deadline = time.monotonic() + 30
            while _version_keys(s3_admin, s3_bucket.bucket, second):
                assert time.monotonic() < deadline, "replica A left the objects of the study it was cut off in"
                time.sleep(0.2)
            assert "was taken over by another replica" in (a.log_path.read_text())
    finally:
        if fault == "paused":
            a.process.send_signal(signal.SIGCONT)
        stop_gateway(a)
        if b is not None:
            stop_gateway(b)
