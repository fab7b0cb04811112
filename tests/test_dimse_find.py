"""The C-FIND SCP end to end: DCMTK's findscu and a pynetdicom SCU against the gateway's
DIMSE front door (tests/dimse_find_scp.py), answering from the store, index and federated PACS."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.dimse_primitives import C_FIND
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

from gateway.security.access import Restriction
from tests import factory
from tests.dimse_find_scp import FindScp, Peer, find_scp
from tests.fixtures_pacs import PacsData, node
from tests.http_helpers import uids_of
from tests.peers.blackhole import black_hole
from tests.peers.orthanc import OrthancPeer

pytestmark = pytest.mark.skipif(
    shutil.which("findscu") is None, reason="DCMTK is not installed (apt-get install dcmtk)"
)

PEERS = {
    "FINDSCU": Peer("findscu"),
    "RESTRICTED": Peer("restricted", Restriction(patient_ids=frozenset({"PID0001"}))),
}
CATALOG_SEED = 21


def catalog_study(index: int, seed: int = CATALOG_SEED) -> str:
    return factory.new_uid("catalog-study", seed, index)


@pytest.fixture(scope="module")
def scp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FindScp]:
    """The catalog (6 patients, one study each, 2 series of 2 instances) in the gateway."""
    with find_scp(tmp_path_factory.mktemp("find"), peers=PEERS) as running:
        running.stow(*factory.study_catalog(seed=CATALOG_SEED))
        yield running


def findscu(
    scp: FindScp, *keys: str | bytes, patient_root: bool = False, aet: str = "FINDSCU", tmp: Path
) -> tuple[list[Dataset], str]:
    """Run findscu with ``keys`` (``-k`` values); the response identifiers and its log."""
    out = tmp / f"rsp{len(list(tmp.iterdir()))}"
    out.mkdir()
    argv: list[str | bytes] = ["findscu", "-v", "-P" if patient_root else "-S", "-aet", aet, "-aec", scp.ae_title]
    argv += ["-X", "-od", str(out), "-to", "20", "127.0.0.1", str(scp.port)]
    for key in keys:
        argv += ["-k", key]
    done = subprocess.run(argv, capture_output=True, timeout=60, check=False)
    log = (done.stdout + done.stderr).decode("utf-8", "replace")
    return [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))], log


def names(responses: Sequence[Dataset]) -> set[str]:
    return {str(ds.PatientName) for ds in responses}


def test_study_level_with_a_wildcard_name(scp: FindScp, tmp_path: Path) -> None:
    found, log = findscu(
        scp, "QueryRetrieveLevel=STUDY", "PatientName=doe*", "StudyInstanceUID", "StudyDate", "AccessionNumber",
        "PatientComments", tmp=tmp_path,
    )  # fmt: skip
    assert names(found) == {"DOE^JOHN", "DOE^JANE"}, log
    for ds in found:
        assert ds.QueryRetrieveLevel == "STUDY"
        assert ds.RetrieveAETitle == "GATEWAY"
        assert ds.StudyInstanceUID in {catalog_study(0), catalog_study(1)}
        assert ds.PatientComments == ""  # asked for, not held: empty, never invented
        assert "StudyDescription" not in ds  # not asked for: not returned
        assert "SpecificCharacterSet" not in ds  # all ASCII


def test_study_level_date_range_and_uid_list(scp: FindScp, tmp_path: Path) -> None:
    in_january, _ = findscu(scp, "QueryRetrieveLevel=STUDY", "StudyDate=20240101-20240131", "PatientName", tmp=tmp_path)
    assert names(in_january) == {"DOE^JOHN", "DOE^JANE"}
    listed, _ = findscu(
        scp, "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={catalog_study(0)}\\{catalog_study(2)}", "PatientName",
        tmp=tmp_path,
    )  # fmt: skip
    assert names(listed) == {"DOE^JOHN", "SMITH^ANNA"}


def test_patient_root_patient_level_answers_distinct_patients(scp: FindScp, tmp_path: Path) -> None:
    found, log = findscu(
        scp, "QueryRetrieveLevel=PATIENT", "PatientID", "PatientName=*", "NumberOfPatientRelatedStudies",
        "NumberOfPatientRelatedInstances", patient_root=True, tmp=tmp_path,
    )  # fmt: skip
    assert sorted(ds.PatientID for ds in found) == [f"PID000{i}" for i in range(1, 7)], log
    for ds in found:
        assert ds.NumberOfPatientRelatedStudies == 1
        assert ds.NumberOfPatientRelatedInstances == 4
        assert "StudyInstanceUID" not in ds


def test_series_and_image_levels(scp: FindScp, tmp_path: Path) -> None:
    series, log = findscu(
        scp, "QueryRetrieveLevel=SERIES", f"StudyInstanceUID={catalog_study(1)}", "SeriesInstanceUID", "Modality",
        "NumberOfSeriesRelatedInstances", tmp=tmp_path,
    )  # fmt: skip
    assert len(series) == 2, log
    assert {ds.Modality for ds in series} == {"MR"}
    assert {ds.NumberOfSeriesRelatedInstances for ds in series} == {2}
    images, log = findscu(
        scp, "QueryRetrieveLevel=IMAGE", "PatientID=PID0002", f"StudyInstanceUID={catalog_study(1)}",
        f"SeriesInstanceUID={series[0].SeriesInstanceUID}", "SOPInstanceUID", "InstanceNumber",
        patient_root=True, tmp=tmp_path,
    )  # fmt: skip
    assert sorted(ds.InstanceNumber for ds in images) == [1, 2], log
    assert all(ds.SeriesInstanceUID == series[0].SeriesInstanceUID for ds in images)


def test_latin1_and_utf8_queries(scp: FindScp, tmp_path: Path) -> None:
    latin1, log = findscu(
        scp, "QueryRetrieveLevel=STUDY", "SpecificCharacterSet=ISO_IR 100", "PatientName=Müller*".encode("latin-1"),
        "StudyInstanceUID", tmp=tmp_path,
    )  # fmt: skip
    assert names(latin1) == {factory.LATIN1_NAME}, log
    assert latin1[0].SpecificCharacterSet == "ISO_IR 192"  # the answer declares what it uses
    utf8, log = findscu(
        scp, "QueryRetrieveLevel=STUDY", "SpecificCharacterSet=ISO_IR 192", "PatientName=山田*".encode(),
        "StudyInstanceUID", tmp=tmp_path,
    )  # fmt: skip
    assert names(utf8) == {factory.UTF8_NAME}, log


def test_a_restricted_peer_finds_only_its_studies(scp: FindScp, tmp_path: Path) -> None:
    found, _ = findscu(
        scp, "QueryRetrieveLevel=STUDY", "PatientName", "StudyInstanceUID", aet="RESTRICTED", tmp=tmp_path
    )
    assert names(found) == {"DOE^JOHN"}
    others, log = findscu(
        scp, "QueryRetrieveLevel=SERIES", f"StudyInstanceUID={catalog_study(1)}", "SeriesInstanceUID",
        aet="RESTRICTED", tmp=tmp_path,
    )  # fmt: skip
    assert others == []
    assert "Success" in log


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        (
            ["QueryRetrieveLevel=SERIES", "SeriesInstanceUID"],
            "Error: DataSetDoesNotMatchSOPClass",
        ),  # no StudyInstanceUID
        (["PatientName=DOE*"], "Error: DataSetDoesNotMatchSOPClass"),  # no QueryRetrieveLevel
        (["QueryRetrieveLevel=STUDY", "StudyDate=yesterday"], "Failed: UnableToProcess"),
    ],
)
def test_a_bad_identifier_gets_a_failure_status(scp: FindScp, tmp_path: Path, keys: list[str], expected: str) -> None:
    found, log = findscu(scp, *keys, tmp=tmp_path)
    assert found == []
    assert f"Final Find Response ({expected})" in log, log


def pynetdicom_find(port: int, identifier: Dataset) -> list[tuple[Dataset, Any]]:
    """(status data set, identifier) of each response."""
    ae = AE(ae_title="FINDSCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", port, ae_title="GATEWAY")
    assert assoc.is_established
    responses: list[tuple[Dataset, Any]] = []
    try:
        for status, found in assoc.send_c_find(identifier, StudyRootQueryRetrieveInformationModelFind, msg_id=7):
            responses.append((status, found))
    finally:
        assoc.release()
    return responses


def find_then_cancel(port: int, identifier: Dataset, *, after: float) -> list[int]:
    """Statuses of a C-FIND whose C-CANCEL (PS3.7 9.3.2.3) is sent ``after`` seconds after the
    request, before any answer is read."""
    ae = AE(ae_title="FINDSCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", port, ae_title="GATEWAY")
    assert assoc.is_established
    statuses: list[int] = []
    try:
        context = assoc.accepted_contexts[0]
        request = C_FIND()
        request.MessageID = 7
        request.AffectedSOPClassUID = StudyRootQueryRetrieveInformationModelFind
        request.Priority = 2
        request.Identifier = BytesIO(encode(identifier, context.transfer_syntax[0].is_implicit_VR, True) or b"")
        # Hold the association's reactor, as pynetdicom's own send_c_find does, so that the
        # responses are left on the queue for this reader.
        assoc._reactor_checkpoint.clear()
        while not assoc._is_paused:
            time.sleep(0.0001)
        try:
            assoc.dimse.send_msg(request, context.context_id)
            time.sleep(after)
            assoc.send_c_cancel(7, context.context_id)
            while True:
                _, response = assoc.dimse.get_msg(block=True)
                assert response is not None, "no final C-FIND response"
                statuses.append(int(response.Status))
                if statuses[-1] not in (0xFF00, 0xFF01):
                    break
        finally:
            assoc._reactor_checkpoint.set()
    finally:
        assoc.release()
    return statuses


def test_c_cancel_stops_the_search(tmp_path: Path) -> None:
    """A search held up by a PACS that does not answer is cancelled while it waits: no row is
    sent once the C-CANCEL is in, and the final status is Cancel (0xFE00). (An SCP with every
    row at hand may send them all before a requester reads the first: only a search still
    running can be cancelled, as here.)"""
    many = factory.Patient("MANY^STUDIES", "PID-MANY")
    with black_hole() as silent_port:
        silent = node("silent", silent_port, "SILENT", acse_timeout=4.0, connect_timeout=4.0)
        with find_scp(tmp_path, peers=PEERS, pacs=[silent]) as scp:
            scp.stow(*(factory.ct_instance(seed=1000 + i, rows=8, cols=8, patient=many) for i in range(50)))
            query = Dataset()
            query.QueryRetrieveLevel = "STUDY"
            query.StudyInstanceUID = ""
            query.PatientName = "MANY*"
            # The association is up at once; the PACS leg then waits up to acse_timeout (4 s)
            # for an answer that never comes, well past the 0.5 s at which the cancel is sent.
            cancelled = find_then_cancel(scp.port, query, after=0.5)
    assert cancelled == [0xFE00]


def test_a_failure_status_says_why(scp: FindScp) -> None:
    query = Dataset()
    query.QueryRetrieveLevel = "IMAGE"
    query.StudyInstanceUID = catalog_study(0)
    query.SOPInstanceUID = ""
    [(status, identifier)] = pynetdicom_find(scp.port, query)
    assert status.Status == 0xA900
    assert status.ErrorComment == "IMAGE level needs one SeriesInstanceUID"
    assert status.OffendingElement == 0x0020000E
    assert identifier is None


def test_pacs_answers_are_merged_by_uid(tmp_path: Path, orthanc_pacs: OrthancPeer, pacs_data: PacsData) -> None:
    shared_study = uids_of(pacs_data.catalog[0])[0]  # DOE^JOHN's study, in Orthanc
    local_only = factory.ct_instance(seed=4242, rows=8, cols=8, patient=factory.Patient("LOCAL^ONLY", "PID-LOCAL"))
    pacs = [node("orthanc", orthanc_pacs.dicom_port, orthanc_pacs.aet, dimse_timeout=10)]
    with find_scp(tmp_path, peers=PEERS, pacs=pacs) as scp:
        scp.stow(pacs_data.catalog[0], local_only)
        found, log = findscu(
            scp, "QueryRetrieveLevel=STUDY", "PatientName", "StudyInstanceUID", "NumberOfStudyRelatedInstances",
            tmp=tmp_path,
        )  # fmt: skip
    by_uid = {ds.StudyInstanceUID: ds for ds in found}
    assert len(by_uid) == len(found), "a study answered twice"
    assert "LOCAL^ONLY" in names(found), log  # the gateway's own study
    assert "STREAM^SERIES" in names(found)  # only in Orthanc
    assert str(by_uid[shared_study].PatientName) == "DOE^JOHN"
    # The gateway holds one instance of it, Orthanc all four: the larger count wins.
    assert by_uid[shared_study].NumberOfStudyRelatedInstances == 4
    assert {ds.RetrieveAETitle for ds in found} == {"GATEWAY"}
