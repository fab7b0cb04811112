"""QIDO-RS query ↔ C-FIND identifier (PS3.18 10.6.1 ↔ PS3.4 C.4.1, Study Root), pure.

Request: :func:`identifier` turns a :class:`~gateway.dicom.query.QidoQuery` into the identifier
of a Study Root C-FIND. Each matching key is carried *as the client wrote it*: QIDO matching is
defined by PS3.4 C.2.2.2, the same rules as C-FIND, so nothing is added or rewritten — no
invented wildcards (``SMITH`` stays a single value, not ``SMITH*``), date ranges stay ranges,
UID lists become the backslash lists of C.2.2.2.2. The return keys are the QIDO required keys
of every spanned level (PS3.18 Table 10.6.3-3) plus ``includefield``; the unique keys of the
levels above are always asked for, so a row can be addressed (and merged) by its UIDs.
Text values outside ASCII are sent in UTF-8 (Specific Character Set ISO_IR 192), which both
Orthanc and dcmqrscp match against their Latin-1 and UTF-8 data.

Response: :func:`response_row` turns one pending response identifier into a QIDO row (DICOM
JSON). Only what the PACS sent is returned: attributes it leaves out (dcmqrscp omits
ModalitiesInStudy and the related-instance counts) stay out rather than being invented.
Identifiers without a Specific Character Set but with non-ASCII text (dcmqrscp does this with
Latin-1 names) are decoded as UTF-8 when they are valid UTF-8, else as Latin-1.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydicom.charset import convert_encodings
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset

from gateway.dicom import textlimits
from gateway.dicom.attributes import (
    PARENT_UIDS,
    PIXEL_DATA_TAGS,
    RETRIEVE_URL,
    SERIES_INSTANCE_UID,
    SERIES_TAGS,
    SOP_INSTANCE_UID,
    STUDY_INSTANCE_UID,
    STUDY_TAGS,
    Level,
    tag_of,
    vr_of,
)
from gateway.dicom.dicomjson import dataset_to_json, pydicom_warnings_suppressed
from gateway.dicom.query import Match, QidoQuery

# PS3.4 C.6.2.1 (Study Root): the Query/Retrieve Level value of each QIDO level.
QR_LEVEL: dict[Level, str] = {"study": "STUDY", "series": "SERIES", "instance": "IMAGE"}
UNIQUE_KEY: dict[Level, str] = {
    "study": STUDY_INSTANCE_UID,
    "series": SERIES_INSTANCE_UID,
    "instance": SOP_INSTANCE_UID,
}

QUERY_RETRIEVE_LEVEL = tag_of("QueryRetrieveLevel")
SPECIFIC_CHARACTER_SET = tag_of("SpecificCharacterSet")
_SPECIFIC_CHARACTER_SET_INT = int(SPECIFIC_CHARACTER_SET, 16)
RETRIEVE_AE_TITLE = tag_of("RetrieveAETitle")

_TEXT_VRS = frozenset({"SH", "LO", "ST", "LT", "UT", "UC", "PN"})
_BINARY_INTEGER_VRS = frozenset({"US", "SS", "UL", "SL", "UV", "SV"})
# Instance-level keys asked for with includefield=all (C-FIND has no "all"); study and series
# levels ask for their whole module tables instead.
_INSTANCE_ALL = frozenset(
    tag_of(k)
    for k in (
        "SOPClassUID",
        "SOPInstanceUID",
        "InstanceNumber",
        "InstanceAvailability",
        "Rows",
        "Columns",
        "BitsAllocated",
        "NumberOfFrames",
        "ContentDate",
        "ContentTime",
        "AcquisitionDate",
        "AcquisitionTime",
        "ImageType",
    )
)
# Never sent as keys: computed by the gateway (RetrieveURL) or bulk data.
_NOT_KEYS = PIXEL_DATA_TAGS | {RETRIEVE_URL}


def return_tags(query: QidoQuery) -> frozenset[str]:
    """Every tag the identifier asks the PACS for (matching and return keys)."""
    always, optional = query.return_keys()
    tags = set(always | optional | PARENT_UIDS[query.level])
    tags.add(UNIQUE_KEY[query.level])
    if query.include_all:
        for level in query.spanned_levels:
            tags |= {"study": STUDY_TAGS, "series": SERIES_TAGS, "instance": _INSTANCE_ALL}[level]
    # Sequences only when the client named them: an empty sequence key is legal (PS3.4
    # C.2.2.2.6) but some SCPs refuse or mangle it, and "all" is best effort for a C-FIND.
    tags = {t for t in tags if vr_of(t) != "SQ" or t in query.includes}
    tags -= _NOT_KEYS
    tags.discard(SPECIFIC_CHARACTER_SET)
    return frozenset(tags)


def identifier(query: QidoQuery) -> Dataset:
    """The Study Root C-FIND identifier for ``query`` (PS3.4 C.4.1.2.1)."""
    ds = Dataset()
    ds.QueryRetrieveLevel = QR_LEVEL[query.level]
    values: dict[str, str | list[str]] = {}
    if query.study is not None:
        values[STUDY_INSTANCE_UID] = query.study
    if query.series is not None:
        values[SERIES_INSTANCE_UID] = query.series
    for match in query.matches:
        values[match.tag] = _key_value(match)
    non_ascii = False
    for tag in sorted(return_tags(query) | values.keys()):
        vr = vr_of(tag)
        if vr is None:
            continue
        value = values.get(tag)
        non_ascii = non_ascii or any(not v.isascii() for v in _as_list(value))
        ds.add(DataElement(int(tag, 16), vr, _typed(vr, value)))
    if non_ascii:
        # PS3.5 6.1.2.5.3: one character set for the whole identifier; UTF-8 covers every value.
        ds.SpecificCharacterSet = "ISO_IR 192"
    return ds


def _key_value(match: Match) -> str | list[str]:
    if match.kind == "universal":
        return ""
    if match.kind == "list":
        # PS3.4 C.2.2.2.2 List of UID Matching; for CS (ModalitiesInStudy=CT\MR) the same list
        # form, which is what PS3.18 8.3.4.1 maps a comma list to.
        return list(match.values)
    return match.value  # single, wildcard, range: exactly as the client wrote it


def _as_list(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _typed(vr: str, value: str | list[str] | None) -> Any:
    """The element value pydicom expects for ``vr``; None is an empty (return) key."""
    if value is None or value == "":
        return None
    if vr in _BINARY_INTEGER_VRS:
        # QIDO validated these as integers already; binary VRs need ints.
        return [int(v) for v in value] if isinstance(value, list) else int(value)
    if vr in ("FL", "FD"):
        return [float(v) for v in value] if isinstance(value, list) else float(value)
    return value


# ---------------------------------------------------------------------------------------------


def response_row(ds: Dataset, warnings: list[str] | None = None) -> dict[str, Any]:
    """One C-FIND response identifier as a QIDO row (DICOM JSON), as the PACS sent it.

    QueryRetrieveLevel and SpecificCharacterSet are dropped (DICOM JSON is always UTF-8,
    PS3.18 F.2); everything else, empty values included, is kept, except text values beyond the
    bounds of gateway.dicom.textlimits (those of an instance at ingest): such an attribute is
    sent empty, and a sentence naming it is appended to ``warnings``.
    """
    with pydicom_warnings_suppressed():
        for found in list(textlimits.oversized(ds)):
            del found.container[found.tag]
            found.container.add_new(found.tag, found.vr, None)
            if warnings is not None:
                warnings.append(f"{found.reason()}: left empty in a C-FIND response")
        if _SPECIFIC_CHARACTER_SET_INT not in ds:
            guessed = guess_character_set(ds)
            if guessed:
                # pydicom decodes raw values with the character set the data set was read with.
                implicit, little = ds.original_encoding
                ds.set_original_encoding(implicit, little, convert_encodings(guessed))
        row = dataset_to_json(ds, "")
    row.pop(QUERY_RETRIEVE_LEVEL, None)
    row.pop(SPECIFIC_CHARACTER_SET, None)
    return row


def guess_character_set(ds: Dataset) -> str | None:
    """A character set for an identifier that has none but carries non-ASCII text.

    PS3.5 6.1.2.2: without Specific Character Set only ASCII is allowed, yet archives send
    Latin-1 (and sometimes UTF-8) this way. Valid UTF-8 is almost never accidental Latin-1 text,
    so UTF-8 wins when every non-ASCII value decodes as UTF-8; otherwise Latin-1, which decodes
    any byte. None when every text value is ASCII.
    """
    raw_values = list(_raw_text_values(ds))
    non_ascii = [v for v in raw_values if not v.isascii()]
    if not non_ascii:
        return None
    try:
        for value in non_ascii:
            value.decode("utf-8")
    except UnicodeDecodeError:
        return "ISO_IR 100"
    return "ISO_IR 192"


def _raw_text_values(ds: Dataset) -> Iterable[bytes]:
    tags = list(ds.keys())  # keys, not elements: iterating a Dataset would decode every value
    for tag in tags:
        item = ds.get_item(tag)
        if isinstance(item, RawDataElement):
            if item.value and (item.VR in _TEXT_VRS or (item.VR is None and vr_of(f"{tag:08X}") in _TEXT_VRS)):
                yield bytes(item.value)
        elif item is not None and item.VR == "SQ":
            for sub in item.value or ():
                yield from _raw_text_values(sub)


def row_uid(row: dict[str, Any], level: Level) -> str | None:
    """The unique key of a row at ``level`` (what rows are merged by), None when missing."""
    element = row.get(UNIQUE_KEY[level]) or {}
    value = element.get("Value") or [None]
    uid = value[0]
    return uid if isinstance(uid, str) and uid else None
