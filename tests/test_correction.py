"""The correction itself (gateway.dicom.correction): which attributes a ``$bulkUpdate`` may
change, and the change applied to stored files in every kind of transfer syntax, the pixel data
kept byte for byte."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import pytest

from gateway.dicom.correction import CORRECTABLE, apply_correction, parse_change, parse_request
from gateway.dicom.parse import parse_part10
from gateway.errors import BadRequest
from tests import factory
from tests.test_big_endian import BE_CT

CHANGE = {
    "00100010": {"vr": "PN", "Value": [{"Alphabetic": "RIGHT^NAME"}]},
    "00100020": {"vr": "LO", "Value": ["PID-2"]},
    "00080050": {"vr": "SH"},  # no Value: emptied
    "00101002": {
        "vr": "SQ",
        "Value": [{"00100020": {"vr": "LO", "Value": ["OTHER-1"]}}],
    },  # OtherPatientIDsSequence
}

INSTANCES: dict[str, Callable[[], bytes]] = {
    "explicit little endian": lambda: factory.ct_instance(seed=801, AccessionNumber="A1"),
    "RLE": lambda: factory.rle_instance(seed=802, frames=3),
    "JPEG-LS": lambda: factory.jpegls_lossless_instance(seed=803),
    "deflated": lambda: factory.deflated_instance(seed=804),
    "big endian": lambda: BE_CT,
}


def raw_pixel_data(data: bytes) -> bytes:
    value = pydicom.dcmread(io.BytesIO(data))["PixelData"].value
    assert isinstance(value, bytes)
    return value


@pytest.mark.parametrize("kind", list(INSTANCES))
def test_the_header_changes_and_the_pixel_data_stays(tmp_path: Path, kind: str) -> None:
    original = INSTANCES[kind]()
    source, target = tmp_path / "stored.dcm", tmp_path / "corrected.dcm"
    source.write_bytes(original)
    apply_correction(source, target, parse_change(CHANGE))
    corrected = target.read_bytes()
    ds = pydicom.dcmread(io.BytesIO(corrected))
    before = pydicom.dcmread(io.BytesIO(original))
    assert (str(ds.PatientName), ds.PatientID, ds.AccessionNumber) == ("RIGHT^NAME", "PID-2", "")
    assert ds.OtherPatientIDsSequence[0].PatientID == "OTHER-1"
    assert ds.file_meta.TransferSyntaxUID == before.file_meta.TransferSyntaxUID
    assert (ds.SOPInstanceUID, ds.StudyInstanceUID) == (before.SOPInstanceUID, before.StudyInstanceUID)
    assert raw_pixel_data(corrected) == raw_pixel_data(original)
    # What the gateway stores of it parses, with the frames where they now are.
    record = parse_part10(target, origin="stow")
    assert record.sop_uid == before.SOPInstanceUID
    assert b"RIGHT^NAME" in record.metadata


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"0020000D": {"vr": "UI", "Value": ["1.2.3"]}}, "StudyInstanceUID"),
        ({"00080060": {"vr": "CS", "Value": ["MR"]}}, "Modality"),
        ({"7FE00010": {"vr": "OB", "InlineBinary": "AAAA"}}, "PixelData"),
        ({"nonsense": {"vr": "LO"}}, "not a tag"),
        ({"00100010": {"vr": "LO", "Value": ["X"]}}, "its VR is PN"),
        ({"00100010": "DOE^JOHN"}, "DICOM JSON attribute"),
        ({"00100030": {"vr": "DA", "Value": ["yesterday"]}}, "not valid"),
        ({"00100040": {"vr": "CS", "Value": ["a" * 17]}}, "not valid"),
        ({"00100010": {"vr": "PN", "BulkDataURI": "http://example.org/x"}}, "by Value"),
    ],
)
def test_refused_changes_name_what_is_wrong(change: dict[str, Any], named: str) -> None:
    with pytest.raises(BadRequest, match=named):
        parse_change(change)


def test_request_shape() -> None:
    studies, correction = parse_request(
        b'{"studyInstanceUids": ["1.2.3", "1.2.3", "1.2.4"], "changeDataset": {"00100010": {"vr": "PN"}}}'
    )
    assert studies == ["1.2.3", "1.2.4"]  # each study once
    assert correction.keywords == ["PatientName"]
    with pytest.raises(BadRequest, match="at most 50"):
        parse_request(b'{"studyInstanceUids": [%s], "changeDataset": {}}' % b",".join([b'"1.2"'] * 51))
    with pytest.raises(BadRequest, match="unknown member"):
        parse_request(b'{"studyInstanceUids": ["1.2"], "changeDataset": {"00100010": {"vr": "PN"}}, "x": 1}')


def test_no_uid_is_correctable() -> None:
    assert all(pydicom.datadict.dictionary_VR(int(tag, 16)) != "UI" for tag in CORRECTABLE)
