"""The study-level restriction of a principal: the PatientIDs and StudyInstanceUIDs it may see.

A study is visible when its StudyInstanceUID is listed *or* its PatientID (as indexed for the
study) is listed; everything else behaves as if it did not exist (QIDO omits it, WADO answers
404). An empty restriction grants no study at all; an unrestricted principal has none.

PatientID alone is unique only within its issuer (IssuerOfPatientID); deployments that mix
issuers should restrict by StudyInstanceUID.

A pure value: the query model carries it, the index applies it in SQL (so QIDO limit/offset
stay correct), services check it, and rows from elsewhere (a PACS) are filtered with
:meth:`Restriction.allows_row`. Where it comes from (a token claim, an API key) is the
business of ``gateway.security.access``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.dicom.dicomjson import str_value

PATIENT_ID_TAG = "00100020"
STUDY_UID_TAG = "0020000D"


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
