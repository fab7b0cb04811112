"""End to end over the real server and both object stores: STOW → QIDO → WADO with
dicomweb-client as the client, plus raw HTTP where byte identity must be checked."""

from __future__ import annotations

import io

import httpx
import numpy as np
import pydicom
import pytest
from dicomweb_client import DICOMwebClient
from pydicom.encaps import generate_frames

from tests import factory
from tests.fixtures_gateway import RunningGateway
from tests.http_helpers import CONNECTION_TIMEOUT, read, split_multipart, stow, uids_of

AS_STORED = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}

VARIANTS = {
    "implicit-le": lambda: factory.ct_instance(transfer_syntax="1.2.840.10008.1.2", seed=11),
    "explicit-le": lambda: factory.ct_instance(seed=12),
    "rle": lambda: factory.rle_instance(seed=13, frames=2),
    "jpeg-baseline": lambda: factory.jpeg_baseline_instance(seed=14, frames=3),
    "multiframe": lambda: factory.multiframe_xa(seed=15, frames=12, rows=64, cols=64),
    "j2k-lossless": lambda: factory.j2k_lossless_instance(seed=16),
}


def expected_frames(data: bytes) -> list[bytes]:
    ds = read(data)
    n = int(ds.get("NumberOfFrames", 1) or 1)
    if ds.file_meta.TransferSyntaxUID.is_encapsulated:
        return list(generate_frames(ds.PixelData, number_of_frames=n))
    size = len(ds.PixelData) // n
    return [ds.PixelData[i * size : (i + 1) * size] for i in range(n)]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_instance_round_trips_byte_identical(gateway: RunningGateway, variant: str) -> None:
    data = VARIANTS[variant]()
    study, series, sop = uids_of(data)
    stored = stow(gateway.url, [data])
    assert stored.status_code == 200, stored.text

    response = httpx.get(f"{gateway.url}/studies/{study}/series/{series}/instances/{sop}", headers=AS_STORED)
    assert response.status_code == 200
    [(headers, body)] = split_multipart(response)
    assert body == data
    ts = read(data).file_meta.TransferSyntaxUID
    assert headers["content-type"] == f"application/dicom; transfer-syntax={ts}"

    # Frames as stored, in any order, one ranged read each: identical to pydicom's own split.
    frames = expected_frames(data)
    wanted = list(range(len(frames), 0, -1))
    client = DICOMwebClient(gateway.url)
    got = client.retrieve_instance_frames(
        study, series, sop, frame_numbers=wanted, media_types=(("application/octet-stream", "*"),)
    )
    assert got == [frames[n - 1] for n in wanted]


def test_series_retrieve_streams_every_instance(gateway: RunningGateway) -> None:
    instances = factory.ct_series(5, rows=32, cols=32, seed=21)
    assert stow(gateway.url, instances).status_code == 200
    study, series, _ = uids_of(instances[0])

    response = httpx.get(
        f"{gateway.url}/studies/{study}/series/{series}", headers=AS_STORED, timeout=CONNECTION_TIMEOUT
    )
    assert response.status_code == 200
    assert sorted(body for _, body in split_multipart(response)) == sorted(instances)

    # dicomweb-client decodes the same response into data sets.
    client = DICOMwebClient(gateway.url)
    datasets = client.retrieve_series(study, series)
    assert sorted(str(ds.SOPInstanceUID) for ds in datasets) == sorted(uids_of(i)[2] for i in instances)
    study_level = client.retrieve_study(study)
    assert len(study_level) == 5


def test_default_transfer_syntax_is_explicit_le_with_pixels_decoded(gateway: RunningGateway) -> None:
    """PS3.18 8.7.3.5: application/dicom without transfer-syntax is Explicit VR Little Endian."""
    data = factory.rle_instance(seed=31, frames=2)
    study, series, sop = uids_of(data)
    assert stow(gateway.url, [data]).status_code == 200
    response = httpx.get(
        f"{gateway.url}/studies/{study}/series/{series}/instances/{sop}",
        headers={"Accept": "multipart/related; type=application/dicom"},
    )
    assert response.status_code == 200
    [(headers, body)] = split_multipart(response)
    assert headers["content-type"] == "application/dicom; transfer-syntax=1.2.840.10008.1.2.1"
    got = read(body)
    assert got.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    np.testing.assert_array_equal(got.pixel_array, read(data).pixel_array)

    # Decoded frames for viewers that ask for uncompressed octet-stream.
    frames = DICOMwebClient(gateway.url).retrieve_instance_frames(
        study, series, sop, frame_numbers=[2], media_types=(("application/octet-stream", "1.2.840.10008.1.2.1"),)
    )
    expected = read(data).pixel_array[1].astype("<i2").tobytes()
    assert frames == [expected]


def test_unservable_transfer_syntax_is_406(gateway: RunningGateway) -> None:
    data = factory.ct_instance(seed=41)
    study, series, sop = uids_of(data)
    assert stow(gateway.url, [data]).status_code == 200
    response = httpx.get(
        f"{gateway.url}/studies/{study}/series/{series}/instances/{sop}",
        # JPEG XL Lossless: not encoded here (JPEG-LS, JPEG 2000, HTJ2K, RLE are: test_transcode.py, test_htj2k.py)
        headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.110'},
    )
    assert response.status_code == 406
    assert "1.2.840.10008.1.2.4.110" in response.json()["reason"]


def test_metadata_is_valid_dicom_json_with_resolving_bulk_data(gateway: RunningGateway) -> None:
    instances = factory.ct_series(3, rows=32, cols=32, seed=51)
    assert stow(gateway.url, instances).status_code == 200
    study, series, _ = uids_of(instances[0])
    client = DICOMwebClient(gateway.url)
    assert len(client.retrieve_series_metadata(study, series)) == 3
    # Raw JSON: dicomweb-client rewrites BulkDataURIs on the way in, and we check what we send.
    metadata = httpx.get(f"{gateway.url}/studies/{study}/series/{series}/metadata").json()
    assert len(metadata) == 3
    by_sop = {uids_of(i)[2]: i for i in instances}
    for item in metadata:
        # Numbers as JSON numbers, PN as objects (PS3.18 F.2.3, F.2.2).
        assert isinstance(item["00280010"]["Value"][0], int)  # Rows (US)
        assert all(isinstance(v, int | float) for v in item["00200032"]["Value"])  # IPP (DS)
        assert isinstance(item["00200013"]["Value"][0], int)  # InstanceNumber (IS)
        assert item["00100010"]["Value"][0] == {"Alphabetic": "DOE^JOHN"}
        ds = pydicom.Dataset.from_json(item, bulk_data_uri_handler=lambda *_: b"")
        original = read(by_sop[str(ds.SOPInstanceUID)])
        assert ds.ImagePositionPatient == original.ImagePositionPatient
        uri = item["7FE00010"]["BulkDataURI"]
        assert uri.startswith(gateway.url + "/studies/")
        [pixels] = client.retrieve_bulkdata(uri)
        assert pixels == original.PixelData

    study_meta = httpx.get(f"{gateway.url}/studies/{study}/metadata")
    assert study_meta.headers["content-type"].startswith("application/dicom+json")
    assert len(study_meta.json()) == 3


def test_qido_finds_what_was_stored(gateway: RunningGateway) -> None:
    catalog = factory.study_catalog(series_per_study=2, instances_per_series=2)
    client = DICOMwebClient(gateway.url)
    client.store_instances([pydicom.dcmread(io.BytesIO(d)) for d in catalog])

    studies = client.search_for_studies()
    assert len(studies) == len(factory.CATALOG)
    doe = client.search_for_studies(search_filters={"PatientName": "DOE*"})
    assert sorted(s["00100010"]["Value"][0]["Alphabetic"] for s in doe) == ["DOE^JANE", "DOE^JOHN"]
    for row in doe:
        assert row["00201208"]["Value"] == [4]  # NumberOfStudyRelatedInstances
        assert row["00201206"]["Value"] == [2]  # NumberOfStudyRelatedSeries
    raw = httpx.get(f"{gateway.url}/studies", params={"PatientName": "DOE*"}).json()
    assert all(row["00081190"]["Value"][0].startswith(gateway.url + "/studies/") for row in raw)

    # Case-insensitive PN, Latin-1 names decoded, date ranges, modalities.
    assert len(client.search_for_studies(search_filters={"PatientName": "müller*"})) == 1
    in_2024 = client.search_for_studies(search_filters={"StudyDate": "20240101-20241231"})
    assert len(in_2024) == 4
    mr = client.search_for_studies(search_filters={"ModalitiesInStudy": "MR"})
    assert len(mr) == 2
    fuzzy = client.search_for_studies(fuzzymatching=True, search_filters={"PatientName": "jurgen"})
    assert [row["00100010"]["Value"][0]["Alphabetic"] for row in fuzzy] == [factory.LATIN1_NAME]

    study_uid = doe[0]["0020000D"]["Value"][0]
    series = client.search_for_series(study_uid)
    assert len(series) == 2
    instances = client.search_for_instances(study_uid, fields=["all"])
    assert len(instances) == 4

    # limit/offset with the Warning header that more results exist (PS3.18 8.3.4.4).
    page = httpx.get(f"{gateway.url}/studies", params={"limit": 2})
    assert page.status_code == 200
    assert len(page.json()) == 2
    assert "warning" in page.headers

    bad = httpx.get(f"{gateway.url}/studies", params={"NoSuchKeyword": "x"})
    assert bad.status_code == 400
    assert "NoSuchKeyword" in bad.json()["reason"]


def test_unknown_and_invalid_uids(gateway: RunningGateway) -> None:
    missing = httpx.get(f"{gateway.url}/studies/1.2.3/series/4.5.6/metadata")
    assert missing.status_code == 404
    for bad in ("1.2.abc", "1.02.3", "1" * 65, "1.2.3%00", "1.2.3%20"):
        response = httpx.get(f"{gateway.url}/studies/{bad}/metadata")
        assert response.status_code == 400, bad
        assert "not a valid DICOM UID" in response.json()["reason"]
    # An encoded slash never reaches a UID: the route does not match at all.
    assert httpx.get(f"{gateway.url}/studies/..%2F..%2Fetc/metadata").status_code == 404
