"""Metadata correction in Microsoft's ``$bulkUpdate`` shape over a real gateway process with OIDC
tokens: a corrected study read back through QIDO, series metadata and WADO (the Part 10 header
changed, the pixel data identical), one change-feed ``update`` entry per instance, the audit
trail, the original still retrievable byte for byte; and the refusals (scope, attributes that
may not change, unknown and hidden studies)."""

from __future__ import annotations

import io
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import orjson
import pydicom
import pytest

from tests import factory
from tests.fixtures_gateway import start_gateway, stop_gateway
from tests.fixtures_s3 import S3Bucket
from tests.fixtures_security import Issuer, JwksServer, SecuredGateway, oidc_config, start_secured_gateway
from tests.http_helpers import split_multipart, stow, uids_of
from tests.test_delete import audited_gateway, store, token

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

pytestmark = pytest.mark.timeout(300)

NEW_NAME = "CORRECTED^NAME"
NEW_ACCESSION = "ACC-FIXED-1"
CHANGE = {
    "00100010": {"vr": "PN", "Value": [{"Alphabetic": NEW_NAME}]},
    "00080050": {"vr": "SH", "Value": [NEW_ACCESSION]},
}


@pytest.fixture(scope="module")
def sg(tmp_path_factory: pytest.TempPathFactory, jwks_server: JwksServer) -> Iterator[SecuredGateway]:
    with audited_gateway(tmp_path_factory.mktemp("bulk-update"), jwks_server) as running:
        yield running


def bulk_update(sg: SecuredGateway, headers: dict[str, str], studies: list[str], change: Any) -> httpx.Response:
    body = {"studyInstanceUids": studies, "changeDataset": change}
    return httpx.post(f"{sg.url}/studies/$bulkUpdate", json=body, headers=headers, timeout=30)


def finished(sg: SecuredGateway, issuer: Issuer, href: str) -> dict[str, Any]:
    """Poll the operation as a client does until it is no longer running."""
    admin = token(issuer, "admin")
    deadline = time.monotonic() + 60
    while True:
        response = httpx.get(href, headers=admin, timeout=30)
        assert response.status_code == 200, response.text
        operation: dict[str, Any] = response.json()
        if operation["status"] not in ("notStarted", "running"):
            return operation
        assert time.monotonic() < deadline, operation
        time.sleep(0.1)


def pixel_data(data: bytes) -> bytes:
    value = pydicom.dcmread(io.BytesIO(data))["PixelData"].value
    assert isinstance(value, bytes)
    return value


def test_a_corrected_study_reads_back_everywhere_and_its_original_is_kept(sg: SecuredGateway, issuer: Issuer) -> None:
    corrects_a_study(sg, issuer, seed=701)


def test_the_same_on_postgresql(tmp_path: Path, jwks_server: JwksServer, issuer: Issuer, postgres_url: str) -> None:
    config = f'[audit]\ndestination = "{tmp_path / "audit.jsonl"}"\n' + oidc_config(jwks_server.url)
    running = start_secured_gateway(tmp_path, config, extra_args=("--index-url", postgres_url))
    running.extra["audit"] = tmp_path / "audit.jsonl"
    try:
        corrects_a_study(running, issuer, seed=704)
    finally:
        stop_gateway(running.gw)


def corrects_a_study(sg: SecuredGateway, issuer: Issuer, *, seed: int) -> None:
    """STOW a CT series, correct its PatientName and AccessionNumber, and check every way back."""
    instances = factory.ct_series(3, 64, 64, seed=seed, patient_name="WRONG^NAME", AccessionNumber="ACC-WRONG")
    store(sg, issuer, instances)
    study, series, _ = uids_of(instances[0])
    reader = token(issuer, "read")

    response = bulk_update(sg, token(issuer, "admin", sub="registrar"), [study], CHANGE)
    assert response.status_code == 202, response.text
    reference = response.json()
    assert reference["href"] == f"{sg.url}/operations/{reference['id']}"
    operation = finished(sg, issuer, reference["href"])
    assert operation["status"] == "succeeded", operation
    assert operation["operationId"] == reference["id"]
    assert (operation["type"], operation["percentComplete"]) == ("update", 100)
    results = operation["results"]
    assert (results["studyUpdated"], results["studyFailed"], results["instanceUpdated"]) == (1, 0, 3)

    # QIDO at study and instance level.
    (row,) = httpx.get(f"{sg.url}/studies", params={"StudyInstanceUID": study}, headers=reader).json()
    assert row["00100010"]["Value"] == [{"Alphabetic": NEW_NAME}]
    assert row["00080050"]["Value"] == [NEW_ACCESSION]
    found = httpx.get(f"{sg.url}/studies", params={"AccessionNumber": NEW_ACCESSION}, headers=reader).json()
    assert [r["0020000D"]["Value"][0] for r in found] == [study]
    assert httpx.get(f"{sg.url}/studies", params={"AccessionNumber": "ACC-WRONG"}, headers=reader).json() == []
    # Series metadata.
    metadata = httpx.get(f"{sg.url}/studies/{study}/series/{series}/metadata", headers=reader).json()
    assert len(metadata) == 3
    assert {m["00100010"]["Value"][0]["Alphabetic"] for m in metadata} == {NEW_NAME}
    assert {m["00080050"]["Value"][0] for m in metadata} == {NEW_ACCESSION}

    for original in instances:
        _, _, sop = uids_of(original)
        # WADO-RS as stored: the header is corrected, the pixel data the same bytes.
        wado = httpx.get(
            f"{sg.url}/studies/{study}/series/{series}/instances/{sop}",
            headers={**reader, "Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
            timeout=30,
        )
        assert wado.status_code == 200
        ((_, part),) = split_multipart(wado)
        corrected = pydicom.dcmread(io.BytesIO(part))
        assert (str(corrected.PatientName), corrected.AccessionNumber) == (NEW_NAME, NEW_ACCESSION)
        assert corrected.SOPInstanceUID == sop
        assert pixel_data(part) == pixel_data(original)
        # The original, byte for byte as it was stored, for admins only.
        url = f"{sg.url}/studies/{study}/series/{series}/instances/{sop}/original"
        kept = httpx.get(url, headers=token(issuer, "admin"), timeout=30)
        assert kept.status_code == 200, kept.text
        assert kept.headers["content-type"] == "application/dicom"
        assert kept.content == original
        assert httpx.get(url, headers=reader, timeout=30).status_code == 403

    # One update entry per instance; the earlier create entries are now "replaced".
    feed = httpx.get(f"{sg.url}/changefeed", params={"limit": 200}, headers=reader, timeout=30).json()
    mine = [e for e in feed if e["StudyInstanceUid"] == study]
    updates = [e for e in mine if e["Action"] == "update"]
    assert sorted(e["SopInstanceUid"] for e in updates) == sorted(uids_of(d)[2] for d in instances)
    assert {e["State"] for e in updates} == {"current"}
    assert {e["State"] for e in mine if e["Action"] == "create"} == {"replaced"}

    # The audit trail names who corrected which instances, and what changed.
    events = [orjson.loads(line) for line in sg.extra["audit"].read_bytes().splitlines()]
    (event,) = [e for e in events if e.get("http", {}).get("path") == f"operations/{reference['id']}"]
    assert event["EventIdentification"]["EventActionCode"] == "U"
    assert event["ActiveParticipant"][0]["UserID"] == "jwt:registrar"
    corrected_objects = [
        o for o in event["ParticipantObjectIdentification"] if o.get("ParticipantObjectDescription") == "corrected"
    ]
    assert len(corrected_objects) == 3
    assert corrected_objects[0]["ParticipantObjectDetail"]["ChangedAttributes"] == ["AccessionNumber", "PatientName"]


def test_a_second_correction_keeps_the_first_original(sg: SecuredGateway, issuer: Issuer) -> None:
    instances = factory.ct_series(1, 64, 64, seed=702)
    store(sg, issuer, instances)
    study, series, sop = uids_of(instances[0])
    admin = token(issuer, "read admin")
    for accession in ("FIRST", "SECOND"):
        change = {"00080050": {"vr": "SH", "Value": [accession]}}
        response = bulk_update(sg, admin, [study], change)
        assert finished(sg, issuer, response.json()["href"])["status"] == "succeeded"
    wado = httpx.get(
        f"{sg.url}/studies/{study}/series/{series}/instances/{sop}",
        headers={**admin, "Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
        timeout=30,
    )
    ((_, part),) = split_multipart(wado)
    assert pydicom.dcmread(io.BytesIO(part)).AccessionNumber == "SECOND"
    url = f"{sg.url}/studies/{study}/series/{series}/instances/{sop}/original"
    assert httpx.get(url, headers=admin, timeout=30).content == instances[0]
    # Deleting the instance takes its versions along: nothing is retrievable afterwards.
    assert httpx.delete(f"{sg.url}/studies/{study}", headers=admin, timeout=30).status_code == 204
    assert httpx.get(url, headers=admin, timeout=30).status_code == 404


def test_refusals(sg: SecuredGateway, issuer: Issuer) -> None:
    instances = factory.ct_series(1, 64, 64, seed=703)
    store(sg, issuer, instances)
    study = uids_of(instances[0])[0]
    admin = token(issuer, "read admin")
    # Writing is not enough: a correction needs admin.
    assert bulk_update(sg, token(issuer, "read write"), [study], CHANGE).status_code == 403
    # UIDs and attributes outside the Patient and Study modules never change; the answer names them.
    for tag, keyword, element in (
        ("0020000D", "StudyInstanceUID", {"vr": "UI", "Value": ["1.2.3"]}),
        ("00080018", "SOPInstanceUID", {"vr": "UI", "Value": ["1.2.3"]}),
        ("00080060", "Modality", {"vr": "CS", "Value": ["MR"]}),
    ):
        response = bulk_update(sg, admin, [study], {tag: element})
        assert response.status_code == 400, response.text
        assert keyword in response.json()["reason"]
    bad_bodies: list[tuple[bytes, str]] = [
        (b"{not json", "not JSON"),
        (b"[]", "JSON object"),
        (orjson.dumps({"studyInstanceUids": [], "changeDataset": CHANGE}), "studyInstanceUids"),
        (orjson.dumps({"studyInstanceUids": ["1.02"], "changeDataset": CHANGE}), "not a valid DICOM UID"),
        (orjson.dumps({"studyInstanceUids": [study], "changeDataset": {}}), "changeDataset"),
        (orjson.dumps({"studyInstanceUids": [study], "changeDataset": {"00100010": {"vr": "LO"}}}), "VR"),
        (orjson.dumps({"studyInstanceUids": [study], "changeDataset": {"00100030": {"vr": "DA", "Value": ["x"]}}}), ""),
    ]
    for body, reason in bad_bodies:
        response = httpx.post(
            f"{sg.url}/studies/$bulkUpdate",
            content=body,
            headers={**admin, "Content-Type": "application/json"},
            timeout=30,
        )
        assert response.status_code == 400, (body, response.text)
        assert reason in response.json()["reason"]
    # An unknown study, and one outside a restricted admin's restriction, are failures of the
    # operation (Microsoft's way), with nothing changed.
    unknown = factory.new_uid("bulk-update-unknown", 1)
    operation = finished(sg, issuer, bulk_update(sg, admin, [unknown, study], CHANGE).json()["href"])
    assert operation["status"] == "failed"
    results = operation["results"]
    assert (results["studyUpdated"], results["studyFailed"], results["instanceUpdated"]) == (1, 1, 1)
    assert results["errors"] == [f"study {unknown}: no such study is stored"]
    restricted = token(issuer, "admin", {"StudyInstanceUID": ["1.2.3.4"]}, sub="restricted")
    response = bulk_update(sg, restricted, [study], {"00080050": {"vr": "SH", "Value": ["HIDDEN"]}})
    assert response.status_code == 202
    href = response.json()["href"]
    # Its own operation it may read; the other admin's it may not.
    assert httpx.get(href, headers=restricted, timeout=30).status_code == 200
    own = finished(sg, issuer, href)
    assert (own["status"], own["results"]["studyFailed"]) == ("failed", 1)
    (row,) = httpx.get(f"{sg.url}/studies", params={"StudyInstanceUID": study}, headers=admin).json()
    assert row["00080050"]["Value"] == [NEW_ACCESSION]
    other = f"{sg.url}/operations/{operation['operationId']}"
    assert httpx.get(other, headers=restricted, timeout=30).status_code == 404
    assert httpx.get(f"{sg.url}/operations/{'0' * 32}", headers=admin, timeout=30).status_code == 404


def anonymous_update(url: str, studies: list[str], change: Any) -> str:
    response = httpx.post(
        f"{url}/studies/$bulkUpdate", json={"studyInstanceUids": studies, "changeDataset": change}, timeout=30
    )
    assert response.status_code == 202, response.text
    href: str = response.json()["href"]
    return href


def status_of(href: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while True:
        operation: dict[str, Any] = httpx.get(href, timeout=30).json()
        if operation["status"] not in ("notStarted", "running"):
            return operation
        assert time.monotonic() < deadline, operation
        time.sleep(0.1)


def accessions(url: str, study: str) -> list[str]:
    rows = httpx.get(f"{url}/studies/{study}/instances", params={"includefield": "00080050"}, timeout=30).json()
    return sorted(row["00080050"]["Value"][0] for row in rows)


def version_objects(data_dir: Path, study: str) -> list[Path]:
    return sorted((data_dir / "objects" / "studies" / study).glob("series/*/instances/*/versions/*"))


def test_a_crash_leaves_each_study_corrected_whole_or_not_at_all(tmp_path: Path) -> None:
    # Two studies; the gateway is killed (SIGKILL) as soon as the second one's first corrected
    # object is written: the first study was committed, the second was not.
    studies = [
        factory.ct_series(40, 128, 128, seed=seed, study_uid=factory.new_uid("crash", seed), AccessionNumber="OLD")
        for seed in (711, 712)
    ]
    first, second = (uids_of(series[0])[0] for series in studies)
    gw = start_gateway(tmp_path)
    try:
        for series in studies:
            assert stow(gw.url, series).status_code == 200
        href = anonymous_update(gw.url, [first, second], {"00080050": {"vr": "SH", "Value": ["NEW"]}})
        deadline = time.monotonic() + 60
        while not version_objects(gw.data_dir, second):
            assert time.monotonic() < deadline, "the second study was never started"
            time.sleep(0.002)
        gw.process.kill()
        gw.process.wait()
    finally:
        stop_gateway(gw)
    assert version_objects(gw.data_dir, second)  # what the kill left behind
    again = start_gateway(tmp_path)
    try:
        assert accessions(again.url, first) == ["NEW"] * 40
        assert accessions(again.url, second) == ["OLD"] * 40
        operation = status_of(again.url + href[href.index("/operations/") :])
        assert operation["status"] == "failed"
        assert (operation["results"]["studyUpdated"], operation["results"]["instanceUpdated"]) == (1, 40)
        assert "stopped" in operation["results"]["errors"][-1]
        # The uncommitted objects are gone; the committed ones serve the first study.
        assert version_objects(again.data_dir, second) == []
        assert len(version_objects(again.data_dir, first)) == 80  # Part 10 and metadata JSON
        feed = httpx.get(f"{again.url}/changefeed", params={"limit": 200}, timeout=30).json()
        assert Counter((e["StudyInstanceUid"], e["Action"]) for e in feed if e["Action"] == "update") == {
            (first, "update"): 40
        }
    finally:
        stop_gateway(again)


def test_originals_are_deleted_once_their_time_is_over(tmp_path: Path) -> None:
    instances = factory.ct_series(2, 64, 64, seed=721)
    study, series, sop = uids_of(instances[0])
    gw = start_gateway(tmp_path, env={"DICOMWEB_GATEWAY_BULK_UPDATE_KEEP_ORIGINAL_SECONDS": "1"})
    try:
        assert stow(gw.url, instances).status_code == 200
        href = anonymous_update(gw.url, [study], {"00080050": {"vr": "SH", "Value": ["NEW"]}})
        assert status_of(href)["status"] == "succeeded"
        original = f"{gw.url}/studies/{study}/series/{series}/instances/{sop}/original"
        stored = gw.data_dir / "objects" / "studies" / study / "series" / series / "instances" / f"{sop}.dcm"
        deadline = time.monotonic() + 30
        while httpx.get(original, timeout=30).status_code != 404 or stored.exists():
            assert time.monotonic() < deadline, "the original was never deleted"
            time.sleep(0.2)
        # The corrected version still serves.
        assert accessions(gw.url, study) == ["NEW", "NEW"]
        wado = httpx.get(
            f"{gw.url}/studies/{study}/series/{series}/instances/{sop}",
            headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
            timeout=30,
        )
        ((_, part),) = split_multipart(wado)
        assert pixel_data(part) == pixel_data(instances[0])
    finally:
        stop_gateway(gw)


def test_reindex_keeps_the_corrections(tmp_path: Path) -> None:
    # The store is the source of truth: a rebuild takes each instance's newest version.
    instances = factory.ct_series(2, 64, 64, seed=731, AccessionNumber="OLD")
    study, series, sop = uids_of(instances[0])
    gw = start_gateway(tmp_path)
    try:
        assert stow(gw.url, instances).status_code == 200
        for accession in ("FIRST", "SECOND"):
            href = anonymous_update(gw.url, [study], {"00080050": {"vr": "SH", "Value": [accession]}})
            assert status_of(href)["status"] == "succeeded"
    finally:
        stop_gateway(gw)
    result = gw.cli("reindex", "--quiet")
    assert result.returncode == 0, result.stderr
    assert "indexed 2 instance(s); 0 object(s) rejected" in result.stdout
    again = start_gateway(tmp_path)
    try:
        assert accessions(again.url, study) == ["SECOND", "SECOND"]
        metadata = httpx.get(f"{again.url}/studies/{study}/series/{series}/metadata", timeout=30).json()
        assert {m["00080050"]["Value"][0] for m in metadata} == {"SECOND"}
        # The index kept what the versions replaced: the original is still retrievable.
        original = httpx.get(f"{again.url}/studies/{study}/series/{series}/instances/{sop}/original", timeout=30)
        assert original.content == instances[0]
    finally:
        stop_gateway(again)


def test_on_s3_a_delete_leaves_no_version_behind(tmp_path: Path, s3_bucket: S3Bucket, s3_admin: S3Client) -> None:
    instances = factory.ct_series(2, 64, 64, seed=741)
    study, series, sop = uids_of(instances[0])
    gw = start_gateway(tmp_path, store_kind="s3", s3=s3_bucket, env={"DICOMWEB_GATEWAY_DELETE_GRACE": "0"})

    def keys() -> list[str]:
        pages = s3_admin.get_paginator("list_objects_v2").paginate(Bucket=s3_bucket.bucket)
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []) if f"/{study}/" in o["Key"])

    try:
        assert stow(gw.url, instances).status_code == 200
        href = anonymous_update(gw.url, [study], {"00080050": {"vr": "SH", "Value": ["NEW"]}})
        assert status_of(href)["status"] == "succeeded"
        assert len(keys()) == 8  # each instance: original and corrected, Part 10 and metadata JSON
        assert accessions(gw.url, study) == ["NEW", "NEW"]
        original = httpx.get(f"{gw.url}/studies/{study}/series/{series}/instances/{sop}/original", timeout=30)
        assert original.content == instances[0]
        assert httpx.delete(f"{gw.url}/studies/{study}", timeout=30).status_code == 204
        deadline = time.monotonic() + 30
        while keys():
            assert time.monotonic() < deadline, keys()
            time.sleep(0.2)
    finally:
        stop_gateway(gw)
