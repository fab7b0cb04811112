"""The study-level restriction of a principal: the PatientIDs and StudyInstanceUIDs it may see.

A study is visible when its StudyInstanceUID is listed *or* its PatientID (as indexed for the
study) is listed; everything else behaves as if it did not exist (QIDO omits it, WADO answers
404). An empty restriction grants no study at all; an unrestricted principal has none.

PatientID alone is unique only within its issuer (IssuerOfPatientID); deployments that mix
issuers should restrict by StudyInstanceUID.

A pure value: the query model carries it, the index applies it in SQL (so QIDO limit/offset
stay correct), services check it, and rows from elsewhere (a PACS) are filtered with
:meth:`Restriction.allows_row`. Where it comes from (a token claim, an API key) is the
business of ``gateway.security.access`` (token claims, API keys); the object form below,
:func:`parse_restriction`, is shared by every place a restriction is written down (a token
claim, the API key file, a ``[[dimse_clients]]`` table)::

    {"PatientID": ["P-1234", "P-5678"], "StudyInstanceUID": ["1.2.840.1.2.3"]}
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.dicom.dicomjson import str_value

PATIENT_ID_TAG = "00100020"
STUDY_UID_TAG = "0020000D"
MAX_ENTRIES = 1000  # each entry is one bound SQL parameter; restrictions are not a bulk list


class RestrictionError(ValueError):
    """The written-down restriction is malformed (whatever carries it must then be refused)."""


@dataclass(frozen=True)
class Restriction:
    patient_ids: frozenset[str] = frozenset()
    study_uids: frozenset[str] = frozenset()

    def allows(self, study_uid: str | None, patient_id: str | None) -> bool:
        return (study_uid is not None and study_uid in self.study_uids) or (
            patient_id is not None and patient_id in self.patient_ids
        )

    def allows_row(self, row: dict[str, Any]) -> bool:
        """For a DICOM JSON study row (e.g. a C-FIND answer) carrying its own UID and PatientID."""
        return self.allows(str_value(row, STUDY_UID_TAG), str_value(row, PATIENT_ID_TAG))


def parse_restriction(claim: object) -> Restriction:
    """The object form (see the module docstring) as a :class:`Restriction`."""
    if not isinstance(claim, Mapping):
        raise RestrictionError("restriction claim must be an object")
    unknown = set(claim) - {"PatientID", "StudyInstanceUID"}
    if unknown:
        raise RestrictionError(f"restriction claim has unknown member {sorted(unknown)[0]!r}")
    return Restriction(
        patient_ids=_strings(claim.get("PatientID", []), "PatientID"),
        study_uids=_strings(claim.get("StudyInstanceUID", []), "StudyInstanceUID"),
    )


def _strings(value: object, name: str) -> frozenset[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and 0 < len(v) <= 64 for v in value):
        raise RestrictionError(f"restriction claim member {name} must be a list of strings (1-64 characters)")
    if len(value) > MAX_ENTRIES:
        raise RestrictionError(f"restriction claim member {name} lists more than {MAX_ENTRIES} values")
    return frozenset(value)
