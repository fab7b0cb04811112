"""gateway.dicom.parse and gateway.dicom.dicomjson on the factory's instances and on bad input."""

from __future__ import annotations

import hashlib
import io
import threading
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pydicom
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.pixels.utils import get_expected_length, unpack_bits
from pydicom.tag import Tag

from gateway.dicom.dicomjson import (
    dataset_to_json,
    dumps,
    element_at,
    first_value,
    pn_alphabetic,
    pydicom_warnings_suppressed,
    str_value,
)
from gateway.dicom.parse import FailureReason, InstanceRejected, ParseLimits, parse_part10
from gateway.ports import InstanceRecord
from tests import factory

NUMBER_VRS = {"IS", "DS", "US", "SS", "UL", "SL", "FL", "FD", "SV", "UV"}
PIXEL_KEYS = ("7FE00010", "7FE00008", "7FE00009")

VARIANTS: dict[str, Callable[[], bytes]] = {
    "ct-implicit": lambda: factory.ct_instance(transfer_syntax=pydicom.uid.ImplicitVRLittleEndian),
    "ct-explicit": lambda: factory.ct_instance(transfer_syntax=pydicom.uid.ExplicitVRLittleEndian),
    "ct-512": lambda: factory.ct_series(1)[0],
    "mr": factory.mr_instance,
    "rle": factory.rle_instance,
    "rle-multiframe": lambda: factory.rle_instance(frames=4),
    "j2k-lossless": factory.j2k_lossless_instance,
    "jpeg-baseline": factory.jpeg_baseline_instance,
    "jpeg-multiframe-bot": lambda: factory.jpeg_baseline_instance(frames=4),
    "jpeg-fragmented-no-bot": lambda: factory.jpeg_baseline_instance(
        frames=5, fragments_per_frame=3, offset_table="none"
    ),
    "jpeg-rgb-fragmented-bot": lambda: factory.jpeg_baseline_instance(frames=3, fragments_per_frame=2, rgb=True),
    "jpeg-one-frame-fragmented": lambda: factory.jpeg_baseline_instance(fragments_per_frame=4, offset_table="none"),
    "jpeg-extended-offsets": lambda: factory.jpeg_baseline_instance(frames=6, offset_table="extended"),
    "jpeg-ls": factory.jpegls_lossless_instance,
    "xa-30-frames": factory.multiframe_xa,
    "enhanced-ct": factory.enhanced_ct,
    "bits-allocated-1": factory.bits1_instance,
    "float-pixel-data": factory.float_pixel_instance,
    "sr": factory.sr_instance,
    "ko": lambda: factory.ko_instance(referenced=[(factory.CT_IMAGE_STORAGE, factory.new_uid("ref"))]),
    "latin1": factory.latin1_instance,
    "utf8": factory.utf8_instance,
    "deflated": factory.deflated_instance,
}

BUNDLED = [
    "MR_small_bigendian.dcm",
    "MR_small_implicit.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "MR_small_jp2klossless.dcm",
    "JPEG2000.dcm",
    "JPEG2000-embedded-sequence-delimiter.dcm",
    "JPEG-lossy.dcm",
    "SC_rgb_rle_2frame.dcm",
    "SC_rgb_small_odd_jpeg.dcm",
    "SC_ybr_full_422_uncompressed.dcm",
    "examples_ybr_color.dcm",
    "rtdose_rle.dcm",
    "image_dfl.dcm",
    "waveform_ecg.dcm",
    "test-SR.dcm",
]


def parse_bytes(tmp_path: Path, data: bytes, *, limits: ParseLimits | None = None) -> InstanceRecord:
    path = tmp_path / f"in-{hashlib.sha1(data).hexdigest()[:12]}.dcm"
    path.write_bytes(data)
    return parse_part10(path, origin="stow", limits=limits or ParseLimits())


def rejection(tmp_path: Path, data: bytes, *, limits: ParseLimits | None = None) -> InstanceRejected:
    with pytest.raises(InstanceRejected) as info:
        parse_bytes(tmp_path, data, limits=limits)
    return info.value


def read(data: bytes) -> Dataset:
    with pydicom_warnings_suppressed():
        return pydicom.dcmread(io.BytesIO(data))


def expected_frames(ds: Dataset) -> list[bytes]:
    """Each frame's stored bytes, as pydicom itself finds them."""
    n = int(ds.get("NumberOfFrames") or 1)
    if ds.file_meta.TransferSyntaxUID.is_encapsulated:
        extended = None
        if "ExtendedOffsetTable" in ds:
            extended = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
        with pydicom_warnings_suppressed():
            return list(generate_frames(ds.PixelData, number_of_frames=n, extended_offsets=extended))
    if "FloatPixelData" in ds:
        data, size = ds.FloatPixelData, ds.Rows * ds.Columns * 4
    else:
        data, size = ds.PixelData, get_expected_length(ds, "bytes") // n
    return [data[i * size : (i + 1) * size] for i in range(n)]


def joined(data: bytes, spans: tuple[tuple[int, int], ...]) -> bytes:
    return b"".join(data[offset : offset + length] for offset, length in spans)


def assert_dicom_json(js: Any, where: str = "") -> None:
    """PS3.18 F.2: the shape of every attribute, numbers as numbers, PN as objects."""
    assert isinstance(js, dict), where
    for key, attr in js.items():
        here = f"{where}/{key}"
        assert len(key) == 8, here
        assert key == key.upper(), here
        int(key, 16)
        assert isinstance(attr, dict), here
        assert isinstance(attr.get("vr"), str), here
        kinds = {"Value", "InlineBinary", "BulkDataURI"} & attr.keys()
        assert len(kinds) <= 1, here
        value = attr.get("Value")
        if value is None:
            continue
        assert isinstance(value, list), here
        assert value, here
        vr = attr["vr"]
        for v in value:
            if vr in NUMBER_VRS:
                assert v is None or (isinstance(v, int | float) and not isinstance(v, bool)), here
            elif vr == "PN":
                assert v is None or (isinstance(v, dict) and set(v) <= {"Alphabetic", "Ideographic", "Phonetic"}), here
            elif vr == "SQ":
                assert_dicom_json(v, here)
            else:
                assert v is None or isinstance(v, str), here


def load_back(metadata: bytes) -> Dataset:
    # pydicom validates values while loading; some bundled test files carry invalid UIDs.
    with pydicom_warnings_suppressed():
        return Dataset.from_json(orjson.loads(metadata), bulk_data_uri_handler=lambda tag, vr, uri: b"")


# ---------------------------------------------------------------------------------------------
# Round trips
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_round_trip(tmp_path: Path, variant: str) -> None:
    data = VARIANTS[variant]()
    record = parse_bytes(tmp_path, data)
    ds = read(data)

    assert record.study_uid == ds.StudyInstanceUID
    assert record.series_uid == ds.SeriesInstanceUID
    assert record.sop_uid == ds.SOPInstanceUID
    assert record.sop_class_uid == ds.SOPClassUID
    assert record.transfer_syntax == ds.file_meta.TransferSyntaxUID
    assert record.size == len(data)
    assert record.sha256 == hashlib.sha256(data).hexdigest()
    assert record.origin == "stow"
    assert record.stored_at > 0

    js = orjson.loads(record.metadata)
    assert_dicom_json(js)
    assert js["00020010"] == {"vr": "UI", "Value": [str(ds.file_meta.TransferSyntaxUID)]}
    assert not [k for k in js if k.startswith("0002") and k != "00020010"]
    assert not [k for k in js if k.endswith("0000")], "no group lengths"
    assert "7FE00001" not in js
    assert "7FE00002" not in js
    back = load_back(record.metadata)
    assert back.SOPInstanceUID == ds.SOPInstanceUID
    assert str(back.PatientName) == str(ds.PatientName)

    pixel_keys = [k for k in PIXEL_KEYS if k in js]
    if not any(k in ds for k in (0x7FE00010, 0x7FE00008, 0x7FE00009)):
        assert record.pixel is None
        assert record.frames == ()
        assert not pixel_keys
        return
    (key,) = pixel_keys
    prefix = f"studies/{record.study_uid}/series/{record.series_uid}/instances/{record.sop_uid}/bulkdata/"
    assert js[key] == {"vr": js[key]["vr"], "BulkDataURI": prefix + key}
    assert js[key]["vr"] in ("OB", "OW", "OF", "OD")

    pixel = record.pixel
    assert pixel is not None
    assert (pixel.rows, pixel.columns) == (ds.Rows, ds.Columns)
    assert pixel.bits_allocated == ds.BitsAllocated
    assert pixel.samples_per_pixel == ds.SamplesPerPixel
    assert pixel.photometric_interpretation == ds.PhotometricInterpretation
    assert pixel.number_of_frames == int(ds.get("NumberOfFrames") or 1)
    assert (js["00280010"]["Value"], js["00280011"]["Value"]) == ([ds.Rows], [ds.Columns])

    if ds.file_meta.TransferSyntaxUID == pydicom.uid.DeflatedExplicitVRLittleEndian:
        assert record.frames == ()  # decoded from the whole object: no byte range exists
        return
    assert len(record.frames) == pixel.number_of_frames
    got = [joined(data, spans) for spans in record.frames]
    if ds.BitsAllocated == 1:
        bits = pixel.rows * pixel.columns
        for i, spans in enumerate(record.frames):
            assert len(spans) == 1
            first = (i * bits) % 8
            unpacked = np.asarray(unpack_bits(joined(data, spans)))[first : first + bits]
            assert unpacked.tolist() == ds.pixel_array[i].ravel().tolist()
        return
    assert got == expected_frames(ds)


@pytest.mark.parametrize("name", BUNDLED)
def test_pydicom_bundled_files(tmp_path: Path, name: str) -> None:
    data = factory.testdata_path(name).read_bytes()
    record = parse_bytes(tmp_path, data)
    ds = read(data)
    assert_dicom_json(orjson.loads(record.metadata))
    load_back(record.metadata)
    if "PixelData" not in ds or ds.file_meta.TransferSyntaxUID.is_deflated:
        assert record.frames == ()
        return
    assert [joined(data, spans) for spans in record.frames] == expected_frames(ds)


def test_encapsulated_spans_exclude_item_headers(tmp_path: Path) -> None:
    data = factory.jpeg_baseline_instance(frames=2, fragments_per_frame=2, offset_table="none")
    record = parse_bytes(tmp_path, data)
    for spans in record.frames:
        assert len(spans) == 2
        for offset, length in spans:
            assert data[offset - 8 : offset - 4] == b"\xfe\xff\x00\xe0"  # item tag just before
            assert int.from_bytes(data[offset - 4 : offset], "little") == length
        assert joined(data, spans)[:2] == b"\xff\xd8"  # JPEG SOI


def test_latin1_and_utf8_names(tmp_path: Path) -> None:
    latin1 = orjson.loads(parse_bytes(tmp_path, factory.latin1_instance()).metadata)
    utf8 = orjson.loads(parse_bytes(tmp_path, factory.utf8_instance()).metadata)
    assert pn_alphabetic(latin1, "00100010") == factory.LATIN1_NAME
    assert str_value(latin1, "00081030") == "Thorax nativ Übersicht"
    assert pn_alphabetic(utf8, "00100010") == factory.UTF8_NAME
    assert str_value(utf8, "00081030") == "胸部CT"


def test_metadata_carries_what_ohif_needs(tmp_path: Path) -> None:
    js = orjson.loads(parse_bytes(tmp_path, factory.ct_series(1, rows=64, cols=64)[0]).metadata)
    for tag in ("00280010", "00280011", "00280100", "00280101", "00280103", "00280004", "00280002", "00281052",
                "00281053", "00281050", "00281051", "00200032", "00200037", "00280030", "00200052", "00200013",
                "00080016"):  # fmt: skip
        assert first_value(js, tag) is not None, tag
    assert js["00200032"]["Value"] == [-125.0, -125.0, -100.0]
    assert js["00281052"]["Value"] == [-1024]
    assert js["00100010"]["Value"] == [{"Alphabetic": "DOE^JOHN"}]


def test_sr_content_is_nested_json(tmp_path: Path) -> None:
    record = parse_bytes(tmp_path, factory.sr_instance())
    js = orjson.loads(record.metadata)
    (item,) = js["0040A730"]["Value"]
    assert str_value(item, "0040A160") == "No acute findings."
    assert record.pixel is None
    assert record.frames == ()


def test_concurrent_parses(tmp_path: Path) -> None:
    files = factory.ct_series(8, rows=32, cols=32)
    results: list[InstanceRecord] = []
    errors: list[BaseException] = []

    def run(i: int, data: bytes) -> None:
        try:
            path = tmp_path / f"{i}.dcm"
            path.write_bytes(data)
            results.append(parse_part10(path, origin="stow"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i, d)) for i, d in enumerate(files)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len({r.sop_uid for r in results}) == 8


# ---------------------------------------------------------------------------------------------
# Rejections
# ---------------------------------------------------------------------------------------------


def test_failure_reason_values() -> None:
    # PS3.4 B.2.3 / PS3.18 10.5.3: the codes a STOW response carries in FailureReason (0008,1197).
    assert {r.name: int(r) for r in FailureReason} == {
        "OUT_OF_RESOURCES": 0xA700,
        "DATA_SET_DOES_NOT_MATCH_SOP_CLASS": 0xA900,
        "CANNOT_UNDERSTAND": 0xC000,
        "TRANSFER_SYNTAX_NOT_SUPPORTED": 0xC122,
        "SOP_CLASS_NOT_SUPPORTED": 0x0122,
    }


def test_rejects_non_part10(tmp_path: Path) -> None:
    ct = factory.ct_instance()
    for data in (b"", b"hello", ct[132:], b"\x00" * 128 + b"DICX" + ct[132:], b"\x00" * 128 + b"DICM"):
        exc = rejection(tmp_path, data)
        assert exc.failure_code == FailureReason.CANNOT_UNDERSTAND
        assert "Part 10" in exc.reason


def test_rejects_missing_transfer_syntax(tmp_path: Path) -> None:
    exc = rejection(tmp_path, factory.testdata_path("meta_missing_tsyntax.dcm").read_bytes())
    assert exc.failure_code == 0xC000
    assert "Transfer Syntax" in exc.reason


def test_rejects_unknown_transfer_syntax(tmp_path: Path) -> None:
    data = factory.with_transfer_syntax_uid(factory.ct_instance(), "1.2.840.10008.9.9.9")
    exc = rejection(tmp_path, data)
    assert exc.failure_code == FailureReason.TRANSFER_SYNTAX_NOT_SUPPORTED


@pytest.mark.parametrize("keyword", ["SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"])
def test_rejects_missing_identity(tmp_path: Path, keyword: str) -> None:
    exc = rejection(tmp_path, factory.without(factory.ct_instance(), keyword))
    assert exc.failure_code == FailureReason.DATA_SET_DOES_NOT_MATCH_SOP_CLASS
    assert keyword in exc.reason


@pytest.mark.parametrize("bad", ["1.2.03", "1.2.abc", "1." + "2" * 70, ""])
def test_rejects_invalid_uid(tmp_path: Path, bad: str) -> None:
    exc = rejection(tmp_path, factory.without(factory.ct_instance(), StudyInstanceUID=bad))
    assert exc.failure_code == 0xA900
    assert "StudyInstanceUID" in exc.reason


def test_rejects_media_storage_sop_instance_mismatch(tmp_path: Path) -> None:
    data = factory.with_meta(factory.ct_instance(), MediaStorageSOPInstanceUID=factory.new_uid("other"))
    exc = rejection(tmp_path, data)
    assert exc.failure_code == 0xA900
    assert "MediaStorageSOPInstanceUID" in exc.reason


def test_rejects_dicomdir(tmp_path: Path) -> None:
    data = factory.with_meta(factory.ct_instance(), MediaStorageSOPClassUID="1.2.840.10008.1.3.10")
    exc = rejection(tmp_path, data)
    assert exc.failure_code == FailureReason.SOP_CLASS_NOT_SUPPORTED


def test_rejects_pixel_data_without_description(tmp_path: Path) -> None:
    exc = rejection(tmp_path, factory.without(factory.jpeg_baseline_instance(), "Rows"))
    assert exc.failure_code == 0xA900
    assert "Rows" in exc.reason


def test_rejects_native_pixel_data_shorter_than_described(tmp_path: Path) -> None:
    exc = rejection(tmp_path, factory.without(factory.ct_instance(), NumberOfFrames=3))
    assert exc.failure_code == 0xA900
    assert "fewer than" in exc.reason


@pytest.mark.parametrize(
    ("variant", "cut"),
    [
        ("ct-explicit", {"drop": 100}),  # inside native pixel data
        ("ct-implicit", {"drop": 1}),
        ("ct-explicit", {"keep": 400}),  # inside the header
        ("rle", {"drop": 8}),  # encapsulated, sequence delimiter missing
        ("jpeg-multiframe-bot", {"drop": 40}),  # inside the last fragment
        ("sr", {"drop": 30}),  # inside a sequence
        ("deflated", {"drop": 50}),  # the deflate stream ends early
    ],
)
def test_rejects_truncated(tmp_path: Path, variant: str, cut: dict[str, int]) -> None:
    exc = rejection(tmp_path, factory.truncated(VARIANTS[variant](), **cut))
    assert exc.failure_code == 0xC000
    assert "truncated" in exc.reason


def test_deep_nesting_is_rejected_not_a_crash(tmp_path: Path) -> None:
    exc = rejection(tmp_path, factory.nested_sequences(300))
    assert exc.failure_code == FailureReason.OUT_OF_RESOURCES
    assert "nested" in exc.reason
    assert "32" in exc.reason
    exc = rejection(tmp_path, factory.nested_sequences(300, explicit=False))
    assert "nested" in exc.reason


def test_nesting_within_the_limit_is_accepted(tmp_path: Path) -> None:
    record = parse_bytes(tmp_path, factory.nested_sequences(32))
    js = orjson.loads(record.metadata)
    depth = 0
    while "0040A730" in js:
        depth += 1
        js = js["0040A730"]["Value"][0]
    assert depth == 32


def test_deep_nesting_with_defined_lengths(tmp_path: Path) -> None:
    exc = rejection(tmp_path, factory.nested_sequences(300, defined_length=True))
    assert exc.failure_code == FailureReason.OUT_OF_RESOURCES
    assert "nested" in exc.reason
    record = parse_bytes(tmp_path, factory.nested_sequences(32, defined_length=True, explicit=False))
    assert "0040A730" in orjson.loads(record.metadata)


@pytest.mark.parametrize("defined_length", [False, True], ids=["read-time", "conversion-time"])
def test_recursion_beyond_what_python_allows_is_a_rejection(tmp_path: Path, defined_length: bool) -> None:
    # With the walk's limit lifted, pydicom's recursion gives out, while reading (undefined
    # lengths) or while converting to JSON (defined lengths): still a clean rejection.
    data = factory.nested_sequences(3000, defined_length=defined_length)
    exc = rejection(tmp_path, data, limits=ParseLimits(max_sequence_depth=1_000_000))
    assert exc.failure_code == FailureReason.OUT_OF_RESOURCES
    assert "nested" in exc.reason


def test_factory_pixel_data_decodes() -> None:
    native = read(factory.ct_instance()).pixel_array
    for lossless in (factory.rle_instance(), factory.j2k_lossless_instance()):
        assert (read(lossless).pixel_array == native).all()
    for data, shape in (
        (factory.jpeg_baseline_instance(frames=3, fragments_per_frame=2, rgb=True), (3, 64, 64, 3)),
        (factory.jpeg_baseline_instance(frames=5, fragments_per_frame=3, offset_table="none"), (5, 64, 64)),
        (factory.jpeg_baseline_instance(frames=6, offset_table="extended"), (6, 64, 64)),
        (factory.jpegls_lossless_instance(), (64, 64)),
        (factory.bits1_instance(), (3, 5, 5)),
        (factory.float_pixel_instance(), (2, 16, 16)),
    ):
        assert read(data).pixel_array.shape == shape


def test_deflate_bomb_is_rejected_in_bounded_memory(tmp_path: Path) -> None:
    bomb = factory.deflate_bomb(128 << 20)
    temp = tmp_path / "inflate"
    temp.mkdir()
    limits = ParseLimits(max_inflate_ratio=16, min_inflate_allowance=4 << 20, temp_dir=temp)
    tracemalloc.start()
    try:
        exc = rejection(tmp_path, bomb, limits=limits)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert exc.failure_code == FailureReason.OUT_OF_RESOURCES
    assert "inflates beyond" in exc.reason
    assert peak < 8 << 20, peak
    assert list(temp.iterdir()) == []  # the inflated copy is gone


def test_deflated_instance_within_limits(tmp_path: Path) -> None:
    record = parse_bytes(tmp_path, factory.deflated_instance())
    assert record.transfer_syntax == pydicom.uid.DeflatedExplicitVRLittleEndian
    assert record.frames == ()
    assert record.pixel is not None
    assert record.pixel.rows == 64


def test_large_native_multiframe_is_not_loaded(tmp_path: Path) -> None:
    path = factory.write_large_multiframe(tmp_path / "big.dcm", frames=200, rows=512, cols=512)
    assert path.stat().st_size > 100_000_000
    tracemalloc.start()
    try:
        record = parse_part10(path, origin="stow")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 6 << 20, peak
    assert len(record.frames) == 200
    ((offset, length),) = record.frames[137]
    with open(path, "rb") as f:
        f.seek(offset)
        assert f.read(length) == factory.frame_pattern(137, 512, 512)
    assert record.size == path.stat().st_size


def test_rejection_names_the_instance_when_it_can(tmp_path: Path) -> None:
    ct = factory.ct_instance()
    ds = read(ct)
    # Structural failure: the UIDs come from the File Meta Information.
    exc = rejection(tmp_path, factory.truncated(ct, drop=100))
    assert (exc.sop_class_uid, exc.sop_instance_uid) == (ds.SOPClassUID, ds.SOPInstanceUID)
    # Failure after reading the data set: its own UIDs.
    exc = rejection(tmp_path, factory.without(ct, "StudyInstanceUID"))
    assert (exc.sop_class_uid, exc.sop_instance_uid) == (ds.SOPClassUID, ds.SOPInstanceUID)
    # Nothing readable: nothing named.
    exc = rejection(tmp_path, b"not DICOM")
    assert (exc.sop_class_uid, exc.sop_instance_uid) == (None, None)
    # An invalid UID is not echoed back (pydicom wrote it into the File Meta Information too).
    exc = rejection(tmp_path, factory.without(ct, SOPInstanceUID="1.2.03.4"))
    assert exc.sop_class_uid == ds.SOPClassUID
    assert exc.sop_instance_uid is None


def test_rejection_reason_has_no_patient_data(tmp_path: Path) -> None:
    data = factory.truncated(factory.ct_instance(patient_name="SECRET^NAME"), drop=100)
    exc = rejection(tmp_path, data)
    assert "SECRET" not in exc.reason
    assert "Traceback" not in exc.reason


# ---------------------------------------------------------------------------------------------
# dicomjson
# ---------------------------------------------------------------------------------------------


def raw_dataset(*elements: tuple[int, str, bytes]) -> Dataset:
    ds = Dataset()
    for tag, vr, value in elements:
        ds[Tag(tag)] = RawDataElement(Tag(tag), vr, len(value), value, 0, False, True)
    return ds


@pytest.mark.parametrize(
    ("vr", "raw", "expected"),
    [
        ("IS", b"1.0 ", [1]),
        ("IS", b" 5 ", [5]),
        ("IS", b"+7", [7]),
        ("IS", b"1.5 ", [1.5]),
        ("IS", b"abc ", [None]),
        ("IS", b"1\\\\2 ", [1, None, 2]),
        ("IS", b"99999999999999999999", [1e20]),
        ("IS", b"", None),
        ("IS", b"  ", None),
        ("DS", b" 40.50", [40.5]),
        ("DS", b"1e3 ", [1000.0]),
        ("DS", b"NaN ", [None]),
        ("DS", b"inf", [None]),
        ("DS", b"x", [None]),
        ("DS", b"1\\\\2", [1.0, None, 2.0]),
        ("DS", b"", None),
    ],
)
def test_is_ds_are_json_numbers(vr: str, raw: bytes, expected: list[Any] | None) -> None:
    tag = 0x00200013 if vr == "IS" else 0x00281050
    js = dataset_to_json(raw_dataset((tag, vr, raw)), "p/")
    key = f"{tag:08X}"
    assert js[key]["vr"] == vr
    assert js[key].get("Value") == expected
    assert orjson.loads(dumps(js)) == js


def test_is_ds_after_pydicom_converted_them() -> None:
    ds = raw_dataset((0x00200013, "IS", b"1.0 "), (0x00281050, "DS", b" 40.50\\-3"))
    with pydicom_warnings_suppressed():
        assert ds.InstanceNumber == 1  # converts the element
        _ = ds.WindowCenter
    js = dataset_to_json(ds, "p/")
    assert js["00200013"]["Value"] == [1]
    assert js["00281050"]["Value"] == [40.5, -3.0]


def test_empty_values_in_multivalued_elements_are_null() -> None:
    ds = raw_dataset(
        (0x00080008, "CS", b"ORIGINAL\\\\AXIAL "),
        (0x00081060, "PN", b"DOE^JOHN\\\\SMITH^ANNA"),
        (0x00181310, "US", b"\x01\x00\x02\x00"),
        (0x00189087, "FD", b"\x00\x00\x00\x00\x00\x00\xf8\x7f"),  # NaN
    )
    js = dataset_to_json(ds, "p/")
    assert js["00080008"]["Value"] == ["ORIGINAL", None, "AXIAL"]
    assert js["00081060"]["Value"] == [{"Alphabetic": "DOE^JOHN"}, None, {"Alphabetic": "SMITH^ANNA"}]
    assert js["00181310"]["Value"] == [1, 2]
    assert js["00189087"]["Value"] == [None]


def test_bulk_data_uris_and_tag_paths() -> None:
    ds = Dataset()
    ds.add_new(0x00091010, "LO", "CREATOR")
    ds.add_new(0x00281201, "OW", b"\x00\x01" * 1000)  # 2000 bytes: bulk
    ds.add_new(0x00281202, "OW", b"\x00\x01" * 10)  # small: inline
    inner = Dataset()
    inner.add_new(0x00181072, "OB", b"\x07" * 3000)
    ds.add_new(0x00540016, "SQ", [Dataset(), inner])
    ds.add_new(0x00400260, "SQ", [])
    js = dataset_to_json(ds, "studies/1/series/2/instances/3/bulkdata/")
    assert js["00281201"] == {"vr": "OW", "BulkDataURI": "studies/1/series/2/instances/3/bulkdata/00281201"}
    assert "InlineBinary" in js["00281202"]
    nested = js["00540016"]["Value"][1]["00181072"]
    assert nested == {"vr": "OB", "BulkDataURI": "studies/1/series/2/instances/3/bulkdata/00540016/1/00181072"}
    assert js["00400260"] == {"vr": "SQ"}
    assert element_at(ds, "00540016/1/00181072").value == b"\x07" * 3000
    assert element_at(ds, "00281201").VR == "OW"
    for bad in ("00540016/5/00181072", "00540016/1", "zz", "00540016/x/00181072"):
        with pytest.raises(KeyError):
            element_at(ds, bad)


def test_deferred_values_are_not_read(tmp_path: Path) -> None:
    ds = read(factory.ct_instance())
    ds.add_new(0x00091010, "LO", "CREATOR")
    ds.add_new(0x00091011, "OB", b"\x01" * 200_000)
    ds.add_new(0x00091012, "UT", "x" * 200_000)
    path = tmp_path / "big-private.dcm"
    ds.save_as(path, enforce_file_format=True)
    with pydicom_warnings_suppressed():
        deferred = pydicom.dcmread(path, defer_size=1000)
    js = dataset_to_json(deferred, "p/")
    assert js["00091011"] == {"vr": "OB", "BulkDataURI": "p/00091011"}
    assert js["00091012"] == {"vr": "UT", "BulkDataURI": "p/00091012"}
    assert js["7FE00010"] == {"vr": "OW", "BulkDataURI": "p/7FE00010"}
    for tag in (0x00091011, 0x00091012, 0x7FE00010):
        item = deferred.get_item(tag, keep_deferred=True)
        assert isinstance(item, RawDataElement)
        assert item.value is None


def test_accessors() -> None:
    js = {
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": "DOE^JOHN", "Ideographic": "ドウ^ジョン"}]},
        "00200013": {"vr": "IS", "Value": [7]},
        "00281050": {"vr": "DS", "Value": [40.5]},
        "00080020": {"vr": "DA"},
        "00080060": {"vr": "CS", "Value": ["CT"]},
    }
    assert first_value(js, "00200013") == 7
    assert first_value(js, "00080020") is None
    assert first_value(js, "00080021") is None
    assert str_value(js, "00080060") == "CT"
    assert str_value(js, "00100010") == "DOE^JOHN"
    assert str_value(js, "00200013") == "7"
    assert str_value(js, "00281050") == "40.5"
    assert pn_alphabetic(js, "00100010") == "DOE^JOHN"
    assert pn_alphabetic(js, "00080060") is None
    assert pn_alphabetic(js, "0008103e") is None
