"""WADO-RS through the PACS bridge: C-GET and C-MOVE retrieves streamed to the client, written
through to the cache, shared by concurrent requests, and answered from the cache afterwards."""

from __future__ import annotations

import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from pynetdicom import AE

from tests.fixtures_gateway import RunningGateway
from tests.fixtures_pacs import GatewayFactory, PacsData, node
from tests.http_helpers import read, split_multipart, uids_of
from tests.peers.dcmqrscp import DcmqrscpPeer
from tests.peers.orthanc import OrthancPeer

pytestmark = pytest.mark.timeout(120)

AS_STORED = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}
RETRIEVING = "retrieving series"


def dataset_bytes(part10: bytes) -> bytes:
    """The data set of a Part 10 file: everything after the File Meta Information (PS3.10 7.1),
    whose length the first element (0002,0000) gives."""
    assert part10[128:132] == b"DICM"
    (meta_length,) = struct.unpack("<I", part10[140:144])
    return part10[144 + meta_length :]


def retrieve(url: str) -> list[bytes]:
    response = httpx.get(url, headers=AS_STORED, timeout=60)
    assert response.status_code == 200, response.text
    return [body for _, body in split_multipart(response)]


def by_sop(instances: list[bytes]) -> dict[str, bytes]:
    return {uids_of(data)[2]: data for data in instances}


def stored_instances(gw: RunningGateway) -> int:
    return sum(1 for _ in (gw.data_dir / "objects").rglob("*.dcm"))


def orthanc_file(peer: OrthancPeer, sop: str) -> bytes:
    with httpx.Client(base_url=peer.http_url, timeout=30) as client:
        found = client.post("/tools/lookup", content=sop).json()
        orthanc_id = next(item["ID"] for item in found if item["Type"] == "Instance")
        return client.get(f"/instances/{orthanc_id}/file").content


@pytest.mark.parametrize("pacs", ["orthanc", "dcmqrscp"])
def test_series_by_c_get_is_byte_identical(
    pacs_gateway: RunningGateway, pacs_data: PacsData, orthanc_pacs: OrthancPeer, pacs: str
) -> None:
    study, series = pacs_data.series_uids
    received = by_sop(retrieve(f"{pacs_gateway.url}/pacs/{pacs}/studies/{study}/series/{series}"))
    originals = by_sop(pacs_data.series)
    assert set(received) == set(originals)
    for sop, data in received.items():
        # The data set is what the PACS holds, byte for byte; the file meta is the receiver's own.
        assert dataset_bytes(data) == dataset_bytes(originals[sop])
    if pacs == "orthanc":
        sop = next(iter(received))
        assert dataset_bytes(received[sop]) == dataset_bytes(orthanc_file(orthanc_pacs, sop))


@pytest.mark.parametrize("pacs", ["orthanc", "dcmqrscp"])
def test_series_by_c_move_is_byte_identical(
    pacs_gateway_factory: GatewayFactory,
    orthanc_pacs: OrthancPeer,
    dcmqrscp_pacs: DcmqrscpPeer,
    pacs_data: PacsData,
    pacs: str,
) -> None:
    port, ae_title = (orthanc_pacs.dicom_port, "ORTHANC") if pacs == "orthanc" else (dcmqrscp_pacs.port, "DCMQRSCP")
    gw = pacs_gateway_factory([node(pacs, port, ae_title, retrieve="move")])
    study, series = pacs_data.series_uids
    received = by_sop(retrieve(f"{gw.url}/studies/{study}/series/{series}"))
    originals = by_sop(pacs_data.series)
    assert set(received) == set(originals)
    assert all(dataset_bytes(received[sop]) == dataset_bytes(originals[sop]) for sop in originals)
    assert gw.log().count(RETRIEVING) == 1


def test_first_part_arrives_before_the_last_instance(pacs_gateway: RunningGateway, pacs_data: PacsData) -> None:
    study, series = pacs_data.series_uids
    total = len(pacs_data.series)
    started = time.monotonic()
    with httpx.stream(
        "GET", f"{pacs_gateway.url}/pacs/orthanc/studies/{study}/series/{series}", headers=AS_STORED, timeout=60
    ) as response:
        assert response.status_code == 200
        chunks = response.iter_raw()
        first = next(chunks)
        first_at = time.monotonic() - started
        cached_at_first_byte = stored_instances(pacs_gateway)
        body = first + b"".join(chunks)
    done_at = time.monotonic() - started
    assert cached_at_first_byte < total, "the response started only after the whole series was received"
    assert first_at < done_at
    assert body.count(b"Content-Type: application/dicom") == total


def test_second_retrieval_is_served_from_the_cache(pacs_gateway: RunningGateway, pacs_data: PacsData) -> None:
    study, series = pacs_data.series_uids
    url = f"{pacs_gateway.url}/studies/{study}/series/{series}"
    first = retrieve(url)
    assert pacs_gateway.log().count(RETRIEVING) == 1
    cached = retrieve(url)
    assert sorted(cached) == sorted(first)
    # No second retrieve: no DIMSE traffic at all for the cached series.
    assert pacs_gateway.log().count(RETRIEVING) == 1
    assert len(retrieve(f"{pacs_gateway.url}/pacs/dcmqrscp/studies/{study}/series/{series}")) == len(first)
    assert pacs_gateway.log().count(RETRIEVING) == 1


def test_concurrent_requests_share_one_retrieval(pacs_gateway: RunningGateway, pacs_data: PacsData) -> None:
    study, series = pacs_data.series_uids
    url = f"{pacs_gateway.url}/studies/{study}/series/{series}"
    barrier = threading.Barrier(8)

    def fetch(_: int) -> list[bytes]:
        barrier.wait()
        return retrieve(url)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(fetch, range(8)))
    assert all(sorted(r) == sorted(results[0]) for r in results)
    assert len(results[0]) == len(pacs_data.series)
    assert pacs_gateway.log().count(RETRIEVING) == 1


def test_metadata_and_frames_of_pacs_only_instances(pacs_gateway: RunningGateway, pacs_data: PacsData) -> None:
    catalog = pacs_data.catalog[0]
    study, series, sop = uids_of(catalog)
    metadata = httpx.get(f"{pacs_gateway.url}/studies/{study}/series/{series}/metadata", timeout=30)
    assert metadata.status_code == 200, metadata.text
    assert sorted(item["00080018"]["Value"][0] for item in metadata.json()) == sorted(
        uids_of(d)[2] for d in pacs_data.catalog if uids_of(d)[1] == series
    )
    frame = httpx.get(
        f"{pacs_gateway.url}/studies/{study}/series/{series}/instances/{sop}/frames/1",
        headers={"Accept": 'multipart/related; type="application/octet-stream"; transfer-syntax=*'},
        timeout=30,
    )
    assert frame.status_code == 200, frame.text
    [(_, pixels)] = split_multipart(frame)
    assert pixels == read(catalog).PixelData
    assert pacs_gateway.log().count(RETRIEVING) == 1  # the frame came from the cache


def test_one_instance_and_a_study(pacs_gateway: RunningGateway, pacs_data: PacsData) -> None:
    study, series, sop = uids_of(pacs_data.catalog[-1])
    [one] = retrieve(f"{pacs_gateway.url}/studies/{study}/series/{series}/instances/{sop}")
    assert dataset_bytes(one) == dataset_bytes(pacs_data.catalog[-1])
    whole = retrieve(f"{pacs_gateway.url}/studies/{study}")
    assert sorted(uids_of(d)[2] for d in whole) == sorted(
        uids_of(d)[2] for d in pacs_data.catalog if uids_of(d)[0] == study
    )


def test_nowhere_to_be_found_is_404(pacs_gateway: RunningGateway) -> None:
    response = httpx.get(f"{pacs_gateway.url}/studies/1.2.3.4.5.6.7", headers=AS_STORED, timeout=30)
    assert response.status_code == 404, response.text


def test_c_move_to_an_unknown_destination_is_a_clear_502(
    pacs_gateway_factory: GatewayFactory, dcmqrscp_pacs: DcmqrscpPeer, pacs_data: PacsData
) -> None:
    # dcmqrscp knows GATEWAY as a move destination, not NOWHERE (PS3.4 C.4.2.1.5: 0xA801).
    gw = pacs_gateway_factory([node("dcmqrscp", dcmqrscp_pacs.port, "DCMQRSCP", retrieve="move")], ae_title="NOWHERE")
    study, series = pacs_data.series_uids
    response = httpx.get(f"{gw.url}/studies/{study}/series/{series}", headers=AS_STORED, timeout=30)
    assert response.status_code == 502
    reason = response.json()["reason"]
    assert "C-MOVE failed" in reason
    assert "0xA801 (Refused: move destination unknown)" in reason
    assert "NOWHERE" in reason


def test_storage_scp_refuses_unknown_ae_titles(
    pacs_gateway_factory: GatewayFactory, orthanc_pacs: OrthancPeer, scp_port: int
) -> None:
    pacs_gateway_factory([node("orthanc", orthanc_pacs.dicom_port, "ORTHANC", retrieve="move")])
    ae = AE(ae_title="STRANGER")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2")  # CT Image Storage
    assoc = ae.associate("127.0.0.1", scp_port, ae_title="GATEWAY")
    try:
        assert assoc.is_rejected
        # PS3.8 Table 9-21: rejected permanent, service user, calling AE title not recognised.
        assert assoc.acceptor.primitive.reason_str == "Calling AE title not recognised"
    finally:
        if assoc.is_established:
            assoc.release()


def test_scp_spool_is_cleaned(pacs_gateway: RunningGateway, pacs_data: PacsData) -> None:
    study, series = pacs_data.series_uids
    retrieve(f"{pacs_gateway.url}/studies/{study}/series/{series}")
    # The response ends with the retrieve; the write-through to the cache finishes just after,
    # and then the spooled files go.
    spool = Path(pacs_gateway.data_dir) / "spool"
    received = "stow-*/pacs/*.dcm"  # the process's own spool directory (gateway.spool)
    deadline = time.monotonic() + 20
    while any(spool.glob(received)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(spool.glob(received)), "received files were left in the spool"
    assert any(spool.glob("stow-*/pacs")), "the files were received somewhere else"
    assert stored_instances(pacs_gateway) == len(pacs_data.series)
