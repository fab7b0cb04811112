"""A C-FIND request identifier → the gateway's query model (PS3.4 C.4.1, C.6.1, C.6.2), pure.

:func:`parse_find` turns the identifier of a Patient Root or Study Root Query/Retrieve FIND
request into a :class:`FindRequest`: a :class:`~gateway.dicom.query.QidoQuery` (so the index,
the PACS federation and the visibility rule answer it exactly as they answer QIDO-RS, with the
same PS3.4 C.2.2.2 matching) plus the keys each response identifier must carry.

Levels (PS3.4 C.6.1.1, C.6.2.1):

* ``PATIENT`` (Patient Root only): patient-level keys only. The gateway keeps no patient
  entity, so it is answered as a study-level query whose rows are folded into distinct
  patients (:func:`gateway.dimse.find_answer.patient_rows`);
* ``STUDY``, ``SERIES``, ``IMAGE``: the QIDO levels study, series and instance.

Baseline hierarchical search (PS3.4 C.4.1.2.1, C.4.1.3.1): the unique keys of every level
above the query level must be present with single value matching — PatientID for Patient Root
below PATIENT, StudyInstanceUID below STUDY, SeriesInstanceUID at IMAGE. Other keys of higher
levels are matched too, as QIDO matches them, rather than refused: findscu users routinely send
PatientName with a SERIES query. Keys of *lower* levels are refused.

Character set (PS3.5 6.1.2.5): values are decoded with the identifier's Specific Character Set;
an identifier without one but with non-ASCII bytes is decoded as UTF-8 when valid, else Latin-1
(:func:`gateway.dicom.cfind.guess_character_set`), the same tolerance as for PACS answers.

Bad identifiers raise :class:`FindFailure` with the status of PS3.4 C.4.1.1.4 and an
ErrorComment short enough for its LO value (64 characters): 0xA900 "identifier does not match
SOP class" for a missing or foreign Query/Retrieve Level, a missing higher-level unique key or a
key of a lower level; 0xC000 "unable to process" for what the gateway cannot match (sequence
matching, a non-empty private key, an invalid value, an oversized identifier).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from pydicom.charset import convert_encodings, python_encoding
from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import PersonName

from gateway.dicom.attributes import (
    SERIES_INSTANCE_UID,
    SOP_INSTANCE_UID,
    STUDY_INSTANCE_UID,
    Level,
    attribute_level,
    tag_of,
    vr_of,
)
from gateway.dicom.cfind import QUERY_RETRIEVE_LEVEL, RETRIEVE_AE_TITLE, SPECIFIC_CHARACTER_SET, guess_character_set
from gateway.dicom.dicomjson import pydicom_warnings_suppressed
from gateway.dicom.query import QidoQuery, parse_qido
from gateway.dimse.status import Refusal
from gateway.errors import BadRequest

__all__ = [
    "IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS",
    "PATIENT_ROOT_FIND",
    "STUDY_ROOT_FIND",
    "UNABLE_TO_PROCESS",
    "FindFailure",
    "FindRequest",
    "parse_find",
]

# PS3.4 Annex B/C SOP Class UIDs of the two FIND information models.
PATIENT_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
Model = Literal["patient", "study"]
MODELS: dict[str, Model] = {PATIENT_ROOT_FIND: "patient", STUDY_ROOT_FIND: "study"}

# PS3.4 C.4.1.1.4 failure statuses.
IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS = 0xA900
UNABLE_TO_PROCESS = 0xC000

QrLevel = Literal["PATIENT", "STUDY", "SERIES", "IMAGE"]
QIDO_LEVEL: dict[QrLevel, Level] = {"PATIENT": "study", "STUDY": "study", "SERIES": "series", "IMAGE": "instance"}
MODEL_LEVELS: dict[Model, tuple[QrLevel, ...]] = {
    "patient": ("PATIENT", "STUDY", "SERIES", "IMAGE"),
    "study": ("STUDY", "SERIES", "IMAGE"),
}

PATIENT_ID = tag_of("PatientID")
# The unique key of each level (PS3.4 C.6.1.1.1, C.6.2.1.1).
UNIQUE_KEY: dict[QrLevel, str] = {
    "PATIENT": PATIENT_ID,
    "STUDY": STUDY_INSTANCE_UID,
    "SERIES": SERIES_INSTANCE_UID,
    "IMAGE": SOP_INSTANCE_UID,
}

# Patient module attributes (PS3.3 C.7.1.1) the index keeps with each study: the keys of the
# Patient Root PATIENT level (PS3.4 C.6.1.1.2), besides the computed counts below.
PATIENT_TAGS = frozenset(
    tag_of(k)
    for k in (
        "PatientName",
        "PatientID",
        "IssuerOfPatientID",
        "IssuerOfPatientIDQualifiersSequence",
        "TypeOfPatientID",
        "PatientBirthDate",
        "PatientBirthTime",
        "PatientSex",
        "OtherPatientIDsSequence",
        "OtherPatientNames",
        "EthnicGroup",
        "PatientComments",
        "PatientSpeciesDescription",
        "PatientSpeciesCodeSequence",
        "PatientBreedDescription",
        "PatientBreedCodeSequence",
        "BreedRegistrationSequence",
        "ResponsiblePerson",
        "ResponsiblePersonRole",
        "ResponsibleOrganization",
        "PatientIdentityRemoved",
        "DeidentificationMethod",
        "DeidentificationMethodCodeSequence",
    )
)
# PS3.4 C.6.1.1.2: computed by the SCP from the patient's studies.
PATIENT_COUNTS = frozenset(
    tag_of(k)
    for k in ("NumberOfPatientRelatedStudies", "NumberOfPatientRelatedSeries", "NumberOfPatientRelatedInstances")
)
# Response keys the gateway fills itself (PS3.4 C.4.1.1.3.2), never matched.
RESPONSE_KEYS = frozenset({QUERY_RETRIEVE_LEVEL, SPECIFIC_CHARACTER_SET, RETRIEVE_AE_TITLE})
# Keys of any level the store never holds: returned empty (PS3.4 C.4.1.1.3.2 lists them as
# conditional; the gateway has no storage media).
NEVER_HELD = frozenset(tag_of(k) for k in ("StorageMediaFileSetID", "StorageMediaFileSetUID", "QueryRetrieveView"))

# An identifier is a handful of keys; anything far beyond is a mistake or an attack, refused
# before any work (issue #15: huge identifiers get a failure status).
MAX_KEYS = 256
MAX_VALUE_CHARS = 64 << 10


class FindFailure(Refusal):
    """A C-FIND request the gateway refuses: ``status`` and an ErrorComment (PS3.7 C.4)."""


@dataclass(frozen=True)
class FindRequest:
    """A parsed C-FIND: the query to run and what each response identifier carries.

    ``return_keys`` are (hex tag, VR) of every key of the request plus the unique keys of the
    query level and those above (a row must be addressable for a C-MOVE), without the response
    keys the gateway fills itself. ``unsupported`` are the private or unknown keys that were
    asked for (empty) and will not be returned: their pendings say so with 0xFF01.
    """

    model: Model
    level: QrLevel
    query: QidoQuery
    return_keys: tuple[tuple[str, str], ...]
    unsupported: tuple[str, ...] = ()
    key_names: tuple[str, ...] = field(default=())


def parse_find(identifier: Dataset, sop_class: str) -> FindRequest:
    """Translate a C-FIND identifier of the FIND SOP class ``sop_class`` (see the module
    docstring); :class:`FindFailure` for an identifier the gateway cannot answer."""
    model = MODELS.get(sop_class)
    if model is None:
        raise FindFailure(0x0122, "SOP Class not supported by this C-FIND SCP")
    if len(identifier) > MAX_KEYS:
        raise FindFailure(UNABLE_TO_PROCESS, f"identifier has more than {MAX_KEYS} keys")
    with pydicom_warnings_suppressed():
        keys = dict(_decoded_keys(identifier))
    level = _level(keys.pop(QUERY_RETRIEVE_LEVEL, None), model)
    keys.pop(SPECIFIC_CHARACTER_SET, None)
    keys.pop(RETRIEVE_AE_TITLE, None)
    if sum(len(value) for value, _ in keys.values()) > MAX_VALUE_CHARS:
        raise FindFailure(UNABLE_TO_PROCESS, "identifier values are too large")
    _require_higher_unique_keys(keys, model, level)

    params: list[tuple[str, str]] = []
    returned: dict[str, str] = {}
    unsupported: list[str] = []
    allowed = _allowed_levels(level)
    for tag, (value, vr) in sorted(keys.items()):
        if vr_of(tag) is None:  # private or not in the dictionary
            if value:
                raise FindFailure(UNABLE_TO_PROCESS, f"cannot match on unknown key ({tag[:4]},{tag[4:]})", int(tag, 16))
            unsupported.append(tag)
            continue
        returned[tag] = vr
        if tag in NEVER_HELD or (level == "PATIENT" and tag in PATIENT_COUNTS):
            if value:
                raise FindFailure(UNABLE_TO_PROCESS, f"cannot match on {_name(tag)}", int(tag, 16))
            continue
        home = attribute_level(tag)
        if level == "PATIENT" and tag not in PATIENT_TAGS:
            raise FindFailure(IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, f"{_name(tag)} is no PATIENT key", int(tag, 16))
        if home is not None and home not in allowed:
            raise FindFailure(IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, f"{_name(tag)} is below level {level}", int(tag, 16))
        params.append((tag, value))

    for upper in _levels_down_to(model, level):
        tag = UNIQUE_KEY[upper]
        returned.setdefault(tag, vr_of(tag) or "UI")
    try:
        query = parse_qido(QIDO_LEVEL[level], params)
    except BadRequest as exc:
        raise FindFailure(UNABLE_TO_PROCESS, exc.reason.removeprefix("QIDO key ")) from exc
    return FindRequest(
        model=model,
        level=level,
        query=query,
        return_keys=tuple(sorted(returned.items())),
        unsupported=tuple(unsupported),
        key_names=tuple(_name(tag) for tag in sorted(keys)),
    )


# ---------------------------------------------------------------------------------------------


def _decoded_keys(identifier: Dataset) -> Iterator[tuple[str, tuple[str, str]]]:
    """(hex tag, (value as text, VR)) of each key, decoded with the identifier's character set."""
    _check_character_set(identifier)
    for number in list(identifier.keys()):
        group, element = number >> 16, number & 0xFFFF
        if element == 0 or group in (0x0000, 0x0002):
            continue  # group lengths and command/meta groups are not keys
        tag = f"{number:08X}"
        try:
            elem = identifier[number]
        except Exception as exc:  # pydicom raises many types for undecodable values
            raise FindFailure(UNABLE_TO_PROCESS, f"cannot decode key ({tag[:4]},{tag[4:]})", number) from exc
        yield tag, (_text(elem, tag), elem.VR)


def _check_character_set(identifier: Dataset) -> None:
    element = identifier.get(SPECIFIC_CHARACTER_SET_INT)
    if element is None or not element.value:
        guessed = guess_character_set(identifier)
        if guessed and identifier.original_encoding != (None, None):
            # PS3.5 6.1.2.2 allows only ASCII here, yet SCUs send Latin-1 or UTF-8 this way.
            implicit, little = identifier.original_encoding
            identifier.set_original_encoding(implicit, little, convert_encodings(guessed))
        return
    terms = list(element.value) if isinstance(element.value, MultiValue) else [element.value]
    for term in terms:
        if (term or "").strip() not in python_encoding:
            raise FindFailure(UNABLE_TO_PROCESS, f"Specific Character Set {str(term)[:20]!r} unsupported")


SPECIFIC_CHARACTER_SET_INT = int(SPECIFIC_CHARACTER_SET, 16)


def _text(elem: DataElement, tag: str) -> str:
    """A key's value as QIDO takes it: multiple values joined by backslash (PS3.4 C.2.2.2.2)."""
    value: Any = elem.value
    if elem.VR == "SQ":
        # PS3.4 C.2.2.2.6: an empty sequence, or one item of empty keys, asks for the sequence.
        if any(_text(sub, f"{sub.tag:08X}") for item in value or () for sub in item):
            raise FindFailure(UNABLE_TO_PROCESS, f"sequence matching unsupported: {_name(tag)}", int(tag, 16))
        return ""
    if value is None or value == "" or value == b"":
        return ""
    if isinstance(value, bytes | bytearray):
        raise FindFailure(UNABLE_TO_PROCESS, f"cannot match binary key {_name(tag)}", int(tag, 16))
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(_one(v) for v in value)
    return _one(value)


def _one(value: Any) -> str:
    if isinstance(value, PersonName):
        return str(value)  # all component groups, "=" separated, as sent
    return "" if value is None else str(value)


def _level(element: tuple[str, str] | None, model: Model) -> QrLevel:
    if element is None or not element[0].strip():
        raise FindFailure(IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, "QueryRetrieveLevel (0008,0052) missing", 0x00080052)
    value = element[0].strip().upper()
    for level in MODEL_LEVELS[model]:
        if value == level:
            return level
    root = "Patient Root" if model == "patient" else "Study Root"
    raise FindFailure(IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, f"level {value[:16]!r} not in {root}", 0x00080052)


def _levels_down_to(model: Model, level: QrLevel) -> tuple[QrLevel, ...]:
    """The model's levels from its root down to ``level`` included."""
    levels = MODEL_LEVELS[model]
    return levels[: levels.index(level) + 1]


def _require_higher_unique_keys(keys: dict[str, tuple[str, str]], model: Model, level: QrLevel) -> None:
    # PS3.4 C.4.1.2.1 / C.4.1.3.1: a hierarchical search names one entity of each level above.
    for upper in _levels_down_to(model, level)[:-1]:
        tag = UNIQUE_KEY[upper]
        value = keys.get(tag, ("", ""))[0].strip(" ")
        if not value or "\\" in value or "*" in value or "?" in value:
            raise FindFailure(
                IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, f"{level} level needs one {_name(tag)}", int(tag, 16)
            )


def _allowed_levels(level: QrLevel) -> frozenset[Level]:
    """The index levels whose keys a query at ``level`` may match: its own and those above."""
    return _ALLOWED_LEVELS[level]


_ALLOWED_LEVELS: dict[QrLevel, frozenset[Level]] = {
    "PATIENT": frozenset({"study"}),
    "STUDY": frozenset({"study"}),
    "SERIES": frozenset({"study", "series"}),
    "IMAGE": frozenset({"study", "series", "instance"}),
}


def _name(tag: str) -> str:
    return keyword_for_tag(int(tag, 16)) or f"({tag[:4]},{tag[4:]})"
