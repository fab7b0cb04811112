"""A retrieve that ends with a warning status (PS3.4 C.4.3.1.3: B000, sub-operations complete
with one or more failures) from a real PACS: dcmqrscp holding a series with one instance it
cannot send to the gateway (its SOP Class is one no storage SCP of the gateway accepts)."""

from __future__ import annotations

from collections.abc import Iterator
from io import BytesIO

import httpx
import pytest
from pydicom import dcmread

from tests import factory
from tests.fixtures_pacs import GATEWAY_AET, GatewayFactory, node
from tests.http_helpers import split_multipart, uids_of
from tests.peers.dcmqrscp import DcmqrscpPeer, dcmqrscp_available, run_dcmqrscp
from tests.test_pacs_wado import AS_STORED

pytestmark = pytest.mark.timeout(120)

STUDY = factory.new_uid("warning-study")
SERIES = factory.new_uid("warning-series")
PRIVATE_SOP_CLASS = "1.2.826.0.1.3680043.8.498.4242.1"  # no pynetdicom storage context for it
IDENTITY = {"study_uid": STUDY, "series_uid": SERIES, "PatientID": "PID-WARN", "patient_name": "WARNING^PARTIAL"}


def _private_instance() -> bytes:
    ds = dcmread(BytesIO(factory.ct_instance(seed=44, instance_number=4, **IDENTITY)))
    ds.SOPClassUID = PRIVATE_SOP_CLASS
    ds.file_meta.MediaStorageSOPClassUID = PRIVATE_SOP_CLASS
    return factory.to_part10_bytes(ds)


@pytest.fixture(scope="module")
def sendable() -> list[bytes]:
    return [factory.ct_instance(seed=40 + i, instance_number=i, **IDENTITY) for i in (1, 2, 3)]


@pytest.fixture(scope="module")
def dcmqrscp(tmp_path_factory: pytest.TempPathFactory, sendable: list[bytes], scp_port: int) -> Iterator[DcmqrscpPeer]:
    if not dcmqrscp_available():
        pytest.skip("DCMTK is not installed (apt-get install dcmtk)")
    files = [*sendable, _private_instance()]
    with run_dcmqrscp(
        tmp_path_factory.mktemp("dcmqrscp-warn"), files=files, gateway_aet=GATEWAY_AET, gateway_port=scp_port
    ) as peer:
        yield peer


def test_partial_retrieve_is_reported(
    pacs_gateway_factory: GatewayFactory, dcmqrscp: DcmqrscpPeer, sendable: list[bytes]
) -> None:
    gw = pacs_gateway_factory([node("dcmqrscp", dcmqrscp.port, dcmqrscp.aet, dimse_timeout=10)])
    url = f"{gw.url}/studies/{STUDY}/series/{SERIES}"
    expected = {uids_of(d)[2] for d in sendable}

    # Answered after the retrieve: the Warning header names the PACS and the failed count.
    response = httpx.get(url + "/metadata", timeout=60)
    assert response.status_code == 200, response.text
    assert {item["00080018"]["Value"][0] for item in response.json()} == expected
    warnings = response.headers.get_list("warning")
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith('299 dicomweb-gateway "PACS dcmqrscp (DCMQRSCP@'), warnings
    assert "C-GET finished with status 0xB000" in warnings[0], warnings
    assert "1 failed" in warnings[0], warnings

    # Not marked retrieved: the next request asks the PACS again (and is told again). A
    # streamed response cannot carry a header about its end: it holds what was received.
    response = httpx.get(url, headers=AS_STORED, timeout=60)
    assert response.status_code == 200, response.text
    assert {uids_of(body)[2] for _, body in split_multipart(response)} == expected
    assert gw.log().count("retrieving series") == 2
    assert gw.log().count("C-GET finished with status 0xB000") == 2

    # Rendered (after the retrieve, like metadata) carries the warning too.
    response = httpx.get(url + "/rendered", headers={"Accept": "image/jpeg"}, timeout=60)
    assert response.status_code == 200, response.text
    assert any("0xB000" in w for w in response.headers.get_list("warning"))
