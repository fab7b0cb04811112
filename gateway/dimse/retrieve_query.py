"""A C-MOVE or C-GET request identifier → what to retrieve (PS3.4 C.4.2.2.1, C.4.3.2.1), pure.

:func:`parse_retrieve` turns the identifier of a Patient Root or Study Root Query/Retrieve MOVE
or GET request into a :class:`RetrieveRequest`: the retrieve level and the entities it names.

Baseline behaviour (PS3.4 C.4.2.2.1, the same for C-GET by C.4.3.2.1): the identifier holds the
Query/Retrieve Level and the unique keys of that level and of every level above it (PS3.4
C.6.1.1.1 Patient Root, C.6.2.1.1 Study Root). Above the retrieve level each unique key is one
value; at the retrieve level the UID key may be a *list* of UIDs (PS3.4 C.4.2.2.1: "Unique Key
Attributes at the level of the retrieve may contain a list of UIDs"). Patient ID is no UID: a
PATIENT level retrieve names one patient, whose studies the handler looks up. Other keys are
ignored: relational retrieve (PS3.4 C.4.2.2.2) is an extended negotiation the gateway does not
accept.

Bad identifiers raise :class:`RetrieveFailure` with the statuses of PS3.4 C.4.2.1.5 / C.4.3.1.3
and an ErrorComment short enough for its LO value: 0xA900 "identifier does not match SOP class"
for a missing or foreign level or a missing unique key; 0xC000 "unable to process" for a value
that is not a UID, a list above the retrieve level, or an oversized identifier.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from gateway.dicom import uids
from gateway.dicom.dicomjson import pydicom_warnings_suppressed
from gateway.dimse.status import Refusal

__all__ = [
    "GET_SOP_CLASSES",
    "IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS",
    "MOVE_SOP_CLASSES",
    "UNABLE_TO_PROCESS",
    "RetrieveFailure",
    "RetrieveRequest",
    "Selection",
    "parse_retrieve",
]

# PS3.4 Annex C SOP Class UIDs of the MOVE and GET information models.
PATIENT_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.1.2"
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
PATIENT_ROOT_GET = "1.2.840.10008.5.1.4.1.2.1.3"
STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"
Model = Literal["patient", "study"]
MOVE_SOP_CLASSES: dict[str, Model] = {PATIENT_ROOT_MOVE: "patient", STUDY_ROOT_MOVE: "study"}
GET_SOP_CLASSES: dict[str, Model] = {PATIENT_ROOT_GET: "patient", STUDY_ROOT_GET: "study"}

# PS3.4 C.4.2.1.5 (C-MOVE) and C.4.3.1.3 (C-GET) failure statuses.
IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS = 0xA900
UNABLE_TO_PROCESS = 0xC000
SOP_CLASS_NOT_SUPPORTED = 0x0122

RetrieveLevel = Literal["PATIENT", "STUDY", "SERIES", "IMAGE"]
MODEL_LEVELS: dict[Model, tuple[RetrieveLevel, ...]] = {
    "patient": ("PATIENT", "STUDY", "SERIES", "IMAGE"),
    "study": ("STUDY", "SERIES", "IMAGE"),
}
# The unique key of each level (PS3.4 C.6.1.1.1, C.6.2.1.1), as pydicom keywords.
UNIQUE_KEY: dict[RetrieveLevel, str] = {
    "PATIENT": "PatientID",
    "STUDY": "StudyInstanceUID",
    "SERIES": "SeriesInstanceUID",
    "IMAGE": "SOPInstanceUID",
}

# A retrieve names a handful of entities; far beyond that is a mistake or an attack, refused
# before any work (issue #15: huge identifiers get a failure status).
MAX_KEYS = 256
MAX_UIDS = 1000
MAX_PATIENT_ID = 64  # LO (PS3.5 Table 6.2-1)


class RetrieveFailure(Refusal):
    """A C-MOVE/C-GET identifier the gateway refuses: ``status`` and an ErrorComment (PS3.7 C.4)."""


@dataclass(frozen=True)
class Selection:
    """One entity to retrieve: a study, a series of it, or one instance of that series."""

    study: str
    series: str | None = None
    sop: str | None = None


@dataclass(frozen=True)
class RetrieveRequest:
    """A parsed C-MOVE/C-GET: the level, and either the entities it names (``selections``) or,
    at PATIENT level, the Patient ID whose studies are to be retrieved."""

    model: Model
    level: RetrieveLevel
    selections: tuple[Selection, ...] = ()
    patient_id: str | None = None


def parse_retrieve(identifier: Dataset, sop_class: str, models: dict[str, Model]) -> RetrieveRequest:
    """Translate the identifier of a request of ``sop_class`` (one of ``models``:
    :data:`MOVE_SOP_CLASSES` or :data:`GET_SOP_CLASSES`); :class:`RetrieveFailure` if bad."""
    model = models.get(sop_class)
    if model is None:
        raise RetrieveFailure(SOP_CLASS_NOT_SUPPORTED, "SOP Class not supported")
    if len(identifier) > MAX_KEYS:
        raise RetrieveFailure(UNABLE_TO_PROCESS, f"identifier has more than {MAX_KEYS} keys")
    with pydicom_warnings_suppressed():
        level = _level(_values(identifier, "QueryRetrieveLevel"), model)
        levels = MODEL_LEVELS[model]
        down_to = levels[: levels.index(level) + 1]
        keys = {upper: _values(identifier, UNIQUE_KEY[upper]) for upper in down_to}
    for upper in down_to:
        values = keys[upper]
        name = UNIQUE_KEY[upper]
        if not values:
            raise RetrieveFailure(IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, f"{level} level needs {name}", _tag(name))
        if (upper != level or upper == "PATIENT") and len(values) > 1:
            raise RetrieveFailure(UNABLE_TO_PROCESS, f"{name} must be one value above level {level}", _tag(name))
        if len(values) > MAX_UIDS:
            raise RetrieveFailure(UNABLE_TO_PROCESS, f"{name} lists more than {MAX_UIDS} UIDs", _tag(name))
        if upper == "PATIENT":
            if len(values[0]) > MAX_PATIENT_ID or any(c in values[0] for c in "*?\\"):
                raise RetrieveFailure(UNABLE_TO_PROCESS, "PatientID is not one Patient ID", _tag(name))
        elif not all(uids.is_valid_uid(v) for v in values):
            raise RetrieveFailure(UNABLE_TO_PROCESS, f"{name} is not a valid UID", _tag(name))
    if level == "PATIENT":
        return RetrieveRequest(model, level, patient_id=keys["PATIENT"][0])
    study = keys["STUDY"]
    if level == "STUDY":
        selections = tuple(Selection(uid) for uid in dict.fromkeys(study))
    elif level == "SERIES":
        selections = tuple(Selection(study[0], uid) for uid in dict.fromkeys(keys["SERIES"]))
    else:
        series = keys["SERIES"][0]
        selections = tuple(Selection(study[0], series, uid) for uid in dict.fromkeys(keys["IMAGE"]))
    return RetrieveRequest(model, level, selections, keys["PATIENT"][0] if "PATIENT" in keys else None)


def _values(identifier: Dataset, keyword: str) -> list[str]:
    """The non-empty values of a key, stripped of the padding of their VR."""
    tag = _tag(keyword)
    if tag not in identifier:
        return []
    try:
        value: Any = identifier[tag].value
    except Exception as exc:  # pydicom raises many types for undecodable values
        raise RetrieveFailure(UNABLE_TO_PROCESS, f"cannot decode {keyword}", _tag(keyword)) from exc
    if value is None or value in ("", b""):
        return []
    if isinstance(value, bytes | bytearray):
        raise RetrieveFailure(UNABLE_TO_PROCESS, f"cannot decode {keyword}", _tag(keyword))
    items = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
    return [text for text in (str(v).strip(" \x00") for v in items) if text]


def _level(values: list[str], model: Model) -> RetrieveLevel:
    if not values:
        raise RetrieveFailure(IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, "QueryRetrieveLevel missing", 0x00080052)
    value = values[0].upper()
    for level in MODEL_LEVELS[model]:
        if value == level and len(values) == 1:
            return level
    root = "Patient Root" if model == "patient" else "Study Root"
    raise RetrieveFailure(IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, f"level {value[:16]!r} not in {root}", 0x00080052)


_TAGS = {
    "QueryRetrieveLevel": 0x00080052,
    "PatientID": 0x00100020,
    "StudyInstanceUID": 0x0020000D,
    "SeriesInstanceUID": 0x0020000E,
    "SOPInstanceUID": 0x00080018,
}


def _tag(keyword: str) -> int:
    return _TAGS[keyword]
