"""Storage Commitment Push Model SCP end to end: a pynetdicom modality (the storage commitment
SCU) and Orthanc ask the gateway's CommitmentHandler (tests/dimse_commitment_scp.py) whether it
took responsibility for instances, and read the N-EVENT-REPORT it sends back."""

from __future__ import annotations

import queue
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt

from gateway.dimse.commitment_request import STORAGE_COMMITMENT_INSTANCE, STORAGE_COMMITMENT_PUSH_MODEL
from gateway.security.access import Restriction
from tests import factory
from tests.dimse_commitment_scp import CommitmentScp, Peer, commitment_scp
from tests.http_helpers import read
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
    assert [(o.committed, o.failed, o.delivered) for o in scp.outcomes] == [(3, 0, "same association")]


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
