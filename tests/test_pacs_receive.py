"""The C-GET receive of the DIMSE adapter against Orthanc, with data set fragments written
straight to their file (gateway.netdicom.pdata_reader): Orthanc sends 16 kB PDUs, so each slice
of the series is some 30 fragments taken past pynetdicom's stack. Every slice arrives byte for
byte as Orthanc holds it, also in 4 KiB PDUs (many PDUs of every kind in one read: fragments,
last fragments, command sets), and a link cut in the middle of a slice leaves no file behind."""

from __future__ import annotations

import struct
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import anyio
import httpx
import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, StoragePresentationContexts, build_role, evt

from gateway.adapters.dimse import DimseUpstream
from gateway.adapters.dimse_contexts import GET
from gateway.adapters.dimse_pool import set_nodelay
from gateway.dicom.received import spool_received
from gateway.errors import UpstreamError
from gateway.netdicom.tune import TunedAE
from gateway.ports import ReceivedInstance
from gateway.settings import PacsNode
from tests import factory
from tests.fixtures_pacs import GATEWAY_AET, PacsData
from tests.peers.cut_proxy import cut_after
from tests.peers.orthanc import OrthancPeer
from tests.peers.ports import free_port

pytestmark = pytest.mark.timeout(120)

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def dataset_bytes(part10: bytes) -> bytes:
    """The data set of a Part 10 file (after the File Meta Information, PS3.10 7.1)."""
    (meta_length,) = struct.unpack("<I", part10[140:144])
    return part10[144 + meta_length :]


def orthanc_files(peer: OrthancPeer) -> dict[str, bytes]:
    """Every instance Orthanc holds, by SOP Instance UID, as it stores it."""
    with httpx.Client(base_url=peer.http_url, timeout=30) as client:
        files = {}
        for orthanc_id in client.get("/instances").json():
            sop = client.get(f"/instances/{orthanc_id}/simplified-tags").json()["SOPInstanceUID"]
            files[sop] = client.get(f"/instances/{orthanc_id}/file").content
        return files


def upstream(port: int, aet: str, spool: Path, **options: Any) -> DimseUpstream:
    node = PacsNode(name="orthanc", ae_title=aet, host="127.0.0.1", port=port, **options)
    return DimseUpstream(node, ae_title=GATEWAY_AET, spool_dir=spool)


def retrieve(pacs: DimseUpstream, study: str, series: str, got: list[ReceivedInstance]) -> None:
    """C-GET the series into ``got`` (what arrived stays there when the retrieve fails)."""

    async def run() -> None:
        try:
            async for item in pacs.retrieve(study, series):
                got.append(item)
        finally:
            await pacs.aclose()

    anyio.run(run)


def test_each_slice_arrives_as_orthanc_holds_it(
    orthanc_pacs: OrthancPeer, pacs_data: PacsData, receive_folder: Path, tmp_path: Path
) -> None:
    got: list[ReceivedInstance] = []
    retrieve(upstream(orthanc_pacs.dicom_port, orthanc_pacs.aet, tmp_path / "spool"), *pacs_data.series_uids, got)
    held = orthanc_files(orthanc_pacs)
    assert len(got) == len(pacs_data.series)
    for item in got:
        assert dataset_bytes(item.path.read_bytes()) == dataset_bytes(held[item.sop_uid])
    assert list(receive_folder.iterdir()) == []  # each file became a spool file (renamed)


def test_each_slice_arrives_whole_in_small_pdus(
    orthanc_pacs: OrthancPeer, pacs_data: PacsData, receive_folder: Path, tmp_path: Path
) -> None:
    """A tuned association that accepts PDUs of at most 4 KiB (PS3.8 D.1): Orthanc splits each
    slice into ~130 of them, and each read of the socket holds many."""
    ae = TunedAE(ae_title=GATEWAY_AET)
    ae.maximum_pdu_size = 4096
    ae.add_requested_context(GET)
    roles = []
    for context in StoragePresentationContexts:
        ae.add_requested_context(str(context.abstract_syntax))
        roles.append(build_role(str(context.abstract_syntax), scp_role=True))
    got: list[ReceivedInstance] = []

    def on_store(event: Any) -> int:
        got.append(spool_received(event, tmp_path / "spool"))
        return 0x0000

    assoc = ae.associate(
        "127.0.0.1",
        orthanc_pacs.dicom_port,
        ae_title=orthanc_pacs.aet,
        ext_neg=roles,
        evt_handlers=[(evt.EVT_CONN_OPEN, set_nodelay), (evt.EVT_C_STORE, on_store)],
    )
    assert assoc.is_established
    study, series = pacs_data.series_uids
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "SERIES"
    identifier.StudyInstanceUID = study
    identifier.SeriesInstanceUID = series
    statuses = [int(status.Status) for status, _ in assoc.send_c_get(identifier, GET)]
    assoc.release()
    assert statuses[-1] == 0x0000
    held = orthanc_files(orthanc_pacs)
    assert len(got) == len(pacs_data.series)
    for item in got:
        assert dataset_bytes(item.path.read_bytes()) == dataset_bytes(held[item.sop_uid])
    assert list(receive_folder.iterdir()) == []


def test_a_data_set_sent_as_one_pdu_arrives_whole(receive_folder: Path, tmp_path: Path) -> None:
    """The gateway sets no maximum PDU length, so a PACS may send each data set as one PDU
    (pynetdicom does): an 8 MB slice, in a PDU spanning several reads of the socket."""
    sent = pydicom.dcmread(BytesIO(factory.ct_series(1, 2048, 2048, seed=3)[0]))
    scp = AE(ae_title="ONEPDU")
    scp.add_supported_context(GET)
    scp.add_supported_context(CT_IMAGE_STORAGE, sent.file_meta.TransferSyntaxUID, scu_role=True, scp_role=True)

    def on_get(event: Any) -> Iterator[Any]:
        yield 1
        yield 0xFF00, sent

    port = free_port()
    server = scp.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_GET, on_get)])
    got: list[ReceivedInstance] = []
    try:
        retrieve(upstream(port, "ONEPDU", tmp_path / "spool"), sent.StudyInstanceUID, sent.SeriesInstanceUID, got)
    finally:
        server.shutdown()
    (item,) = got
    arrived = pydicom.dcmread(item.path)
    assert arrived.SOPInstanceUID == sent.SOPInstanceUID
    assert arrived.PixelData == sent.PixelData
    assert list(receive_folder.iterdir()) == []


def test_a_link_cut_mid_slice_leaves_no_file_behind(
    orthanc_pacs: OrthancPeer, pacs_data: PacsData, receive_folder: Path, tmp_path: Path
) -> None:
    """Orthanc's bytes stop in the middle of the third slice (each is ~0.5 MB): the two slices
    before it arrive whole, the retrieve fails with the connection named, and the third
    slice's partly written file is gone."""
    spool = tmp_path / "spool"
    got: list[ReceivedInstance] = []
    with cut_after(orthanc_pacs.dicom_port, 1_300_000) as port:
        pacs = upstream(port, orthanc_pacs.aet, spool, dimse_timeout=10)
        with pytest.raises(UpstreamError, match="connection lost during C-GET"):
            retrieve(pacs, *pacs_data.series_uids, got)
    assert len(got) == 2
    held = orthanc_files(orthanc_pacs)
    for item in got:
        assert dataset_bytes(item.path.read_bytes()) == dataset_bytes(held[item.sop_uid])
        item.path.unlink()
    deadline = time.monotonic() + 10  # the association's close event removes the unfinished file
    while any(receive_folder.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(receive_folder.iterdir()) == []
    assert list(spool.iterdir()) == []
