"""De-identified Part 10 instances (issue #18 part 4): the walk over the encoded elements gives
the data set a full pydicom parse gives, and leaves the Pixel Data element's bytes as they were."""

from __future__ import annotations

import io
import struct
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import cast

import anyio.to_thread
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRBigEndian, ImplicitVRLittleEndian

from gateway.dicom.deidentify import Deidentifier, ProfileOptions
from gateway.dicom.deidentify_part10 import deidentified_part10, parsed_part10, walked_part10
from gateway.dicom.dicomjson import dataset_to_json
from gateway.dicom.layout import PIXEL_DATA, Walker
from gateway.dicom.parse import parse_part10
from gateway.dicom.part10 import read_meta
from gateway.dicom.records import InstanceRecord
from gateway.http.deidentified import deidentified_body
from gateway.ports import Index
from gateway.services.deidentified import DeidentifiedViews
from tests import factory
from tests.test_deidentify import KEY, rich_dataset

OPTIONS = [
    ProfileOptions(),
    ProfileOptions(modified_dates=True, device=True),
    ProfileOptions(full_dates=True, patient_characteristics=True, institution=True),
]


def japanese_instance() -> bytes:
    """Person names in ISO 2022 IR 87 (escape sequences) and a character set of an item's own."""
    ds = factory.ct_dataset(seed=5, rows=4, cols=4)
    ds.SpecificCharacterSet = ["", "ISO 2022 IR 87"]
    ds.PatientName = "Yamada^Tarou=山田^太郎=やまだ^たろう"
    ds.OperatorsName = ["Yamada^Tarou=山田^太郎", "Suzuki^Hanako"]
    ds.InstitutionName = "東京病院"
    item = Dataset()
    item.SpecificCharacterSet = "ISO_IR 100"
    item.PatientID = "Müller-7"
    item.IssuerOfPatientID = "HOSP"
    ds.OtherPatientIDsSequence = Sequence([item])
    ref = Dataset()
    ref.SpecificCharacterSet = "ISO_IR 192"
    ref.ReferencedSOPClassUID = ds.SOPClassUID
    ref.ReferencedSOPInstanceUID = factory.new_uid("ref", 5)
    ref.PerformingPhysicianName = "Ångström^Anders"
    ds.ReferencedImageSequence = Sequence([ref])
    return factory.to_part10_bytes(ds, ImplicitVRLittleEndian)


def private_sequences_instance() -> bytes:
    """Implicit VR with a private sequence (its items undefined in length), empty values and
    multi-valued UIDs: what a walk must step over or split as pydicom does."""
    ds = rich_dataset()
    block = ds.private_block(0x0029, "ACME SEQ", create=True)
    inner = Dataset()
    inner.ReferencedSOPInstanceUID = factory.new_uid("private-ref", 1)
    inner.PatientName = "HIDDEN^IN^PRIVATE"
    block.add_new(0x10, "SQ", Sequence([inner]))
    ds.OperatorsName = ""
    ds.DeviceSerialNumber = ""
    ds.FailedSOPInstanceUIDList = [factory.new_uid("a", 1), factory.new_uid("b", 1)]
    ds.OtherPatientIDs = ["ONE", "TWO"]
    ds.RequestAttributesSequence = Sequence()
    return factory.to_part10_bytes(ds, ImplicitVRLittleEndian)


INSTANCES: dict[str, Callable[[], bytes]] = {
    "explicit": lambda: factory.to_part10_bytes(rich_dataset()),
    "implicit": lambda: factory.to_part10_bytes(rich_dataset(), ImplicitVRLittleEndian),
    "ct-512": lambda: factory.ct_instance(seed=2),
    "rle": lambda: factory.rle_instance(seed=3, frames=2),
    "enhanced-ct": lambda: factory.enhanced_ct(seed=4),
    "multiframe-xa": lambda: factory.multiframe_xa(seed=5, frames=3, rows=16, cols=16),
    "float-pixels": lambda: factory.float_pixel_instance(seed=6),
    "sr": lambda: factory.sr_instance(seed=7),
    "ko": lambda: factory.ko_instance(seed=8, referenced=[("1.2.840.10008.5.1.4.1.1.2", factory.new_uid("k", 8))]),
    "latin1": lambda: factory.latin1_instance(seed=9),
    "utf8": lambda: factory.utf8_instance(seed=10),
    "iso2022": japanese_instance,
    "private-sequences": private_sequences_instance,
}


def as_json(data: bytes) -> tuple[dict[str, object], Dataset, bytes | None]:
    ds = pydicom.dcmread(io.BytesIO(data))
    return dataset_to_json(ds, "bulk"), ds.file_meta, ds.preamble


@pytest.mark.parametrize("options", OPTIONS, ids=["basic", "modified-dates-device", "full-dates-and-more"])
@pytest.mark.parametrize("name", list(INSTANCES))
def test_the_walk_gives_what_a_full_parse_gives(name: str, options: ProfileOptions) -> None:
    data = INSTANCES[name]()
    walked = walked_part10(data, Deidentifier(KEY, options))
    assert walked is not None, "an ordinary encoding is walked, not parsed"
    parsed = parsed_part10(data, Deidentifier(KEY, options))
    walked_json, walked_meta, walked_preamble = as_json(walked)
    parsed_json, parsed_meta, parsed_preamble = as_json(parsed)
    assert walked_json == parsed_json
    assert walked_meta == parsed_meta
    assert walked_preamble == parsed_preamble
    assert walked_json["00120062"] == {"vr": "CS", "Value": ["YES"]}


def encoded_pixel_data(data: bytes) -> bytes:
    """The Pixel Data element as encoded in ``data``: header, value and, when encapsulated,
    every fragment up to the sequence delimiter."""
    f = io.BytesIO(data)
    meta = read_meta(f, len(data))
    syntax = pydicom.uid.UID(meta.transfer_syntax)
    located = Walker(f, len(data), 16).walk(meta.dataset_start, syntax.is_implicit_VR, True)[PIXEL_DATA]
    header = 8 if syntax.is_implicit_VR else 12
    if located.fragments is None:
        end = located.value_pos + located.length
    else:
        last_pos, last_length = located.fragments[-1]
        end = last_pos + last_length + 8  # the sequence delimitation item
    return data[located.value_pos - header : end]


@pytest.mark.parametrize("name", ["explicit", "implicit", "ct-512", "rle", "multiframe-xa"])
def test_pixel_data_bytes_are_those_stored(name: str) -> None:
    data = INSTANCES[name]()
    result = deidentified_part10(data, Deidentifier(KEY))
    original = encoded_pixel_data(data)
    assert encoded_pixel_data(result) == original
    assert len(original) > 16
    assert pydicom.dcmread(io.BytesIO(result)).PatientIdentityRemoved == "YES"


def test_what_the_walk_leaves_is_parsed_and_deidentified() -> None:
    """Deflated and big endian data sets go through the full parse, with the same profile."""
    big_endian = factory.to_part10_bytes(rich_dataset(), ExplicitVRBigEndian)
    for data in (factory.deflated_instance(seed=11), big_endian):
        assert walked_part10(data, Deidentifier(KEY)) is None
        ds = pydicom.dcmread(io.BytesIO(deidentified_part10(data, Deidentifier(KEY))))
        original = pydicom.dcmread(io.BytesIO(data))
        assert ds.PatientIdentityRemoved == "YES"
        assert ds.PatientName == ""
        assert ds.SOPInstanceUID == Deidentifier(KEY).uid(original.SOPInstanceUID)
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.PixelData == original.PixelData


def test_the_file_meta_follows_the_new_sop_instance_uid() -> None:
    original = pydicom.dcmread(io.BytesIO(factory.to_part10_bytes(rich_dataset())))
    original.file_meta.SourceApplicationEntityTitle = "SENDING_SITE"
    buffer = io.BytesIO()
    original.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    result = pydicom.dcmread(io.BytesIO(deidentified_part10(data, Deidentifier(KEY))))
    meta = result.file_meta
    assert meta.MediaStorageSOPInstanceUID == Deidentifier(KEY).uid(original.SOPInstanceUID)
    assert meta.MediaStorageSOPClassUID == original.SOPClassUID
    assert meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
    assert "SourceApplicationEntityTitle" not in meta
    group_length = struct.unpack("<L", deidentified_part10(data, Deidentifier(KEY))[140:144])[0]
    assert meta.FileMetaInformationGroupLength == group_length


def stored(tmp_path: Path, data: bytes) -> InstanceRecord:
    path = tmp_path / "instance.dcm"
    path.write_bytes(data)
    return parse_part10(path, origin="stow")


@pytest.mark.anyio
@pytest.mark.parametrize("in_a_thread", [False, True], ids=["small-header", "large-header"])
async def test_instances_with_a_small_header_are_rewritten_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, in_a_thread: bool
) -> None:
    """The answer is the same either way; only an instance with a large header (here long
    comments, removed by the profile) is handed to a worker thread."""
    ds = rich_dataset()
    if in_a_thread:  # 20 KB outside the pixel data
        ds.ImageComments = "x" * 10_000
        ds.AdditionalPatientHistory = "y" * 10_000
    data = factory.to_part10_bytes(ds)
    record = stored(tmp_path, data)
    views = DeidentifiedViews(cast(Index, None), lambda: KEY, ProfileOptions())
    handed: list[object] = []
    real_run_sync = anyio.to_thread.run_sync

    async def recording_run_sync(fn: Callable[..., bytes], *args: object) -> bytes:
        handed.append(fn)
        return await real_run_sync(fn, *args)

    monkeypatch.setattr(anyio.to_thread, "run_sync", recording_run_sync)

    async def body() -> AsyncIterator[bytes]:
        yield data[:1000]
        yield data[1000:]

    answer = b"".join([chunk async for chunk in deidentified_body(views, body(), record)])
    assert answer == deidentified_part10(data, Deidentifier(KEY))
    assert bool(handed) is in_a_thread
    result = pydicom.dcmread(io.BytesIO(answer))
    assert "ImageComments" not in result
    assert "AdditionalPatientHistory" not in result
