"""Parse one DICOM Part 10 file into an :class:`~gateway.ports.InstanceRecord`.

Blocking (the caller runs it in a worker thread); memory does not grow with the size of the
pixel data: values larger than ``ParseLimits.defer_size`` are never read, only located.

Two readers cooperate:

* a structural walk of the file (:mod:`gateway.dicom.layout`) that reads only element headers,
  proves every length fits, bounds sequence nesting and locates the pixel data and its fragments,
  from which :mod:`gateway.dicom.frames` computes each frame's byte spans;
* pydicom's ``dcmread(defer_size=...)`` for the attribute values and the DICOM JSON.

The Part 10 framing (preamble, File Meta Information, PS3.10 7.1) and the inflation of a Deflated
Explicit VR Little Endian data set (PS3.5 A.5) are in :mod:`gateway.dicom.part10`; the refusal
codes in :mod:`gateway.dicom.rejection`, re-exported here with the rest of the public API.

Frames of a deflated instance have no byte range in the stored object, which is compressed as a
whole: their ``frames`` is ``()`` and a frame is decoded from the whole object. The same holds for
video transfer syntaxes and for encapsulated data whose frame boundaries cannot be found.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

from gateway.dicom.dicomjson import DEFAULT_BULK_THRESHOLD, dataset_to_json, dumps, pydicom_warnings_suppressed
from gateway.dicom.frames import frame_spans
from gateway.dicom.layout import (
    DOUBLE_PIXEL_DATA,
    ENCAPSULATED_TOTAL_LENGTH,
    EXTENDED_LENGTHS,
    EXTENDED_OFFSETS,
    FLOAT_PIXEL_DATA,
    PIXEL_TAGS,
    Located,
    Walker,
    dictionary_vr,
)
from gateway.dicom.part10 import CHUNK, FileMeta, dataset_start, inflate, read_meta
from gateway.dicom.records import InstanceRecord, PixelDescription, Span
from gateway.dicom.rejection import FailureReason, InstanceRejected, malformed, reject
from gateway.dicom.textlimits import DEFAULT_MAX_TEXT_VALUE_BYTES, UNBOUNDED, oversized
from gateway.dicom.uids import is_valid_uid

__all__ = [
    "FAILURE_CANNOT_UNDERSTAND",
    "FAILURE_DATA_SET_DOES_NOT_MATCH_SOP_CLASS",
    "FAILURE_OUT_OF_RESOURCES",
    "FAILURE_SOP_CLASS_NOT_SUPPORTED",
    "FAILURE_TRANSFER_SYNTAX_NOT_SUPPORTED",
    "FailureReason",
    "InstanceRejected",
    "ParseLimits",
    "parse_part10",
]

log = logging.getLogger(__name__)


FAILURE_OUT_OF_RESOURCES = FailureReason.OUT_OF_RESOURCES
FAILURE_DATA_SET_DOES_NOT_MATCH_SOP_CLASS = FailureReason.DATA_SET_DOES_NOT_MATCH_SOP_CLASS
FAILURE_CANNOT_UNDERSTAND = FailureReason.CANNOT_UNDERSTAND
FAILURE_TRANSFER_SYNTAX_NOT_SUPPORTED = FailureReason.TRANSFER_SYNTAX_NOT_SUPPORTED
FAILURE_SOP_CLASS_NOT_SUPPORTED = FailureReason.SOP_CLASS_NOT_SUPPORTED


@dataclass(frozen=True)
class ParseLimits:
    """Bounds on what one instance may cost to parse."""

    max_sequence_depth: int = 32  # a sequence inside an item of a sequence is depth 2
    defer_size: int = 1 << 20  # values larger than this are located, never read
    bulk_threshold: int = DEFAULT_BULK_THRESHOLD  # binary values above this become BulkDataURIs
    max_frames: int = 1_000_000
    # Deflate (PS3.5 A.5): inflated size may reach max(ratio x compressed, floor), never above max.
    max_inflate_ratio: int = 64
    min_inflate_allowance: int = 64 << 20
    max_inflated_bytes: int = 1 << 30
    temp_dir: Path | None = None  # where a deflated data set is inflated (default: system temp)
    max_text_value_bytes: int = DEFAULT_MAX_TEXT_VALUE_BYTES  # UT, UC, UR (gateway.dicom.textlimits)

    def inflate_allowance(self, compressed: int) -> int:
        """How many bytes a deflated data set of ``compressed`` bytes may inflate to."""
        return min(max(self.max_inflate_ratio * compressed, self.min_inflate_allowance), self.max_inflated_bytes)


_DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"  # Media Storage Directory Storage (PS3.10 8.6)


# ---------------------------------------------------------------------------------------------
# Public entry point
# ---------------------------------------------------------------------------------------------


def parse_part10(path: Path, *, origin: str, limits: ParseLimits = ParseLimits()) -> InstanceRecord:
    """Validate and describe one Part 10 file. Raises :class:`InstanceRejected`.

    OSError from reading ``path`` itself (or writing the inflation temp file) propagates: that
    is a failure of this server, not of the instance.
    """
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        meta = read_meta(f, size)
    ts = meta.transfer_syntax
    try:
        if ts == DeflatedExplicitVRLittleEndian:
            with tempfile.TemporaryDirectory(dir=limits.temp_dir, prefix="dcm-inflate-") as tmp:
                inflated = Path(tmp) / "inflated.dcm"
                inflate(path, meta, inflated, limits.inflate_allowance(size - meta.dataset_start))
                record = _parse_dataset(inflated, meta, limits, origin, store_frames=False)
        else:
            record = _parse_dataset(path, meta, limits, origin, store_frames=True)
    except InstanceRejected as exc:
        exc.identify(meta.sop_class_uid, meta.sop_instance_uid)
        raise
    digest, hashed = _sha256(path)
    return InstanceRecord(
        study_uid=record.study_uid,
        series_uid=record.series_uid,
        sop_uid=record.sop_uid,
        sop_class_uid=record.sop_class_uid,
        transfer_syntax=ts,
        size=hashed,
        sha256=digest,
        origin=origin,
        metadata=record.metadata,
        frames=record.frames,
        pixel=record.pixel,
        stored_at=time.time(),
    )


def _sha256(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    total = 0
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
            total += n
    return h.hexdigest(), total


# ---------------------------------------------------------------------------------------------
# Data set
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Parsed:
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    metadata: bytes
    frames: tuple[tuple[Span, ...], ...]
    pixel: PixelDescription | None


def _parse_dataset(path: Path, meta: FileMeta, limits: ParseLimits, origin: str, *, store_frames: bool) -> _Parsed:
    ts = UID(meta.transfer_syntax)
    work_ts = UID("1.2.840.10008.1.2.1") if ts == DeflatedExplicitVRLittleEndian else ts
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        walker = Walker(f, size, limits.max_sequence_depth)
        start = dataset_start(f, size)
        found = walker.walk(start, work_ts.is_implicit_VR, work_ts.is_little_endian)

        ds: Dataset | None = None
        try:
            with pydicom_warnings_suppressed():
                ds = pydicom.dcmread(path, defer_size=limits.defer_size)
                uids = _identity(ds)
                _check_text(ds, limits)
                pixel_tag = next((t for t in PIXEL_TAGS if t in found), None)
                pixel = _pixel_description(ds, pixel_tag, found, limits) if pixel_tag else None
                frames: tuple[tuple[Span, ...], ...] = ()
                if pixel_tag is not None and pixel is not None:
                    _check_pixel_position(ds, pixel_tag, found[pixel_tag])
                    frames = frame_spans(walker, found, pixel_tag, pixel, ts)
                    if not store_frames:
                        frames = ()
                metadata = _metadata(ds, uids, meta.transfer_syntax, pixel_tag, found, limits)
        except InstanceRejected as exc:
            _identify(exc, ds)
            raise
        except RecursionError:
            rejected = reject(FailureReason.OUT_OF_RESOURCES, "sequences nested too deeply to process")
            _identify(rejected, ds)
            raise rejected from None
        except MemoryError:
            rejected = reject(FailureReason.OUT_OF_RESOURCES, "data set too large to process")
            _identify(rejected, ds)
            raise rejected from None
        except Exception as exc:
            # Everything after the walk is pydicom reading a structurally sound file: any error
            # is about the content. Name the error class only: messages may quote patient data.
            log.info("pydicom could not read an instance (origin %s): %s", origin, type(exc).__name__)
            rejected = reject(FailureReason.CANNOT_UNDERSTAND, f"data set cannot be parsed ({type(exc).__name__})")
            _identify(rejected, ds)
            raise rejected from None
    study, series, sop, sop_class = uids
    return _Parsed(study, series, sop, sop_class, metadata, frames, pixel)


def _check_text(ds: Dataset, limits: ParseLimits) -> None:
    """Refuse text values beyond their bounds (gateway.dicom.textlimits), naming the element:
    a value past a configured cap is Out of Resources, one far past its PS3.5 maximum an Error."""
    for found in oversized(ds, limits.max_text_value_bytes):
        code = (
            FailureReason.OUT_OF_RESOURCES if found.vr in UNBOUNDED else FailureReason.DATA_SET_DOES_NOT_MATCH_SOP_CLASS
        )
        raise reject(code, found.reason())


def _identify(exc: InstanceRejected, ds: Dataset | None) -> None:
    """Name the rejected instance by the UIDs of its data set, when they could be read."""
    if ds is None:
        return
    try:
        with pydicom_warnings_suppressed():
            exc.identify(_str_attr(ds, 0x00080016), _str_attr(ds, 0x00080018))
    except Exception:  # the UIDs themselves may be what is unreadable
        log.debug("rejected instance has unreadable SOP UIDs")


def _identity(ds: Dataset) -> tuple[str, str, str, str]:
    """Study, series, SOP instance and SOP class UIDs, checked (PS3.4 B.2.3, PS3.10 7.1)."""
    media_class = _str_attr(ds.file_meta, 0x00020002)
    if media_class == _DICOMDIR_SOP_CLASS:
        raise reject(FailureReason.SOP_CLASS_NOT_SUPPORTED, "a DICOMDIR is not a storable instance")
    values: list[str] = []
    for tag, name in (
        (0x0020000D, "StudyInstanceUID"),
        (0x0020000E, "SeriesInstanceUID"),
        (0x00080018, "SOPInstanceUID"),
        (0x00080016, "SOPClassUID"),
    ):
        value = _str_attr(ds, tag)
        if value is None:
            raise reject(FailureReason.DATA_SET_DOES_NOT_MATCH_SOP_CLASS, f"{name} is missing")
        if not is_valid_uid(value):
            raise reject(FailureReason.DATA_SET_DOES_NOT_MATCH_SOP_CLASS, f"{name} is not a valid UID (PS3.5 9.1)")
        values.append(value)
    study, series, sop, sop_class = values
    media_sop = _str_attr(ds.file_meta, 0x00020003)
    if media_sop is not None and media_sop != sop:
        raise reject(
            FailureReason.DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
            "MediaStorageSOPInstanceUID (0002,0003) differs from SOPInstanceUID (PS3.10 7.1)",
        )
    if media_class is not None and media_class != sop_class:
        raise reject(
            FailureReason.DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
            "MediaStorageSOPClassUID (0002,0002) differs from SOPClassUID (PS3.10 7.1)",
        )
    return study, series, sop, sop_class


def _str_attr(ds: Dataset, tag: int) -> str | None:
    """A string attribute; None when absent or empty. Several values come back joined by a
    backslash, as encoded, so that a UID check rejects them."""
    if tag not in ds:
        return None
    value = ds[tag].value
    if isinstance(value, MultiValue | list):
        value = "\\".join(str(v) for v in value)
    return value if isinstance(value, str) and value else None


def _int_attr(ds: Dataset, tag: int) -> int | None:
    """An integer attribute, tolerating IS spellings like " 5 " or "1.0"; None if absent/bad."""
    if tag not in ds:
        return None
    item: Any = ds.get_item(tag, keep_deferred=True)
    if isinstance(item, RawDataElement) and item.value is not None and dictionary_vr(tag) == "IS":
        # Read IS from its text: pydicom warns on, truncates or refuses the odd spellings.
        text = item.value.decode("latin-1").strip("\x00 ").split("\\")[0].strip()
        try:
            number = float(text)
        except ValueError:
            return None
        return int(number) if number.is_integer() else None
    try:
        value = ds[tag].value
        if isinstance(value, list | tuple | MultiValue):
            value = value[0] if len(value) else None
        return None if value is None or value == "" else int(value)
    except (ValueError, TypeError, OverflowError):
        return None


# ---------------------------------------------------------------------------------------------
# Pixel data (PS3.3 C.7.6.3, PS3.5 8 and A.4)
# ---------------------------------------------------------------------------------------------


def _pixel_description(ds: Dataset, pixel_tag: int, found: dict[int, Located], limits: ParseLimits) -> PixelDescription:
    rows = _int_attr(ds, 0x00280010)
    columns = _int_attr(ds, 0x00280011)
    bits_allocated = _int_attr(ds, 0x00280100)
    if not rows or not columns or not bits_allocated or rows < 0 or columns < 0 or bits_allocated < 0:
        raise reject(
            FailureReason.DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
            "Pixel Data without valid Rows, Columns and Bits Allocated (PS3.3 C.7.6.3)",
        )
    samples = _int_attr(ds, 0x00280002) or 1
    frames = _int_attr(ds, 0x00280008)
    number_of_frames = frames if frames and frames > 0 else 1  # PS3.3 C.7.6.6: absent means 1
    if number_of_frames > limits.max_frames:
        raise reject(
            FailureReason.OUT_OF_RESOURCES, f"more than {limits.max_frames} frames (NumberOfFrames {number_of_frames})"
        )
    photometric = _str_attr(ds, 0x00280004) or ""
    return PixelDescription(
        rows=rows,
        columns=columns,
        samples_per_pixel=samples,
        bits_allocated=bits_allocated,
        bits_stored=_int_attr(ds, 0x00280101) or bits_allocated,
        pixel_representation=_int_attr(ds, 0x00280103) or 0,
        photometric_interpretation=photometric.strip(),
        planar_configuration=_int_attr(ds, 0x00280006) or 0,
        number_of_frames=number_of_frames,
    )


def _check_pixel_position(ds: Dataset, pixel_tag: int, located: Located) -> None:
    """The walk and pydicom must agree on where the pixel data value starts."""
    item: Any = ds.get_item(pixel_tag, keep_deferred=True)
    if isinstance(item, RawDataElement) and item.value_tell != located.value_pos:
        raise malformed("pixel data position is ambiguous")


# ---------------------------------------------------------------------------------------------
# Metadata (PS3.18 F.2, 10.4.1.2)
# ---------------------------------------------------------------------------------------------


def _metadata(
    ds: Dataset,
    uids: tuple[str, str, str, str],
    transfer_syntax: str,
    pixel_tag: int | None,
    found: dict[int, Located],
    limits: ParseLimits,
) -> bytes:
    study, series, sop, _ = uids
    prefix = f"studies/{study}/series/{series}/instances/{sop}/bulkdata/"
    # The pixel data and the tables describing its stored encapsulation are not metadata: the
    # pixel data is answered by one BulkDataURI, the tables would be wrong after transcoding.
    for tag in (*PIXEL_TAGS, EXTENDED_OFFSETS, EXTENDED_LENGTHS, ENCAPSULATED_TOTAL_LENGTH):
        if tag in ds:
            del ds[tag]
    js = dataset_to_json(ds, prefix, limits.bulk_threshold)
    # PS3.18 excludes group 0002 from metadata; OHIF-compatible servers (dcm4chee) still give
    # the Transfer Syntax UID, which tells a client how frames requested "as stored" come back.
    js["00020010"] = {"vr": "UI", "Value": [transfer_syntax]}
    if pixel_tag is not None:
        key = f"{pixel_tag:08X}"
        js[key] = {"vr": _pixel_vr(pixel_tag, found[pixel_tag]), "BulkDataURI": f"{prefix}{key}"}
    return dumps(dict(sorted(js.items())))


def _pixel_vr(tag: int, located: Located) -> str:
    if tag == FLOAT_PIXEL_DATA:
        return "OF"
    if tag == DOUBLE_PIXEL_DATA:
        return "OD"
    if located.fragments is not None:
        return "OB"  # PS3.5 A.4: encapsulated Pixel Data is OB
    if located.vr in ("OB", "OW"):
        return located.vr
    return "OW"  # PS3.5 A.1: Pixel Data in implicit VR is OW
