"""C-MOVE/C-GET identifiers → what to retrieve (gateway.dimse.retrieve_query), pure."""

from __future__ import annotations

import warnings

import pytest
from pydicom.dataset import Dataset

from gateway.dimse.retrieve_query import (
    GET_SOP_CLASSES,
    IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
    MOVE_SOP_CLASSES,
    PATIENT_ROOT_GET,
    PATIENT_ROOT_MOVE,
    STUDY_ROOT_MOVE,
    UNABLE_TO_PROCESS,
    RetrieveFailure,
    Selection,
    parse_retrieve,
)


def identifier(**keys: object) -> Dataset:
    ds = Dataset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # some tests set invalid values on purpose
        for keyword, value in keys.items():
            setattr(ds, keyword, value)
    return ds


def test_study_level_takes_a_list_of_studies() -> None:
    request = parse_retrieve(
        identifier(QueryRetrieveLevel="STUDY", StudyInstanceUID=["1.2.3", "1.2.4", "1.2.3"]),
        STUDY_ROOT_MOVE,
        MOVE_SOP_CLASSES,
    )
    assert request.level == "STUDY"
    assert request.selections == (Selection("1.2.3"), Selection("1.2.4"))


def test_image_level_names_one_series_and_its_instances() -> None:
    request = parse_retrieve(
        identifier(
            QueryRetrieveLevel="IMAGE",
            PatientID="PID1",
            StudyInstanceUID="1.2.3",
            SeriesInstanceUID="1.2.3.4",
            SOPInstanceUID=["1.2.3.4.5", "1.2.3.4.6"],
        ),
        PATIENT_ROOT_MOVE,
        MOVE_SOP_CLASSES,
    )
    assert request.selections == (
        Selection("1.2.3", "1.2.3.4", "1.2.3.4.5"),
        Selection("1.2.3", "1.2.3.4", "1.2.3.4.6"),
    )
    assert request.patient_id == "PID1"


def test_patient_level_names_a_patient() -> None:
    request = parse_retrieve(
        identifier(QueryRetrieveLevel="PATIENT", PatientID="PID1"), PATIENT_ROOT_GET, GET_SOP_CLASSES
    )
    assert (request.level, request.patient_id, request.selections) == ("PATIENT", "PID1", ())


@pytest.mark.parametrize(
    ("keys", "sop_class", "status", "comment"),
    [
        (
            {"StudyInstanceUID": "1.2.3"},
            STUDY_ROOT_MOVE,
            IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
            "QueryRetrieveLevel missing",
        ),
        (
            {"QueryRetrieveLevel": "PATIENT", "PatientID": "P"},
            STUDY_ROOT_MOVE,
            IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
            "level 'PATIENT' not in Study Root",
        ),
        (
            {"QueryRetrieveLevel": "SERIES", "SeriesInstanceUID": "1.2"},
            STUDY_ROOT_MOVE,
            IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
            "SERIES level needs StudyInstanceUID",
        ),
        (
            {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "1.2.3"},
            PATIENT_ROOT_MOVE,
            IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
            "STUDY level needs PatientID",
        ),
        (
            {"QueryRetrieveLevel": "SERIES", "StudyInstanceUID": ["1.2", "1.3"], "SeriesInstanceUID": "1.2.1"},
            STUDY_ROOT_MOVE,
            UNABLE_TO_PROCESS,
            "StudyInstanceUID must be one value above level SERIES",
        ),
        (
            {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "1.2.*"},
            STUDY_ROOT_MOVE,
            UNABLE_TO_PROCESS,
            "StudyInstanceUID is not a valid UID",
        ),
        (
            {"QueryRetrieveLevel": "PATIENT", "PatientID": "DOE*"},
            PATIENT_ROOT_MOVE,
            UNABLE_TO_PROCESS,
            "PatientID is not one Patient ID",
        ),
        (
            {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": [f"1.2.{i}" for i in range(1001)]},
            STUDY_ROOT_MOVE,
            UNABLE_TO_PROCESS,
            "StudyInstanceUID lists more than 1000 UIDs",
        ),
        ({"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "1.2"}, "1.2.840.10008.5.1.4.1.2.2.1", 0x0122, None),
    ],
)
def test_bad_identifiers_say_why(keys: dict[str, object], sop_class: str, status: int, comment: str | None) -> None:
    with pytest.raises(RetrieveFailure) as refused:
        parse_retrieve(identifier(**keys), sop_class, MOVE_SOP_CLASSES)
    assert refused.value.status == status
    if comment is not None:
        assert refused.value.comment == comment
    assert len(refused.value.comment) <= 64


def test_a_huge_identifier_is_refused_before_any_work() -> None:
    ds = identifier(QueryRetrieveLevel="STUDY", StudyInstanceUID="1.2")
    for n in range(300):
        ds.add_new(0x00091000 + n, "LO", "x")
    with pytest.raises(RetrieveFailure) as refused:
        parse_retrieve(ds, STUDY_ROOT_MOVE, MOVE_SOP_CLASSES)
    assert refused.value.status == UNABLE_TO_PROCESS
