"""De-identified views (issue #18 part 4): the PS3.15 E.1-1 profile, attribute by attribute."""

from __future__ import annotations

import io
import re

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from gateway.dicom.deidentify import Deidentifier, ProfileOptions, action_for
from gateway.dicom.deidentify_part10 import deidentified_part10
from gateway.dicom.deidentify_table import TABLE
from gateway.dicom.dicomjson import dataset_to_json
from tests.factory import ct_dataset, new_uid, to_part10_bytes

KEY = b"k" * 32
UID_2_25 = re.compile(r"^2\.25\.[1-9][0-9]*$")


def rich_dataset() -> Dataset:
    """A CT with names, IDs, dates, device and institution identity, references in sequences
    and private attributes: something for most kinds of row of the table."""
    ds = ct_dataset(seed=18, rows=8, cols=8)
    ds.InstitutionName = "St. Elsewhere"
    ds.InstitutionAddress = "1 Main Street"
    ds.StationName = "CT01"
    ds.DeviceSerialNumber = "SN-12345"
    ds.OperatorsName = "SMITH^ANNA"
    ds.PatientAge = "054Y"
    ds.PatientWeight = 81.5
    ds.PatientAddress = "2 High Street"
    ds.OtherPatientIDs = "OTHER-1"
    ds.ContentDate = "20240115"
    ds.ContentTime = "101600"
    ds.AcquisitionDateTime = "20240115101500.000000"
    ds.FrameOfReferenceUID = new_uid("for", 18)
    ds.StudyComments = "call the patient at home"
    ds.BurnedInAnnotation = "NO"
    ref = Dataset()
    ref.ReferencedSOPClassUID = ds.SOPClassUID
    ref.ReferencedSOPInstanceUID = new_uid("ref", 18)
    ds.ReferencedImageSequence = Sequence([ref])
    procedure = Dataset()
    procedure.CodeValue = "P1"
    procedure.CodingSchemeDesignator = "99LOCAL"
    procedure.CodeMeaning = "CT chest"
    ds.ProcedureCodeSequence = Sequence([procedure])
    other = Dataset()
    other.PatientID = "OTHER-2"
    other.IssuerOfPatientID = "HOSP"
    ds.OtherPatientIDsSequence = Sequence([other])
    block = ds.private_block(0x0009, "ACME 1.0", create=True)
    block.add_new(0x01, "LO", "secret note")
    return ds


def deidentified(ds: Dataset, options: ProfileOptions | None = None) -> Dataset:
    options = options or ProfileOptions()
    data = deidentified_part10(to_part10_bytes(ds), Deidentifier(KEY, options))
    return pydicom.dcmread(io.BytesIO(data))


def expected_action(tag: int, options: ProfileOptions) -> str | None:
    """Read straight from the table, as a reviewer would: the option's column when it is on,
    and for a combined action the choice the module's docstring promises."""
    if (tag >> 16) % 2:
        return "X"
    row = TABLE.get(f"{tag:08X}")
    if row is None:
        return None
    action = row.basic
    for name in options.names:
        action = getattr(row, name) or action
    for letter in ("U", "D", "Z"):
        if letter in action:
            return letter
    return action


def check_against_table(original: Dataset, result: Dataset, deid: Deidentifier, options: ProfileOptions) -> int:
    checked = 0
    for elem in original:
        action = expected_action(int(elem.tag), options)
        after = result.get(elem.tag)
        checked += 1
        if action == "X":
            assert after is None, f"{elem.tag} {elem.keyword} should be removed"
        elif action == "Z":
            assert after is not None
            assert after.is_empty, f"{elem.tag} {elem.keyword} should be empty"
        elif action == "U":
            assert after is not None
            if elem.VR == "SQ":
                for item_before, item_after in zip(elem.value, after.value, strict=True):
                    checked += check_against_table(item_before, item_after, deid, options)
            else:
                assert after.value == deid.uid(elem.value), f"{elem.keyword} not mapped"
                assert UID_2_25.match(after.value)
        elif action == "D":
            assert after is not None
            assert not after.is_empty, f"{elem.tag} {elem.keyword} needs a dummy"
            if elem.VR == "SQ":
                for item_before, item_after in zip(elem.value, after.value, strict=True):
                    checked += check_against_table(item_before, item_after, deid, options)
            else:
                assert str(after.value) != str(elem.value), f"{elem.keyword} kept its value"
        elif action == "C":  # Modified Dates: dates move by whole days, times stay
            assert after is not None
            assert (after.value != elem.value) == (elem.VR in ("DA", "DT")), f"{elem.keyword} cleaned wrongly"
        elif elem.VR == "SQ":
            for item_before, item_after in zip(elem.value, after.value, strict=True):
                checked += check_against_table(item_before, item_after, deid, options)
        else:
            assert after is not None
            assert after.value == elem.value, f"{elem.keyword} should be kept"
    return checked


@pytest.mark.parametrize(
    "options",
    [ProfileOptions(), ProfileOptions(modified_dates=True, device=True), ProfileOptions(full_dates=True)],
    ids=["basic", "modified-dates-device", "full-dates"],
)
def test_every_attribute_follows_the_table(options: ProfileOptions) -> None:
    original = rich_dataset()
    result = deidentified(rich_dataset(), options)
    checked = check_against_table(original, result, Deidentifier(KEY, options), options)
    assert checked > 40
    assert result.PatientIdentityRemoved == "YES"
    codes = [item.CodeValue for item in result.DeidentificationMethodCodeSequence]
    assert codes[0] == "113100"
    assert ("113107" in codes) == options.modified_dates
    assert ("113109" in codes) == options.device


def test_named_attributes_as_the_standard_says() -> None:
    """A few rows checked by hand against PS3.15 Table E.1-1, not through the table module."""
    original = rich_dataset()
    result = deidentified(rich_dataset())
    assert result.PatientName == ""  # Z
    assert result.PatientID not in ("", original.PatientID)  # Z/D: a dummy keeps Type 1 IODs valid
    assert result.AccessionNumber == ""  # Z
    assert result.StudyDate == ""  # Z
    assert "PatientAddress" not in result
    assert "OtherPatientIDs" not in result
    assert "PatientAge" not in result
    assert "InstitutionAddress" not in result
    assert "StudyComments" not in result
    assert "OtherPatientIDsSequence" not in result
    assert result.InstitutionName not in ("", original.InstitutionName)  # X/Z/D
    assert result.DeviceSerialNumber != original.DeviceSerialNumber  # X/Z/D
    assert result.Modality == "CT"
    assert result.SOPClassUID == original.SOPClassUID
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID"):
        assert UID_2_25.match(result[keyword].value)
        assert result[keyword].value != original[keyword].value
    assert result.file_meta.MediaStorageSOPInstanceUID == result.SOPInstanceUID
    ref = result.ReferencedImageSequence[0]
    assert ref.ReferencedSOPInstanceUID != original.ReferencedImageSequence[0].ReferencedSOPInstanceUID
    assert ref.ReferencedSOPClassUID == original.SOPClassUID
    assert result.ProcedureCodeSequence[0].CodeValue == "P1"  # X/Z: kept present, emptied of identity
    assert not [e for e in result if e.tag.is_private]
    assert result.PixelData == original.PixelData  # pixels untouched
    assert result.LongitudinalTemporalInformationModified == "REMOVED"


def test_options_keep_what_they_name() -> None:
    original = rich_dataset()
    result = deidentified(rich_dataset(), ProfileOptions(modified_dates=True, device=True, institution=True))
    assert result.DeviceSerialNumber == original.DeviceSerialNumber  # Retain Device Identity: K
    assert result.InstitutionName == original.InstitutionName  # Retain Institution Identity: K
    assert result.StudyDate not in ("", original.StudyDate)
    assert len(result.StudyDate) == 8
    assert result.StudyDate == result.ContentDate  # one shift: intervals survive
    assert result.LongitudinalTemporalInformationModified == "MODIFIED"
    full = deidentified(rich_dataset(), ProfileOptions(full_dates=True))
    assert full.StudyDate == original.StudyDate


def test_uid_mapping_is_deterministic_and_keyed() -> None:
    uid = new_uid("study", 1)
    assert Deidentifier(KEY).uid(uid) == Deidentifier(KEY).uid(uid)
    assert Deidentifier(b"other key").uid(uid) != Deidentifier(KEY).uid(uid)
    mapped = Deidentifier(KEY).uid(uid)
    assert UID_2_25.match(mapped)
    assert len(mapped) <= 64


def test_dicom_json_follows_the_same_table() -> None:
    original = rich_dataset()
    deid = Deidentifier(KEY)
    js = deid.json_dataset(dataset_to_json(original, "studies/x"))
    assert "00100010" in js
    assert "Value" not in js["00100010"]
    assert js["0020000D"]["Value"] == [deid.uid(original.StudyInstanceUID)]
    assert "00090010" not in js
    assert "00091001" not in js
    assert "00101040" not in js  # Patient's Address: X
    assert js["00120062"]["Value"] == ["YES"]
    assert action_for("00100010", ProfileOptions()) == "Z"


def test_burned_in_annotation_is_withheld_unless_served() -> None:
    ds = rich_dataset()
    ds.BurnedInAnnotation = "YES"
    js = dataset_to_json(ds, "studies/x")
    assert Deidentifier(KEY).withholds(js)
    assert not Deidentifier(KEY, ProfileOptions(serve_burned_in=True)).withholds(js)
    assert not Deidentifier(KEY).withholds(dataset_to_json(rich_dataset(), "studies/x"))
