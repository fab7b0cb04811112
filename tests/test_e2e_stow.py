"""STOW-RS over the real server: response codes and FailureReasons for every bad-input case,
duplicates, concurrency, and the reindex that rebuilds the index from the store."""

from __future__ import annotations

import concurrent.futures
import shutil

import boto3
import httpx
import pytest

from tests import factory
from tests.fixtures_gateway import RunningGateway
from tests.http_helpers import failure_reasons, referenced_sops, stow, stow_body, uids_of

CANNOT_UNDERSTAND = 0xC000
STUDY_MISMATCH = 0xA900
DUPLICATE_SOP = 0x0111


def stored_objects(gw: RunningGateway, s3_bucket: object | None = None) -> list[str]:
    """Every object key the store holds (what a user would see on disk or in the bucket)."""
    if gw.store_kind == "file":
        root = gw.data_dir / "objects"
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []
    assert s3_bucket is not None
    s3 = boto3.client(
        "s3",
        endpoint_url=s3_bucket.endpoint_url,  # type: ignore[attr-defined]
        aws_access_key_id=s3_bucket.access_key,  # type: ignore[attr-defined]
        aws_secret_access_key=s3_bucket.secret_key,  # type: ignore[attr-defined]
        region_name="us-east-1",
    )
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=s3_bucket.bucket)  # type: ignore[attr-defined]
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def without_urls(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    """QIDO rows without RetrieveURL, which names the (per-run) port."""
    return [{k: v for k, v in row.items() if k != "00081190"} for row in rows]


def bucket_of(request: pytest.FixtureRequest, gw: RunningGateway) -> object | None:
    return request.getfixturevalue("s3_bucket") if gw.store_kind == "s3" else None


def post(gw: RunningGateway, body: bytes, content_type: str | None, path: str = "/studies") -> httpx.Response:
    headers = {"Accept": "application/dicom+json"}
    if content_type is not None:
        headers["Content-Type"] = content_type
    return httpx.post(gw.url + path, content=body, headers=headers, timeout=60)


def test_request_level_errors(file_gateway: RunningGateway) -> None:
    gw = file_gateway
    good = factory.ct_instance(seed=1)
    body, content_type = stow_body([good])

    not_multipart = post(gw, good, "application/dicom")
    assert not_multipart.status_code == 415
    assert "multipart/related" in not_multipart.json()["reason"]

    no_boundary = post(gw, body, 'multipart/related; type="application/dicom"')
    assert no_boundary.status_code == 400
    assert "boundary" in no_boundary.json()["reason"]

    xml_parts = post(gw, body, content_type.replace("application/dicom", "application/dicom+xml"))
    assert xml_parts.status_code == 415

    empty = post(gw, b"", content_type)
    assert empty.status_code == 400

    no_content_type = post(gw, body, None)
    assert no_content_type.status_code == 415

    cut = post(gw, body[: len(body) // 2], content_type)  # body ends before the closing boundary
    assert cut.status_code == 400
    assert stored_objects(gw) == []

    bad_study = post(gw, body, content_type, path="/studies/1.2.03")
    assert bad_study.status_code == 400


@pytest.mark.parametrize(
    ("case", "make", "status", "reason"),
    [
        ("not-dicom", lambda: b"hello, this is not DICOM" * 10, 400, CANNOT_UNDERSTAND),
        ("no-preamble", lambda: factory.ct_instance(seed=2)[128:], 400, CANNOT_UNDERSTAND),
        ("truncated", lambda: factory.truncated(factory.ct_instance(seed=3)), 400, CANNOT_UNDERSTAND),
        ("bad-sop-uid", lambda: factory.without(factory.ct_instance(seed=4), SOPInstanceUID="1.2.03.4"), 400, None),
        ("missing-study-uid", lambda: factory.without(factory.ct_instance(seed=5), "StudyInstanceUID"), 400, None),
        ("zero-bytes", lambda: b"", 400, CANNOT_UNDERSTAND),
    ],
)
def test_instance_level_failures(
    gateway: RunningGateway, request: pytest.FixtureRequest, case: str, make: object, status: int, reason: int | None
) -> None:
    response = stow(gateway.url, [make()])  # type: ignore[operator]
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/dicom+json")
    reasons = failure_reasons(response)
    assert len(reasons) == 1
    if reason is not None:
        assert reasons == [reason]
    assert "warning" in response.headers  # the human-readable reason
    assert stored_objects(gateway, bucket_of(request, gateway)) == []


def test_study_mismatch_is_409_and_partial_success_is_202(gateway: RunningGateway) -> None:
    a = factory.ct_instance(seed=6)
    b = factory.ct_instance(seed=7, study_uid=factory.new_uid("other-study"))
    study_a = uids_of(a)[0]

    mismatch = stow(gateway.url, [b], study=study_a)
    assert mismatch.status_code == 409
    assert failure_reasons(mismatch) == [STUDY_MISMATCH]

    partial = stow(gateway.url, [a, b, b"junk"], study=study_a)
    assert partial.status_code == 202
    assert referenced_sops(partial) == [uids_of(a)[2]]
    assert sorted(failure_reasons(partial)) == sorted([STUDY_MISMATCH, CANNOT_UNDERSTAND])
    assert partial.json()["00081190"]["Value"] == [f"{gateway.url}/studies/{study_a}"]


def test_duplicates(gateway: RunningGateway, request: pytest.FixtureRequest) -> None:
    original = factory.ct_instance(seed=8)
    study, series, sop = uids_of(original)
    assert stow(gateway.url, [original]).status_code == 200
    objects_before = stored_objects(gateway, bucket_of(request, gateway))

    again = stow(gateway.url, [original])
    assert again.status_code == 200
    assert referenced_sops(again) == [sop]

    changed = factory.ct_instance(seed=8, StudyDescription="SOMETHING ELSE")
    assert uids_of(changed) == (study, series, sop)
    refused = stow(gateway.url, [changed])
    assert refused.status_code == 409
    assert failure_reasons(refused) == [DUPLICATE_SOP]

    assert stored_objects(gateway, bucket_of(request, gateway)) == objects_before
    got = httpx.get(
        f"{gateway.url}/studies/{study}/series/{series}/instances/{sop}/metadata",
    ).json()
    assert got[0]["00081030"]["Value"] == ["CT CHEST"]  # not silently overwritten


def test_sixteen_concurrent_uploads_leave_one_copy(gateway: RunningGateway, request: pytest.FixtureRequest) -> None:
    data = factory.ct_instance(seed=9, rows=256, cols=256)
    study, _, sop = uids_of(data)
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(lambda _: stow(gateway.url, [data]), range(16)))
    assert [r.status_code for r in responses] == [200] * 16
    objects = stored_objects(gateway, bucket_of(request, gateway))
    prefix = "gw/" if gateway.store_kind == "s3" else ""
    key = f"{prefix}studies/{study}/series/{uids_of(data)[1]}/instances/{sop}"
    assert objects == [key + ".dcm", key + ".json"]
    rows = httpx.get(f"{gateway.url}/studies/{study}/instances").json()
    assert len(rows) == 1
    if gateway.store_kind == "file":
        assert [p for p in (gateway.data_dir / "spool").rglob("*") if p.is_file()] == []


def test_reindex_rebuilds_the_same_answers(gateway: RunningGateway) -> None:
    catalog = factory.study_catalog(series_per_study=1, instances_per_series=2)
    assert stow(gateway.url, catalog).status_code == 200
    queries = [
        "/studies?includefield=all",
        "/studies?PatientName=doe*",
        "/series?includefield=all",
        "/instances?includefield=all",
    ]
    before = {q: httpx.get(gateway.url + q).json() for q in queries}

    index_file = gateway.data_dir / "index.sqlite3"
    result = gateway.cli("reindex", "--quiet")
    assert result.returncode == 0, result.stderr
    assert f"indexed {len(catalog)} instance(s)" in result.stdout

    after = {q: httpx.get(gateway.url + q).json() for q in queries}
    assert after == before
    assert index_file.exists()


def test_reindex_from_an_empty_index(tmp_path: object, request: pytest.FixtureRequest) -> None:
    """The store alone is enough: a fresh index built by reindex answers like the original."""
    from pathlib import Path

    from tests.fixtures_gateway import start_gateway, stop_gateway

    tmp = Path(str(tmp_path))
    gw = start_gateway(tmp)
    try:
        catalog = factory.study_catalog(series_per_study=1, instances_per_series=1)
        assert stow(gw.url, catalog).status_code == 200
        before = without_urls(httpx.get(gw.url + "/studies?includefield=all").json())
    finally:
        stop_gateway(gw)
    for suffix in ("", "-wal", "-shm"):
        (tmp / "data" / f"index.sqlite3{suffix}").unlink(missing_ok=True)
    shutil.rmtree(tmp / "data" / "spool", ignore_errors=True)
    result = gw.cli("reindex", "--quiet")
    assert result.returncode == 0, result.stderr
    gw2 = start_gateway(tmp)
    try:
        assert without_urls(httpx.get(gw2.url + "/studies?includefield=all").json()) == before
    finally:
        stop_gateway(gw2)
