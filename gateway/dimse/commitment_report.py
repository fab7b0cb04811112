"""The Storage Commitment result (PS3.4 J.3.3): the N-EVENT-REPORT's Event Information, and
sending it on a new association when the one that carried the request has gone.

On a new association the gateway is the association requestor but the *SCP* of the Storage
Commitment Push Model SOP Class, so it proposes SCP/SCU Role Selection (PS3.7 D.3.3.4) with
SCP-role 1 and SCU-role 0 (PS3.4 J.3.3: "the SCP ... shall initiate an association ... with the
SCU ... using the SCP/SCU Role Selection Negotiation").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_role
from pynetdicom.pdu_primitives import A_RELEASE

from gateway.dimse.commitment_request import STORAGE_COMMITMENT_INSTANCE, STORAGE_COMMITMENT_PUSH_MODEL
from gateway.netdicom.client_tls import client_tls_args
from gateway.services.commitment import Verdict
from gateway.settings import PacsTls

__all__ = [
    "ALL_COMMITTED",
    "FAILURES_EXIST",
    "NewAssociationReporter",
    "ReportNotDelivered",
    "ReportTarget",
    "event_information",
]

# PS3.4 Table J.3-3, Event Type ID of the N-EVENT-REPORT.
ALL_COMMITTED = 1  # Storage Commitment Request Successful
FAILURES_EXIST = 2  # Storage Commitment Request Complete - Failures Exist
SUCCESS = 0x0000


class ReportNotDelivered(Exception):
    """The report could not be delivered this time (refused, unreachable, or not acknowledged)."""


@dataclass(frozen=True)
class ReportTarget:
    """Where a report goes when the requesting association has gone: the peer's calling AE
    title, and its host (configured, else the address it called from) and configured port."""

    peer: str
    ae_title: str
    host: str
    port: int | None
    tls: PacsTls = field(default_factory=PacsTls)  # DICOM TLS on the new association


def event_information(transaction_uid: str, verdicts: Sequence[Verdict], *, ae_title: str) -> tuple[int, Dataset]:
    """The Event Type ID and Event Information of the report (PS3.4 Table J.3-3 and J.3-4).

    The committed instances are in the Referenced SOP Sequence, each failed one in the Failed
    SOP Sequence with its Failure Reason; the Retrieve AE Title says where committed instances
    can be retrieved from (the gateway itself)."""
    info = Dataset()
    info.TransactionUID = transaction_uid
    committed, failed = [], []
    for verdict in verdicts:
        item = Dataset()
        item.ReferencedSOPClassUID = verdict.reference.sop_class_uid
        item.ReferencedSOPInstanceUID = verdict.reference.sop_instance_uid
        if verdict.failure is None:
            committed.append(item)
        else:
            item.FailureReason = verdict.failure
            failed.append(item)
    if committed:
        info.RetrieveAETitle = ae_title
        info.ReferencedSOPSequence = committed
    if failed:
        info.FailedSOPSequence = failed
    return (FAILURES_EXIST if failed else ALL_COMMITTED), info


def still_open(assoc: Any) -> bool:
    """Whether a report may go on the requesting association: established, and its peer has not
    asked to release it. A report sent after the A-RELEASE-RQ is never answered (the peer is
    releasing) and would hold the association's reactor, and so the release, for a whole DIMSE
    timeout; pynetdicom has no public way to look, so this peeks at its next incoming PDU
    without taking it."""
    if not assoc.is_established:
        return False
    try:
        upcoming = assoc.dul.peek_next_pdu()
    except Exception:
        return True
    return not (isinstance(upcoming, A_RELEASE) and upcoming.result is None)


def send_on(assoc: Any, event_type: int, info: Dataset, *, reply_wait: float | None = None) -> None:
    """Send the report on an established association (the requesting one, or a new one);
    :class:`ReportNotDelivered` unless the peer answers success.

    ``reply_wait``: how long to wait for the answer, when shorter than the association's DIMSE
    timeout. On the requesting association a peer that started releasing it just after the
    report went never answers, and while pynetdicom waits for the answer the association's
    reactor, and so the peer's release, waits too: a peer that takes reports there answers at
    once, so the wait is kept short and the report then goes on a new association."""
    previous = assoc.dimse_timeout
    if reply_wait is not None and (previous is None or reply_wait < previous):
        assoc.dimse_timeout = reply_wait
    try:
        status = assoc.send_n_event_report(
            info, event_type, STORAGE_COMMITMENT_PUSH_MODEL, STORAGE_COMMITMENT_INSTANCE
        )[0]
    except Exception as exc:  # pynetdicom raises when the association ended meanwhile
        raise ReportNotDelivered(f"N-EVENT-REPORT failed: {exc}") from exc
    finally:
        assoc.dimse_timeout = previous
    if not status or "Status" not in status:
        raise ReportNotDelivered("no N-EVENT-REPORT response (association ended or DIMSE timeout)")
    if status.Status != SUCCESS:
        raise ReportNotDelivered(f"N-EVENT-REPORT answered 0x{int(status.Status):04X}")


class NewAssociationReporter:
    """The default ``send_report`` of :class:`gateway.dimse.commitment.CommitmentHandler`: one
    association per report, from the gateway's AE title to the peer's port, released after."""

    def __init__(
        self,
        ae_title: str,
        *,
        connect_timeout: float = 3.0,
        acse_timeout: float = 10.0,
        dimse_timeout: float = 30.0,
    ) -> None:
        self._ae_title = ae_title
        self._connect_timeout = connect_timeout
        self._acse_timeout = acse_timeout
        self._dimse_timeout = dimse_timeout

    def __call__(self, target: ReportTarget, event_type: int, info: Dataset) -> None:
        if target.port is None:
            raise ReportNotDelivered(f"{target.peer} has no port configured to receive the report")
        ae = AE(ae_title=self._ae_title)
        ae.connection_timeout = self._connect_timeout
        ae.acse_timeout = self._acse_timeout
        ae.dimse_timeout = self._dimse_timeout
        ae.network_timeout = self._dimse_timeout
        ae.add_requested_context(STORAGE_COMMITMENT_PUSH_MODEL, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        role = build_role(STORAGE_COMMITMENT_PUSH_MODEL, scu_role=False, scp_role=True)
        assoc = ae.associate(
            target.host,
            target.port,
            ae_title=target.ae_title,
            ext_neg=[role],
            tls_args=client_tls_args(target.tls, target.host),
        )
        if not assoc.is_established:
            raise ReportNotDelivered(
                f"association to {target.ae_title} at {target.host}:{target.port} "
                + ("rejected" if assoc.is_rejected else "not established")
            )
        try:
            send_on(assoc, event_type, info)
        finally:
            if assoc.is_established:
                assoc.release()
