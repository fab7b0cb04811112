"""pynetdicom as tuned by gateway.netdicom, against real peers: a tuned requestor sends a CT slice
to DCMTK's storescp in small PDUs, byte for byte; the listener's log keeps pynetdicom's lines
at the level asked for (the quiet handlers drop only what would be dropped anyway)."""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from pynetdicom.dimse_messages import C_GET_RSP, C_MOVE_RSP, C_STORE_RQ, C_STORE_RSP
from pynetdicom.dimse_primitives import C_GET, C_MOVE, C_STORE
from pynetdicom.dsutils import encode

from gateway.dicom.part10 import read_meta
from gateway.netdicom import command_set
from gateway.netdicom.encoded_store import EncodedDataset, answers_to, installed
from gateway.netdicom.tune import TunedAE
from tests import factory
from tests.dimse_gateway import DimseGateway, client, dimse_gateway
from tests.peers.ports import free_port

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"

pytestmark = [
    pytest.mark.skipif(shutil.which("storescp") is None, reason="DCMTK is not installed (apt-get install dcmtk)"),
    pytest.mark.timeout(120),
]


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """DCMTK's storescp, receiving PDUs of at most 4 KiB, writing what it gets to a folder."""
    folder = tmp_path / "received"
    folder.mkdir()
    port = free_port()
    process = subprocess.Popen(
        ["storescp", "-aet", "STORESCP", "--max-pdu", "4096", "--output-directory", str(folder), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while subprocess.run(["echoscu", "-aec", "STORESCP", "127.0.0.1", str(port)], capture_output=True).returncode:
            assert time.monotonic() < deadline, "storescp did not start"
            time.sleep(0.1)
        yield port, folder
    finally:
        process.terminate()
        process.wait(10)


def _store_tuned(port: int, sent: Dataset, what: Dataset | Path) -> tuple[Any, Dataset]:
    """C-STORE ``what`` (a data set or a Part 10 file) to storescp on a tuned association
    proposing ``sent``'s class and transfer syntax; the association and the answer."""
    ae = TunedAE(ae_title="TUNED")
    ae.add_requested_context(sent.SOPClassUID, str(sent.file_meta.TransferSyntaxUID))
    assoc = ae.associate("127.0.0.1", port, ae_title="STORESCP")
    assert assoc.is_established
    try:
        return assoc, assoc.send_c_store(what)
    finally:
        assoc.release()


def test_a_tuned_requestor_stores_a_slice_in_small_pdus(storescp: tuple[int, Path]) -> None:
    port, folder = storescp
    sent = pydicom.dcmread(BytesIO(factory.ct_series(1, 512, 512, seed=4242)[0]))
    assoc, status = _store_tuned(port, sent, sent)
    assert status.Status == 0x0000
    assert assoc.is_released
    (written,) = list(folder.iterdir())
    got = pydicom.dcmread(written)
    assert got.SOPInstanceUID == sent.SOPInstanceUID
    assert got.PixelData == sent.PixelData  # 512 KiB over ~128 PDUs of 4 KiB


def test_a_tuned_requestor_stores_a_file_given_by_its_path(storescp: tuple[int, Path], tmp_path: Path) -> None:
    """The gateway's forwarding to a PACS hands pynetdicom the stored file's path, not a data set."""
    port, folder = storescp
    part10 = factory.ct_series(1, 64, 64, seed=4343)[0]
    path = tmp_path / "instance.dcm"
    path.write_bytes(part10)
    sent = pydicom.dcmread(BytesIO(part10))
    _, status = _store_tuned(port, sent, path)
    assert status.Status == 0x0000
    (written,) = list(folder.iterdir())
    assert pydicom.dcmread(written).SOPInstanceUID == sent.SOPInstanceUID


def test_a_stored_slice_goes_out_as_stored_in_small_pdus(storescp: tuple[int, Path]) -> None:
    """An EncodedDataset is written as P-DATA PDUs of the peer's size by the tuned association,
    not re-encoded: storescp writes the same data set bytes."""
    port, folder = storescp
    part10 = factory.ct_series(1, 512, 512, seed=4343)[0]
    meta = read_meta(BytesIO(part10), len(part10))
    assert meta.sop_class_uid is not None
    assert meta.sop_instance_uid is not None
    encoded = EncodedDataset(
        part10,
        meta.dataset_start,
        sop_class_uid=meta.sop_class_uid,
        sop_uid=meta.sop_instance_uid,
        syntax=meta.transfer_syntax,
    )
    ae = TunedAE(ae_title="TUNED")
    ae.add_requested_context(meta.sop_class_uid, meta.transfer_syntax)
    assoc = ae.associate("127.0.0.1", port, ae_title="STORESCP")
    assert assoc.is_established
    assert installed(assoc)
    try:
        statuses = [assoc.send_c_store(encoded).Status for _ in range(3)]  # the same message thrice
    finally:
        assoc.release()
    assert statuses == [0x0000] * 3
    assert assoc.is_released
    written = sorted(folder.iterdir())
    assert written
    got = written[0].read_bytes()
    got_start = read_meta(BytesIO(got), len(got)).dataset_start
    assert got[got_start:] == part10[meta.dataset_start :]  # 512 KiB over ~128 PDUs of 4 KiB


def encoded_slice(seed: int) -> EncodedDataset:
    part10 = factory.ct_series(1, 64, 64, seed=seed)[0]
    meta = read_meta(BytesIO(part10), len(part10))
    assert meta.sop_class_uid is not None
    assert meta.sop_instance_uid is not None
    return EncodedDataset(
        part10, meta.dataset_start, sop_class_uid=meta.sop_class_uid, sop_uid=meta.sop_instance_uid,
        syntax=meta.transfer_syntax,
    )  # fmt: skip


def test_answers_read_by_the_sender_are_reported_per_instance(storescp: tuple[int, Path]) -> None:
    """A C-MOVE sub-association (``answers_to``) reads storescp's responses itself: each
    instance's status is reported under its SOP Instance UID, and the association still releases."""
    port, folder = storescp
    slices = [encoded_slice(4500 + i) for i in range(3)]
    ae = TunedAE(ae_title="TUNED")
    ae.add_requested_context(CT_IMAGE_STORAGE, str(slices[0].syntax))
    assoc = ae.associate("127.0.0.1", port, ae_title="STORESCP")
    assert assoc.is_established
    answers: list[tuple[str, int]] = []
    answers_to(assoc, lambda sop, status: answers.append((sop, status)))
    try:
        statuses = [assoc.send_c_store(ds, msg_id=7 + i).Status for i, ds in enumerate(slices)]
    finally:
        assoc.release()
    assert statuses == [0x0000] * 3
    assert answers == [(str(ds.SOPInstanceUID), 0x0000) for ds in slices]
    assert assoc.is_released
    assert len(list(folder.iterdir())) == 3


@contextmanager
def _tuned_sender_to(title: str, on_store: Callable[[Any], Any], seed: int) -> Iterator[_Sender]:
    """A pynetdicom Storage SCP called ``title`` answering with ``on_store``, and a tuned
    association to it, ready to send one slice, its answers reported to ``answers``."""
    scp = AE(ae_title=title)
    scp.add_supported_context(CT_IMAGE_STORAGE, ALL_TRANSFER_SYNTAXES)
    port = free_port()
    server = scp.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        ds = encoded_slice(seed)
        ae = TunedAE(ae_title="TUNED")
        ae.add_requested_context(CT_IMAGE_STORAGE, str(ds.syntax))
        assoc = ae.associate("127.0.0.1", port, ae_title=title)
        assert assoc.is_established
        sender = _Sender(assoc, ds, [])
        answers_to(assoc, lambda sop, status: sender.answers.append((sop, status)))
        yield sender
    finally:
        server.shutdown()


@dataclass
class _Sender:
    assoc: Any
    ds: EncodedDataset
    answers: list[tuple[str, int]]


def test_a_refusing_destination_s_status_and_comment_come_back() -> None:
    """A Storage SCP answering "out of resources" with an Error Comment (PS3.4 B.2.3): the
    sender gets both, and the status is reported for the instance."""

    def refuse(event: Any) -> Dataset:
        status = Dataset()
        status.Status = 0xA700
        status.ErrorComment = "disk full"
        return status

    with _tuned_sender_to("REFUSER", refuse, 4600) as sender:
        try:
            status = sender.assoc.send_c_store(sender.ds)
            again = sender.assoc.send_c_store(sender.ds, msg_id=2)
        finally:
            sender.assoc.release()
        assert (status.Status, status.ErrorComment) == (0xA700, "disk full")
        assert again.Status == 0xA700
        assert sender.answers == [(str(sender.ds.SOPInstanceUID), 0xA700)] * 2
        assert sender.assoc.is_released


def test_a_destination_that_aborts_instead_of_answering_fails_the_instance() -> None:
    """The A-ABORT that comes instead of a C-STORE response is pynetdicom's to handle: the
    sender gets no status, nothing is reported as answered, and the association is over."""

    def abort(event: Any) -> int:
        event.assoc.abort()
        return 0x0000

    with _tuned_sender_to("ABORTER", abort, 4700) as sender:
        status = sender.assoc.send_c_store(sender.ds)
        assert "Status" not in status
        assert sender.answers == []
        deadline = time.monotonic() + 10
        while sender.assoc.is_established and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not sender.assoc.is_established


def test_an_untuned_association_is_not_given_encoded_data_sets() -> None:
    assert not installed(AE(ae_title="PLAIN"))
    assert not installed(None)


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DimseGateway]:
    with dimse_gateway(tmp_path_factory.mktemp("netdicom"), clients=[client("VIEWER", scopes=["read"])]) as running:
        yield running


def echo(gw: DimseGateway) -> None:
    argv = ["echoscu", "-aet", "VIEWER", "-aec", gw.ae_title, "-to", "20", "127.0.0.1", str(gw.port)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_pynetdicom_debug_trace_when_asked(gw: DimseGateway, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="pynetdicom")
    echo(gw)
    assert "Received Echo Request" in caplog.text  # INFO, a DIMSE handler
    assert "Request Parameters:" in caplog.text  # DEBUG, the A-ASSOCIATE-RQ PDU's description


def test_pynetdicom_info_lines_without_the_pdu_trace(gw: DimseGateway, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pynetdicom")
    echo(gw)
    assert "Received Echo Request" in caplog.text
    assert "Request Parameters:" not in caplog.text


@pytest.mark.parametrize(
    ("originator_aet", "originator_id"), [(None, None), ("MOVESCU", 7), ("ABCDEFGHIJKLMNOP", 65535), ("ODD", 1)]
)
def test_a_c_store_command_set_is_the_one_pynetdicom_encodes(
    originator_aet: str | None, originator_id: int | None
) -> None:
    request = C_STORE()
    request.MessageID, request.Priority = 12, 2
    request.MoveOriginatorApplicationEntityTitle = originator_aet
    request.MoveOriginatorMessageID = originator_id
    request.AffectedSOPClassUID, request.AffectedSOPInstanceUID = CT_IMAGE_STORAGE, "1.2.3.45"
    request.DataSet = BytesIO()
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    theirs = encode(message.command_set, True, True)
    ours = command_set.c_store_rq(
        sop_class_uid=CT_IMAGE_STORAGE,
        sop_instance_uid="1.2.3.45",
        message_id=12,
        priority=2,
        originator_aet=originator_aet,
        originator_id=originator_id,
    )
    assert ours == theirs


@pytest.mark.parametrize("kind", ["C-MOVE", "C-GET"])
def test_a_pending_retrieve_response_is_the_one_pynetdicom_encodes(kind: str) -> None:
    primitive, message_class, field = (
        (C_MOVE(), C_MOVE_RSP, command_set.C_MOVE_RSP)
        if kind == "C-MOVE"
        else (C_GET(), C_GET_RSP, command_set.C_GET_RSP)
    )
    primitive.MessageIDBeingRespondedTo, primitive.Status = 3, 0xFF00
    primitive.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.2.2.2"
    primitive.NumberOfRemainingSuboperations, primitive.NumberOfCompletedSuboperations = 10, 5
    primitive.NumberOfFailedSuboperations, primitive.NumberOfWarningSuboperations = 1, 0
    message = message_class()
    message.primitive_to_message(primitive)
    ours = command_set.retrieve_rsp(
        field,
        sop_class_uid="1.2.840.10008.5.1.4.1.2.2.2",
        responding_to=3,
        status=0xFF00,
        remaining=10,
        completed=5,
        failed=1,
        warning=0,
    )
    assert ours == encode(message.command_set, True, True)


@pytest.mark.parametrize("status", [0x0000, 0xB007])
def test_a_c_store_response_is_the_one_pynetdicom_encodes(status: int) -> None:
    response = C_STORE()
    response.MessageIDBeingRespondedTo, response.Status = 5, status
    response.AffectedSOPClassUID, response.AffectedSOPInstanceUID = CT_IMAGE_STORAGE, "1.2.3.45"
    message = C_STORE_RSP()
    message.primitive_to_message(response)
    ours = command_set.c_store_rsp(
        sop_class_uid=CT_IMAGE_STORAGE, sop_instance_uid="1.2.3.45", responding_to=5, status=status
    )
    assert ours == encode(message.command_set, True, True)
