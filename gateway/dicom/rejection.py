"""Why an instance is refused: the STOW FailureReason codes and the :class:`InstanceRejected` error.

Raised by the Part 10 parser (:mod:`gateway.dicom.parse` and the modules it is built from) and
answered in the Failed SOP Sequence of a STOW-RS response (PS3.18 10.5.3), whose reason codes
are those of the C-STORE status (PS3.4 B.2.3).
"""

from __future__ import annotations

import enum

from gateway.dicom.uids import is_valid_uid


class FailureReason(enum.IntEnum):
    """Store Instances Response FailureReason (0008,1197) values (PS3.18 10.5.3, PS3.4 B.2.3)."""

    OUT_OF_RESOURCES = 0xA700  # Refused: a configured limit of this server was exceeded
    DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xA900  # Error: required attributes missing or wrong
    CANNOT_UNDERSTAND = 0xC000  # Error: not Part 10, truncated, malformed
    TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC122  # Refused: Referenced Transfer Syntax not supported
    SOP_CLASS_NOT_SUPPORTED = 0x0122  # Refused: SOP Class not supported


class InstanceRejected(Exception):
    """The file cannot be stored; ``reason`` is safe to show (no patient data, no trace).

    ``sop_class_uid`` / ``sop_instance_uid`` are the instance's UIDs when they could be read and
    are valid (from the data set, else the File Meta Information), for the Referenced SOP
    Class/Instance UID of the STOW response's Failed SOP Sequence (PS3.18 10.5.3); else None.
    """

    def __init__(
        self, failure_code: int, reason: str, *, sop_class_uid: str | None = None, sop_instance_uid: str | None = None
    ) -> None:
        super().__init__(int(failure_code), reason)  # both in args: survives pickling
        self.failure_code = int(failure_code)
        self.reason = reason
        self.sop_class_uid = sop_class_uid
        self.sop_instance_uid = sop_instance_uid

    def identify(self, sop_class_uid: str | None, sop_instance_uid: str | None) -> None:
        """Fill in whichever UID is still unknown, with valid UIDs only."""
        if self.sop_class_uid is None and sop_class_uid and is_valid_uid(sop_class_uid):
            self.sop_class_uid = sop_class_uid
        if self.sop_instance_uid is None and sop_instance_uid and is_valid_uid(sop_instance_uid):
            self.sop_instance_uid = sop_instance_uid

    def __str__(self) -> str:
        return self.reason


def reject(code: FailureReason, reason: str, **uids: str | None) -> InstanceRejected:
    return InstanceRejected(code, reason, **uids)


def truncated(what: str) -> InstanceRejected:
    return reject(FailureReason.CANNOT_UNDERSTAND, f"truncated: {what} extends past the end of the file")


def malformed(what: str) -> InstanceRejected:
    return reject(FailureReason.CANNOT_UNDERSTAND, f"malformed data set: {what}")
