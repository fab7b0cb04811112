"""The C-MOVE and C-GET SCPs end to end: DCMTK's movescu (to a DCMTK storescp started as the
destination) and getscu, and pynetdicom SCUs and storage SCPs where no tool does what a test
needs, against the gateway's handlers (tests/dimse_retrieve_scp.py)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
import tracemalloc
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.dimse_primitives import C_MOVE
from pynetdicom.presentation import StoragePresentationContexts
from pynetdicom.sop_class import (
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from gateway.dicom.media import EXPLICIT_VR_LITTLE_ENDIAN as ELE
from gateway.dicom.media import IMPLICIT_VR_LITTLE_ENDIAN as ILE
from gateway.security.access import Restriction
from tests import factory
from tests.dimse_gateway import client, dimse_gateway
from tests.dimse_retrieve_scp import Peer, RetrieveScp, retrieve_scp
from tests.fixtures_pacs import PacsData, node
from tests.http_helpers import uids_of
from tests.peers.dcmqrscp import DcmqrscpPeer
from tests.peers.orthanc import OrthancPeer, orthanc_available, run_orthanc
from tests.peers.ports import free_port
from tests.peers.processes import stop_process
from tests.test_pacs_wado import dataset_bytes

pytestmark = [
    pytest.mark.skipif(shutil.which("movescu") is None, reason="DCMTK is not installed (apt-get install dcmtk)"),
    pytest.mark.timeout(180),
]

DEST_AET = "STORESCP"
PEERS = {
    "MOVESCU": Peer("movescu"),
    "GETSCU": Peer("getscu"),
    "RESTRICTED": Peer("restricted", Restriction(patient_ids=frozenset({"PID-OWN"}))),
}
OWN = factory.Patient("OWN^PATIENT", "PID-OWN")
OTHER = factory.Patient("OTHER^PATIENT", "PID-OTHER")


@contextmanager
def storescp(directory: Path, *options: str) -> Iterator[int]:
    """DCMTK's storescp writing what it receives, bit-preserving, into ``directory``."""
    port = free_port()
    argv = ["storescp", "-aet", DEST_AET, "+B", "-od", str(directory), *options, str(port)]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        _wait_listening(port)
        yield port
    finally:
        stop_process(process, 5)


def _wait_listening(port: int) -> None:
    for _ in range(200):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on port {port}")


def received(directory: Path) -> dict[str, bytes]:
    """SOP Instance UID → Part 10 bytes of each file a storescp/getscu wrote."""
    found: dict[str, bytes] = {}
    for path in directory.iterdir():
        if path.is_file():
            data = path.read_bytes()
            found[str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)] = data
    return found


def run(argv: list[str]) -> str:
    done = subprocess.run(argv, capture_output=True, timeout=120, check=False)
    return (done.stdout + done.stderr).decode("utf-8", "replace")


def movescu(scp: RetrieveScp, *keys: str, aet: str = "MOVESCU", destination: str = DEST_AET) -> str:
    argv = ["movescu", "-v", "-S", "-aet", aet, "-aec", scp.ae_title, "-aem", destination, "-to", "30"]
    for key in keys:
        argv += ["-k", key]
    return run([*argv, "127.0.0.1", str(scp.port)])


@pytest.fixture
def series() -> list[bytes]:
    return factory.ct_series(5, rows=32, cols=32, seed=51, patient=OWN)


def test_movescu_to_storescp_delivers_the_stored_bytes(tmp_path: Path, series: list[bytes]) -> None:
    study, _, _ = uids_of(series[0])
    out = tmp_path / "dest"
    out.mkdir()
    with storescp(out, "+xa") as port:
        destinations = {DEST_AET: ("127.0.0.1", port)}
        with retrieve_scp(tmp_path, peers=PEERS, destinations=destinations) as scp:
            scp.stow(*series)
            log = movescu(scp, "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study}")
    got = received(out)
    assert {sop: dataset_bytes(data) for sop, data in got.items()} == {
        uids_of(d)[2]: dataset_bytes(d) for d in series
    }, log
    assert "Move Response: Success" in log or "Received Final Move Response (Success)" in log, log
    [outcome] = scp.outcomes
    assert (outcome.status, outcome.completed, outcome.failed) == (0x0000, 5, 0)
    assert sorted(outcome.instances) == sorted(uids_of(d) for d in series)  # for the audit trail


def test_getscu_receives_the_stored_bytes_on_its_own_association(tmp_path: Path, series: list[bytes]) -> None:
    study, series_uid, _ = uids_of(series[0])
    out = tmp_path / "got"
    out.mkdir()
    with retrieve_scp(tmp_path, peers=PEERS, destinations={}) as scp:
        scp.stow(*series)
        argv = ["getscu", "-v", "-S", "-aet", "GETSCU", "-aec", scp.ae_title, "-od", str(out), "-to", "30"]
        argv += ["-k", "QueryRetrieveLevel=SERIES", "-k", f"StudyInstanceUID={study}"]
        argv += ["-k", f"SeriesInstanceUID={series_uid}", "127.0.0.1", str(scp.port)]
        log = run(argv)
    got = received(out)
    assert {sop: dataset_bytes(data) for sop, data in got.items()} == {
        uids_of(d)[2]: dataset_bytes(d) for d in series
    }, log
    [outcome] = scp.outcomes
    assert (outcome.operation, outcome.status, outcome.completed, outcome.failed) == ("C-GET", 0x0000, 5, 0)


@pytest.mark.parametrize("accept_all", [False, True])
def test_jpeg_ls_goes_as_stored_or_transcoded_as_the_destination_accepts(tmp_path: Path, accept_all: bool) -> None:
    """Stored as JPEG-LS Lossless, moved to a storescp that accepts every syntax (it gets the
    stored bytes), or only uncompressed ones (it gets Explicit or Implicit VR Little Endian whose
    pixels DCMTK's own JPEG-LS decoder agrees with)."""
    original = factory.jpegls_lossless_instance(seed=61, patient=OWN)
    study, _, sop = uids_of(original)
    (tmp_path / "original.dcm").write_bytes(original)
    decoded = tmp_path / "decoded.dcm"
    log = run(["dcmdjpls", str(tmp_path / "original.dcm"), str(decoded)])
    assert decoded.exists(), log
    out = tmp_path / "dest"
    out.mkdir()
    with (
        storescp(out, *(["+xa"] if accept_all else [])) as port,  # default: uncompressed only
        retrieve_scp(tmp_path, peers=PEERS, destinations={DEST_AET: ("127.0.0.1", port)}) as scp,
    ):
        scp.stow(original)
        log = movescu(scp, "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study}")
    [(got_sop, data)] = received(out).items()
    assert got_sop == sop, log
    if accept_all:
        assert dataset_bytes(data) == dataset_bytes(original)
        return
    ds = pydicom.dcmread(BytesIO(data))
    assert ds.file_meta.TransferSyntaxUID in (ELE, ILE)
    assert ds.PixelData == pydicom.dcmread(decoded).PixelData
    assert ds.PatientName == "OWN^PATIENT"


@dataclass
class StorageScp:
    """A pynetdicom storage SCP as a C-MOVE destination: what it received, in which syntax, and
    an optional gate the second C-STORE waits on (so a test can act mid-move)."""

    port: int
    received: list[tuple[str, str]] = field(default_factory=list)  # (SOP Instance UID, syntax)
    gate: threading.Event | None = None
    first: threading.Event = field(default_factory=threading.Event)
    abort_at: int | None = None  # the C-STORE at which it aborts the association instead


@contextmanager
def storage_scp(
    *, syntaxes: list[str] | None = None, gated: bool = False, abort_at: int | None = None
) -> Iterator[StorageScp]:
    scp = StorageScp(free_port(), gate=threading.Event() if gated else None, abort_at=abort_at)

    def on_store(event: Any) -> int:
        if scp.abort_at is not None and len(scp.received) + 1 == scp.abort_at:
            event.assoc.abort()
            return 0xA700
        scp.received.append((str(event.request.AffectedSOPInstanceUID), str(event.context.transfer_syntax)))
        scp.first.set()
        if scp.gate is not None and len(scp.received) == 2:
            scp.gate.wait(60)
        return 0x0000

    ae = AE(ae_title=DEST_AET)
    for cx in StoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, syntaxes or [ELE, ILE])
    server = ae.start_server(("127.0.0.1", scp.port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        yield scp
    finally:
        if scp.gate is not None:
            scp.gate.set()
        server.shutdown()


def move_request(study: str, *, level: str = "STUDY") -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    ds.StudyInstanceUID = study
    return ds


def pynetdicom_move(
    port: int, identifier: Dataset, *, aet: str = "MOVESCU", destination: str = DEST_AET, cancel: Any = None
) -> list[Dataset]:
    """The status data sets of a C-MOVE (their identifiers, when any, merged in);
    ``cancel(status)``: called after each pending, True sends the C-CANCEL."""
    ae = AE(ae_title=aet)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    ae.dimse_timeout = 60
    assoc = ae.associate("127.0.0.1", port, ae_title="GATEWAY")
    assert assoc.is_established
    statuses: list[Dataset] = []
    try:
        responses = assoc.send_c_move(identifier, destination, StudyRootQueryRetrieveInformationModelMove, msg_id=9)
        for status, found in responses:
            if found is not None:
                status.update(found)
            statuses.append(status)
            if cancel is not None and status.Status == 0xFF00 and cancel(status):
                assoc.send_c_cancel(9, assoc.accepted_contexts[0].context_id)
                cancel = None
    finally:
        assoc.release()
    return statuses


def test_pending_responses_count_down_and_the_final_says_success(tmp_path: Path, series: list[bytes]) -> None:
    study, _, _ = uids_of(series[0])
    with (
        storage_scp() as dest,
        retrieve_scp(tmp_path, peers=PEERS, destinations={DEST_AET: ("127.0.0.1", dest.port)}) as scp,
    ):
        scp.stow(*series)
        statuses = pynetdicom_move(scp.port, move_request(study))
    pending = [s for s in statuses if s.Status == 0xFF00]
    assert [s.NumberOfRemainingSuboperations for s in pending] == [4, 3, 2, 1, 0]
    assert [s.NumberOfCompletedSuboperations for s in pending] == [1, 2, 3, 4, 5]
    final = statuses[-1]
    assert (final.Status, final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations) == (0, 5, 0)
    assert sorted(sop for sop, _ in dest.received) == sorted(uids_of(d)[2] for d in series)
    assert {syntax for _, syntax in dest.received} == {ELE}


def test_c_cancel_stops_the_move_with_the_counts(tmp_path: Path, series: list[bytes]) -> None:
    """The destination holds the second C-STORE until the C-CANCEL is sent: the gateway then
    stops before the third and answers Cancel (0xFE00) with what is done and what remains."""
    study, _, _ = uids_of(series[0])
    with (
        storage_scp(gated=True) as dest,
        retrieve_scp(tmp_path, peers=PEERS, destinations={DEST_AET: ("127.0.0.1", dest.port)}) as scp,
    ):
        scp.stow(*series)

        def cancel_then_release(status: Dataset) -> bool:
            assert dest.gate is not None
            threading.Timer(0.5, dest.gate.set).start()  # after the C-CANCEL has gone out
            return True

        statuses = pynetdicom_move(scp.port, move_request(study), cancel=cancel_then_release)
    final = statuses[-1]
    assert final.Status == 0xFE00
    assert final.NumberOfCompletedSuboperations == 2
    assert final.NumberOfRemainingSuboperations == 3
    assert len(dest.received) == 2


def test_unknown_destination_is_a801(tmp_path: Path, series: list[bytes]) -> None:
    study, _, _ = uids_of(series[0])
    with retrieve_scp(tmp_path, peers=PEERS, destinations={}) as scp:
        scp.stow(*series)
        statuses = pynetdicom_move(scp.port, move_request(study), destination="NOWHERE")
    assert [s.Status for s in statuses] == [0xA801]
    assert scp.outcomes[0].status == 0xA801


def test_a_destination_that_does_not_answer_is_a801(tmp_path: Path, series: list[bytes]) -> None:
    study, _, _ = uids_of(series[0])
    with retrieve_scp(tmp_path, peers=PEERS, destinations={DEST_AET: ("127.0.0.1", free_port())}) as scp:
        scp.stow(*series)
        statuses = pynetdicom_move(scp.port, move_request(study))
    assert [s.Status for s in statuses] == [0xA801]
    assert (scp.outcomes[0].status, scp.outcomes[0].comment) == (0xA801, "the destination cannot be reached")


def test_a_bad_identifier_gets_a900_with_its_reason(tmp_path: Path, series: list[bytes]) -> None:
    study, _, _ = uids_of(series[0])
    with (
        storage_scp() as dest,
        retrieve_scp(tmp_path, peers=PEERS, destinations={DEST_AET: ("127.0.0.1", dest.port)}) as scp,
    ):
        scp.stow(*series)
        no_series = move_request(study, level="SERIES")
        [refused] = pynetdicom_move(scp.port, no_series)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns of the invalid UID this test sends
            [invalid] = pynetdicom_move(scp.port, move_request("1.2.3.x"))
    assert (refused.Status, refused.ErrorComment) == (0xA900, "SERIES level needs SeriesInstanceUID")
    assert (invalid.Status, invalid.ErrorComment) == (0xC000, "StudyInstanceUID is not a valid UID")
    assert dest.received == []


def test_a_restricted_peer_moves_only_its_studies(tmp_path: Path, series: list[bytes]) -> None:
    other = factory.ct_series(2, rows=16, cols=16, seed=52, patient=OTHER)
    with (
        storage_scp() as dest,
        retrieve_scp(tmp_path, peers=PEERS, destinations={DEST_AET: ("127.0.0.1", dest.port)}) as scp,
    ):
        scp.stow(*series, *other)
        denied = pynetdicom_move(scp.port, move_request(uids_of(other[0])[0]), aet="RESTRICTED")
        absent = pynetdicom_move(scp.port, move_request("1.2.3.4.5.6"), aet="RESTRICTED")
        own = pynetdicom_move(scp.port, move_request(uids_of(series[0])[0]), aet="RESTRICTED")
    # Another patient's study is exactly as absent: nothing to move, nothing said about it.
    assert [(s.Status, s.NumberOfCompletedSuboperations) for s in denied] == [(0, 0)]
    assert [(s.Status, s.NumberOfCompletedSuboperations) for s in absent] == [(0, 0)]
    assert own[-1].Status == 0
    assert own[-1].NumberOfCompletedSuboperations == 5
    assert sorted(sop for sop, _ in dest.received) == sorted(uids_of(d)[2] for d in series)


def test_a_requester_killed_mid_move_ends_the_move_and_the_gateway_still_serves(
    tmp_path: Path, series: list[bytes]
) -> None:
    """movescu is killed while the destination holds the second C-STORE: the move ends (its
    outcome is reported, not all sub-operations done, its association threads gone), and the
    next move is served whole."""
    study, _, _ = uids_of(series[0])
    with (
        storage_scp(gated=True) as dest,
        retrieve_scp(tmp_path, peers=PEERS, destinations={DEST_AET: ("127.0.0.1", dest.port)}) as scp,
    ):
        scp.stow(*series)
        idle = threading.active_count()
        argv = ["movescu", "-S", "-aet", "MOVESCU", "-aec", scp.ae_title, "-aem", DEST_AET]
        argv += ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}", "127.0.0.1", str(scp.port)]
        requester = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            assert dest.first.wait(60), "the move never started"
        finally:
            requester.kill()
            requester.wait()
        assert dest.gate is not None
        dest.gate.set()
        for _ in range(600):  # the handler notices at its next pending response
            if scp.outcomes:
                break
            time.sleep(0.1)
        [ended] = scp.outcomes
        assert ended.status == 0xFE00
        assert ended.comment == "association ended"
        assert ended.completed < len(series)
        for _ in range(600):  # the requester's and the sub-association's threads wind down
            if threading.active_count() <= idle:
                break
            time.sleep(0.1)
        assert threading.active_count() <= idle, [t.name for t in threading.enumerate()]

        dest.received.clear()
        statuses = pynetdicom_move(scp.port, move_request(study))
    assert statuses[-1].Status == 0x0000
    assert statuses[-1].NumberOfCompletedSuboperations == len(series)


@pytest.mark.parametrize(("pacs", "level"), [("orthanc", "SERIES"), ("dcmqrscp", "STUDY")])
def test_pacs_only_instances_are_moved_as_they_arrive(
    tmp_path: Path,
    orthanc_pacs: OrthancPeer,
    dcmqrscp_pacs: DcmqrscpPeer,
    pacs_data: PacsData,
    pacs: str,
    level: str,
) -> None:
    """A series only a [[pacs]] node holds, moved through the gateway to storescp: fetched
    through the cached upstream retrieve, sent on as it arrives, bytes as the PACS holds them.
    (dcmqrscp answers only hierarchical C-FINDs: the instances are counted series by series.)"""
    study, series_uid = pacs_data.series_uids
    out = tmp_path / "dest"
    out.mkdir()
    port, aet = (orthanc_pacs.dicom_port, orthanc_pacs.aet) if pacs == "orthanc" else (dcmqrscp_pacs.port, "DCMQRSCP")
    keys = [f"QueryRetrieveLevel={level}", f"StudyInstanceUID={study}"]
    keys += [f"SeriesInstanceUID={series_uid}"] if level == "SERIES" else []
    with (
        storescp(out, "+xa") as dest_port,
        retrieve_scp(
            tmp_path,
            peers=PEERS,
            destinations={DEST_AET: ("127.0.0.1", dest_port)},
            pacs=[node(pacs, port, aet, dimse_timeout=30)],
        ) as scp,
    ):
        log = movescu(scp, *keys)
    got = received(out)
    assert {sop: dataset_bytes(data) for sop, data in got.items()} == {
        uids_of(d)[2]: dataset_bytes(d) for d in pacs_data.series
    }, log
    [outcome] = scp.outcomes
    assert (outcome.status, outcome.completed, outcome.failed) == (0x0000, len(pacs_data.series), 0)


def test_patient_root_moves_the_patients_studies_and_only_theirs(tmp_path: Path, series: list[bytes]) -> None:
    second = factory.ct_series(2, rows=16, cols=16, seed=53, patient=OWN)  # another study of OWN^PATIENT
    other = factory.ct_series(2, rows=16, cols=16, seed=54, patient=OTHER)
    out = tmp_path / "dest"
    out.mkdir()
    with (
        storescp(out, "+xa") as port,
        retrieve_scp(tmp_path, peers=PEERS, destinations={DEST_AET: ("127.0.0.1", port)}) as scp,
    ):
        scp.stow(*series, *second, *other)
        argv = ["movescu", "-v", "-P", "-aet", "MOVESCU", "-aec", scp.ae_title, "-aem", DEST_AET]
        log = run([*argv, "-k", "QueryRetrieveLevel=PATIENT", "-k", "PatientID=PID-OWN", "127.0.0.1", str(scp.port)])
        moved = sorted(received(out))
        for path in out.iterdir():
            path.unlink()
        # Below PATIENT level a Patient Root identifier names the patient too: a study of
        # another patient is not that patient's, so nothing is moved.
        study = uids_of(other[0])[0]
        keys = ["-k", "QueryRetrieveLevel=STUDY", "-k", "PatientID=PID-OWN", "-k", f"StudyInstanceUID={study}"]
        mismatch = run([*argv, *keys, "127.0.0.1", str(scp.port)])
        keys[3] = "PatientID=PID-OTHER"
        match = run([*argv, *keys, "127.0.0.1", str(scp.port)])
    assert moved == sorted(uids_of(d)[2] for d in [*series, *second]), log
    assert sorted(received(out)) == sorted(uids_of(d)[2] for d in other), (mismatch, match)


def test_memory_does_not_grow_with_the_series(tmp_path: Path) -> None:
    """A 10-slice and a 40-slice series (512x512) moved to storescp: the gateway's Python
    allocations peak at the same few instances' worth for both (each instance is read, sent and
    dropped in turn), not at a multiple of the series."""
    short = factory.ct_series(10, rows=512, cols=512, seed=55, patient=OWN)
    long = factory.ct_series(40, rows=512, cols=512, seed=56, patient=OWN)
    out = tmp_path / "dest"
    out.mkdir()
    peaks: list[int] = []
    with (
        storescp(out, "+xa") as port,
        retrieve_scp(tmp_path, peers=PEERS, destinations={DEST_AET: ("127.0.0.1", port)}) as scp,
    ):
        scp.stow(*short, *long)
        for series in (short, long):
            tracemalloc.start()
            try:
                log = movescu(scp, "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={uids_of(series[0])[0]}")
                peaks.append(tracemalloc.get_traced_memory()[1])
            finally:
                tracemalloc.stop()
    assert len(received(out)) == len(short) + len(long), log
    instance = len(long[0])
    print(f"peaks {peaks[0] / 1e6:.1f} MB (10 slices), {peaks[1] / 1e6:.1f} MB (40 slices)")
    # 30 more slices would add ~15 MB if anything kept them; allow two instances of noise.
    assert peaks[1] < peaks[0] + 2 * instance


def test_a_destination_that_goes_away_fails_the_rest_and_names_them(tmp_path: Path, series: list[bytes]) -> None:
    """The destination aborts its association at the third C-STORE: the move does not hang, the
    instances not delivered are failed sub-operations listed in the final 0xB000."""
    study, _, _ = uids_of(series[0])
    with (
        storage_scp(abort_at=3) as dest,
        retrieve_scp(tmp_path, peers=PEERS, destinations={DEST_AET: ("127.0.0.1", dest.port)}) as scp,
    ):
        scp.stow(*series)
        statuses = pynetdicom_move(scp.port, move_request(study))
    final = statuses[-1]
    delivered = {sop for sop, _ in dest.received}
    assert len(delivered) == 2
    assert final.Status == 0xB000
    assert (final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations) == (2, 3)
    assert set(final.FailedSOPInstanceUIDList) == {uids_of(d)[2] for d in series} - delivered
    [outcome] = scp.outcomes
    assert (outcome.status, outcome.completed, outcome.failed) == (0xB000, 2, 3)
    assert {sop for _, sop, _ in outcome.failures} == set(final.FailedSOPInstanceUIDList)


def test_getscu_proposing_uncompressed_gets_jpeg_ls_transcoded(tmp_path: Path) -> None:
    """getscu proposes its storage contexts uncompressed (its default): a JPEG-LS instance comes
    over its own association transcoded, pixels as DCMTK's JPEG-LS decoder makes them."""
    original = factory.jpegls_lossless_instance(seed=62, patient=OWN)
    study, _, sop = uids_of(original)
    (tmp_path / "original.dcm").write_bytes(original)
    decoded = tmp_path / "decoded.dcm"
    run(["dcmdjpls", str(tmp_path / "original.dcm"), str(decoded)])
    out = tmp_path / "got"
    out.mkdir()
    with retrieve_scp(tmp_path, peers=PEERS, destinations={}) as scp:
        scp.stow(original)
        argv = ["getscu", "-v", "-S", "-aet", "GETSCU", "-aec", scp.ae_title, "-od", str(out), "-to", "30"]
        argv += ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}"]
        log = run([*argv, "127.0.0.1", str(scp.port)])
    [(got_sop, data)] = received(out).items()
    assert got_sop == sop, log
    ds = pydicom.dcmread(BytesIO(data))
    assert ds.file_meta.TransferSyntaxUID in (ELE, ILE)
    assert ds.PixelData == pydicom.dcmread(decoded).PixelData


def pynetdicom_get(
    port: int, identifier: Dataset, *, aet: str = "GETSCU", cancel_after: int | None = None
) -> tuple[list[Dataset], list[str]]:
    """The status data sets of a C-GET and the SOP Instance UIDs received on the association;
    ``cancel_after``: send a C-CANCEL when that many instances were received."""
    ae = AE(ae_title=aet)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CTImageStorage, [ELE, ILE])
    ae.dimse_timeout = 60
    got: list[str] = []
    holder: dict[str, Any] = {}

    def on_store(event: Any) -> int:
        got.append(str(event.request.AffectedSOPInstanceUID))
        if cancel_after is not None and len(got) == cancel_after:
            assoc = holder["assoc"]
            assoc.send_c_cancel(11, assoc.accepted_contexts[0].context_id)
        return 0x0000

    assoc = ae.associate(
        "127.0.0.1",
        port,
        ae_title="GATEWAY",
        ext_neg=[build_role(CTImageStorage, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    holder["assoc"] = assoc
    assert assoc.is_established
    statuses: list[Dataset] = []
    try:
        for status, found in assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet, msg_id=11):
            if found is not None:
                status.update(found)
            statuses.append(status)
    finally:
        assoc.release()
    return statuses, got


def test_c_get_counts_cancel_and_restriction(tmp_path: Path, series: list[bytes]) -> None:
    """pynetdicom as a C-GET SCU (Storage SCP role on its own association): every instance with
    the counts; a C-CANCEL after the second stops it (0xFE00); a restricted peer's C-GET of
    another patient's study gets nothing, as if absent."""
    other = factory.ct_series(2, rows=16, cols=16, seed=57, patient=OTHER)
    study, _, _ = uids_of(series[0])
    with retrieve_scp(tmp_path, peers=PEERS, destinations={}) as scp:
        scp.stow(*series, *other)
        whole, got = pynetdicom_get(scp.port, move_request(study))
        cancelled, got_before_cancel = pynetdicom_get(scp.port, move_request(study), cancel_after=2)
        denied, got_denied = pynetdicom_get(scp.port, move_request(uids_of(other[0])[0]), aet="RESTRICTED")
    assert sorted(got) == sorted(uids_of(d)[2] for d in series)
    assert [s.NumberOfRemainingSuboperations for s in whole if s.Status == 0xFF00] == [4, 3, 2, 1, 0]
    assert (whole[-1].Status, whole[-1].NumberOfCompletedSuboperations) == (0x0000, 5)
    assert cancelled[-1].Status == 0xFE00
    assert cancelled[-1].NumberOfCompletedSuboperations == len(got_before_cancel) < len(series)
    assert [(s.Status, s.NumberOfCompletedSuboperations) for s in denied] == [(0x0000, 0)]
    assert got_denied == []


def test_an_instance_the_store_lost_is_a_failed_sub_operation_named_in_the_final(
    tmp_path: Path, series: list[bytes]
) -> None:
    """One object is gone from the store (the index still lists it): the others are moved, the
    lost one is a failed sub-operation named in the final 0xB000; no crash, no hang."""
    study, series_uid, lost = uids_of(series[2])
    with (
        storage_scp() as dest,
        retrieve_scp(tmp_path, peers=PEERS, destinations={DEST_AET: ("127.0.0.1", dest.port)}) as scp,
    ):
        scp.stow(*series)
        key = f"studies/{study}/series/{series_uid}/instances/{lost}.dcm"
        (tmp_path / "data" / "objects" / key).unlink()
        statuses = pynetdicom_move(scp.port, move_request(study))
    final = statuses[-1]
    assert (final.Status, final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations) == (0xB000, 4, 1)
    assert final.FailedSOPInstanceUIDList == lost  # one UID: a single value
    assert sorted(sop for sop, _ in dest.received) == sorted(uids_of(d)[2] for d in series if uids_of(d)[2] != lost)


def test_a_viewer_without_a_host_moves_to_itself_and_the_move_is_audited(tmp_path: Path, series: list[bytes]) -> None:
    """A [[dimse_clients]] viewer with a port and no host: its own C-MOVE to itself reaches it
    at the address it called from; another requester cannot send there (0xA801). The move is
    one audit line (peer, status, the instance that failed) and one metric sample."""
    study, series_uid, lost = uids_of(series[0])
    peers = {**PEERS, "VIEWER": Peer("viewer")}
    with (
        storage_scp() as dest,
        retrieve_scp(
            tmp_path,
            peers=peers,
            destinations={"VIEWER": (None, dest.port)},
            audit={"destination": str(tmp_path / "audit.jsonl")},
        ) as scp,
    ):
        scp.stow(*series)
        key = f"studies/{study}/series/{series_uid}/instances/{lost}.dcm"
        (tmp_path / "data" / "objects" / key).unlink()
        own = pynetdicom_move(scp.port, move_request(study), aet="VIEWER", destination="VIEWER")
        other = pynetdicom_move(scp.port, move_request(study), aet="MOVESCU", destination="VIEWER")
        metrics = scp.gateway.run(scp.gateway.http.get("/metrics")).text
    assert (own[-1].Status, own[-1].NumberOfCompletedSuboperations) == (0xB000, 4)
    assert [s.Status for s in other] == [0xA801]
    assert len(dest.received) == 4
    lines = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    moves = [e for e in lines if e.get("dimse", {}).get("operation") == "C-MOVE"]
    [viewer] = [e for e in moves if e["ActiveParticipant"][0]["UserID"] == "dimse:viewer"]
    assert viewer["dimse"]["status"] == "0xB000"
    assert viewer["dimse"]["suboperations"] == {"completed": 4, "failed": 1, "warning": 0}
    objects = viewer["ParticipantObjectIdentification"]
    assert [o["ParticipantObjectID"] for o in objects if o.get("ParticipantObjectDescription") == "not sent"] == [lost]
    sent = [o for o in objects if o.get("ParticipantObjectDescription") == "sent"]
    assert sorted(o["ParticipantObjectID"] for o in sent) == sorted(
        uids_of(d)[2] for d in series if uids_of(d)[2] != lost
    )
    assert {o["ParticipantObjectDetail"]["StudyInstanceUID"] for o in sent} == {study}
    [refused] = [e for e in moves if e["ActiveParticipant"][0]["UserID"] == "dimse:movescu"]
    assert refused["dimse"]["status"] == "0xA801"
    assert [line for line in metrics.splitlines() if 'operation="C-MOVE"' in line and 'peer="viewer"' in line]


def test_getscu_gets_pacs_only_instances(tmp_path: Path, orthanc_pacs: OrthancPeer, pacs_data: PacsData) -> None:
    """C-GET of a series only Orthanc holds: the same cached upstream retrieve, each instance
    sent on the requester's association as it arrives, bytes as Orthanc holds them."""
    study, series_uid = pacs_data.series_uids
    out = tmp_path / "got"
    out.mkdir()
    pacs = [node("orthanc", orthanc_pacs.dicom_port, orthanc_pacs.aet, dimse_timeout=30)]
    with retrieve_scp(tmp_path, peers=PEERS, destinations={}, pacs=pacs) as scp:
        argv = ["getscu", "-v", "-S", "-aet", "GETSCU", "-aec", scp.ae_title, "-od", str(out), "-to", "60"]
        argv += ["-k", "QueryRetrieveLevel=SERIES", "-k", f"StudyInstanceUID={study}"]
        log = run([*argv, "-k", f"SeriesInstanceUID={series_uid}", "127.0.0.1", str(scp.port)])
    got = received(out)
    assert {sop: dataset_bytes(data) for sop, data in got.items()} == {
        uids_of(d)[2]: dataset_bytes(d) for d in pacs_data.series
    }, log
    [outcome] = scp.outcomes
    assert (outcome.operation, outcome.status, outcome.completed) == ("C-GET", 0x0000, len(pacs_data.series))


def test_a_destination_that_stops_answering_times_out_and_fails_the_rest(tmp_path: Path, series: list[bytes]) -> None:
    """The destination takes the first C-STORE, then never answers the second: after
    dimse.dimse_timeout the sub-association is aborted and the move ends with what it did (one
    completed) and what failed (the rest, named), instead of waiting for ever."""
    study, _, _ = uids_of(series[0])
    with (
        storage_scp(gated=True) as dest,  # the gate opens only when the test ends
        retrieve_scp(
            tmp_path,
            peers=PEERS,
            destinations={DEST_AET: ("127.0.0.1", dest.port)},
            dimse={"dimse_timeout": 3},
        ) as scp,
    ):
        scp.stow(*series)
        statuses = pynetdicom_move(scp.port, move_request(study))
    final = statuses[-1]
    assert final.Status == 0xB000
    assert (final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations) == (1, 4)
    assert len(final.FailedSOPInstanceUIDList) == 4


def test_an_undecodable_identifier_gets_a_failure_status_not_a_dropped_association(
    tmp_path: Path, series: list[bytes]
) -> None:
    """A C-MOVE whose identifier is not a data set (an element claiming 2 GB): 0xC000 with its
    reason, and the same association then moves the study."""
    study, _, _ = uids_of(series[0])
    with (
        storage_scp() as dest,
        retrieve_scp(tmp_path, peers=PEERS, destinations={DEST_AET: ("127.0.0.1", dest.port)}) as scp,
    ):
        scp.stow(*series)
        ae = AE(ae_title="MOVESCU")
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
        ae.dimse_timeout = 60
        assoc = ae.associate("127.0.0.1", scp.port, ae_title="GATEWAY")
        assert assoc.is_established
        try:
            context = assoc.accepted_contexts[0]
            request = C_MOVE()
            request.MessageID = 5
            request.AffectedSOPClassUID = StudyRootQueryRetrieveInformationModelMove
            request.MoveDestination = DEST_AET
            request.Priority = 2
            request.Identifier = BytesIO(b"\x08\x00\x52\x00\xff\xff\xff\x7fSTUDY")
            assoc._reactor_checkpoint.clear()  # read the response here, as send_c_move does
            while not assoc._is_paused:
                time.sleep(0.0001)
            try:
                assoc.dimse.send_msg(request, context.context_id)
                _, response = assoc.dimse.get_msg(block=True)
            finally:
                assoc._reactor_checkpoint.set()
            assert response is not None
            assert (response.Status, response.ErrorComment) == (0xC000, "the identifier cannot be decoded")
            statuses = list(
                assoc.send_c_move(move_request(study), DEST_AET, StudyRootQueryRetrieveInformationModelMove)
            )
        finally:
            assoc.release()
    assert statuses[-1][0].Status == 0x0000
    assert len(dest.received) == len(series)


def test_jpeg_2000_lossless_reaches_an_uncompressed_only_destination_with_its_original_pixels(
    tmp_path: Path,
) -> None:
    """Stored as JPEG 2000 Lossless, moved to a storescp that accepts only uncompressed syntaxes:
    the pixels it receives are exactly those the instance was encoded from."""
    original = factory.j2k_lossless_instance(seed=63, patient=OWN)
    source_pixels = factory.ct_dataset(seed=63, rows=64, cols=64, patient=OWN).PixelData
    study, _, sop = uids_of(original)
    out = tmp_path / "dest"
    out.mkdir()
    with (
        storescp(out) as port,
        retrieve_scp(tmp_path, peers=PEERS, destinations={DEST_AET: ("127.0.0.1", port)}) as scp,
    ):
        scp.stow(original)
        log = movescu(scp, "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study}")
    [(got_sop, data)] = received(out).items()
    assert got_sop == sop, log
    ds = pydicom.dcmread(BytesIO(data))
    assert ds.file_meta.TransferSyntaxUID in (ELE, ILE)
    assert ds.PixelData == source_pixels


@pytest.mark.skipif(not orthanc_available(), reason="Orthanc is not installed (apt-get install orthanc-dicomweb)")
def test_orthanc_queries_then_retrieves_a_study_back_byte_identical(tmp_path: Path) -> None:
    """Orthanc as a DIMSE client: it pushes a study to the gateway, forgets it, finds it on the
    gateway by C-FIND (/modalities/{gw}/query) and C-MOVEs it back to itself (/retrieve); what
    it then holds is what it had, byte for byte."""
    study = factory.new_uid("orthanc-move", 1)
    instances = [
        *factory.ct_series(4, rows=64, cols=64, study_uid=study, series_uid=factory.new_uid("orthanc-mv", 1), seed=5),
        factory.j2k_lossless_instance(seed=6, study_uid=study),
    ]
    scp_port, orthanc_port = free_port(), free_port()
    orthanc_client = client("ORTHANC", name="orthanc", scopes=["read", "write"], host="127.0.0.1", port=orthanc_port)
    with (
        dimse_gateway(tmp_path / "gw", clients=[orthanc_client], scp_port=scp_port) as gw,
        run_orthanc(
            tmp_path / "orthanc",
            gateway_aet=gw.ae_title,
            gateway_port=scp_port,
            extra_config={"DicomPort": orthanc_port},
        ) as orthanc,
        httpx.Client(base_url=orthanc.http_url, timeout=120) as rest,
    ):
        for data in instances:
            rest.post("/instances", content=data).raise_for_status()
        [orthanc_study] = rest.get("/studies").json()
        pushed = rest.post("/modalities/gateway/store", json={"Resources": [orthanc_study], "Synchronous": True})
        assert pushed.status_code == 200, pushed.text
        assert pushed.json()["FailedInstancesCount"] == 0, pushed.text
        rest.delete(f"/studies/{orthanc_study}").raise_for_status()
        assert rest.get("/studies").json() == []

        query = rest.post("/modalities/gateway/query", json={"Level": "Study", "Query": {"StudyInstanceUID": study}})
        query.raise_for_status()
        query_id = query.json()["ID"]
        assert len(rest.get(f"/queries/{query_id}/answers").json()) == 1
        moved = rest.post(f"/queries/{query_id}/retrieve", json={"TargetAet": "ORTHANC", "Synchronous": True})
        assert moved.status_code == 200, moved.text
        back = {}
        for instance in rest.get("/instances").json():
            data = rest.get(f"/instances/{instance}/file").content
            back[uids_of(data)[2]] = data
    assert {sop: dataset_bytes(data) for sop, data in back.items()} == {
        uids_of(d)[2]: dataset_bytes(d) for d in instances
    }


def test_a_pacs_series_larger_than_a_query_answers_is_moved_whole(
    tmp_path: Path, orthanc_pacs: OrthancPeer, pacs_data: PacsData
) -> None:
    """limits.max_qido_results (here 10) caps the C-FIND that would count a PACS series of 60:
    the gateway then follows the retrieve to its end and moves all 60 from the cache, rather
    than announcing 10 and leaving 50 behind."""
    study, series_uid = pacs_data.series_uids
    out = tmp_path / "dest"
    out.mkdir()
    with (
        storescp(out, "+xa") as port,
        retrieve_scp(
            tmp_path,
            peers=PEERS,
            destinations={DEST_AET: ("127.0.0.1", port)},
            pacs=[node("orthanc", orthanc_pacs.dicom_port, orthanc_pacs.aet, dimse_timeout=30)],
            limits={"max_qido_results": 10},
        ) as scp,
    ):
        log = movescu(scp, "QueryRetrieveLevel=SERIES", f"StudyInstanceUID={study}", f"SeriesInstanceUID={series_uid}")
    got = received(out)
    assert {sop: dataset_bytes(data) for sop, data in got.items()} == {
        uids_of(d)[2]: dataset_bytes(d) for d in pacs_data.series
    }, log
    [outcome] = scp.outcomes
    assert (outcome.status, outcome.completed) == (0x0000, len(pacs_data.series))
