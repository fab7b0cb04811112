"""The Storage Commitment Push Model N-ACTION (PS3.4 J.3.2) as a checked request.

The request is refused at once, with the N-ACTION status of PS3.7 10.1.4.1.10 and an
ErrorComment, when it cannot be a commitment request; otherwise every referenced instance is
answered later in the N-EVENT-REPORT, so a reference the gateway does not hold (or a SOP Class
UID it does not recognise) is a *failure reason* there, never a refusal here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset

from gateway.dicom import uids
from gateway.dicom.dicomjson import pydicom_warnings_suppressed
from gateway.services.commitment import Reference

__all__ = [
    "INVALID_ARGUMENT_VALUE",
    "MAX_REFERENCES",
    "NO_SUCH_ACTION",
    "NO_SUCH_SOP_INSTANCE",
    "PROCESSING_FAILURE",
    "RESOURCE_LIMITATION",
    "STORAGE_COMMITMENT_INSTANCE",
    "STORAGE_COMMITMENT_PUSH_MODEL",
    "CommitmentRefusal",
    "CommitmentRequest",
    "parse_commitment",
]

# PS3.4 J.3.1 (UIDs in PS3.6 Table A-1): the Storage Commitment Push Model SOP Class and its
# one well-known SOP Instance.
STORAGE_COMMITMENT_PUSH_MODEL = "1.2.840.10008.1.20.1"
STORAGE_COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"
REQUEST_STORAGE_COMMITMENT = 1  # PS3.4 Table J.3-1, Action Type ID

# PS3.7 10.1.4.1.10 (N-ACTION) statuses.
PROCESSING_FAILURE = 0x0110
NO_SUCH_SOP_INSTANCE = 0x0112
INVALID_ARGUMENT_VALUE = 0x0115
NO_SUCH_ACTION = 0x0123
RESOURCE_LIMITATION = 0x0213

# More references than this in one request are refused (resource limitation) rather than
# checked: a request is held in memory until its report is delivered.
MAX_REFERENCES = 10_000


class CommitmentRefusal(Exception):
    """The N-ACTION is answered with ``status`` (and ``comment``); nothing is checked."""

    def __init__(self, status: int, comment: str) -> None:
        super().__init__(comment)
        self.status = status
        self.comment = comment


@dataclass(frozen=True)
class CommitmentRequest:
    transaction_uid: str
    references: tuple[Reference, ...]


def parse_commitment(event: Any) -> CommitmentRequest:
    """The request of an ``EVT_N_ACTION`` event, or :class:`CommitmentRefusal`."""
    request = event.request
    if str(request.RequestedSOPInstanceUID or "") != STORAGE_COMMITMENT_INSTANCE:
        raise CommitmentRefusal(NO_SUCH_SOP_INSTANCE, f"Requested SOP Instance must be {STORAGE_COMMITMENT_INSTANCE}")
    if request.ActionTypeID != REQUEST_STORAGE_COMMITMENT:
        raise CommitmentRefusal(NO_SUCH_ACTION, "Action Type ID must be 1 (Request Storage Commitment)")
    # pydicom warns of odd values as it decodes them; an invalid UID is refused below instead.
    with pydicom_warnings_suppressed():
        try:
            information: Dataset = event.action_information  # decoded by pynetdicom on first access
            transaction = _text(information.get("TransactionUID"))
            sequence = information.get("ReferencedSOPSequence")
            items = list(sequence) if sequence is not None else []
        except Exception as exc:
            raise CommitmentRefusal(PROCESSING_FAILURE, "the Action Information cannot be decoded") from exc
        if not transaction or not uids.is_valid_uid(transaction):
            raise CommitmentRefusal(INVALID_ARGUMENT_VALUE, "Transaction UID (0008,1195) missing or not a valid UID")
        if not items:
            raise CommitmentRefusal(INVALID_ARGUMENT_VALUE, "Referenced SOP Sequence (0008,1199) missing or empty")
        if len(items) > MAX_REFERENCES:
            raise CommitmentRefusal(RESOURCE_LIMITATION, f"more than {MAX_REFERENCES} instances in one request")
        references = [_reference(item) for item in items]
    return CommitmentRequest(transaction, tuple(references))


def _reference(item: Dataset) -> Reference:
    try:
        sop_class = _text(item.get("ReferencedSOPClassUID"))
        sop = _text(item.get("ReferencedSOPInstanceUID"))
    except Exception as exc:
        raise CommitmentRefusal(PROCESSING_FAILURE, "a Referenced SOP Sequence item cannot be decoded") from exc
    if not uids.is_valid_uid(sop_class) or not uids.is_valid_uid(sop):
        raise CommitmentRefusal(
            INVALID_ARGUMENT_VALUE, "each Referenced SOP Sequence item needs a valid SOP Class and SOP Instance UID"
        )
    return Reference(sop_class, sop)


def _text(value: Any) -> str:
    """A UI value (``Dataset.get`` of a keyword) as a string, '' when absent or empty."""
    return "" if value is None else str(value).strip("\0 ")
