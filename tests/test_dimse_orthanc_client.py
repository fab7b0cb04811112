"""Orthanc as a DIMSE client of the front door (the gateway in its DicomModalities): its REST
API's C-ECHO and C-STORE of a study, then the study over WADO-RS, byte for byte."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest

from tests import factory
from tests.dimse_gateway import DimseGateway, client, dimse_gateway
from tests.http_helpers import split_multipart
from tests.peers.orthanc import OrthancPeer, orthanc_available, run_orthanc, upload_study
from tests.peers.ports import free_port

pytestmark = [
    pytest.mark.skipif(not orthanc_available(), reason="Orthanc is not installed (apt-get install orthanc-dicomweb)"),
    pytest.mark.orthanc,
    pytest.mark.timeout(180),
]


@pytest.fixture(scope="module")
def peers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DimseGateway, OrthancPeer]]:
    where = tmp_path_factory.mktemp("orthanc-client")
    port = free_port()
    # Orthanc calls with its own AE title, ORTHANC.
    with (
        dimse_gateway(
            where / "gw", clients=[client("ORTHANC", name="orthanc", scopes=["read", "write"])], scp_port=port
        ) as gw,
        run_orthanc(where / "orthanc", gateway_aet=gw.ae_title, gateway_port=port) as orthanc,
    ):
        yield gw, orthanc


def dataset_bytes(part10: bytes) -> bytes:
    assert part10[128:132] == b"DICM"
    (meta_length,) = struct.unpack("<I", part10[140:144])
    return part10[144 + meta_length :]


def sop_of(part10: bytes) -> str:
    return str(pydicom.dcmread(pydicom.filebase.DicomBytesIO(part10), stop_before_pixels=True).SOPInstanceUID)


def test_orthanc_echoes_the_gateway(peers: tuple[DimseGateway, OrthancPeer]) -> None:
    _, orthanc = peers
    response = httpx.post(f"{orthanc.http_url}/modalities/gateway/echo", content=b"{}", timeout=30)
    assert response.status_code == 200, response.text


def test_a_study_pushed_by_orthanc_is_byte_identical_over_wado_rs(
    peers: tuple[DimseGateway, OrthancPeer], tmp_path: Path
) -> None:
    gw, orthanc = peers
    study = factory.new_uid("orthanc-push", 1)
    instances = [
        *factory.ct_series(6, rows=64, cols=64, study_uid=study, series_uid=factory.new_uid("orthanc-ct", 1), seed=1),
        factory.enhanced_ct(seed=2, study_uid=study),
        factory.j2k_lossless_instance(seed=3, study_uid=study),
    ]
    orthanc_study = upload_study(orthanc, instances)
    pushed = httpx.post(
        f"{orthanc.http_url}/modalities/gateway/store",
        json={"Resources": [orthanc_study], "Synchronous": True},
        timeout=120,
    )
    assert pushed.status_code == 200, pushed.text
    assert pushed.json()["FailedInstancesCount"] == 0, pushed.json()
    response = gw.get(f"/studies/{study}", Accept='multipart/related; type="application/dicom"; transfer-syntax=*')
    assert response.status_code == 200, response.text
    received = {sop_of(part): part for _, part in split_multipart(response)}
    originals = {sop_of(data): data for data in instances}
    assert received.keys() == originals.keys()
    for sop, original in originals.items():
        assert dataset_bytes(received[sop]) == dataset_bytes(original), sop
