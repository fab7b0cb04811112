"""The pure parts of the PACS bridge: [[pacs]] settings, the QIDO → C-FIND identifier, response
decoding, DIMSE status classes and the merge of federated rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset

from gateway.dicom.cfind import guess_character_set, identifier, response_row, return_tags
from gateway.dicom.dimse_status import StatusClass, describe, status_class
from gateway.dicom.query import parse_qido
from gateway.services.federation import merge_rows
from gateway.settings import SettingsError, load_settings


def load(tmp_path: Path, text: str) -> Any:
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return load_settings(config_file=path, environ={})


NODE = '[[pacs]]\nname = "a"\nae_title = "A"\nhost = "h"\n'


def test_pacs_nodes_from_toml(tmp_path: Path) -> None:
    s = load(
        tmp_path,
        'ae_title = "GW"\nscp_port = 11113\nforward_to = "b"\n'
        + NODE
        + 'port = 4242\nretrieve = "move"\ndimse_timeout = 5\nmax_associations = 2\n'
        + '[[pacs]]\nname = "b"\nae_title = "B"\nhost = "h2"\n[pacs.tls]\nca_file = "'
        + str(Path(__file__))
        + '"\n',
    )
    a, b = s.pacs
    assert (s.ae_title, s.scp_port, s.forward_to) == ("GW", 11113, "b")
    assert (a.name, a.ae_title, a.port, a.retrieve, a.dimse_timeout, a.max_associations) == (
        "a",
        "A",
        4242,
        "move",
        5.0,
        2,
    )
    assert (b.port, b.retrieve, b.tls.enabled, a.tls.enabled) == (104, "get", True, False)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('pacs = "x"\n', "must be an array of tables"),
        ('ae_title = "WAY_TOO_LONG_AE_TITLE"\n', "ae_title"),
        (NODE + NODE, "used by another"),
        ('[[pacs]]\nname = "a b"\nae_title = "A"\nhost = "h"\n', "name must be"),
        ('[[pacs]]\nname = "a"\nae_title = "A"\n', "host is required"),
        (NODE + 'retrieve = "push"\n', 'retrieve must be "get" or "move"'),
        (NODE + 'retrieve = "move"\n', "needs scp_port"),
        (NODE + "acse_timeout = 0\n", "acse_timeout must be positive"),
        (NODE + "max_associations = 0\n", "max_associations"),
        (NODE + '[pacs.tls]\ncert_file = "/x"\n', "go together"),
        (NODE + '[pacs.tls]\nca_file = "/nonexistent/ca.pem"\n', "does not exist"),
        ('forward_to = "nowhere"\n' + NODE, "forward_to 'nowhere' names no"),
        (NODE + "colour = 1\n", r"unknown setting pacs\[0\]\.colour"),
    ],
)
def test_wrong_pacs_settings_are_one_clear_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message) as caught:
        load(tmp_path, text)
    assert "\n" not in str(caught.value)


def test_identifier_carries_keys_as_written() -> None:
    query = parse_qido(
        "study",
        [
            ("PatientName", "SMITH"),
            ("StudyDate", "20240101-20240131"),
            ("AccessionNumber", "A*"),
            ("includefield", "StudyDescription"),
        ],
    )
    ds = identifier(query)
    assert ds.QueryRetrieveLevel == "STUDY"
    assert str(ds.PatientName) == "SMITH"  # no invented wildcard
    assert ds.StudyDate == "20240101-20240131"
    assert ds.AccessionNumber == "A*"
    assert "StudyDescription" in ds  # includefield: a return key, empty
    assert not ds.StudyDescription
    assert {"StudyInstanceUID", "ModalitiesInStudy"} <= set(ds.dir())  # required return keys
    assert "SpecificCharacterSet" not in ds
    assert "RetrieveURL" not in ds  # computed by the gateway, not asked of the PACS


def test_identifier_levels_lists_and_character_set() -> None:
    q = parse_qido("instance", [("SOPInstanceUID", "1.2.3,1.2.4")], study="1.2", series="1.2.5")
    ds = identifier(q)
    assert ds.QueryRetrieveLevel == "IMAGE"
    assert (ds.StudyInstanceUID, ds.SeriesInstanceUID) == ("1.2", "1.2.5")
    assert list(ds.SOPInstanceUID) == ["1.2.3", "1.2.4"]  # PS3.4 C.2.2.2.2 list of UIDs
    q = parse_qido("series", [("Modality", "CT,MR"), ("PatientName", "Müller*")])
    ds = identifier(q)
    assert ds.QueryRetrieveLevel == "SERIES"
    assert list(ds.Modality) == ["CT", "MR"]
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert {"0020000D", "0020000E"} <= return_tags(q)  # parent UIDs: rows stay addressable


def _raw(ds: Dataset) -> Dataset:
    """``ds`` as it comes off the network: encoded, then read back with raw (undecoded) values."""
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, ds)
    return read_dataset(DicomBytesIO(buffer.getvalue()), is_implicit_VR=False, is_little_endian=True)


@pytest.mark.parametrize(
    ("raw", "charset", "name"),
    [(b"M\xfcller^J\xfcrgen", "ISO_IR 100", "Müller^Jürgen"), ("山田^太郎".encode(), "ISO_IR 192", "山田^太郎")],
)
def test_response_without_character_set_is_decoded(raw: bytes, charset: str, name: str) -> None:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = "1.2.3"
    ds.add_new(0x00100010, "PN", raw)
    received = _raw(ds)
    assert guess_character_set(received) == charset
    row = response_row(received)
    assert row["00100010"]["Value"] == [{"Alphabetic": name}]
    assert "00080052" not in row  # QueryRetrieveLevel
    assert "00080005" not in row  # DICOM JSON is UTF-8 (PS3.18 F.2)


def test_status_classes_follow_ps3_7_annex_c() -> None:
    assert status_class(0x0000) is StatusClass.SUCCESS
    assert status_class(0xFF00) is status_class(0xFF01) is StatusClass.PENDING
    assert status_class(0xFE00) is StatusClass.CANCEL
    for code in (0x0001, 0x0107, 0x0116, 0xB000, 0xB007):
        assert status_class(code) is StatusClass.WARNING
    for code in (0xA700, 0xA702, 0xA801, 0xA900, 0xC000, 0xC123, 0x0110, 0x0122, 0x0124):
        assert status_class(code) is StatusClass.FAILURE
    assert describe(0xA801) == "0xA801 (Refused: move destination unknown)"
    assert describe(0xC123) == "0xC123 (Failed: unable to process)"


def _row(uid: str, **extra: Any) -> dict[str, Any]:
    row: dict[str, Any] = {"0020000D": {"vr": "UI", "Value": [uid]}}
    for tag, value in extra.items():
        row[tag[1:]] = value
    return row


def test_merge_by_uid_not_position() -> None:
    query = parse_qido("study", [])
    local = [_row("1.1", t00080020={"vr": "DA", "Value": ["20240101"]}, t00201208={"vr": "IS", "Value": [2]})]
    pacs_a = [
        _row("1.2", t00080020={"vr": "DA", "Value": ["20230101"]}),
        _row("1.1", t00201208={"vr": "IS", "Value": [10]}, t00080061={"vr": "CS", "Value": ["CT"]}),
    ]
    pacs_b = [_row("1.1", t00080061={"vr": "CS", "Value": ["MR"]}, t00080054={"vr": "AE", "Value": ["OTHER"]})]
    merged = merge_rows(query, [(None, local), ("A", pacs_a), ("B", pacs_b)])
    assert [r["0020000D"]["Value"][0] for r in merged] == ["1.1", "1.2"]  # newest first
    first = merged[0]
    assert first["00201208"]["Value"] == [10]  # the PACS holds more than the cache
    assert first["00080061"]["Value"] == ["CT", "MR"]
    assert first["00080054"]["Value"] == ["A", "B"]
    assert first["00080020"]["Value"] == ["20240101"]
    assert merged[1]["00080054"]["Value"] == ["A"]
