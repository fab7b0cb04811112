"""Several replicas: two ``dicomweb-gateway serve`` processes on one S3 bucket (SeaweedFS) and one
PostgreSQL index serve the same data, as a Kubernetes Deployment with several pods does."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from tests import factory
from tests.fixtures_gateway import RunningGateway, start_gateway, stop_gateway
from tests.fixtures_s3 import S3Bucket
from tests.http_helpers import CONNECTION_TIMEOUT, split_multipart, stow, uids_of

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

AS_STORED = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}
pytestmark = pytest.mark.s3


def _replica(tmp_path: Path, name: str, s3_bucket: S3Bucket, postgres_url: str) -> RunningGateway:
    root = tmp_path / name
    root.mkdir()
    return start_gateway(root, store_kind="s3", s3=s3_bucket, extra_args=("--index-url", postgres_url))


@pytest.fixture
def replicas(tmp_path: Path, s3_bucket: S3Bucket, postgres_url: str) -> Iterator[list[RunningGateway]]:
    """Two gateway processes sharing one bucket and one PostgreSQL schema."""
    running = [_replica(tmp_path, "a", s3_bucket, postgres_url)]
    try:
        running.append(_replica(tmp_path, "b", s3_bucket, postgres_url))
        yield running
    finally:
        for gw in running:
            stop_gateway(gw)


def _study_rows(gw: RunningGateway, study: str) -> list[dict[str, object]]:
    response = httpx.get(f"{gw.url}/studies", params={"StudyInstanceUID": study}, timeout=CONNECTION_TIMEOUT)
    assert response.status_code == 200, response.text
    rows: list[dict[str, object]] = response.json()
    return rows


def _instance_count(gw: RunningGateway, study: str) -> int:
    (row,) = _study_rows(gw, study)
    element = row["00201208"]
    assert isinstance(element, dict)
    return int(element["Value"][0])


def _retrieve(gw: RunningGateway, data: bytes) -> bytes:
    study, series, sop = uids_of(data)
    response = httpx.get(
        f"{gw.url}/studies/{study}/series/{series}/instances/{sop}", headers=AS_STORED, timeout=CONNECTION_TIMEOUT
    )
    assert response.status_code == 200, response.text
    [(_, body)] = split_multipart(response)
    return body


def test_stow_on_one_replica_is_visible_on_the_other_at_once(replicas: list[RunningGateway]) -> None:
    a, b = replicas
    instances = [factory.ct_instance(seed=600 + n, StudyInstanceUID=factory.new_uid("replicas", 1)) for n in range(3)]
    study = uids_of(instances[0])[0]
    assert _study_rows(b, study) == []
    response = stow(a.url, instances)
    assert response.status_code == 200, response.text
    # No delay, no cache to expire: the acknowledged STOW is in the shared index and bucket.
    assert _instance_count(b, study) == 3
    for data in instances:
        assert _retrieve(b, data) == data
    metadata = httpx.get(f"{b.url}/studies/{study}/metadata", timeout=CONNECTION_TIMEOUT)
    assert metadata.status_code == 200
    assert len(metadata.json()) == 3
    # And the other way round.
    more = factory.mr_instance(seed=610, StudyInstanceUID=study)
    assert stow(b.url, [more]).status_code == 200
    assert _instance_count(a, study) == 4
    assert _retrieve(a, more) == more


def test_concurrent_stow_of_one_instance_through_both_replicas_stores_one_copy(
    replicas: list[RunningGateway], s3_admin: S3Client, s3_bucket: S3Bucket
) -> None:
    a, b = replicas
    data = factory.ct_instance(seed=620)
    study, series, sop = uids_of(data)
    # Other instances of the same new study at the same time: the study's counters stay exact.
    siblings = [factory.ct_instance(seed=621 + n, StudyInstanceUID=study) for n in range(6)]
    jobs = [(gw, [data]) for gw in (a, b) * 4] + [(a if n % 2 else b, [s]) for n, s in enumerate(siblings)]
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        responses = list(pool.map(lambda job: stow(job[0].url, job[1]), jobs))
    assert [r.status_code for r in responses] == [200] * len(jobs), [r.text for r in responses if r.status_code != 200]

    keys = [
        obj["Key"]
        for page in s3_admin.get_paginator("list_objects_v2").paginate(Bucket=s3_bucket.bucket, Prefix="gw/")
        for obj in page.get("Contents", [])
    ]
    mine = [k for k in keys if f"/instances/{sop}." in k]
    assert sorted(mine) == sorted(
        f"gw/studies/{study}/series/{series}/instances/{sop}.{ext}" for ext in ("dcm", "json")
    ), keys
    assert len([k for k in keys if k.endswith(".dcm")]) == 1 + len(siblings)
    assert _instance_count(a, study) == _instance_count(b, study) == 1 + len(siblings)
    assert _retrieve(b, data) == data


def test_a_replica_and_its_local_data_can_be_lost(
    replicas: list[RunningGateway], tmp_path: Path, s3_bucket: S3Bucket, postgres_url: str
) -> None:
    # Everything a replica keeps locally (spooled uploads, caches) is disposable: replace one
    # replica by a new process with an empty data directory; the other serves throughout.
    a, b = replicas
    data = factory.ct_instance(seed=630)
    study = uids_of(data)[0]
    assert stow(a.url, [data]).status_code == 200
    stop_gateway(a)
    shutil.rmtree(a.data_dir, ignore_errors=True)
    assert _retrieve(b, data) == data
    fresh = _replica(tmp_path, "c", s3_bucket, postgres_url)
    replicas[0] = fresh  # stopped by the fixture
    assert _instance_count(fresh, study) == 1
    assert _retrieve(fresh, data) == data
    assert httpx.get(f"{fresh.root}/readyz", timeout=CONNECTION_TIMEOUT).status_code == 200
