"""Compressed originals through the PACS bridge: a JPEG 2000, JPEG-LS or RLE image held by the
PACS reaches the client and the cache as stored, byte for byte, by C-GET (presentation contexts
per located SOP Class and syntax) and by C-MOVE (the storage SCP accepts compressed syntaxes)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

from gateway.adapters.dimse import DimseUpstream
from gateway.settings import PacsNode
from tests import factory
from tests.fixtures_pacs import GATEWAY_AET, GatewayFactory, load_orthanc, node
from tests.http_helpers import read, uids_of
from tests.peers.orthanc import OrthancPeer, orthanc_available, run_orthanc
from tests.test_pacs_wado import by_sop, dataset_bytes, orthanc_file, retrieve

pytestmark = pytest.mark.timeout(120)

STUDY = factory.new_uid("compressed-study")
CT_SERIES = factory.new_uid("compressed-ct-series")
MR_SERIES = factory.new_uid("compressed-mr-series")
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
IDENTITY = {"study_uid": STUDY, "PatientID": "PID-COMPRESSED", "patient_name": "COMPRESSED^ORIGINALS"}


def compressed_study() -> list[bytes]:
    """One CT series with a JPEG 2000 Lossless, a JPEG-LS Lossless and an RLE Lossless image,
    and an MR series (Explicit VR Little Endian): two SOP Classes, four transfer syntaxes."""
    ct = {**IDENTITY, "series_uid": CT_SERIES}
    return [
        factory.j2k_lossless_instance(seed=31, instance_number=1, **ct),
        factory.jpegls_lossless_instance(seed=32, instance_number=2, **ct),
        factory.rle_instance(seed=33, instance_number=3, **ct),
        factory.mr_instance(seed=34, instance_number=1, series_number=2, series_uid=MR_SERIES, **IDENTITY),
    ]


@pytest.fixture(scope="module")
def originals() -> dict[str, bytes]:
    data = by_sop(compressed_study())
    syntaxes = {str(read(d).file_meta.TransferSyntaxUID) for d in data.values()}
    assert {JPEG2000Lossless, JPEGLSLossless, RLELossless} <= syntaxes, "the factory made other syntaxes"
    return data


@pytest.fixture(scope="module")
def orthanc(
    tmp_path_factory: pytest.TempPathFactory, originals: dict[str, bytes], scp_port: int
) -> Iterator[OrthancPeer]:
    if not orthanc_available():
        pytest.skip("Orthanc is not installed (apt-get install orthanc orthanc-dicomweb)")
    with run_orthanc(
        tmp_path_factory.mktemp("orthanc-compressed"), gateway_aet=GATEWAY_AET, gateway_port=scp_port
    ) as peer:
        load_orthanc(peer, list(originals.values()))
        yield peer


def syntax_of(part10: bytes) -> str:
    return str(read(part10).file_meta.TransferSyntaxUID)


def assert_originals(received: dict[str, bytes], originals: dict[str, bytes], orthanc: OrthancPeer) -> None:
    assert set(received) == set(originals)
    for sop, data in received.items():
        # The data set is Orthanc's copy byte for byte, in the syntax it was stored in; the file
        # meta is the receiver's own.
        assert syntax_of(data) == syntax_of(originals[sop]), sop
        assert dataset_bytes(data) == dataset_bytes(orthanc_file(orthanc, sop)), sop


def stored_syntaxes(data_dir: Path) -> dict[str, str]:
    """SOP Instance UID -> transfer syntax of each Part 10 object the gateway's cache holds."""
    return {uids_of(p.read_bytes())[2]: syntax_of(p.read_bytes()) for p in (data_dir / "objects").rglob("*.dcm")}


@pytest.mark.parametrize("method", ["get", "move"])
def test_series_keeps_compressed_originals(
    pacs_gateway_factory: GatewayFactory, orthanc: OrthancPeer, originals: dict[str, bytes], method: str
) -> None:
    gw = pacs_gateway_factory([node("orthanc", orthanc.dicom_port, orthanc.aet, retrieve=method)])
    url = f"{gw.url}/studies/{STUDY}/series/{CT_SERIES}"
    ct = {sop: data for sop, data in originals.items() if uids_of(data)[1] == CT_SERIES}
    assert_originals(by_sop(retrieve(url)), ct, orthanc)
    # The stream ends with the retrieve, the write-through a moment later; metadata waits for it.
    assert httpx.get(url + "/metadata", timeout=60).status_code == 200
    # The cache holds the originals too: a second request is answered from it, as stored.
    assert stored_syntaxes(gw.data_dir) == {sop: syntax_of(data) for sop, data in ct.items()}
    assert_originals(by_sop(retrieve(url)), ct, orthanc)
    assert gw.log().count("retrieving series") == 1


def test_study_of_two_sop_classes_by_c_get(
    pacs_gateway_factory: GatewayFactory, orthanc: OrthancPeer, originals: dict[str, bytes]
) -> None:
    """The study's SOP Classes come from its C-FIND row (SOP Classes in Study)."""
    gw = pacs_gateway_factory([node("orthanc", orthanc.dicom_port, orthanc.aet)])
    assert_originals(by_sop(retrieve(f"{gw.url}/studies/{STUDY}")), originals, orthanc)


@pytest.mark.parametrize("syntax", [JPEG2000Lossless, JPEGLSLossless, RLELossless])
def test_one_instance_by_c_get(
    pacs_gateway_factory: GatewayFactory, orthanc: OrthancPeer, originals: dict[str, bytes], syntax: str
) -> None:
    """An instance's class comes from its IMAGE-level C-FIND row (SOP Class UID)."""
    sop, data = next((s, d) for s, d in originals.items() if syntax_of(d) == syntax)
    gw = pacs_gateway_factory([node("orthanc", orthanc.dicom_port, orthanc.aet)])
    received = by_sop(retrieve(f"{gw.url}/studies/{STUDY}/series/{CT_SERIES}/instances/{sop}"))
    assert_originals(received, {sop: data}, orthanc)


def test_a_class_missing_from_sop_classes_in_study_is_found_and_asked_again(
    tmp_path: Path, orthanc: OrthancPeer, originals: dict[str, bytes], caplog: pytest.LogCaptureFixture
) -> None:
    """A PACS whose SOP Classes in Study (0008,0062) misses a class it holds: the C-GET over the
    located classes fails (Orthanc: C000H, no context to send the MR on); the adapter asks the
    instances' classes by an IMAGE-level C-FIND and gets everything, each instance once."""
    upstream = DimseUpstream(
        PacsNode(name="orthanc", ae_title=orthanc.aet, host="127.0.0.1", port=orthanc.dicom_port),
        ae_title=GATEWAY_AET,
        spool_dir=tmp_path,
    )

    async def retrieve_with(classes: frozenset[str]) -> dict[str, bytes]:
        received: dict[str, bytes] = {}
        try:
            async for item in upstream.retrieve(STUDY, sop_classes=classes):
                assert item.sop_uid not in received
                received[item.sop_uid] = item.path.read_bytes()
                item.path.unlink()
        finally:
            await upstream.aclose()
        return received

    classes = {str(read(data).SOPClassUID) for data in originals.values()}
    assert classes == {CT_IMAGE_STORAGE, MR_IMAGE_STORAGE}
    received = anyio.run(retrieve_with, frozenset({CT_IMAGE_STORAGE}))  # the MR class "not located"
    assert_originals(received, originals, orthanc)
    assert "were not located: asking again" in caplog.text
    assert list(tmp_path.iterdir()) == []  # nothing left spooled
