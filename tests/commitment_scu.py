"""A modality as Storage Commitment SCU, for the storage commitment tests: pynetdicom sending
N-ACTIONs (PS3.4 J.3.2) and taking the N-EVENT-REPORTs (J.3.3) on its association or on its own
port, where the gateway calls it back in the SCP role."""

from __future__ import annotations

import queue
import ssl
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt

from gateway.dimse.commitment_request import STORAGE_COMMITMENT_INSTANCE, STORAGE_COMMITMENT_PUSH_MODEL
from tests import factory
from tests.http_helpers import read
from tests.peers.ports import free_port


class Called(Protocol):
    """The gateway as the modality calls it."""

    port: int
    ae_title: str


MODALITY = "MODALITY"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
# A report is normally there within a second; this only keeps a broken gateway from hanging
# the test run (it is a bound, not something asserted).
REPORT_WAIT = 60.0
ALL_COMMITTED, FAILURES_EXIST = 1, 2
NO_SUCH_OBJECT_INSTANCE, CLASS_INSTANCE_CONFLICT, PROCESSING_FAILURE = 0x0112, 0x0119, 0x0110


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


class _Answers:
    """Counts the N-EVENT-REPORT answers an association owes and has put on the wire.

    pynetdicom answers a request on its reactor thread after the handler returned, and an answer
    it sends after its own A-RELEASE-RQ breaks its state machine (Evt9 in Sta7: an exception in
    that thread). The answer is announced by EVT_DIMSE_SENT before its P-DATA is queued, so it
    counts as sent at the next P-DATA-TF written to the socket (EVT_PDU_SENT); the modality
    sends nothing else while it waits for a report."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._owed = 0
        self._announced = 0

    def owe(self) -> None:
        with self._changed:
            self._owed += 1

    def on_dimse_sent(self, event: Any) -> None:
        if type(event.message).__name__ == "N_EVENT_REPORT_RSP":
            with self._changed:
                self._announced += 1

    def on_pdu_sent(self, event: Any) -> None:
        if type(event.pdu).__name__ == "P_DATA_TF":
            with self._changed:
                if self._announced:
                    self._announced -= 1
                    self._owed -= 1
                    self._changed.notify_all()

    def wait_all_sent(self, timeout: float) -> None:
        with self._changed:
            self._changed.wait_for(lambda: self._owed <= 0, timeout=timeout)


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

    @staticmethod
    def _refuse_report(event: Any) -> tuple[int, None]:
        return 0x0110, None  # processing failure: this modality takes reports on its port only

    @contextmanager
    def associated(self, scp: Called, *, reports_here: bool = True) -> Iterator[Any]:
        """An association to the gateway; ``reports_here`` False: reports on it are refused.

        The association is released only once every report's answer is on the wire (see
        :class:`_Answers`)."""
        ae = AE(ae_title=self.ae_title)
        ae.dimse_timeout = 20
        ae.add_requested_context(STORAGE_COMMITMENT_PUSH_MODEL, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        answers = _Answers()
        answer = self._on_report if reports_here else self._refuse_report

        def on_report(event: Any) -> tuple[int, None]:
            answers.owe()
            return answer(event)

        handlers = [
            (evt.EVT_N_EVENT_REPORT, on_report),
            (evt.EVT_DIMSE_SENT, answers.on_dimse_sent),
            (evt.EVT_PDU_SENT, answers.on_pdu_sent),
        ]
        assoc = ae.associate("127.0.0.1", scp.port, ae_title=scp.ae_title, evt_handlers=handlers)
        assert assoc.is_established
        try:
            yield assoc
        finally:
            answers.wait_all_sent(REPORT_WAIT)
            if assoc.is_established:
                assoc.release()

    @contextmanager
    def listening(self, ssl_context: ssl.SSLContext | None = None) -> Iterator[None]:
        """Its storage commitment SCU port: accepts the gateway's report association, where the
        gateway takes the SCP role (PS3.7 D.3.3.4); over TLS with ``ssl_context``."""
        ae = AE(ae_title=self.ae_title)
        syntaxes = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
        ae.add_supported_context(STORAGE_COMMITMENT_PUSH_MODEL, syntaxes, scu_role=True, scp_role=True)
        server = ae.start_server(
            ("127.0.0.1", self.port),
            block=False,
            evt_handlers=[(evt.EVT_N_EVENT_REPORT, self._on_report)],
            ssl_context=ssl_context,
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
