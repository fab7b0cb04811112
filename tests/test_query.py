"""QIDO-RS query parsing (gateway/dicom/query.py) and its matching helpers (matching.py)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.datadict import dictionary_VR

from gateway.dicom.attributes import (
    MODALITIES_IN_STUDY,
    SERIES_TAGS,
    STUDY_TAGS,
    attribute_level,
    tag_of,
)
from gateway.dicom.matching import dicom_glob, fold_name, name_words, name_words_column, temporal_bounds
from gateway.dicom.query import Match, QidoQuery, build_row, parse_qido
from gateway.errors import BadRequest, InvalidUID

STUDY = "1.2.826.0.1.3680043.8.498.1"
SERIES = "1.2.826.0.1.3680043.8.498.1.1"


def one(level: str = "study", key: str = "PatientName", value: str = "", **path: str) -> Match:
    query = parse_qido(level, [(key, value)], **path)  # type: ignore[arg-type]
    assert len(query.matches) == 1
    return query.matches[0]


# -- keys ---------------------------------------------------------------------------------------


def test_keyword_and_hex_keys_are_the_same_key() -> None:
    by_keyword = one(key="PatientID", value="P1")
    assert one(key="00100020", value="P1") == by_keyword
    assert one(key="0010002a".replace("a", "0"), value="P1") == by_keyword
    assert by_keyword.tag == "00100020"
    assert by_keyword.vr == "LO"
    assert by_keyword.keyword == "PatientID"
    assert one(key="0020000d", value=STUDY).tag == "0020000D"  # lower-case hex


@pytest.mark.parametrize(
    ("key", "level"),
    [
        ("NoSuchKeyword", "study"),
        ("patientname", "study"),  # keywords are case-sensitive
        ("0010001", "study"),
        ("001000100", "study"),
        ("00111001", "study"),  # private: not in the dictionary
        ("00100010.00100020", "study"),  # sequence path
        ("OtherPatientIDsSequence.PatientID", "study"),
        ("00020010", "study"),  # file meta
        ("00080000", "study"),  # group length
        ("_", "study"),
    ],
)
def test_bad_keys_are_400_naming_the_key(key: str, level: str) -> None:
    with pytest.raises(BadRequest, match=key.replace(".", r"\.")):
        parse_qido(level, [(key, "x")])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("level", "key", "path", "ok"),
    [
        ("study", "PatientName", {}, True),
        ("study", "ModalitiesInStudy", {}, True),
        ("study", "Modality", {}, False),  # series-level: use ModalitiesInStudy
        ("study", "SOPClassUID", {}, False),
        ("series", "Modality", {}, True),
        ("series", "PatientName", {}, True),  # /series spans studies (PS3.18 Table 10.6.1-5)
        ("series", "PatientName", {"study": STUDY}, False),  # /studies/{s}/series does not
        ("series", "SeriesDescription", {"study": STUDY}, True),
        ("series", "InstanceNumber", {}, False),
        ("instance", "PatientID", {}, True),
        ("instance", "Modality", {}, True),
        ("instance", "Modality", {"study": STUDY}, True),
        ("instance", "PatientID", {"study": STUDY}, False),
        ("instance", "Modality", {"study": STUDY, "series": SERIES}, False),
        ("instance", "Rows", {"study": STUDY, "series": SERIES}, True),
        ("instance", "SOPClassUID", {"study": STUDY, "series": SERIES}, True),
    ],
)
def test_keys_allowed_per_level(level: str, key: str, path: dict[str, str], ok: bool) -> None:
    params = [(key, "")]
    if ok:
        parse_qido(level, params, **path)  # type: ignore[arg-type]
    else:
        with pytest.raises(BadRequest, match=key):
            parse_qido(level, params, **path)  # type: ignore[arg-type]


def test_path_uids_are_validated() -> None:
    with pytest.raises(InvalidUID, match="StudyInstanceUID"):
        parse_qido("series", [], study="1.02.3")
    with pytest.raises(InvalidUID, match="SeriesInstanceUID"):
        parse_qido("instance", [], study=STUDY, series="x")


def test_unknown_parameters_are_400_but_reserved_ones_are_not() -> None:
    with pytest.raises(BadRequest, match="callback"):
        parse_qido("study", [("callback", "x")])
    query = parse_qido(
        "study", [("limit", "101"), ("offset", "0"), ("fuzzymatching", "false"), ("includefield", "00081030")]
    )
    assert (query.limit, query.offset, query.fuzzy, query.matches) == (101, 0, False, ())
    assert parse_qido("study", [("FuzzyMatching", "TRUE")]).fuzzy


def test_repeated_keys() -> None:
    assert len(parse_qido("study", [("PatientID", "A"), ("00100020", "A")]).matches) == 1
    with pytest.raises(BadRequest, match="PatientID"):
        parse_qido("study", [("PatientID", "A"), ("PatientID", "B")])
    with pytest.raises(BadRequest, match="limit"):
        parse_qido("study", [("limit", "1"), ("limit", "2")])


# -- matching types -----------------------------------------------------------------------------


def test_universal_matching() -> None:
    assert one(value="").kind == "universal"
    assert one(value="*").kind == "universal"  # PS3.4 C.2.2.2.4 note
    assert one(key="StudyDate", value="").kind == "universal"
    assert one(key="OtherPatientIDsSequence", value="").kind == "universal"


def test_single_value_and_wildcards() -> None:
    assert one(value="Smith^John") == Match(
        tag="00100010", vr="PN", level="study", kind="single", value="Smith^John", values=("Smith^John",)
    )
    assert one(value="Sm?th*").kind == "wildcard"
    assert one(key="AccessionNumber", value="A*").kind == "wildcard"
    assert one(key="PatientSex", value="?").kind == "wildcard"
    # AS is not a wildcard VR: '*' is an ordinary character there (PS3.4 C.2.2.2.4).
    assert one(level="instance", key="PatientAge", value="04*").kind == "single"
    assert one(value="  Smith ").value == "Smith"


def test_star_in_uid_or_date_is_not_a_wildcard() -> None:
    with pytest.raises(InvalidUID, match="StudyInstanceUID"):
        parse_qido("study", [("StudyInstanceUID", "1.2.*")])
    with pytest.raises(BadRequest, match="StudyDate"):
        parse_qido("study", [("StudyDate", "2024*")])


def test_uid_lists() -> None:
    uids = ("1.2.3", "1.2.4", "1.2.5")
    for raw in ("1.2.3,1.2.4,1.2.5", "1.2.3\\1.2.4\\1.2.5", "1.2.3, 1.2.4 ,1.2.5"):
        match = one(key="StudyInstanceUID", value=raw)
        assert (match.kind, match.values) == ("list", uids)
    assert one(key="StudyInstanceUID", value="1.2.3").kind == "single"
    with pytest.raises(InvalidUID):
        parse_qido("study", [("StudyInstanceUID", "1.2.3,")])
    with pytest.raises(BadRequest, match="StudyInstanceUID"):
        parse_qido("study", [("StudyInstanceUID", ",".join(["1.2.3"] * 1001))])


def test_cs_value_lists() -> None:
    match = one(key="ModalitiesInStudy", value="CT\\MR")
    assert (match.tag, match.kind, match.values) == (MODALITIES_IN_STUDY, "list", ("CT", "MR"))
    assert one(key="ModalitiesInStudy", value="CT,MR").values == ("CT", "MR")
    with pytest.raises(BadRequest, match="ModalitiesInStudy"):
        parse_qido("study", [("ModalitiesInStudy", "CT,,MR")])


@pytest.mark.parametrize(
    ("key", "value", "kind", "low", "high"),
    [
        ("StudyDate", "20240105", "single", "20240105", "20240105"),
        ("StudyDate", "20240101-20240131", "range", "20240101", "20240131"),
        ("StudyDate", "20240101-", "range", "20240101", None),
        ("StudyDate", "-20240131", "range", None, "20240131"),
        ("StudyTime", "1030", "single", "103000.000000", "103059.999999"),
        ("StudyTime", "10-12", "range", "100000.000000", "125959.999999"),
        ("StudyTime", "101500.5-", "range", "101500.500000", None),
        ("StudyTime", "10:15:00", "single", "101500.000000", "101500.999999"),
    ],
)
def test_temporal_matching(key: str, value: str, kind: str, low: str | None, high: str | None) -> None:
    match = one(key=key, value=value)
    assert (match.kind, match.low, match.high) == (kind, low, high)


def test_datetime_offsets_are_not_range_separators() -> None:
    single = one(level="instance", key="AcquisitionDateTime", value="20240101120000-0500")
    assert (single.kind, single.low) == ("single", "20240101120000.000000")
    ranged = one(level="instance", key="AcquisitionDateTime", value="2024-202402")
    assert (ranged.kind, ranged.low, ranged.high) == ("range", "20240101000000.000000", "20240231235959.999999")


@pytest.mark.parametrize(
    "value", ["2024", "20241301", "20240132", "-", "20240101-20240102-20240103", "abc", "2024-01-01"]
)
def test_bad_dates_are_400(value: str) -> None:
    with pytest.raises(BadRequest, match="StudyDate"):
        parse_qido("study", [("StudyDate", value)])


def test_numbers() -> None:
    assert one(level="series", key="SeriesNumber", value="3").number == 3
    assert one(level="instance", key="SliceThickness", value="1.5").number == 1.5
    for key, value in (("SeriesNumber", "abc"), ("SeriesNumber", "1.5"), ("SeriesNumber", "1_0")):
        with pytest.raises(BadRequest, match=key):
            parse_qido("series", [(key, value)])


def test_sequence_and_return_only_keys_take_no_value() -> None:
    with pytest.raises(BadRequest, match="OtherPatientIDsSequence"):
        parse_qido("study", [("OtherPatientIDsSequence", "x")])
    assert one(key="NumberOfStudyRelatedInstances").kind == "universal"
    with pytest.raises(BadRequest, match="NumberOfStudyRelatedInstances"):
        parse_qido("study", [("NumberOfStudyRelatedInstances", "3")])


# -- includefield, limit, offset ----------------------------------------------------------------


def test_includefield_forms() -> None:
    ohif = parse_qido("study", [("includefield", "00081030,00080060,00080090,00100030")])
    assert ohif.includes == {"00081030", "00080060", "00080090", "00100030"}
    repeated = parse_qido("study", [("includefield", "StudyDescription"), ("includefield", "00080060")])
    assert repeated.includes == {"00081030", "00080060"}
    assert parse_qido("study", [("includefield", "all")]).include_all
    assert parse_qido("study", [("includefield", "00081030, ,all")]).include_all
    assert parse_qido("study", [("includefield", "00191001")]).includes == {"00191001"}  # private
    nested = parse_qido("study", [("includefield", "ProcedureCodeSequence.CodeValue")])
    assert nested.includes == {tag_of("ProcedureCodeSequence")}
    with pytest.raises(BadRequest, match="StudyDescriptio"):
        parse_qido("study", [("includefield", "00081030,StudyDescriptio")])
    with pytest.raises(BadRequest, match="00101234"):
        parse_qido("study", [("includefield", "00101234")])


@pytest.mark.parametrize(("name", "value"), [("limit", "-1"), ("limit", "abc"), ("offset", "1.5"), ("offset", "")])
def test_bad_limit_and_offset(name: str, value: str) -> None:
    with pytest.raises(BadRequest, match=name):
        parse_qido("study", [(name, value)])


def test_bad_fuzzymatching() -> None:
    with pytest.raises(BadRequest, match="fuzzymatching"):
        parse_qido("study", [("fuzzymatching", "yes")])


# -- return keys --------------------------------------------------------------------------------


def test_return_keys_per_level() -> None:
    always, optional = parse_qido(
        "study", [("StudyDescription", ""), ("includefield", "00081030,00100021")]
    ).return_keys()
    assert {tag_of("ModalitiesInStudy"), tag_of("NumberOfStudyRelatedInstances"), "00081030"} <= always
    assert tag_of("IssuerOfPatientID") in optional
    assert tag_of("TimezoneOffsetFromUTC") in optional

    spanning, _ = parse_qido("series", []).return_keys()
    scoped, _ = parse_qido("series", [], study=STUDY).return_keys()
    assert tag_of("PatientName") in spanning
    assert tag_of("PatientName") not in scoped
    assert {tag_of("StudyInstanceUID"), tag_of("SeriesInstanceUID"), tag_of("Modality")} <= scoped

    instances, _ = parse_qido("instance", [], study=STUDY).return_keys()
    assert tag_of("Modality") in instances  # series keys: the path leaves the series open
    assert tag_of("PatientName") not in instances
    assert tag_of("SeriesInstanceUID") in instances


def test_build_row_filters_and_fills_required_keys() -> None:
    query = parse_qido("study", [("includefield", "00081030")])
    row = build_row(
        query,
        {
            "00100010": {"vr": "PN", "Value": [{"Alphabetic": "A^B"}]},
            "00081030": {"vr": "LO", "Value": ["Head"]},
            "00181030": {"vr": "LO", "Value": ["not asked"]},
            "7FE00010": {"vr": "OW", "BulkDataURI": "x"},
        },
    )
    assert row["00081030"] == {"vr": "LO", "Value": ["Head"]}
    assert row["00080020"] == {"vr": "DA"}  # required, absent: returned empty
    assert "00181030" not in row
    assert "7FE00010" not in row
    assert list(row) == sorted(row)
    everything = build_row(parse_qido("study", [("includefield", "all")]), {"00181030": {"vr": "LO"}})
    assert "00181030" in everything


# -- attribute tables and helpers ---------------------------------------------------------------


def test_level_tables() -> None:
    assert not STUDY_TAGS & SERIES_TAGS
    for tag in STUDY_TAGS | SERIES_TAGS:
        dictionary_VR(int(tag, 16))  # every tag is in the dictionary
    assert attribute_level(tag_of("PatientName")) == "study"
    assert attribute_level(tag_of("Modality")) == "series"
    assert attribute_level(tag_of("Rows")) == "instance"
    assert attribute_level(tag_of("RetrieveURL")) is None


def test_glob_escaping() -> None:
    assert dicom_glob("a*b?c") == "a*b?c"
    assert dicom_glob("[x]%_") == "[[]x]%_"


def test_name_folding() -> None:
    assert fold_name("MÜLLER^Hans^^") == "müller^hans"
    assert name_words("Müller-Lüdenscheidt^Hans Peter") == ["muller", "ludenscheidt", "hans", "peter"]
    assert name_words_column("García^Lucía") == " garcia lucia"


@pytest.mark.parametrize(
    ("vr", "value", "expected"),
    [
        ("DA", "20240229", ("20240229", "20240229")),
        ("DA", "2024.02.29", ("20240229", "20240229")),
        ("DA", "2024022", None),
        ("TM", "23", ("230000.000000", "235959.999999")),
        ("TM", "24", None),
        ("TM", "120000.12", ("120000.120000", "120000.129999")),
        ("DT", "2024", ("20240101000000.000000", "20241231235959.999999")),
        ("DT", "202402291200+0100", ("20240229120000.000000", "20240229120059.999999")),
        ("DA", "٢٠٢٤٠١٠١", None),  # non-ASCII digits
        ("LO", "x", None),
    ],
)
def test_temporal_bounds(vr: str, value: str, expected: tuple[str, str] | None) -> None:
    assert temporal_bounds(vr, value) == expected


# -- robustness ---------------------------------------------------------------------------------

_KEYS = st.sampled_from(
    [
        "PatientName",
        "00100010",
        "PatientID",
        "StudyDate",
        "StudyTime",
        "StudyInstanceUID",
        "ModalitiesInStudy",
        "Modality",
        "SeriesNumber",
        "AcquisitionDateTime",
        "SliceThickness",
        "OtherPatientIDsSequence",
        "NumberOfStudyRelatedSeries",
        "includefield",
        "limit",
        "offset",
        "fuzzymatching",
        "Rows",
        "PixelData",
    ]
)
_VALUES = st.one_of(
    st.text(),
    st.text(alphabet="0123456789.-*?,\\^ :+", max_size=30),
    st.sampled_from(["", "*", "all", "true", "20240101-", "1.2.3,1.2.4", "00081030,all", "1030-"]),
)


@settings(max_examples=400, deadline=None)
@given(
    level=st.sampled_from(["study", "series", "instance"]),
    params=st.lists(st.tuples(st.one_of(_KEYS, st.text(max_size=20)), _VALUES), max_size=6),
    scoped=st.booleans(),
)
def test_parser_raises_only_bad_request(level: str, params: list[tuple[str, str]], scoped: bool) -> None:
    path = {"study": STUDY} if scoped and level != "study" else {}
    try:
        query = parse_qido(level, params, **path)  # type: ignore[arg-type]
    except BadRequest:
        return
    assert isinstance(query, QidoQuery)
    assert query.limit is None or query.limit >= 0
    for match in query.matches:
        assert match.kind in ("universal", "single", "wildcard", "range", "list")
