"""Parse one DICOM Part 10 file into an :class:`~gateway.ports.InstanceRecord`.

Blocking (the caller runs it in a worker thread); memory does not grow with the size of the
pixel data: values larger than ``ParseLimits.defer_size`` are never read, only located.

Two readers cooperate:

* a structural walk of the file (this module) that reads only element *headers* and seeks over
  values. It proves that every declared length fits inside the file and its enclosing item
  (pydicom silently seeks past deferred values, so a truncated file would otherwise pass),
  bounds sequence nesting before pydicom recurses into it, and records where the pixel data
  and its fragments lie, which is what frame retrieval needs (one ranged read per frame);
* pydicom's ``dcmread(defer_size=...)`` for the attribute values and the DICOM JSON.

Frames of a Deflated Explicit VR Little Endian instance (PS3.5 A.5) have no byte range in the
stored object, which is compressed as a whole: their ``frames`` is ``()`` and a frame is decoded
from the whole object. The same holds for video transfer syntaxes (PS3.5 A.4: the stream is
not divided into frames) and for encapsulated data whose frame boundaries cannot be found.
"""

from __future__ import annotations

import enum
import hashlib
import itertools
import logging
import os
import struct
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pydicom
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, MPEGTransferSyntaxes

from gateway.dicom.dicomjson import DEFAULT_BULK_THRESHOLD, dataset_to_json, dumps, pydicom_warnings_suppressed
from gateway.dicom.uids import is_valid_uid
from gateway.ports import InstanceRecord, PixelDescription, Span

log = logging.getLogger(__name__)


class FailureReason(enum.IntEnum):
    """Store Instances Response FailureReason (0008,1197) values (PS3.18 10.5.3, PS3.4 B.2.3)."""

    OUT_OF_RESOURCES = 0xA700  # Refused: a configured limit of this server was exceeded
    DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xA900  # Error: required attributes missing or wrong
    CANNOT_UNDERSTAND = 0xC000  # Error: not Part 10, truncated, malformed
    TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC122  # Refused: Referenced Transfer Syntax not supported
    SOP_CLASS_NOT_SUPPORTED = 0x0122  # Refused: SOP Class not supported


FAILURE_OUT_OF_RESOURCES = FailureReason.OUT_OF_RESOURCES
FAILURE_DATA_SET_DOES_NOT_MATCH_SOP_CLASS = FailureReason.DATA_SET_DOES_NOT_MATCH_SOP_CLASS
FAILURE_CANNOT_UNDERSTAND = FailureReason.CANNOT_UNDERSTAND
FAILURE_TRANSFER_SYNTAX_NOT_SUPPORTED = FailureReason.TRANSFER_SYNTAX_NOT_SUPPORTED
FAILURE_SOP_CLASS_NOT_SUPPORTED = FailureReason.SOP_CLASS_NOT_SUPPORTED


class InstanceRejected(Exception):
    """The file cannot be stored; ``reason`` is safe to show (no patient data, no trace).

    ``sop_class_uid`` / ``sop_instance_uid`` are the instance's UIDs when they could be read and
    are valid (from the data set, else the File Meta Information), for the Referenced SOP
    Class/Instance UID of the STOW response's Failed SOP Sequence (PS3.18 10.5.3); else None.
    """

    def __init__(
        self, failure_code: int, reason: str, *, sop_class_uid: str | None = None, sop_instance_uid: str | None = None
    ) -> None:
        super().__init__(int(failure_code), reason)  # both in args: survives pickling
        self.failure_code = int(failure_code)
        self.reason = reason
        self.sop_class_uid = sop_class_uid
        self.sop_instance_uid = sop_instance_uid

    def identify(self, sop_class_uid: str | None, sop_instance_uid: str | None) -> None:
        """Fill in whichever UID is still unknown, with valid UIDs only."""
        if self.sop_class_uid is None and sop_class_uid and is_valid_uid(sop_class_uid):
            self.sop_class_uid = sop_class_uid
        if self.sop_instance_uid is None and sop_instance_uid and is_valid_uid(sop_instance_uid):
            self.sop_instance_uid = sop_instance_uid

    def __str__(self) -> str:
        return self.reason


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


_CHUNK = 1 << 20
_PREAMBLE = 128
_ITEM = 0xFFFEE000
_ITEM_DELIM = 0xFFFEE00D
_SEQ_DELIM = 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_PIXEL_DATA = 0x7FE00010
_FLOAT_PIXEL_DATA = 0x7FE00008
_DOUBLE_PIXEL_DATA = 0x7FE00009
_EXTENDED_OFFSETS = 0x7FE00001
_EXTENDED_LENGTHS = 0x7FE00002
_ENCAPSULATED_TOTAL_LENGTH = 0x7FE00003
_PIXEL_TAGS = (_PIXEL_DATA, _FLOAT_PIXEL_DATA, _DOUBLE_PIXEL_DATA)
_TOP_LEVEL_OF_INTEREST = frozenset({*_PIXEL_TAGS, _EXTENDED_OFFSETS, _EXTENDED_LENGTHS})
# PS3.5 7.1.2: VRs with a 2-byte reserved field and a 4-byte length in explicit VR.
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_SHORT_VRS = frozenset(
    {
        b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO", b"LT",
        b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US",
    }
)  # fmt: skip
_DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"  # Media Storage Directory Storage (PS3.10 8.6)
_VIDEO_SYNTAXES = frozenset(str(u) for u in MPEGTransferSyntaxes)
_META_TS = 0x00020010
_META_GROUP_LENGTH = 0x00020000


def _reject(code: FailureReason, reason: str, **uids: str | None) -> InstanceRejected:
    return InstanceRejected(code, reason, **uids)


def _truncated(what: str) -> InstanceRejected:
    return _reject(FailureReason.CANNOT_UNDERSTAND, f"truncated: {what} extends past the end of the file")


def _malformed(what: str) -> InstanceRejected:
    return _reject(FailureReason.CANNOT_UNDERSTAND, f"malformed data set: {what}")


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
        meta = _read_meta(f, size)
    ts = meta.transfer_syntax
    try:
        if ts == DeflatedExplicitVRLittleEndian:
            with tempfile.TemporaryDirectory(dir=limits.temp_dir, prefix="dcm-inflate-") as tmp:
                inflated = Path(tmp) / "inflated.dcm"
                _inflate(path, meta, inflated, limits)
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
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    total = 0
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
            total += n
    return h.hexdigest(), total


# ---------------------------------------------------------------------------------------------
# File Meta Information (PS3.10 7.1)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Meta:
    transfer_syntax: str
    dataset_start: int
    # (tag, raw element bytes) in file order, kept to rebuild the header of an inflated copy
    elements: tuple[tuple[int, bytes], ...]
    sop_class_uid: str | None  # Media Storage SOP Class / Instance UID, to name a rejected file
    sop_instance_uid: str | None


def _read_meta(f: IO[bytes], size: int) -> _Meta:
    head = f.read(_PREAMBLE + 4)
    if len(head) < _PREAMBLE + 4 or head[_PREAMBLE:] != b"DICM":
        raise _reject(FailureReason.CANNOT_UNDERSTAND, "not a DICOM Part 10 file (no preamble and DICM prefix)")
    pos = _PREAMBLE + 4
    elements: list[tuple[int, bytes]] = []
    ts: str | None = None
    # PS3.10 7.1: group 0002 is always Explicit VR Little Endian.
    while pos + 8 <= size:
        f.seek(pos)
        hdr = f.read(8)
        group, elem = struct.unpack("<HH", hdr[:4])
        if group != 0x0002:
            break
        vr = hdr[4:6]
        if vr in _LONG_VRS:
            more = f.read(4)
            if len(more) < 4:
                raise _truncated("the File Meta Information")
            (length,) = struct.unpack("<L", more)
            header = 12
        elif vr in _SHORT_VRS:
            (length,) = struct.unpack("<H", hdr[6:8])
            header = 8
        else:
            raise _reject(FailureReason.CANNOT_UNDERSTAND, "not a DICOM Part 10 file (malformed File Meta Information)")
        if length == _UNDEFINED or pos + header + length > size:
            raise _truncated("the File Meta Information")
        if length > 1 << 16:
            raise _reject(FailureReason.CANNOT_UNDERSTAND, "not a DICOM Part 10 file (File Meta element too long)")
        f.seek(pos)
        raw = f.read(header + length)
        tag = group << 16 | elem
        if tag == _META_TS:
            ts = raw[header:].decode("ascii", "replace").rstrip("\x00 ")
        elements.append((tag, raw))
        pos += header + length
    if not elements:
        raise _reject(FailureReason.CANNOT_UNDERSTAND, "not a DICOM Part 10 file (no File Meta Information)")
    if not ts:
        raise _reject(FailureReason.CANNOT_UNDERSTAND, "not a DICOM Part 10 file (no Transfer Syntax UID)")
    sop_class, sop_instance = _meta_uid(elements, 0x00020002), _meta_uid(elements, 0x00020003)
    if not UID(ts).is_transfer_syntax:
        shown = ts if is_valid_uid(ts) else "(invalid UID)"
        raise _reject(
            FailureReason.TRANSFER_SYNTAX_NOT_SUPPORTED,
            f"transfer syntax {shown} is not supported",
            sop_class_uid=sop_class,
            sop_instance_uid=sop_instance,
        )
    return _Meta(ts, pos, tuple(elements), sop_class, sop_instance)


def _meta_uid(elements: list[tuple[int, bytes]], tag: int) -> str | None:
    for t, raw in elements:
        if t == tag:
            value = raw[8:].decode("ascii", "replace").rstrip("\x00 ")  # UI: 8-byte header
            return value if is_valid_uid(value) else None
    return None


# ---------------------------------------------------------------------------------------------
# Deflate (PS3.5 A.5)
# ---------------------------------------------------------------------------------------------


def _inflate(src: Path, meta: _Meta, dst: Path, limits: ParseLimits) -> None:
    """Write an Explicit VR Little Endian copy of ``src`` to ``dst``, inflating in bounded steps.

    pydicom would inflate the whole data set in memory; here at most one chunk of output exists
    at a time and a data set that inflates beyond the allowance is refused before it is.
    """
    compressed = os.path.getsize(src) - meta.dataset_start
    allowance = min(max(limits.max_inflate_ratio * compressed, limits.min_inflate_allowance), limits.max_inflated_bytes)
    ts_value = b"1.2.840.10008.1.2.1\x00"  # Explicit VR Little Endian, padded to even length
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)  # PS3.5 A.5: raw deflate (RFC 1951), no zlib header
    total = 0
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        fout.write(b"\x00" * _PREAMBLE + b"DICM")
        for tag, raw in meta.elements:
            if tag == _META_GROUP_LENGTH:
                continue  # no longer true once the transfer syntax changes; optional for pydicom
            if tag == _META_TS:
                raw = struct.pack("<HH2sH", 0x0002, 0x0010, b"UI", len(ts_value)) + ts_value
            fout.write(raw)
        fin.seek(meta.dataset_start)
        try:
            while not inflater.eof and (chunk := fin.read(_CHUNK)):
                data = chunk
                while data and not inflater.eof:
                    out = inflater.decompress(data, _CHUNK)
                    total += len(out)
                    if total > allowance:
                        raise _reject(
                            FailureReason.OUT_OF_RESOURCES,
                            f"deflated data set inflates beyond the limit of {allowance} bytes",
                        )
                    fout.write(out)
                    data = inflater.unconsumed_tail
            tail = inflater.flush()
        except zlib.error:
            raise _reject(FailureReason.CANNOT_UNDERSTAND, "deflated data set is corrupt") from None
        if total + len(tail) > allowance:
            raise _reject(FailureReason.OUT_OF_RESOURCES, f"deflated data set inflates beyond {allowance} bytes")
        fout.write(tail)
        if not inflater.eof:
            raise _truncated("the deflated data set")


# ---------------------------------------------------------------------------------------------
# Structural walk
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Located:
    """A top-level element found by the walk: where its value lies, never the value itself."""

    value_pos: int
    length: int  # _UNDEFINED for encapsulated data
    vr: str | None  # None when implicit
    fragments: tuple[Span, ...] | None = None  # item values of encapsulated data, BOT first


@dataclass
class _Container:
    kind: str  # "dataset", "sequence" or "item"
    end: int | None  # None for undefined length
    implicit: bool
    little: bool


def _valid_vr_bytes(b: bytes) -> bool:
    # The same test pydicom applies (filereader._is_implicit_vr): two upper-case letters.
    return len(b) == 2 and 0x40 < b[0] < 0x5B and 0x40 < b[1] < 0x5B


class _Walker:
    def __init__(self, f: IO[bytes], size: int, limits: ParseLimits) -> None:
        self.f = f
        self.size = size
        self.limits = limits

    def read(self, pos: int, n: int) -> bytes:
        self.f.seek(pos)
        return self.f.read(n)

    def walk(self, start: int, implicit: bool, little: bool) -> dict[int, _Located]:
        """Check the data set from ``start`` to the end of file; locate top-level pixel data."""
        probe = self.read(start, 6)
        if len(probe) == 6:
            # pydicom follows the encoding it finds rather than the one declared; so do we.
            implicit = not _valid_vr_bytes(probe[4:6])
        stack = [_Container("dataset", self.size, implicit, little)]
        depth = 0
        found: dict[int, _Located] = {}
        pos = start
        while stack:
            c = stack[-1]
            if c.end is not None and pos >= c.end:
                if pos > c.end:
                    raise _malformed("an element overruns its sequence item")
                stack.pop()
                depth -= c.kind == "sequence"
                continue
            if c.kind == "sequence":
                tag, length = self._item_header(pos, c.little)
                if tag == _ITEM:
                    end = None if length == _UNDEFINED else self._bounded(pos + 8 + length, stack, "a sequence item")
                    implicit = c.implicit or self._item_is_implicit(pos + 8, c.little, end)
                    stack.append(_Container("item", end, implicit, c.little))
                elif tag == _SEQ_DELIM and c.end is None:
                    stack.pop()
                    depth -= 1
                else:
                    raise _malformed("a sequence holds something other than items")
                pos += 8
                continue
            tag, vr, length, header, elem_implicit = self._element_header(pos, c)
            if tag == _ITEM_DELIM:
                if c.kind == "item" and c.end is None:
                    stack.pop()
                    pos += 8
                    continue
                raise _malformed("unexpected item delimiter")
            if tag in (_ITEM, _SEQ_DELIM):
                raise _malformed("item outside a sequence")
            value_pos = pos + header
            top = len(stack) == 1
            if length == _UNDEFINED:
                contents_implicit = self._undefined_sequence(tag, vr, value_pos, c.little, elem_implicit)
                if contents_implicit is not None:
                    depth += 1
                    self._check_depth(depth)
                    # PS3.5 6.2.2: the content of an undefined-length UN is implicit VR little endian.
                    little_inside = True if vr == "UN" else c.little
                    stack.append(_Container("sequence", None, contents_implicit, little_inside))
                    pos = value_pos
                else:
                    fragments, pos = self._fragments(value_pos, c.little, stack)
                    if top and tag in _TOP_LEVEL_OF_INTEREST:
                        found[tag] = _Located(value_pos, _UNDEFINED, vr, fragments)
                continue
            end = self._bounded(value_pos + length, stack, "an element value")
            if length and (vr == "SQ" or (vr is None and _dictionary_vr(tag) == "SQ")):
                depth += 1
                self._check_depth(depth)
                stack.append(_Container("sequence", end, elem_implicit, c.little))
                pos = value_pos
                continue
            if top and tag in _TOP_LEVEL_OF_INTEREST:
                found[tag] = _Located(value_pos, length, vr)
            pos = end
        return found

    def _check_depth(self, depth: int) -> None:
        if depth > self.limits.max_sequence_depth:
            raise _reject(
                FailureReason.OUT_OF_RESOURCES,
                f"sequences nested deeper than the limit of {self.limits.max_sequence_depth} levels",
            )

    def _bounded(self, end: int, stack: list[_Container], what: str) -> int:
        if end > self.size:
            raise _truncated(what)
        for c in reversed(stack):
            if c.end is not None:
                if end > c.end:
                    raise _malformed(f"{what} overruns its sequence item")
                break
        return end

    def _item_header(self, pos: int, little: bool) -> tuple[int, int]:
        b = self.read(pos, 8)
        if len(b) < 8:
            raise _truncated("a sequence")
        group, elem, length = struct.unpack("<HHL" if little else ">HHL", b)
        return group << 16 | elem, length

    def _item_is_implicit(self, pos: int, little: bool, end: int | None) -> bool:
        # pydicom (filereader._is_implicit_vr, PS3.5 6.2.2 and real-world writers) accepts items
        # in implicit VR inside an explicit VR data set; it decides on the item's first element.
        if end is not None and end - pos < 6:
            return False
        b = self.read(pos, 6)
        if len(b) < 6:
            return False
        group, elem = struct.unpack("<HH" if little else ">HH", b[:4])
        if group << 16 | elem == _ITEM_DELIM:
            return False
        return not _valid_vr_bytes(b[4:6])

    def _element_header(self, pos: int, c: _Container) -> tuple[int, str | None, int, int, bool]:
        """(tag, vr or None, length, header length, implicit) of the element at ``pos``."""
        b = self.read(pos, 8)
        if len(b) < 8:
            raise _truncated("an element header")
        e = "<" if c.little else ">"
        group, elem = struct.unpack(e + "HH", b[:4])
        tag = group << 16 | elem
        vrb = b[4:6]
        if c.implicit or group == 0xFFFE or not _valid_vr_bytes(vrb):
            # Items and delimiters have no VR; an element without a valid VR is read as
            # implicit, as pydicom does (config.assume_implicit_vr_switch).
            (length,) = struct.unpack(e + "L", b[4:8])
            return tag, None, length, 8, True
        vr = vrb.decode("ascii")
        if vrb in _LONG_VRS:
            more = self.read(pos + 8, 4)
            if len(more) < 4:
                raise _truncated("an element header")
            (length,) = struct.unpack(e + "L", more)
            return tag, vr, length, 12, False
        # Known short VRs and, as pydicom assumes, unknown ones: 2-byte length.
        (length,) = struct.unpack(e + "H", b[6:8])
        return tag, vr, length, 8, False

    def _undefined_sequence(
        self, tag: int, vr: str | None, value_pos: int, little: bool, implicit: bool
    ) -> bool | None:
        """For an undefined-length element: None if it is not a sequence, else whether its
        items are implicit VR."""
        if tag in _PIXEL_TAGS and vr != "SQ":
            return None
        if vr == "SQ":
            return implicit
        if vr == "UN":
            return True  # PS3.5 6.2.2: undefined-length UN is a sequence in implicit VR LE
        if vr is None:
            dict_vr = _dictionary_vr(tag)
            if dict_vr == "SQ":
                return True
            if dict_vr is None:
                # Unknown (private) tag: a sequence when its first item follows (pydicom does so).
                head = self.read(value_pos, 4)
                if len(head) == 4 and struct.unpack("<HH" if little else ">HH", head) == (0xFFFE, 0xE000):
                    return True
        return None

    def _fragments(self, pos: int, little: bool, stack: list[_Container]) -> tuple[tuple[Span, ...], int]:
        """Walk the items of encapsulated data (PS3.5 A.4) by their headers only."""
        fmt = "<HHL" if little else ">HHL"
        spans: list[Span] = []
        while True:
            b = self.read(pos, 8)
            if len(b) < 8:
                raise _truncated("encapsulated pixel data (no sequence delimiter)")
            group, elem, length = struct.unpack(fmt, b)
            tag = group << 16 | elem
            if tag == _SEQ_DELIM:
                return tuple(spans), pos + 8
            if tag != _ITEM or length == _UNDEFINED:
                raise _malformed("encapsulated pixel data holds something other than fragments")
            end = self._bounded(pos + 8 + length, stack, "a pixel data fragment")
            spans.append((pos + 8, length))
            pos = end


def _dictionary_vr(tag: int) -> str | None:
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return None


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


def _parse_dataset(path: Path, meta: _Meta, limits: ParseLimits, origin: str, *, store_frames: bool) -> _Parsed:
    ts = UID(meta.transfer_syntax)
    work_ts = UID("1.2.840.10008.1.2.1") if ts == DeflatedExplicitVRLittleEndian else ts
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        walker = _Walker(f, size, limits)
        start = _dataset_start(f, size)
        found = walker.walk(start, work_ts.is_implicit_VR, work_ts.is_little_endian)

        ds: Dataset | None = None
        try:
            with pydicom_warnings_suppressed():
                ds = pydicom.dcmread(path, defer_size=limits.defer_size)
                uids = _identity(ds)
                pixel_tag = next((t for t in _PIXEL_TAGS if t in found), None)
                pixel = _pixel_description(ds, pixel_tag, found, limits) if pixel_tag else None
                frames: tuple[tuple[Span, ...], ...] = ()
                if pixel_tag is not None and pixel is not None:
                    _check_pixel_position(ds, pixel_tag, found[pixel_tag])
                    frames = _frames(walker, found, pixel_tag, pixel, ts, limits)
                    if not store_frames:
                        frames = ()
                metadata = _metadata(ds, uids, meta.transfer_syntax, pixel_tag, found, limits)
        except InstanceRejected as exc:
            _identify(exc, ds)
            raise
        except RecursionError:
            rejected = _reject(FailureReason.OUT_OF_RESOURCES, "sequences nested too deeply to process")
            _identify(rejected, ds)
            raise rejected from None
        except MemoryError:
            rejected = _reject(FailureReason.OUT_OF_RESOURCES, "data set too large to process")
            _identify(rejected, ds)
            raise rejected from None
        except Exception as exc:
            # Everything after the walk is pydicom reading a structurally sound file: any error
            # is about the content. Name the error class only: messages may quote patient data.
            log.info("pydicom could not read an instance (origin %s): %s", origin, type(exc).__name__)
            rejected = _reject(FailureReason.CANNOT_UNDERSTAND, f"data set cannot be parsed ({type(exc).__name__})")
            _identify(rejected, ds)
            raise rejected from None
    study, series, sop, sop_class = uids
    return _Parsed(study, series, sop, sop_class, metadata, frames, pixel)


def _identify(exc: InstanceRejected, ds: Dataset | None) -> None:
    """Name the rejected instance by the UIDs of its data set, when they could be read."""
    if ds is None:
        return
    try:
        with pydicom_warnings_suppressed():
            exc.identify(_str_attr(ds, 0x00080016), _str_attr(ds, 0x00080018))
    except Exception:  # the UIDs themselves may be what is unreadable
        log.debug("rejected instance has unreadable SOP UIDs")


def _dataset_start(f: IO[bytes], size: int) -> int:
    """Offset of the first element after group 0002 (re-read: the file may be the inflated copy)."""
    pos = _PREAMBLE + 4
    while pos + 8 <= size:
        f.seek(pos)
        hdr = f.read(8)
        if struct.unpack("<H", hdr[:2])[0] != 0x0002:
            break
        if hdr[4:6] in _LONG_VRS:
            (length,) = struct.unpack("<L", f.read(4))
            pos += 12 + length
        else:
            pos += 8 + struct.unpack("<H", hdr[6:8])[0]
    return pos


def _identity(ds: Dataset) -> tuple[str, str, str, str]:
    """Study, series, SOP instance and SOP class UIDs, checked (PS3.4 B.2.3, PS3.10 7.1)."""
    media_class = _str_attr(ds.file_meta, 0x00020002)
    if media_class == _DICOMDIR_SOP_CLASS:
        raise _reject(FailureReason.SOP_CLASS_NOT_SUPPORTED, "a DICOMDIR is not a storable instance")
    values: list[str] = []
    for tag, name in (
        (0x0020000D, "StudyInstanceUID"),
        (0x0020000E, "SeriesInstanceUID"),
        (0x00080018, "SOPInstanceUID"),
        (0x00080016, "SOPClassUID"),
    ):
        value = _str_attr(ds, tag)
        if value is None:
            raise _reject(FailureReason.DATA_SET_DOES_NOT_MATCH_SOP_CLASS, f"{name} is missing")
        if not is_valid_uid(value):
            raise _reject(FailureReason.DATA_SET_DOES_NOT_MATCH_SOP_CLASS, f"{name} is not a valid UID (PS3.5 9.1)")
        values.append(value)
    study, series, sop, sop_class = values
    media_sop = _str_attr(ds.file_meta, 0x00020003)
    if media_sop is not None and media_sop != sop:
        raise _reject(
            FailureReason.DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
            "MediaStorageSOPInstanceUID (0002,0003) differs from SOPInstanceUID (PS3.10 7.1)",
        )
    if media_class is not None and media_class != sop_class:
        raise _reject(
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
    if isinstance(item, RawDataElement) and item.value is not None and _dictionary_vr(tag) == "IS":
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


def _pixel_description(
    ds: Dataset, pixel_tag: int, found: dict[int, _Located], limits: ParseLimits
) -> PixelDescription:
    rows = _int_attr(ds, 0x00280010)
    columns = _int_attr(ds, 0x00280011)
    bits_allocated = _int_attr(ds, 0x00280100)
    if not rows or not columns or not bits_allocated or rows < 0 or columns < 0 or bits_allocated < 0:
        raise _reject(
            FailureReason.DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
            "Pixel Data without valid Rows, Columns and Bits Allocated (PS3.3 C.7.6.3)",
        )
    samples = _int_attr(ds, 0x00280002) or 1
    frames = _int_attr(ds, 0x00280008)
    number_of_frames = frames if frames and frames > 0 else 1  # PS3.3 C.7.6.6: absent means 1
    if number_of_frames > limits.max_frames:
        raise _reject(
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


def _check_pixel_position(ds: Dataset, pixel_tag: int, located: _Located) -> None:
    """The walk and pydicom must agree on where the pixel data value starts."""
    item: Any = ds.get_item(pixel_tag, keep_deferred=True)
    if isinstance(item, RawDataElement) and item.value_tell != located.value_pos:
        raise _malformed("pixel data position is ambiguous")


def _frames(
    walker: _Walker,
    found: dict[int, _Located],
    pixel_tag: int,
    pixel: PixelDescription,
    ts: UID,
    limits: ParseLimits,
) -> tuple[tuple[Span, ...], ...]:
    located = found[pixel_tag]
    encapsulated = located.fragments is not None
    if ts.is_encapsulated and pixel_tag == _PIXEL_DATA and not encapsulated:
        raise _malformed(f"native Pixel Data in the compressed transfer syntax {ts}")
    if encapsulated and not ts.is_encapsulated:
        raise _malformed(f"encapsulated Pixel Data in the native transfer syntax {ts}")
    if not encapsulated:
        return _native_frames(located, pixel)
    assert located.fragments is not None
    if not located.fragments:
        raise _malformed("encapsulated Pixel Data without a Basic Offset Table item (PS3.5 A.4)")
    if len(located.fragments) == 1:
        raise _malformed("encapsulated Pixel Data without fragments (PS3.5 A.4)")
    if str(ts) in _VIDEO_SYNTAXES:
        return ()
    frames = _encapsulated_frames(walker, found, located.fragments, pixel.number_of_frames)
    if frames is None:
        log.warning("frame boundaries of encapsulated pixel data not found; frames served from the whole object")
        return ()
    return frames


def _native_frames(located: _Located, pixel: PixelDescription) -> tuple[tuple[Span, ...], ...]:
    samples = pixel.samples_per_pixel
    if pixel.photometric_interpretation == "YBR_FULL_422":
        samples = 2  # PS3.3 C.7.6.3.1.2: Cb and Cr at half the horizontal rate, 2 samples/pixel
    frame_bits = pixel.rows * pixel.columns * samples * pixel.bits_allocated
    n = pixel.number_of_frames
    needed = (n * frame_bits + 7) // 8
    if located.length < needed:
        raise _reject(
            FailureReason.DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
            f"Pixel Data holds {located.length} bytes, fewer than the {needed} its description needs",
        )
    base = located.value_pos
    if frame_bits % 8 == 0:
        size = frame_bits // 8
        return tuple(((base + i * size, size),) for i in range(n))
    # PS3.5 8.1.1: with Bits Allocated 1, frames are packed back to back without byte alignment;
    # a frame's span covers every byte holding one of its bits (the first bit of frame i is bit
    # (i * rows * columns * samples) % 8 of the span's first byte, least significant first).
    spans = []
    for i in range(n):
        first, last = i * frame_bits, (i + 1) * frame_bits
        spans.append(((base + first // 8, (last + 7) // 8 - first // 8),))
    return tuple(spans)


def _encapsulated_frames(
    walker: _Walker, found: dict[int, _Located], fragments: tuple[Span, ...], n_frames: int
) -> tuple[tuple[Span, ...], ...] | None:
    bot, frags = fragments[0], fragments[1:]
    first_item = frags[0][0] - 8
    # Item start (relative to the first fragment's item tag) -> fragment index; the offset
    # tables count from there (PS3.5 A.4 and PS3.3 C.7.6.3.1.8).
    index_of = {value_pos - 8 - first_item: i for i, (value_pos, _) in enumerate(frags)}

    eot = found.get(_EXTENDED_OFFSETS)
    eot_lengths = found.get(_EXTENDED_LENGTHS)
    if eot is not None and eot_lengths is not None and eot.length == eot_lengths.length == 8 * n_frames:
        offsets = struct.unpack(f"<{n_frames}Q", walker.read(eot.value_pos, eot.length))
        lengths = struct.unpack(f"<{n_frames}Q", walker.read(eot_lengths.value_pos, eot_lengths.length))
        result: list[tuple[Span, ...]] = []
        for offset, length in zip(offsets, lengths, strict=True):
            i = index_of.get(offset)
            if i is None or length > frags[i][1]:
                break
            result.append(((frags[i][0], length),))
        else:
            return tuple(result)

    if bot[1] == 4 * n_frames and n_frames > 0:
        offsets = struct.unpack(f"<{n_frames}L", walker.read(bot[0], bot[1]))
        starts = [index_of.get(o) for o in offsets]
        if starts[0] == 0 and all(s is not None for s in starts):
            bounds = [s for s in starts if s is not None] + [len(frags)]
            if all(a < b for a, b in itertools.pairwise(bounds)):
                return tuple(tuple(frags[a:b]) for a, b in itertools.pairwise(bounds))

    if len(frags) == n_frames:
        return tuple((frag,) for frag in frags)
    if n_frames == 1:
        return (tuple(frags),)
    if len(frags) < n_frames:
        return None
    # No usable offset table: a frame ends with the fragment that ends with the JPEG EOI (or
    # JPEG 2000 EOC) marker FFD9, allowing for the single pad byte of an odd-length codestream
    # (PS3.5 A.4). Only each fragment's last bytes are read.
    frames: list[tuple[Span, ...]] = []
    current: list[Span] = []
    for value_pos, length in frags:
        current.append((value_pos, length))
        tail = walker.read(value_pos + max(length - 3, 0), min(length, 3))
        if tail.endswith(b"\xff\xd9") or tail[-3:-1] == b"\xff\xd9":
            frames.append(tuple(current))
            current = []
    if current or len(frames) != n_frames:
        return None
    return tuple(frames)


# ---------------------------------------------------------------------------------------------
# Metadata (PS3.18 F.2, 10.4.1.2)
# ---------------------------------------------------------------------------------------------


def _metadata(
    ds: Dataset,
    uids: tuple[str, str, str, str],
    transfer_syntax: str,
    pixel_tag: int | None,
    found: dict[int, _Located],
    limits: ParseLimits,
) -> bytes:
    study, series, sop, _ = uids
    prefix = f"studies/{study}/series/{series}/instances/{sop}/bulkdata/"
    # The pixel data and the tables describing its stored encapsulation are not metadata: the
    # pixel data is answered by one BulkDataURI, the tables would be wrong after transcoding.
    for tag in (*_PIXEL_TAGS, _EXTENDED_OFFSETS, _EXTENDED_LENGTHS, _ENCAPSULATED_TOTAL_LENGTH):
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


def _pixel_vr(tag: int, located: _Located) -> str:
    if tag == _FLOAT_PIXEL_DATA:
        return "OF"
    if tag == _DOUBLE_PIXEL_DATA:
        return "OD"
    if located.fragments is not None:
        return "OB"  # PS3.5 A.4: encapsulated Pixel Data is OB
    if located.vr in ("OB", "OW"):
        return located.vr
    return "OW"  # PS3.5 A.1: Pixel Data in implicit VR is OW
