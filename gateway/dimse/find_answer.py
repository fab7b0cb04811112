"""Result rows → C-FIND response identifiers (PS3.4 C.4.1.1.3.2), pure.

Rows are DICOM JSON objects as the index and the PACS federation return them for QIDO. Each
response identifier carries exactly the keys of the request (and the unique keys above it, see
:class:`~gateway.dimse.find_query.FindRequest`), each with the row's value or empty when the row
has none: optional keys the store does not hold are returned empty, never invented (PS3.4
C.4.1.1.3.2 "zero length"). Besides them:

* Query/Retrieve Level, as requested;
* Retrieve AE Title: the gateway's own AE title, whichever source the row came from — the
  gateway retrieves from its PACS on the caller's behalf, so it is where a C-MOVE goes;
* Specific Character Set ``ISO_IR 192`` when any value is non-ASCII: DICOM JSON is Unicode and
  UTF-8 holds every value (PS3.5 6.1.2.5.3); an all-ASCII identifier declares none.

Bulk data (a BulkDataURI in a row) is never sent in an identifier: such a key is empty.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from pydicom.dataset import Dataset

from gateway.dicom.attributes import NUMBER_OF_STUDY_RELATED_INSTANCES, NUMBER_OF_STUDY_RELATED_SERIES, tag_of
from gateway.dicom.dicomjson import pydicom_warnings_suppressed, str_value
from gateway.dimse.find_query import PATIENT_ID, PATIENT_TAGS, FindRequest
from gateway.ports import DicomJson

__all__ = ["patient_rows", "response_identifier"]

ISSUER_OF_PATIENT_ID = tag_of("IssuerOfPatientID")
NUMBER_OF_PATIENT_RELATED_STUDIES = tag_of("NumberOfPatientRelatedStudies")
NUMBER_OF_PATIENT_RELATED_SERIES = tag_of("NumberOfPatientRelatedSeries")
NUMBER_OF_PATIENT_RELATED_INSTANCES = tag_of("NumberOfPatientRelatedInstances")
UTF8 = "ISO_IR 192"


def response_identifier(row: DicomJson, request: FindRequest, *, ae_title: str) -> Dataset:
    """The response identifier of one matched row (see the module docstring)."""
    wanted: dict[str, Any] = {}
    for tag, vr in request.return_keys:
        element = row.get(tag)
        if not isinstance(element, dict) or "BulkDataURI" in element:
            element = {"vr": vr}
        wanted[tag] = element
    with pydicom_warnings_suppressed():
        ds = Dataset.from_json(wanted)
    ds.QueryRetrieveLevel = request.level
    ds.RetrieveAETitle = ae_title
    if any(not text.isascii() for text in _strings(wanted.values())):
        ds.SpecificCharacterSet = UTF8
    return ds


def patient_rows(study_rows: Sequence[DicomJson]) -> list[DicomJson]:
    """Distinct patients (PatientID within IssuerOfPatientID) of study-level rows, in the order
    their first study came. A patient's attributes are those of its first study that has them
    (the index keeps a study's patient attributes as first stored); the Number of Patient
    Related Studies/Series/Instances (PS3.4 C.6.1.1.2) are counted over the studies seen, the
    latter two only when every study row carries its own count."""
    patients: dict[tuple[str, str], list[DicomJson]] = {}
    for row in study_rows:
        key = (str_value(row, PATIENT_ID) or "", str_value(row, ISSUER_OF_PATIENT_ID) or "")
        patients.setdefault(key, []).append(row)
    return [_patient(studies) for studies in patients.values()]


def _patient(studies: list[DicomJson]) -> DicomJson:
    patient: DicomJson = {}
    for study in studies:
        for tag, element in study.items():
            if tag in PATIENT_TAGS and (tag not in patient or ("Value" in element and "Value" not in patient[tag])):
                patient[tag] = element
    patient[NUMBER_OF_PATIENT_RELATED_STUDIES] = {"vr": "IS", "Value": [len(studies)]}
    for total_tag, study_tag in (
        (NUMBER_OF_PATIENT_RELATED_SERIES, NUMBER_OF_STUDY_RELATED_SERIES),
        (NUMBER_OF_PATIENT_RELATED_INSTANCES, NUMBER_OF_STUDY_RELATED_INSTANCES),
    ):
        counts = [_count(study.get(study_tag)) for study in studies]
        if all(c is not None for c in counts):
            patient[total_tag] = {"vr": "IS", "Value": [sum(c for c in counts if c is not None)]}
    return patient


def _count(element: Any) -> int | None:
    values = element.get("Value") if isinstance(element, dict) else None
    if isinstance(values, list) and values and isinstance(values[0], int | float):
        return int(values[0])
    return None


def _strings(elements: Iterable[Any]) -> Iterable[str]:
    """Every text in DICOM JSON elements, person name groups and sequence items included."""
    for element in elements:
        if not isinstance(element, dict):
            continue
        for value in element.get("Value") or ():
            if isinstance(value, str):
                yield value
            elif isinstance(value, dict) and element.get("vr") == "PN":
                yield from (v for v in value.values() if isinstance(v, str))
            elif isinstance(value, dict):
                yield from _strings(value.values())
