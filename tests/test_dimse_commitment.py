"""Storage Commitment Push Model SCP end to end: a pynetdicom modality (the storage commitment
SCU) and Orthanc ask the gateway's CommitmentHandler (tests/dimse_commitment_scp.py) whether it
took responsibility for instances, and read the N-EVENT-REPORT it sends back."""

from __future__ import annotations

import queue
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt

from gateway.dimse.commitment import Checker
from gateway.dimse.commitment_request import STORAGE_COMMITMENT_INSTANCE, STORAGE_COMMITMENT_PUSH_MODEL
from gateway.errors import ServiceUnavailable
from gateway.security.access import Restriction
from gateway.services.commitment import PROCESSING_FAILURE, Reference, Verdict
from tests import factory
from tests.dimse_commitment_scp import CommitmentScp, Peer, commitment_scp
from tests.http_helpers import read
from tests.peers.orthanc import ORTHANC_AET, OrthancPeer, orthanc_available, run_orthanc
from tests.peers.ports import free_port

MODALITY = "MODALITY"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
# A report is normally there within a second; this only keeps a broken gateway from hanging
# the test run (it is a bound, not something asserted).
REPORT_WAIT = 60.0
ALL_COMMITTED, FAILURES_EXIST = 1, 2
NO_SUCH_OBJECT_INSTANCE, CLASS_INSTANCE_CONFLICT = 0x0112, 0x0119


@dataclass(frozen=True)
class Report:
    """One N-EVENT-REPORT as the modality received it."""

    same_association: bool  # on the association that carried the N-ACTION
    calling_ae: str
    event_type: int
    info: Dataset

    @property
    def committed(self) -> list[tuple[str, str]]:
        return [
            (str(i.ReferencedSOPClassUID), str(i.ReferencedSOPInstanceUID))
            for i in self.info.get("ReferencedSOPSequence", [])
        ]

    @property
    def failed(self) -> dict[str, int]:
        return {str(i.ReferencedSOPInstanceUID): int(i.FailureReason) for i in self.info.get("FailedSOPSequence", [])}


class Modality:
    """A modality as storage commitment SCU (pynetdicom): it sends N-ACTIONs and takes the
    reports on its association, or on its own SCP port (:meth:`listening`)."""

    def __init__(self, ae_title: str = MODALITY) -> None:
        self.ae_title = ae_title
        self.reports: queue.Queue[Report] = queue.Queue()
        self.port = free_port()

    def _on_report(self, event: Any) -> tuple[int, None]:
        self.reports.put(
            Report(
                same_association=event.assoc.is_requestor,
                calling_ae=str(event.assoc.requestor.ae_title).strip(),
                event_type=int(event.event_type),
                info=event.event_information,
            )
        )
        return 0x0000, None

    @contextmanager
    def associated(self, scp: CommitmentScp) -> Iterator[Any]:
        ae = AE(ae_title=self.ae_title)
        ae.dimse_timeout = 20
        ae.add_requested_context(STORAGE_COMMITMENT_PUSH_MODEL, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        assoc = ae.associate(
            "127.0.0.1", scp.port, ae_title=scp.ae_title, evt_handlers=[(evt.EVT_N_EVENT_REPORT, self._on_report)]
        )
        assert assoc.is_established
        try:
            yield assoc
        finally:
            if assoc.is_established:
                assoc.release()

    @contextmanager
    def listening(self) -> Iterator[None]:
        """Its storage commitment SCU port: accepts the gateway's report association, where the
        gateway takes the SCP role (PS3.7 D.3.3.4)."""
        ae = AE(ae_title=self.ae_title)
        syntaxes = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
        ae.add_supported_context(STORAGE_COMMITMENT_PUSH_MODEL, syntaxes, scu_role=True, scp_role=True)
        server = ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_N_EVENT_REPORT, self._on_report)]
        )
        try:
            yield
        finally:
            server.shutdown()

    def next_report(self) -> Report:
        return self.reports.get(timeout=REPORT_WAIT)


def request(assoc: Any, transaction: str, references: Sequence[tuple[str, str]]) -> int:
    """Send an N-ACTION (Request Storage Commitment); its status."""
    info = Dataset()
    info.TransactionUID = transaction
    items = []
    for sop_class, sop in references:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop
        items.append(item)
    info.ReferencedSOPSequence = items
    status, _ = assoc.send_n_action(info, 1, STORAGE_COMMITMENT_PUSH_MODEL, STORAGE_COMMITMENT_INSTANCE)
    return int(status.Status)


def references_of(instances: Sequence[bytes]) -> list[tuple[str, str]]:
    return [(str(ds.SOPClassUID), str(ds.SOPInstanceUID)) for ds in map(read, instances)]


def study(seed: int, n: int = 3, patient: str = "PID0001") -> list[bytes]:
    return factory.ct_series(n, rows=32, cols=32, seed=seed, patient=factory.Patient(id=patient))


PEERS = {
    MODALITY: Peer("modality"),
    "RESTRICTED": Peer("restricted", Restriction(patient_ids=frozenset({"PID0001"}))),
    "VIEWER": Peer("viewer", scopes=("read",)),
}


@pytest.fixture
def scp(tmp_path: Any) -> Iterator[CommitmentScp]:
    with commitment_scp(tmp_path, peers=PEERS) as running:
        yield running


def test_a_stored_study_is_committed_on_the_same_association(scp: CommitmentScp) -> None:
    instances = study(seed=1)
    scp.stow(*instances)
    modality = Modality()
    transaction = factory.new_uid("transaction", 1)
    with modality.associated(scp) as assoc:
        assert request(assoc, transaction, references_of(instances)) == 0x0000
        report = modality.next_report()
    assert report.same_association
    assert report.event_type == ALL_COMMITTED
    assert str(report.info.TransactionUID) == transaction
    assert sorted(report.committed) == sorted(references_of(instances))
    assert report.failed == {}
    assert str(report.info.RetrieveAETitle).strip() == scp.ae_title
    assert [(o.committed, o.failed, o.delivered) for o in scp.outcomes] == [(3, (), "same association")]


def test_absent_and_wrong_class_instances_are_failed_with_their_reasons(scp: CommitmentScp) -> None:
    instances = study(seed=2)
    scp.stow(*instances)
    stored = references_of(instances)
    absent = (CT_IMAGE_STORAGE, factory.new_uid("never-stored", 2))
    wrong_class = (MR_IMAGE_STORAGE, stored[1][1])
    modality = Modality()
    with modality.associated(scp) as assoc:
        assert request(assoc, factory.new_uid("transaction", 2), [stored[0], absent, wrong_class]) == 0x0000
        report = modality.next_report()
    assert report.event_type == FAILURES_EXIST
    assert report.committed == [stored[0]]
    assert report.failed == {absent[1]: NO_SUCH_OBJECT_INSTANCE, wrong_class[1]: CLASS_INSTANCE_CONFLICT}


def test_a_restricted_peer_gets_another_patients_instance_as_absent(scp: CommitmentScp) -> None:
    own, other = study(seed=3, n=1, patient="PID0001"), study(seed=4, n=1, patient="PID0002")
    scp.stow(*own, *other)
    modality = Modality("RESTRICTED")
    with modality.associated(scp) as assoc:
        references = references_of(own + other)
        assert request(assoc, factory.new_uid("transaction", 3), references) == 0x0000
        report = modality.next_report()
    assert report.committed == [references[0]]
    assert report.failed == {references[1][1]: NO_SUCH_OBJECT_INSTANCE}


def test_the_report_goes_on_a_new_association_once_the_modality_released(tmp_path: Any) -> None:
    instances = study(seed=5)
    modality = Modality()
    with commitment_scp(tmp_path, peers={MODALITY: Peer("modality", port=modality.port)}) as scp:
        scp.stow(*instances)
        transaction = factory.new_uid("transaction", 5)
        with modality.listening():
            with scp.hold(), modality.associated(scp) as assoc:
                assert request(assoc, transaction, references_of(instances)) == 0x0000
            # Released before the gateway checked anything: the report must come to its port.
            report = modality.next_report()
        assert not report.same_association
        assert report.calling_ae == scp.ae_title
        assert report.event_type == ALL_COMMITTED
        assert str(report.info.TransactionUID) == transaction
        assert sorted(report.committed) == sorted(references_of(instances))
        assert [o.delivered for o in scp.outcomes] == ["new association"]


def test_the_report_is_retried_until_the_modality_listens(tmp_path: Any) -> None:
    instances = study(seed=6, n=1)
    modality = Modality()
    delays = (0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
    peers = {MODALITY: Peer("modality", port=modality.port)}
    with commitment_scp(tmp_path, peers=peers, report_retry_delays=delays) as scp:
        scp.stow(*instances)
        with scp.hold(), modality.associated(scp) as assoc:
            assert request(assoc, factory.new_uid("transaction", 6), references_of(instances)) == 0x0000
        scp.first_failed_report(timeout=REPORT_WAIT)  # the modality's port is still closed
        with modality.listening():
            report = modality.next_report()
        assert not report.same_association
        assert report.event_type == ALL_COMMITTED
        (outcome,) = scp.outcomes
        assert outcome.delivered == "new association"
        assert outcome.attempts >= 2


def test_a_report_nobody_takes_is_given_up_and_audited(tmp_path: Any) -> None:
    instances = study(seed=7, n=1)
    modality = Modality()  # never listening
    peers = {MODALITY: Peer("modality", port=modality.port)}
    with commitment_scp(tmp_path, peers=peers, report_retry_delays=(0.1, 0.2)) as scp:
        scp.stow(*instances)
        with scp.hold(), modality.associated(scp) as assoc:
            assert request(assoc, factory.new_uid("transaction", 7), references_of(instances)) == 0x0000
        (outcome,) = scp.wait_outcomes(1)
        assert (outcome.committed, outcome.delivered, outcome.attempts, outcome.status) == (1, "", 3, 0x0110)
        assert "not established" in outcome.comment or "rejected" in outcome.comment
        assert scp.handler.pending == 0


@pytest.mark.parametrize(
    ("change", "status"),
    [
        ("no transaction", 0x0115),  # PS3.7 10.1.4.1.10: invalid argument value
        ("empty sequence", 0x0115),
        ("bad uid", 0x0115),
        ("action type 2", 0x0123),  # no such action
        ("another instance", 0x0112),  # no such SOP instance: the SOP Class has one
    ],
)
def test_a_malformed_request_is_refused_with_its_status(scp: CommitmentScp, change: str, status: int) -> None:
    info = Dataset()
    if change != "no transaction":
        info.TransactionUID = factory.new_uid("transaction", change)
    item = Dataset()
    item.ReferencedSOPClassUID = CT_IMAGE_STORAGE
    with warnings.catch_warnings():  # pydicom warns of the invalid UID it is asked to send
        warnings.simplefilter("ignore")
        item.ReferencedSOPInstanceUID = "1.2.3.04" if change == "bad uid" else factory.new_uid("sop", change)
    info.ReferencedSOPSequence = [] if change == "empty sequence" else [item]
    action = 2 if change == "action type 2" else 1
    instance = factory.new_uid("elsewhere") if change == "another instance" else STORAGE_COMMITMENT_INSTANCE
    modality = Modality()
    with modality.associated(scp) as assoc:
        answer, _ = assoc.send_n_action(info, action, STORAGE_COMMITMENT_PUSH_MODEL, instance)
        assert int(answer.Status) == status
        assert answer.ErrorComment
        # The association goes on: a good request after it is accepted and reported.
        absent = (CT_IMAGE_STORAGE, factory.new_uid("absent", change))
        assert request(assoc, factory.new_uid("transaction", "after", change), [absent]) == 0x0000
        assert modality.next_report().failed == {absent[1]: NO_SUCH_OBJECT_INSTANCE}


def test_a_read_only_peer_is_not_authorized(scp: CommitmentScp) -> None:
    with Modality("VIEWER").associated(scp) as assoc:
        references = [(CT_IMAGE_STORAGE, factory.new_uid("sop", 8))]
        assert request(assoc, factory.new_uid("transaction", 8), references) == 0x0124


def test_requests_beyond_max_pending_are_refused_with_resource_limitation(tmp_path: Any) -> None:
    instances = study(seed=9, n=1)
    references = references_of(instances)
    modality = Modality()
    with commitment_scp(tmp_path, peers={MODALITY: Peer("modality")}, max_pending=1) as scp:
        scp.stow(*instances)
        with modality.associated(scp) as assoc:
            with scp.hold():
                assert request(assoc, factory.new_uid("transaction", 9, 1), references) == 0x0000
                assert request(assoc, factory.new_uid("transaction", 9, 2), references) == 0x0213
            report = modality.next_report()
            assert report.event_type == ALL_COMMITTED
            scp.wait_outcomes(2)  # the refusal, then the reported request: nothing pending
            assert request(assoc, factory.new_uid("transaction", 9, 3), references) == 0x0000
            assert modality.next_report().event_type == ALL_COMMITTED


class Flaky:
    """The commitment check behind an index that fails ``failures`` times, then recovers."""

    def __init__(self, check: Checker, failures: int) -> None:
        self._check = check
        self.failures = failures

    async def verdicts(self, references: Sequence[Reference], restriction: Restriction | None) -> list[Verdict]:
        if self.failures:
            self.failures -= 1
            raise ServiceUnavailable("index unavailable (injected)")
        return await self._check.verdicts(references, restriction)


@pytest.mark.parametrize(("failures", "expected"), [(2, ALL_COMMITTED), (100, FAILURES_EXIST)])
def test_an_index_outage_is_retried_then_reported_as_processing_failure(
    tmp_path: Any, failures: int, expected: int
) -> None:
    instances = study(seed=10, n=2)
    modality = Modality()
    with commitment_scp(
        tmp_path, peers={MODALITY: Peer("modality")}, wrap_check=lambda check: Flaky(check, failures)
    ) as scp:
        scp.stow(*instances)
        with modality.associated(scp) as assoc:
            assert request(assoc, factory.new_uid("transaction", 10, failures), references_of(instances)) == 0x0000
            report = modality.next_report()
    assert report.event_type == expected
    if expected == FAILURES_EXIST:
        assert report.committed == []
        assert set(report.failed.values()) == {PROCESSING_FAILURE}


@pytest.mark.orthanc
@pytest.mark.skipif(not orthanc_available(), reason="Orthanc is not installed (apt-get install orthanc-dicomweb)")
def test_orthanc_as_commitment_scu_gets_the_result_of_its_request(tmp_path: Any) -> None:
    """Orthanc's REST API asks the gateway (one of its DicomModalities) for storage commitment;
    the gateway answers the N-ACTION and reports to Orthanc's DICOM port, as Orthanc releases
    its requesting association at once."""
    instances = study(seed=11)
    stored = references_of(instances)
    absent = (CT_IMAGE_STORAGE, factory.new_uid("never-stored", 11))
    peers = {ORTHANC_AET: Peer("orthanc")}  # completed with Orthanc's port once it runs
    gateway_port = free_port()
    with commitment_scp(tmp_path / "gateway", peers=peers, port=gateway_port) as scp:
        scp.stow(*instances)
        with run_orthanc(tmp_path / "orthanc", gateway_aet=scp.ae_title, gateway_port=gateway_port) as orthanc:
            peers[ORTHANC_AET] = Peer("orthanc", port=orthanc.dicom_port)
            asked = [{"SOPClassUID": c, "SOPInstanceUID": s} for c, s in [*stored, absent]]
            started = httpx.post(
                f"{orthanc.http_url}/modalities/gateway/storage-commitment",
                json={"DicomInstances": asked, "Timeout": 20},
                timeout=30,
            )
            assert started.status_code == 200, started.text
            result = orthanc_commitment_result(orthanc, started.json()["Path"])
    assert result["Status"] == "Failure"  # Orthanc's word for "complete, failures exist"
    assert sorted((i["SOPClassUID"], i["SOPInstanceUID"]) for i in result["Success"]) == sorted(stored)
    assert [(i["SOPInstanceUID"], i["FailureReason"]) for i in result["Failures"]] == [
        (absent[1], NO_SUCH_OBJECT_INSTANCE)
    ]
    (outcome,) = scp.outcomes
    assert (outcome.peer, outcome.committed, outcome.failed) == ("orthanc", 3, ((None, absent[1], 0x0112),))


def orthanc_commitment_result(orthanc: OrthancPeer, path: str) -> dict[str, Any]:
    """Orthanc's view of a storage commitment once it is no longer pending (Orthanc offers no
    way to wait for it, so this polls; REPORT_WAIT only bounds a broken run)."""
    deadline = time.monotonic() + REPORT_WAIT
    while True:
        result: dict[str, Any] = httpx.get(orthanc.http_url + path, timeout=10).json()
        if result.get("Status") != "Pending" or time.monotonic() > deadline:
            return result
        time.sleep(0.1)
