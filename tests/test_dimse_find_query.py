"""C-FIND identifier → query translation and response identifiers (gateway.dimse.find_query,
gateway.dimse.find_answer), with identifiers encoded and decoded as pynetdicom does."""

from __future__ import annotations

import warnings
from io import BytesIO
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pynetdicom.dsutils import decode, encode

from gateway.dimse.find_answer import patient_rows, response_identifier
from gateway.dimse.find_query import (
    IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
    PATIENT_ROOT_FIND,
    STUDY_ROOT_FIND,
    UNABLE_TO_PROCESS,
    FindFailure,
    FindRequest,
    parse_find,
)

STUDY_UID = "1.2.3.4"
OTHER_UID = "1.2.3.5"


def identifier(charset: str | None = None, **keys: Any) -> Dataset:
    """``keys`` as an identifier that went over the wire (explicit VR little endian)."""
    ds = Dataset()
    if charset:
        ds.SpecificCharacterSet = charset
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns of the invalid values the tests send
        for keyword, value in keys.items():
            setattr(ds, keyword, value)
    encoded = encode(ds, False, True)
    assert encoded is not None
    return decode(BytesIO(encoded), False, True)


def refusal(ds: Dataset, sop_class: str = STUDY_ROOT_FIND) -> FindFailure:
    with pytest.raises(FindFailure) as caught:
        parse_find(ds, sop_class)
    assert 0 < len(caught.value.comment) <= 64
    return caught.value


def match_kinds(request: FindRequest) -> dict[str, str]:
    return {m.keyword: m.kind for m in request.query.matches}


def test_study_level_keys_become_the_qido_matches() -> None:
    request = parse_find(
        identifier(
            QueryRetrieveLevel="STUDY",
            PatientName="doe*",
            StudyDate="20240101-20240131",
            StudyInstanceUID=[STUDY_UID, OTHER_UID],
            ModalitiesInStudy="",
            AccessionNumber="",
        ),
        STUDY_ROOT_FIND,
    )
    assert request.level == "STUDY"
    assert request.query.level == "study"
    assert match_kinds(request) == {
        "PatientName": "wildcard",
        "StudyDate": "range",
        "StudyInstanceUID": "list",
        "ModalitiesInStudy": "universal",
        "AccessionNumber": "universal",
    }
    assert request.query.match_for("0020000D").values == (STUDY_UID, OTHER_UID)  # type: ignore[union-attr]
    returned = {tag for tag, _ in request.return_keys}
    assert returned == {"00100010", "00080020", "0020000D", "00080061", "00080050"}


def test_series_and_image_levels_need_the_unique_keys_above() -> None:
    series = parse_find(
        identifier(QueryRetrieveLevel="SERIES", StudyInstanceUID=STUDY_UID, Modality="CT"), STUDY_ROOT_FIND
    )
    assert series.query.level == "series"
    assert {tag for tag, _ in series.return_keys} == {"0020000D", "0020000E", "00080060"}
    image = parse_find(
        identifier(QueryRetrieveLevel="IMAGE", PatientID="P1", StudyInstanceUID=STUDY_UID, SeriesInstanceUID=OTHER_UID),
        PATIENT_ROOT_FIND,
    )
    assert image.query.level == "instance"
    assert {tag for tag, _ in image.return_keys} == {"00100020", "0020000D", "0020000E", "00080018"}

    missing = refusal(identifier(QueryRetrieveLevel="SERIES", Modality="CT"))
    assert missing.status == IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS
    assert "StudyInstanceUID" in missing.comment
    assert missing.offending == 0x0020000D
    wildcard = refusal(identifier(QueryRetrieveLevel="IMAGE", StudyInstanceUID=STUDY_UID, SeriesInstanceUID="1.2*"))
    assert wildcard.status == IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS
    no_patient = refusal(identifier(QueryRetrieveLevel="STUDY", StudyDate=""), PATIENT_ROOT_FIND)
    assert "PatientID" in no_patient.comment


def test_higher_level_keys_are_matched_but_lower_ones_refused() -> None:
    request = parse_find(
        identifier(QueryRetrieveLevel="SERIES", StudyInstanceUID=STUDY_UID, PatientName="DOE^JOHN"), STUDY_ROOT_FIND
    )
    assert match_kinds(request)["PatientName"] == "single"
    lower = refusal(identifier(QueryRetrieveLevel="STUDY", SeriesDescription="AXIAL"))
    assert lower.status == IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS
    assert lower.offending == 0x0008103E


def test_patient_level_is_patient_root_only_and_takes_patient_keys_only() -> None:
    request = parse_find(
        identifier(QueryRetrieveLevel="PATIENT", PatientName="", PatientID="P*", NumberOfPatientRelatedStudies=""),
        PATIENT_ROOT_FIND,
    )
    assert request.query.level == "study"
    assert match_kinds(request) == {"PatientName": "universal", "PatientID": "wildcard"}
    assert "00201200" in {tag for tag, _ in request.return_keys}
    assert refusal(identifier(QueryRetrieveLevel="PATIENT", PatientID="")).status == IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS
    study_key = refusal(identifier(QueryRetrieveLevel="PATIENT", StudyDate="2024"), PATIENT_ROOT_FIND)
    assert study_key.status == IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS


@pytest.mark.parametrize(
    ("keys", "status"),
    [
        ({"PatientName": "X"}, IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS),  # no QueryRetrieveLevel
        ({"QueryRetrieveLevel": "WORKLIST"}, IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS),
        ({"QueryRetrieveLevel": "STUDY", "StudyDate": "2024-13-45"}, UNABLE_TO_PROCESS),
        ({"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "1.2.*"}, UNABLE_TO_PROCESS),
    ],
)
def test_bad_identifiers_get_a_failure_status(keys: dict[str, Any], status: int) -> None:
    assert refusal(identifier(**keys)).status == status


def test_huge_identifiers_are_refused_before_any_work() -> None:
    ds = identifier(QueryRetrieveLevel="STUDY")
    for element in range(1, 400):
        ds.add_new(0x00091000 + element, "LO", "")
    assert "keys" in refusal(ds).comment

    huge = Dataset()
    huge.QueryRetrieveLevel = "STUDY"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        huge.add_new(0x00100010, "PN", "N" * (1 << 20))
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, True
    write_dataset(buffer, huge)  # implicit VR: pydicom writes it without length checks
    assert refusal(decode(BytesIO(buffer.getvalue()), True, True)).status == UNABLE_TO_PROCESS


def test_sequences_are_return_keys_but_not_matched() -> None:
    empty_item = Dataset()
    empty_item.CodeValue = ""
    request = parse_find(identifier(QueryRetrieveLevel="STUDY", ProcedureCodeSequence=[empty_item]), STUDY_ROOT_FIND)
    assert match_kinds(request) == {"ProcedureCodeSequence": "universal"}
    item = Dataset()
    item.CodeValue = "CT-CHEST"
    assert refusal(identifier(QueryRetrieveLevel="STUDY", ProcedureCodeSequence=[item])).status == UNABLE_TO_PROCESS


def test_private_keys_asked_for_are_reported_unsupported_and_never_matched() -> None:
    ds = identifier(QueryRetrieveLevel="STUDY")
    ds.add_new(0x00291010, "LO", "")
    request = parse_find(ds, STUDY_ROOT_FIND)
    assert request.unsupported == ("00291010",)
    assert "00291010" not in dict(request.return_keys)
    ds[0x00291010].value = "X"
    assert refusal(ds).offending == 0x00291010


@pytest.mark.parametrize("charset", ["ISO_IR 100", "ISO_IR 192", None])
def test_names_are_decoded_with_the_identifier_character_set(charset: str | None) -> None:
    ds = Dataset()
    if charset:
        ds.SpecificCharacterSet = charset
    ds.QueryRetrieveLevel = "STUDY"
    ds.PatientName = "Müller*"
    raw = encode(ds, False, True)
    assert raw is not None
    if charset is None:  # an SCU that sends Latin-1 without declaring it
        raw = raw.replace("Müller".encode(), "Müller".encode("latin-1"))
    request = parse_find(decode(BytesIO(raw), False, True), STUDY_ROOT_FIND)
    assert request.query.match_for("00100010").value == "Müller*"  # type: ignore[union-attr]


def test_an_unknown_character_set_is_refused() -> None:
    ds = identifier(QueryRetrieveLevel="STUDY")
    ds.SpecificCharacterSet = "KLINGON"
    assert refusal(ds).status == UNABLE_TO_PROCESS


def test_an_unknown_sop_class_is_refused() -> None:
    assert refusal(identifier(QueryRetrieveLevel="STUDY"), "1.2.840.10008.5.1.4.31").status == 0x0122


# --- answers -------------------------------------------------------------------------------------


ROW = {
    "00080020": {"vr": "DA", "Value": ["20240115"]},
    "00080061": {"vr": "CS", "Value": ["CT", "MR"]},
    "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Müller^Jürgen"}]},
    "00100020": {"vr": "LO", "Value": ["P1"]},
    "0020000D": {"vr": "UI", "Value": [STUDY_UID]},
    "00081030": {"vr": "LO", "Value": ["not asked for"]},
}


def test_an_answer_carries_exactly_the_requested_keys() -> None:
    request = parse_find(
        identifier(QueryRetrieveLevel="STUDY", PatientName="m*", ModalitiesInStudy="", AccessionNumber=""),
        STUDY_ROOT_FIND,
    )
    ds = response_identifier(ROW, request, ae_title="GATEWAY")
    assert {e.keyword for e in ds} == {
        "SpecificCharacterSet",
        "QueryRetrieveLevel",
        "RetrieveAETitle",
        "AccessionNumber",
        "ModalitiesInStudy",
        "PatientName",
        "StudyInstanceUID",
    }
    assert ds.AccessionNumber == ""  # not held: empty, never invented
    assert list(ds.ModalitiesInStudy) == ["CT", "MR"]
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert ds.RetrieveAETitle == "GATEWAY"
    assert ds.QueryRetrieveLevel == "STUDY"
    encoded = encode(ds, False, True)
    assert encoded is not None
    assert "Müller^Jürgen".encode() in encoded


def test_an_ascii_answer_declares_no_character_set() -> None:
    request = parse_find(identifier(QueryRetrieveLevel="STUDY", PatientID=""), STUDY_ROOT_FIND)
    assert "SpecificCharacterSet" not in response_identifier(ROW, request, ae_title="GATEWAY")


def test_patients_are_the_distinct_patients_of_the_studies() -> None:
    def study(uid: str, patient: str, series: int, instances: int) -> dict[str, Any]:
        return {
            "00100020": {"vr": "LO", "Value": [patient]},
            "00100010": {"vr": "PN", "Value": [{"Alphabetic": f"NAME^{patient}"}]},
            "0020000D": {"vr": "UI", "Value": [uid]},
            "00201206": {"vr": "IS", "Value": [series]},
            "00201208": {"vr": "IS", "Value": [instances]},
        }

    rows = patient_rows([study("1.1", "A", 2, 10), study("1.2", "B", 1, 1), study("1.3", "A", 3, 5)])
    assert [r["00100020"]["Value"] for r in rows] == [["A"], ["B"]]
    assert rows[0]["00201200"]["Value"] == [2]  # NumberOfPatientRelatedStudies
    assert rows[0]["00201202"]["Value"] == [5]  # ...Series
    assert rows[0]["00201204"]["Value"] == [15]  # ...Instances
    assert "0020000D" not in rows[0]
