"""Metadata corrections (Microsoft's ``$bulkUpdate`` shape): which attributes a correction may
change, the request body read and checked, and the change applied to a Part 10 file.

Only Patient and Study attributes may change (PS3.3 C.7.1.1 Patient, C.7.1.3 Clinical Trial
Subject is left out, C.7.2.1 General Study, C.7.2.2 Patient Study): they are what a registration
error gets wrong, and they are the same in every instance of a study, so a study stays
consistent. UIDs never change: an instance's identity is its SOP Instance UID (PS3.3 C.12.1),
and a wrong one calls for a new instance, not a correction.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pydicom
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.valuerep import validate_value

from gateway.dicom import uids
from gateway.errors import BadRequest

# Microsoft's list of attributes its bulk update changes (Patient Identification, Demographic
# and Medical, General Study and Patient Study modules), by keyword.
CORRECTABLE_KEYWORDS = (
    # Patient module (PS3.3 C.7.1.1)
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "TypeOfPatientID",
    "IssuerOfPatientIDQualifiersSequence",
    "OtherPatientIDsSequence",
    "OtherPatientNames",
    "PatientBirthName",
    "PatientMotherBirthName",
    "PatientBirthDate",
    "PatientBirthTime",
    "PatientSex",
    "PatientComments",
    "EthnicGroup",
    "PatientSpeciesDescription",
    "PatientBreedDescription",
    "ResponsiblePerson",
    "ResponsibleOrganization",
    "QualityControlSubject",
    # General Study module (PS3.3 C.7.2.1)
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "IssuerOfAccessionNumberSequence",
    "StudyDescription",
    "ReferringPhysicianName",
    "ReferringPhysicianIdentificationSequence",
    "PhysiciansOfRecord",
    "NameOfPhysiciansReadingStudy",
    "RequestingService",
    # Patient Study module (PS3.3 C.7.2.2)
    "AdmittingDiagnosesDescription",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
    "Occupation",
    "AdditionalPatientHistory",
    "MedicalAlerts",
    "Allergies",
    "PregnancyStatus",
    "SmokingStatus",
    "PatientState",
)
CORRECTABLE = {f"{tag:08X}": keyword for keyword in CORRECTABLE_KEYWORDS if (tag := tag_for_keyword(keyword))}

# Studies one request may name: more is a second request (Microsoft's limit).
MAX_STUDIES = 50
MAX_BODY_BYTES = 1 << 20


# Values larger than this are read from the source file when written, not when parsed.
_DEFER_BYTES = 1 << 16


class Correction:
    """A checked change: the attributes as a pydicom Dataset, and their keywords."""

    def __init__(self, change: Dataset, dicom_json: dict[str, Any]) -> None:
        self.change = change
        self.dicom_json = dicom_json

    @property
    def keywords(self) -> list[str]:
        return [CORRECTABLE[tag] for tag in sorted(self.dicom_json)]


def parse_request(body: bytes) -> tuple[list[str], Correction]:
    """The Study Instance UIDs and the change of a ``$bulkUpdate`` body
    (``{"studyInstanceUids": [...], "changeDataset": {DICOM JSON}}``); BadRequest naming what is wrong."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the body is not JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise BadRequest('the body must be a JSON object {"studyInstanceUids": [...], "changeDataset": {...}}')
    unknown = sorted(set(parsed) - {"studyInstanceUids", "changeDataset"})
    if unknown:
        raise BadRequest(f"unknown member {unknown[0][:64]!r}; expected studyInstanceUids and changeDataset")
    studies = parsed.get("studyInstanceUids")
    if not isinstance(studies, list) or not studies or not all(isinstance(s, str) for s in studies):
        raise BadRequest("studyInstanceUids must be a non-empty list of Study Instance UIDs")
    if len(studies) > MAX_STUDIES:
        raise BadRequest(f"at most {MAX_STUDIES} studies per request ({len(studies)} given)")
    for study in studies:
        uids.require_uid(study, "StudyInstanceUID")
    change = parsed.get("changeDataset")
    if not isinstance(change, dict) or not change:
        raise BadRequest("changeDataset must be a non-empty DICOM JSON object (PS3.18 F.2)")
    return list(dict.fromkeys(studies)), parse_change(change)


def parse_change(change: dict[str, Any]) -> Correction:
    """The DICOM JSON ``change`` as a Dataset, each attribute checked: correctable, its VR
    the dictionary's, its values valid for that VR (PS3.5 6.2)."""
    normalized: dict[str, Any] = {}
    for tag, element in change.items():
        upper = tag.upper()
        if upper not in CORRECTABLE:
            raise BadRequest(f"{_name(tag)} cannot be changed: only Patient and Study attributes can (UIDs never)")
        if not isinstance(element, dict) or "vr" not in element:
            raise BadRequest(f"{CORRECTABLE[upper]} ({upper}) must be a DICOM JSON attribute with a vr (PS3.18 F.2.2)")
        expected = dictionary_VR(int(upper, 16))
        if element["vr"] != expected:
            raise BadRequest(f"{CORRECTABLE[upper]} ({upper}) has VR {element['vr']!r}; its VR is {expected}")
        if "BulkDataURI" in element or "InlineBinary" in element:
            raise BadRequest(f"{CORRECTABLE[upper]} ({upper}) must be given by Value")
        normalized[upper] = element
    try:
        dataset = Dataset.from_json(normalized)
        for element in dataset.iterall():
            if element.VR != "SQ" and element.value is not None:
                values = element.value if element.VM > 1 else [element.value]
                for value in values:
                    validate_value(element.VR, value, pydicom.config.RAISE)
    except BadRequest:
        raise
    except Exception as exc:  # pydicom raises many kinds for malformed DICOM JSON
        raise BadRequest(f"changeDataset is not valid DICOM JSON: {exc}") from None
    return Correction(dataset, normalized)


def _name(tag: str) -> str:
    try:
        keyword = keyword_for_tag(int(tag, 16))
    except ValueError:
        return f"{tag[:16]!r} (not a tag)"
    return f"{keyword} ({tag.upper()})" if keyword else tag.upper()


def apply_correction(source: Path, target: Path, correction: Correction) -> None:
    """Write ``source`` with the correction's attributes into ``target``, in the same transfer
    syntax. Pixel data is not decoded: pydicom writes the element it read back byte for byte,
    and reads large values from ``source`` one at a time as it writes them."""
    ds = pydicom.dcmread(source, defer_size=_DEFER_BYTES)
    for element in correction.change:
        ds[element.tag] = element
    ds.save_as(target, enforce_file_format=True)
