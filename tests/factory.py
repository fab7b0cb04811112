"""Deterministic DICOM test data, shared by the tests and the benchmark (no pytest here).

Every builder returns Part 10 bytes (or writes a file) and is deterministic for a given ``seed``:
UIDs come from :func:`new_uid` with the seed as entropy, pixels from ``numpy.random`` seeded.

Compressed syntaxes: RLE Lossless (pydicom's own encoder) and JPEG 2000 Lossless
(pylibjpeg-openjpeg) are encoded here; JPEG Baseline is encoded with Pillow when it is
importable (it comes with dicomweb-client, a test dependency) and otherwise taken from a JPEG
file shipped in pydicom's data package; JPEG-LS Lossless needs pyjpegls to encode, so without it
the instance is built from pydicom's bundled ``MR_small_jpeg_ls_lossless.dcm`` with new UIDs.
:func:`available_encoders` says which is which on this machine.
"""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, encapsulate_extended
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.pixels.encoders.base import get_encoder
from pydicom.pixels.utils import pack_bits
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

# pydicom's registered root (1.2.826.0.1.3680043.8.498.): fixed length, so UIDs are <= 64 chars.
UID_PREFIX = "1.2.826.0.1.3680043.8.498."

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
XA_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.12.1"
SC_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.7"
SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
PARAMETRIC_MAP_STORAGE = "1.2.840.10008.5.1.4.1.1.30"
BASIC_TEXT_SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.11"
KEY_OBJECT_SELECTION = "1.2.840.10008.5.1.4.1.1.88.59"

LATIN1_NAME = "Müller^Jürgen"  # ISO_IR 100
UTF8_NAME = "山田^太郎"  # ISO_IR 192


def new_uid(*entropy: object) -> str:
    """A UID under :data:`UID_PREFIX`; deterministic when ``entropy`` is given."""
    if entropy:
        return str(generate_uid(UID_PREFIX, entropy_srcs=[repr(e) for e in entropy]))
    return str(generate_uid(UID_PREFIX))


def available_encoders() -> dict[str, str]:
    """How each compressed syntax is produced here: "encoded" (by a plugin) or "bundled file"."""
    return {
        "RLE Lossless": "encoded",
        "JPEG 2000 Lossless": "encoded" if get_encoder(JPEG2000Lossless).is_available else "unavailable",
        "JPEG Baseline": "encoded" if _pillow() is not None else "bundled file",
        "JPEG-LS Lossless": "encoded" if get_encoder(JPEGLSLossless).is_available else "bundled file",
    }


# ---------------------------------------------------------------------------------------------
# Part 10 encoding
# ---------------------------------------------------------------------------------------------


def to_part10_bytes(ds: Dataset, transfer_syntax: str = ExplicitVRLittleEndian) -> bytes:
    """``ds`` as a Part 10 file (PS3.10 7.1) in ``transfer_syntax``.

    For a compressed syntax the pixel data must already be encapsulated in it.
    """
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = UID(transfer_syntax)
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# ---------------------------------------------------------------------------------------------
# Data sets
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Patient:
    name: str = "DOE^JOHN"
    id: str = "PID0001"
    birth_date: str = "19700101"
    sex: str = "M"
    charset: str | None = None  # Specific Character Set, e.g. "ISO_IR 100", "ISO_IR 192"


def base_dataset(
    *,
    sop_class: str,
    seed: int = 0,
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    patient: Patient | None = None,
    patient_name: str | None = None,
    modality: str = "CT",
    study_date: str = "20240115",
    study_time: str = "101500",
    accession: str = "ACC0001",
    study_description: str = "CT CHEST",
    series_description: str = "AXIAL",
    series_number: int = 1,
    instance_number: int = 1,
    **attrs: Any,
) -> Dataset:
    """Patient / study / series / instance identity; ``attrs`` are set last (keyword -> value)."""
    patient = patient or Patient()
    if patient_name is not None:
        patient = Patient(patient_name, patient.id, patient.birth_date, patient.sex, patient.charset)
    ds = Dataset()
    if patient.charset:
        ds.SpecificCharacterSet = patient.charset
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid or new_uid("sop", seed, series_number, instance_number)
    ds.StudyInstanceUID = study_uid or new_uid("study", seed)
    ds.SeriesInstanceUID = series_uid or new_uid("series", seed, series_number)
    ds.StudyDate = study_date
    ds.StudyTime = study_time
    ds.SeriesDate = study_date
    ds.SeriesTime = study_time
    ds.AccessionNumber = accession
    ds.Modality = modality
    ds.Manufacturer = "dicomweb-gateway tests"
    ds.ReferringPhysicianName = "WELBY^MARCUS"
    ds.StudyDescription = study_description
    ds.SeriesDescription = series_description
    ds.PatientName = patient.name
    ds.PatientID = patient.id
    ds.PatientBirthDate = patient.birth_date
    ds.PatientSex = patient.sex
    ds.StudyID = "1"
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance_number
    for key, value in attrs.items():
        setattr(ds, key, value)
    return ds


def _pixels(seed: int, shape: tuple[int, ...], bits: int, signed: bool = False) -> np.ndarray:
    """A diagonal ramp plus a little noise: compresses like an image, deterministic.

    ``shape`` is (rows, cols), (frames, rows, cols), (rows, cols, 3) or (frames, rows, cols, 3).
    """
    rng = np.random.default_rng(seed)
    rgb = len(shape) >= 3 and shape[-1] == 3
    rows, cols = shape[-3:-1] if rgb else shape[-2:]
    top = (1 << (bits - 1)) - 1 if signed else (1 << bits) - 1
    ramp = np.add.outer(np.arange(rows), np.arange(cols)) * (top // 2) // max(1, rows + cols - 2)
    if rgb:
        ramp = ramp[..., None]
    out = np.clip(np.broadcast_to(ramp, shape) + rng.integers(0, 16, size=shape), 0, top)
    kinds = {8: (np.uint8, np.int8), 16: (np.uint16, np.int16), 32: (np.uint32, np.int32)}
    return out.astype(kinds[bits][1 if signed else 0])


def _set_image(
    ds: Dataset,
    arr: np.ndarray,
    *,
    bits_stored: int | None = None,
    photometric: str = "MONOCHROME2",
    frames: int = 1,
) -> None:
    samples = 3 if photometric in ("RGB", "YBR_FULL", "YBR_FULL_422") else 1
    bits = arr.dtype.itemsize * 8
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = photometric
    if samples > 1:
        ds.PlanarConfiguration = 0
    if frames > 1 or "NumberOfFrames" in ds:
        ds.NumberOfFrames = frames
    ds.Rows, ds.Columns = arr.shape[-3:-1] if samples > 1 else arr.shape[-2:]
    ds.BitsAllocated = bits
    ds.BitsStored = bits_stored or bits
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if arr.dtype.kind == "i" else 0
    ds.PixelData = arr.tobytes()


def _geometry(ds: Dataset, seed: int, index: int) -> None:
    """The image plane attributes a viewer needs (PS3.3 C.7.6.2) and a VOI window."""
    ds.FrameOfReferenceUID = new_uid("for", seed)
    ds.ImagePositionPatient = [-125.0, -125.0, -100.0 + 2.5 * index]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [0.48828125, 0.48828125]
    ds.SliceThickness = 2.5
    ds.SliceLocation = -100.0 + 2.5 * index


def ct_dataset(
    *, seed: int = 0, rows: int = 512, cols: int = 512, index: int = 0, bits_stored: int = 12, **identity: Any
) -> Dataset:
    """One CT image, 16-bit signed MONOCHROME2 with rescale and window (PS3.3 A.3)."""
    identity.setdefault("instance_number", index + 1)
    ds = base_dataset(sop_class=CT_IMAGE_STORAGE, seed=seed, **identity)
    _geometry(ds, seed, index)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.KVP = 120
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    ds.RescaleType = "HU"
    ds.WindowCenter = 40
    ds.WindowWidth = 400
    arr = _pixels(seed * 1000 + index, (rows, cols), 16, signed=True) % (1 << (bits_stored - 1))
    _set_image(ds, arr.astype(np.int16), bits_stored=bits_stored)
    return ds


def ct_instance(
    *, transfer_syntax: str = ExplicitVRLittleEndian, seed: int = 0, rows: int = 64, cols: int = 64, **identity: Any
) -> bytes:
    """A single CT image in a native syntax (Implicit or Explicit VR Little Endian)."""
    return to_part10_bytes(ct_dataset(seed=seed, rows=rows, cols=cols, **identity), transfer_syntax)


def ct_series(
    n: int,
    rows: int = 512,
    cols: int = 512,
    study_uid: str | None = None,
    series_uid: str | None = None,
    patient_name: str = "DOE^JOHN",
    *,
    seed: int = 0,
    transfer_syntax: str = ExplicitVRLittleEndian,
    **identity: Any,
) -> list[bytes]:
    """``n`` CT slices of one series, 2.5 mm apart."""
    study_uid = study_uid or new_uid("study", seed)
    series_uid = series_uid or new_uid("series", seed, identity.get("series_number", 1))
    return [
        to_part10_bytes(
            ct_dataset(
                seed=seed,
                rows=rows,
                cols=cols,
                index=i,
                study_uid=study_uid,
                series_uid=series_uid,
                patient_name=patient_name,
                **identity,
            ),
            transfer_syntax,
        )
        for i in range(n)
    ]


def mr_instance(*, seed: int = 0, rows: int = 64, cols: int = 64, **identity: Any) -> bytes:
    """One MR image, 16-bit unsigned (PS3.3 A.4)."""
    identity.setdefault("modality", "MR")
    identity.setdefault("study_description", "MR BRAIN")
    identity.setdefault("series_description", "T1 SAG")
    ds = base_dataset(sop_class=MR_IMAGE_STORAGE, seed=seed, **identity)
    _geometry(ds, seed, 0)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M"]
    ds.ScanningSequence = "SE"
    ds.SequenceVariant = "NONE"
    ds.MagneticFieldStrength = 1.5
    ds.EchoTime = 14
    ds.RepetitionTime = 500
    ds.WindowCenter = 600
    ds.WindowWidth = 1200
    _set_image(ds, _pixels(seed, (rows, cols), 16) % 4096, bits_stored=12)
    return to_part10_bytes(ds)


def rle_instance(*, seed: int = 0, rows: int = 64, cols: int = 64, frames: int = 1, **identity: Any) -> bytes:
    """RLE Lossless (PS3.5 G), encoded by pydicom's own RLE encoder; one fragment per frame."""
    ds = ct_dataset(seed=seed, rows=rows, cols=cols, **identity)
    if frames > 1:
        arr = np.stack([_pixels(seed + f, (rows, cols), 16, signed=True) % 2048 for f in range(frames)])
        _set_image(ds, arr.astype(np.int16), bits_stored=12, frames=frames)
    _compress(ds, RLELossless, "pydicom")
    return to_part10_bytes(ds, RLELossless)


def _compress(ds: Dataset, transfer_syntax: str, plugin: str) -> None:
    """Encode the native pixel data of ``ds`` with pydicom's encoder interface."""
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.compress(transfer_syntax, encoding_plugin=plugin, generate_instance_uid=False)


def j2k_lossless_instance(*, seed: int = 0, rows: int = 64, cols: int = 64, **identity: Any) -> bytes:
    """JPEG 2000 Lossless, encoded by pylibjpeg-openjpeg through pydicom."""
    ds = ct_dataset(seed=seed, rows=rows, cols=cols, **identity)
    _compress(ds, JPEG2000Lossless, "pylibjpeg")
    return to_part10_bytes(ds, JPEG2000Lossless)


def testdata_path(name: str) -> Path:
    """A file shipped inside pydicom's data package (available offline)."""
    path = get_testdata_file(name)
    assert isinstance(path, str), name
    return Path(path)


def _pillow() -> Any:
    try:
        from PIL import Image
    except ImportError:
        return None
    return Image


def _jpeg_frames(arr: np.ndarray, rgb: bool) -> list[bytes]:
    image = _pillow()
    assert image is not None
    frames = []
    for frame in arr:
        buf = io.BytesIO()
        if rgb:
            # 4:2:2 chroma subsampling matches PhotometricInterpretation YBR_FULL_422 (PS3.5 8.2.1).
            image.fromarray(frame).save(buf, "JPEG", quality=90, subsampling=1)
        else:
            image.fromarray(frame).save(buf, "JPEG", quality=90)
        frames.append(buf.getvalue())
    return frames


def jpeg_baseline_instance(
    *,
    seed: int = 0,
    rows: int = 64,
    cols: int = 64,
    frames: int = 1,
    rgb: bool = False,
    fragments_per_frame: int = 1,
    offset_table: str = "basic",  # "basic", "none" or "extended"
    **identity: Any,
) -> bytes:
    """JPEG Baseline (Process 1) 8-bit; frames may be split over fragments, with or without a
    Basic or an Extended Offset Table (PS3.5 A.4, PS3.3 C.7.6.3.1.8)."""
    if _pillow() is None:
        return _from_bundled("SC_rgb_jpeg_dcmtk.dcm", seed=seed, **identity)
    identity.setdefault("modality", "XA" if frames > 1 else "OT")
    sop_class = XA_IMAGE_STORAGE if frames > 1 else SC_IMAGE_STORAGE
    ds = base_dataset(sop_class=sop_class, seed=seed, **identity)
    shape = (frames, rows, cols, 3) if rgb else (frames, rows, cols)
    arr = _pixels(seed, shape, 8)
    _set_image(ds, arr[0] if frames == 1 else arr, photometric="RGB" if rgb else "MONOCHROME2", frames=frames)
    encoded = _jpeg_frames(arr, rgb)
    ds.PhotometricInterpretation = "YBR_FULL_422" if rgb else "MONOCHROME2"
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionMethod = "ISO_10918_1"
    if offset_table == "extended":
        data, offsets, lengths = encapsulate_extended(encoded)
        ds.PixelData = data
        ds.ExtendedOffsetTable = offsets
        ds.ExtendedOffsetTableLengths = lengths
    else:
        ds.PixelData = encapsulate(encoded, fragments_per_frame=fragments_per_frame, has_bot=offset_table == "basic")
    ds["PixelData"].VR = "OB"
    return to_part10_bytes(ds, JPEGBaseline8Bit)


def jpegls_lossless_instance(*, seed: int = 0, rows: int = 64, cols: int = 64, **identity: Any) -> bytes:
    """JPEG-LS Lossless: encoded with pyjpegls when installed, else pydicom's bundled file."""
    if get_encoder(JPEGLSLossless).is_available:
        ds = ct_dataset(seed=seed, rows=rows, cols=cols, **identity)
        _compress(ds, JPEGLSLossless, "")
        return to_part10_bytes(ds, JPEGLSLossless)
    return _from_bundled("MR_small_jpeg_ls_lossless.dcm", seed=seed, **identity)


def _from_bundled(name: str, *, seed: int = 0, **identity: Any) -> bytes:
    """A file shipped in pydicom's data package with this factory's identity attributes."""
    ds = pydicom.dcmread(testdata_path(name))
    transfer_syntax = ds.file_meta.TransferSyntaxUID
    fresh = base_dataset(sop_class=str(ds.SOPClassUID), seed=seed, **identity)
    for elem in fresh:
        ds[elem.tag] = elem
    return to_part10_bytes(ds, transfer_syntax)


def multiframe_xa(*, seed: int = 0, frames: int = 30, rows: int = 128, cols: int = 128, **identity: Any) -> bytes:
    """An 8-bit multi-frame XA cine (native, Explicit VR Little Endian)."""
    identity.setdefault("modality", "XA")
    identity.setdefault("study_description", "CORONARY ANGIO")
    ds = base_dataset(sop_class=XA_IMAGE_STORAGE, seed=seed, **identity)
    ds.FrameTime = 66.7
    ds.CineRate = 15
    ds.FrameIncrementPointer = 0x00181063
    _set_image(ds, _pixels(seed, (frames, rows, cols), 8), frames=frames)
    return to_part10_bytes(ds)


def enhanced_ct(*, seed: int = 0, frames: int = 8, rows: int = 64, cols: int = 64, **identity: Any) -> bytes:
    """A 16-bit multi-frame Enhanced CT (only the attributes the gateway looks at)."""
    ds = base_dataset(sop_class=ENHANCED_CT_IMAGE_STORAGE, seed=seed, **identity)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    arr = _pixels(seed, (frames, rows, cols), 16) % 4096
    _set_image(ds, arr, bits_stored=12, frames=frames)
    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing = [0.5, 0.5]
    measures.SliceThickness = 1.0
    shared.PixelMeasuresSequence = [measures]
    ds.SharedFunctionalGroupsSequence = [shared]
    per_frame = []
    for i in range(frames):
        item, position = Dataset(), Dataset()
        position.ImagePositionPatient = [0.0, 0.0, float(i)]
        item.PlanePositionSequence = [position]
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = per_frame
    return to_part10_bytes(ds)


def bits1_instance(*, seed: int = 0, frames: int = 3, rows: int = 5, cols: int = 5, **identity: Any) -> bytes:
    """Bits Allocated 1 (a binary segmentation): frames packed without byte alignment (PS3.5 8.1.1)."""
    identity.setdefault("modality", "SEG")
    ds = base_dataset(sop_class=SEGMENTATION_STORAGE, seed=seed, **identity)
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 2, size=(frames, rows, cols), dtype=np.uint8)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.NumberOfFrames = frames
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated = ds.BitsStored = 1
    ds.HighBit = 0
    ds.PixelRepresentation = 0
    ds.PixelData = pack_bits(arr)
    return to_part10_bytes(ds)


def float_pixel_instance(*, seed: int = 0, frames: int = 2, rows: int = 16, cols: int = 16, **identity: Any) -> bytes:
    """Float Pixel Data (7FE0,0008), as in a Parametric Map (PS3.3 C.7.6.3.1.4)."""
    identity.setdefault("modality", "OT")
    ds = base_dataset(sop_class=PARAMETRIC_MAP_STORAGE, seed=seed, **identity)
    rng = np.random.default_rng(seed)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.NumberOfFrames = frames
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated = 32
    ds.FloatPixelData = rng.random((frames, rows, cols), dtype=np.float32).tobytes()
    return to_part10_bytes(ds)


def sr_instance(*, seed: int = 0, **identity: Any) -> bytes:
    """A Basic Text SR: no pixel data, nested content sequences."""
    identity.setdefault("modality", "SR")
    ds = base_dataset(sop_class=BASIC_TEXT_SR_STORAGE, seed=seed, **identity)
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    title = Dataset()
    title.CodeValue, title.CodingSchemeDesignator, title.CodeMeaning = "18782-3", "LN", "Radiology Study observation"
    ds.ConceptNameCodeSequence = [title]
    text = Dataset()
    text.RelationshipType = "CONTAINS"
    text.ValueType = "TEXT"
    text.TextValue = "No acute findings."
    ds.ContentSequence = [text]
    return to_part10_bytes(ds)


def ko_instance(*, seed: int = 0, referenced: Iterable[tuple[str, str]] = (), **identity: Any) -> bytes:
    """A Key Object Selection document (no pixel data) referencing (sop_class, sop_uid) pairs."""
    identity.setdefault("modality", "KO")
    ds = base_dataset(sop_class=KEY_OBJECT_SELECTION, seed=seed, **identity)
    ds.ValueType = "CONTAINER"
    items = []
    for sop_class, sop_uid in referenced:
        ref = Dataset()
        ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = sop_class, sop_uid
        items.append(ref)
    ds.CurrentRequestedProcedureEvidenceSequence = []
    if items:
        series = Dataset()
        series.SeriesInstanceUID = new_uid("ko-ref-series", seed)
        series.ReferencedSOPSequence = items
        study = Dataset()
        study.StudyInstanceUID = new_uid("ko-ref-study", seed)
        study.ReferencedSeriesSequence = [series]
        ds.CurrentRequestedProcedureEvidenceSequence = [study]
    return to_part10_bytes(ds)


def latin1_instance(*, seed: int = 0, **identity: Any) -> bytes:
    """A CT whose names are ISO 8859-1 (Specific Character Set ISO_IR 100)."""
    patient = Patient(LATIN1_NAME, "PID-LATIN1", "19650312", "M", "ISO_IR 100")
    identity.setdefault("study_description", "Thorax nativ Übersicht")
    return ct_instance(seed=seed, patient=patient, **identity)


def utf8_instance(*, seed: int = 0, **identity: Any) -> bytes:
    """A CT whose names are UTF-8 (Specific Character Set ISO_IR 192)."""
    patient = Patient(UTF8_NAME, "PID-UTF8", "19801224", "F", "ISO_IR 192")
    identity.setdefault("study_description", "胸部CT")
    return ct_instance(seed=seed, patient=patient, **identity)


@dataclass(frozen=True)
class StudySpec:
    patient: Patient
    study_date: str
    study_time: str
    accession: str
    modality: str
    study_description: str


_LATIN1 = Patient(LATIN1_NAME, "PID0004", "19650312", "M", "ISO_IR 100")
_UTF8 = Patient(UTF8_NAME, "PID0005", "19801224", "F", "ISO_IR 192")
CATALOG = (
    StudySpec(Patient("DOE^JOHN", "PID0001", "19700101", "M"), "20240115", "101500", "ACC0001", "CT", "CT CHEST"),
    StudySpec(Patient("DOE^JANE", "PID0002", "19750505", "F"), "20240116", "083000", "ACC0002", "MR", "MR BRAIN"),
    StudySpec(Patient("SMITH^ANNA", "PID0003", "19891111", "F"), "20231231", "235959", "ACC0003", "CT", "CT ABDOMEN"),
    StudySpec(_LATIN1, "20220301", "120000", "A-2022", "MR", "MR KNIE"),
    StudySpec(_UTF8, "20240601", "070102", "ACC0005", "CT", "胸部CT"),
    StudySpec(Patient("O'BRIEN^SEAN", "PID0006", "20000229", "O"), "20240229", "000001", "", "XA", "ANGIO"),
)


def study_catalog(*, seed: int = 0, series_per_study: int = 2, instances_per_series: int = 2) -> list[bytes]:
    """Small instances of the studies in :data:`CATALOG` (varied dates, times, accession numbers,
    modalities, descriptions and character sets), material for QIDO matching tests."""
    out = []
    for s, spec in enumerate(CATALOG):
        study_uid = new_uid("catalog-study", seed, s)
        for series_number in range(1, series_per_study + 1):
            series_uid = new_uid("catalog-series", seed, s, series_number)
            for i in range(instances_per_series):
                ds = base_dataset(
                    sop_class=MR_IMAGE_STORAGE if spec.modality == "MR" else CT_IMAGE_STORAGE,
                    seed=seed,
                    study_uid=study_uid,
                    series_uid=series_uid,
                    sop_uid=new_uid("catalog-sop", seed, s, series_number, i),
                    patient=spec.patient,
                    modality=spec.modality,
                    study_date=spec.study_date,
                    study_time=spec.study_time,
                    accession=spec.accession,
                    study_description=spec.study_description,
                    series_description=f"SERIES {series_number}",
                    series_number=series_number,
                    instance_number=i + 1,
                )
                _geometry(ds, seed + s, i)
                _set_image(ds, _pixels(seed + s * 100 + i, (16, 16), 16) % 4096, bits_stored=12)
                out.append(to_part10_bytes(ds))
    return out


# ---------------------------------------------------------------------------------------------
# Other encodings and bad input
# ---------------------------------------------------------------------------------------------


def deflated_instance(*, seed: int = 0, **identity: Any) -> bytes:
    """A CT in Deflated Explicit VR Little Endian (PS3.5 A.5)."""
    return to_part10_bytes(ct_dataset(seed=seed, rows=64, cols=64, **identity), DeflatedExplicitVRLittleEndian)


def _meta_and_dataset(data: bytes) -> tuple[bytes, bytes]:
    """Split a Part 10 file into (preamble + prefix + group 0002, data set) using its group length."""
    (group_length,) = struct.unpack("<L", data[140:144])  # (0002,0000) UL is the first meta element
    start = 132 + 12 + group_length
    return data[:start], data[start:]


def deflate_bomb(inflated_size: int = 1 << 30, *, seed: int = 0) -> bytes:
    """A deflated Part 10 file whose data set inflates to about ``inflated_size`` bytes: a valid
    header followed by one private OB element of zeros. Built chunk by chunk in little memory."""
    ds = base_dataset(sop_class=SC_IMAGE_STORAGE, seed=seed, modality="OT")
    meta, _ = _meta_and_dataset(to_part10_bytes(ds, DeflatedExplicitVRLittleEndian))
    _, dataset = _meta_and_dataset(to_part10_bytes(ds, ExplicitVRLittleEndian))
    # The Explicit VR LE data set, then (0009,0010) LO creator and (0009,1010) OB of zeros.
    creator = b"BOMB"
    head = dataset + struct.pack("<HH2sH", 0x0009, 0x0010, b"LO", len(creator)) + creator
    zeros = inflated_size - len(head) - 12
    zeros -= zeros % 2
    head += struct.pack("<HH2sHL", 0x0009, 0x1010, b"OB", 0, zeros)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [compressor.compress(head)]
    chunk = bytes(1 << 20)
    remaining = zeros
    while remaining:
        n = min(remaining, len(chunk))
        parts.append(compressor.compress(chunk[:n]))
        remaining -= n
    parts.append(compressor.flush())
    body = b"".join(parts)
    return meta + body + (b"\x00" if len(body) % 2 else b"")


def nested_sequences(depth: int, *, seed: int = 0, explicit: bool = True, defined_length: bool = False) -> bytes:
    """A small SR-like file whose ContentSequence nests ``depth`` levels.

    Written by hand: pydicom's writer itself recurses per level and cannot write such files.
    With ``defined_length`` every sequence and item has an explicit length (pydicom then
    parses the nesting only when the value is first used), otherwise undefined lengths.
    """
    ds = base_dataset(sop_class=BASIC_TEXT_SR_STORAGE, seed=seed, modality="SR")
    data = to_part10_bytes(ds, ExplicitVRLittleEndian if explicit else ImplicitVRLittleEndian)

    def sq(length: int) -> bytes:
        if explicit:
            return struct.pack("<HH2sHL", 0x0040, 0xA730, b"SQ", 0, length)
        return struct.pack("<HHL", 0x0040, 0xA730, length)

    def item(length: int) -> bytes:
        return struct.pack("<HHL", 0xFFFE, 0xE000, length)

    if defined_length:
        inner = bytearray()
        for _ in range(depth):
            inner[:0] = item(len(inner))
            inner[:0] = sq(len(inner))
        return data + bytes(inner)
    item_end = struct.pack("<HHL", 0xFFFE, 0xE00D, 0)
    seq_end = struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
    return data + (sq(0xFFFFFFFF) + item(0xFFFFFFFF)) * depth + (item_end + seq_end) * depth


def truncated(data: bytes, *, keep: int | None = None, drop: int = 1000) -> bytes:
    """``data`` cut short: its first ``keep`` bytes, or all but the last ``drop``."""
    return data[:keep] if keep is not None else data[: len(data) - drop]


def with_meta(data: bytes, **changes: str) -> bytes:
    """``data`` with changed File Meta elements (keyword -> value) and the same data set bytes.

    The meta group is rewritten by itself: ``Dataset.save_as`` would put the data set's own
    SOP Class and Instance UIDs back into it.
    """
    meta = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).file_meta
    start = 132 + 12 + int(meta.FileMetaInformationGroupLength)
    for key, value in changes.items():
        setattr(meta, key, value)
    out = DicomBytesIO()
    out.write(data[:132])
    write_file_meta_info(out, meta, enforce_standard=True)
    return out.getvalue() + data[start:]


def without(data: bytes, *keywords: str, **replacements: Any) -> bytes:
    """Re-encode a Part 10 file without some attributes and/or with others replaced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the point is to write what pydicom warns about
        ds = pydicom.dcmread(io.BytesIO(data))
        for key in keywords:
            delattr(ds, key)
        for key, value in replacements.items():
            setattr(ds, key, value)
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def with_transfer_syntax_uid(data: bytes, uid: str) -> bytes:
    """``data`` with the bytes of its Transfer Syntax UID value swapped for ``uid`` (same length
    once padded), the rest untouched: how a file in an unknown syntax looks."""
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    old = str(ds.file_meta.TransferSyntaxUID).encode()
    old += b"\x00" * (len(old) % 2)
    new = uid.encode() + b"\x00" * (len(old) - len(uid))
    assert len(new) == len(old), "the new UID must have the same padded length"
    head, rest = data[:400], data[400:]
    return head.replace(old, new, 1) + rest


def write_large_multiframe(path: Path, *, frames: int = 200, rows: int = 512, cols: int = 512, seed: int = 0) -> Path:
    """A 16-bit native multi-frame file (about frames x rows x cols x 2 bytes) written frame by
    frame, so building it needs memory for one frame only."""
    ds = base_dataset(sop_class=ENHANCED_CT_IMAGE_STORAGE, seed=seed)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.NumberOfFrames = frames
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    header = to_part10_bytes(ds, ExplicitVRLittleEndian)
    frame_bytes = rows * cols * 2
    with open(path, "wb") as f:
        f.write(header)
        # Pixel Data (7FE0,0010) is the last element, so it can simply be appended.
        f.write(struct.pack("<HH2sHL", 0x7FE0, 0x0010, b"OW", 0, frames * frame_bytes))
        for i in range(frames):
            f.write(frame_pattern(i, rows, cols))
    return path


def frame_pattern(index: int, rows: int, cols: int) -> bytes:
    """Frame ``index`` of :func:`write_large_multiframe` (cheap, distinct per frame)."""
    row = (np.arange(cols, dtype=np.uint16) + index) % 4096
    return np.broadcast_to(row, (rows, cols)).tobytes()


# ---------------------------------------------------------------------------------------------
# Images for rendering: one per Photometric Interpretation, with known pixel values
# ---------------------------------------------------------------------------------------------


def gradient(rows: int, cols: int, top: int) -> np.ndarray:
    """A horizontal ramp 0..top (every row the same): easy to reason about once rendered."""
    return np.broadcast_to(np.linspace(0, top, cols).round(), (rows, cols)).astype(np.int64)


def image_instance(
    arr: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    seed: int = 0,
    bits_stored: int | None = None,
    transfer_syntax: str = ExplicitVRLittleEndian,
    attrs: dict[str, Any] | None = None,
    **identity: Any,
) -> bytes:
    """A Secondary Capture (or multi-frame XA for 3-D ``arr`` of frames) holding exactly ``arr``
    (uint8/int16/uint16; (rows, cols[, 3]) or (frames, rows, cols[, 3])) with ``attrs`` set,
    native or compressed into ``transfer_syntax`` by the plugins."""
    colour = photometric in ("RGB", "YBR_FULL")
    frames = arr.shape[0] if arr.ndim == (4 if colour else 3) else 1
    identity.setdefault("modality", "OT")
    sop_class = XA_IMAGE_STORAGE if frames > 1 else SC_IMAGE_STORAGE
    ds = base_dataset(sop_class=sop_class, seed=seed, **identity)
    _set_image(ds, arr, bits_stored=bits_stored, photometric=photometric, frames=frames)
    for key, value in (attrs or {}).items():
        setattr(ds, key, value)
    if transfer_syntax != ExplicitVRLittleEndian:
        _compress(ds, transfer_syntax, "pylibjpeg" if transfer_syntax != JPEGLSLossless else "")
    return to_part10_bytes(ds, transfer_syntax)


def palette_instance(*, seed: int = 0, rows: int = 16, cols: int = 256, **identity: Any) -> bytes:
    """PALETTE COLOR: 8-bit indices (a ramp 0..255) and 16-bit LUTs red = i, green = 255 - i,
    blue = 128 (each scaled to 16 bits), 256 entries from 0."""
    arr = gradient(rows, cols, 255).astype(np.uint8)
    index = np.arange(256, dtype=np.uint16)
    red, green, blue = index * 257, (255 - index) * 257, np.full(256, 128 * 257, dtype=np.uint16)
    attrs = {
        "RedPaletteColorLookupTableDescriptor": [256, 0, 16],
        "GreenPaletteColorLookupTableDescriptor": [256, 0, 16],
        "BluePaletteColorLookupTableDescriptor": [256, 0, 16],
        "RedPaletteColorLookupTableData": red.astype("<u2").tobytes(),
        "GreenPaletteColorLookupTableData": green.astype("<u2").tobytes(),
        "BluePaletteColorLookupTableData": blue.astype("<u2").tobytes(),
    }
    return image_instance(arr, photometric="PALETTE COLOR", seed=seed, attrs=attrs, **identity)


def write_multiframe_mb(path: Path, megabytes: int = 90, *, rows: int = 512, cols: int = 512) -> Path:
    """A native 16-bit multi-frame instance of about ``megabytes`` MB (:func:`write_large_multiframe`)."""
    frames = max(1, -(-megabytes * 1_000_000 // (rows * cols * 2)))
    return write_large_multiframe(path, frames=frames, rows=rows, cols=cols)
