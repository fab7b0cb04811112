"""What storing one instance answered, whichever way it came in (STOW, the PACS cache, and the
DIMSE C-STORE next), with the PS3.4 failure reasons the store itself gives.

STOW puts these codes in the FailureReason of its response (PS3.18 Table 10.5.3-2); a C-STORE
SCP answers them as the DIMSE status (PS3.4 B.2.3). Both read the same :class:`FailedInstance`.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.ports import InstanceRecord

FAILURE_PROCESSING = 0x0110
FAILURE_DUPLICATE_SOP = 0x0111  # PS3.7 C.4.2.1.4: a different object under a stored SOP Instance UID
FAILURE_NOT_AUTHORIZED = 0x0124  # PS3.7 C.4.2.1.4 "Refused: Not Authorized"
FAILURE_STUDY_MISMATCH = 0xA900  # instance does not belong to the study named in the URL
FAILURE_UNSUPPORTED_MEDIA = 0xC000
# The instance's patient (PatientID and IssuerOfPatientID) differs from the one its study was
# stored with: a "relational mismatch". 0xA779 is the code dcm4chee answers for the same refusal
# (the A7xx range is the implementation's own, PS3.4 B.2.3).
FAILURE_PATIENT_MISMATCH = 0xA779

# The one text of every refusal on the grounds of a principal's restriction: an instance outside
# it, a study or an instance that exists but is hidden from it. Identical on purpose, so the
# answer never tells a restricted writer what it cannot see (gateway.services.visibility).
NOT_AUTHORIZED_TEXT = "this instance is outside the studies the credentials may write"


@dataclass(frozen=True)
class StoredInstance:
    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    created: bool = True  # False when an identical copy was already stored (nothing new to undo)
    # This write added the index row (whoever wrote the object): two writers racing with the
    # same instance both find the object or the row of the other, so neither may have created
    # it, but exactly one inserted it.
    inserted: bool = True


@dataclass(frozen=True)
class FailedInstance:
    sop_class_uid: str | None
    sop_instance_uid: str | None
    failure_reason: int
    detail: str
    conflict: bool = False  # the data is fine but clashes with the request or the store
    retry_after: int | None = None  # the store or index was unavailable: worth retrying later
    study_uid: str | None = None  # when the data set could be read (for the audit trail)


def not_authorized(record: InstanceRecord) -> FailedInstance:
    """The refusal of an instance outside a restriction (see :data:`NOT_AUTHORIZED_TEXT`)."""
    return FailedInstance(
        record.sop_class_uid,
        record.sop_uid,
        FAILURE_NOT_AUTHORIZED,
        NOT_AUTHORIZED_TEXT,
        conflict=True,
        study_uid=record.study_uid,
    )
