"""The one rule for "may this principal see (or write into) this study?", which every service
takes: QIDO (through the index), WADO, the PACS bridge, STOW, and the DIMSE front door next.

A principal without a restriction sees everything. A restricted one (gateway.security.access)
sees a study when its StudyInstanceUID is listed or the study's PatientID is listed; the study's
PatientID is the one it was first stored with, and the index refuses instances of another
patient in it (gateway.services.instance_writer), so it cannot change under a reader.

Writing, for a restricted principal:

* into a study that exists: only when that study is visible to it (and the instance's patient is
  the study's: the index checks that for everyone);
* a study that does not exist yet: only when the instance's PatientID is listed. A principal
  restricted by StudyInstanceUID alone may add to its studies but not create one, so it cannot
  plant a study under another patient for that patient's readers to find.

Everything else is refused with one code and one text (``outcomes.not_authorized``), whether the
study is absent, hidden or another patient's: a restricted writer learns no more than that it
may not write there.
"""

from __future__ import annotations

from gateway.dicom.attributes import STUDY_INSTANCE_UID
from gateway.dicom.dicomjson import str_value
from gateway.dicom.query import Match, QidoQuery
from gateway.ports import DicomJson, Index, InstanceRecord, Upstream
from gateway.security.access import PATIENT_ID_TAG, Restriction


def study_match(study: str) -> Match:
    return Match.uid(STUDY_INSTANCE_UID, "study", study)


class Visibility:
    """Decides visibility against the index (stored studies) and a PACS (studies it holds)."""

    def __init__(self, index: Index) -> None:
        self._index = index

    async def study_visible(self, study: str, restriction: Restriction | None) -> bool:
        """Whether a stored study is inside ``restriction``, decided by the index exactly as QIDO
        decides (the restriction is a condition of the same SQL)."""
        if restriction is None or study in restriction.study_uids:
            return True
        if not restriction.patient_ids:
            return False
        query = QidoQuery(level="study", matches=(study_match(study),), limit=1, restriction=restriction)
        return bool((await self._index.search(query)).rows)

    async def instance_visible(self, sop: str, restriction: Restriction | None) -> bool:
        """Whether the stored instance ``sop`` (if any) lies in a study ``restriction`` allows."""
        if restriction is None:
            return True
        record = await self._index.get(None, None, sop)
        return record is None or await self.study_visible(record.study_uid, restriction)

    async def may_write(self, record: InstanceRecord, patient_id: str | None, restriction: Restriction | None) -> bool:
        """Whether a principal may store ``record`` (whose PatientID is ``patient_id``); see the
        module docstring."""
        if restriction is None:
            return True
        found = (
            await self._index.search(QidoQuery(level="study", matches=(study_match(record.study_uid),), limit=1))
        ).rows
        if not found:
            return patient_id is not None and patient_id in restriction.patient_ids
        return restriction.allows(record.study_uid, str_value(found[0], PATIENT_ID_TAG))

    @staticmethod
    async def pacs_study_visible(upstream: Upstream, study: str, restriction: Restriction | None) -> bool:
        """Whether a PACS's study is inside ``restriction`` (its PatientID asked by C-FIND)."""
        if restriction is None or study in restriction.study_uids:
            return True
        if not restriction.patient_ids:
            return False
        found = await upstream.find(QidoQuery(level="study", matches=(study_match(study),)), 1)
        return any(restriction.allows_row(row) for row in found.rows)

    @staticmethod
    def row_decided(row: DicomJson, restriction: Restriction) -> bool | None:
        """For a PACS's C-FIND row: True or False when the row itself decides, None when only a
        study-level C-FIND can (the row names no PatientID and its study is not listed)."""
        if restriction.allows_row(row):
            return True
        if PATIENT_ID_TAG in row or not restriction.patient_ids:
            return False
        return None
