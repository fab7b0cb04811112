"""A Part 10 instance de-identified by :class:`~gateway.dicom.deidentify.Deidentifier`: the
data set rewritten, the File Meta Information following its new SOP Instance UID (PS3.10 7.1),
the transfer syntax and the Pixel Data bytes as they were (the profile does not touch pixels).

The rewrite walks the encoded elements (PS3.5 7.1, 7.5, A.4) rather than parsing the whole
instance: an element the profile keeps is copied as it was encoded, Pixel Data and other bulk
values included, and only the elements it changes are decoded and encoded again, by pydicom
(so their values are those a full parse would give). Sequences are walked item by item, since
the profile applies within them. An encoding the walk does not take on (big endian, deflated,
an undefined-length UN, implicit VR items inside an explicit VR data set, no File Meta
Information) is rewritten through a full pydicom parse instead; both ways give the same data set.
"""

from __future__ import annotations

import functools
import io
import struct

import pydicom
from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element, write_dataset
from pydicom.tag import BaseTag
from pydicom.uid import UID

from gateway.dicom.deidentify import Deidentifier, ProfileOptions
from gateway.dicom.layout import (
    ITEM,
    ITEM_DELIM,
    LONG_VRS,
    PIXEL_TAGS,
    SEQ_DELIM,
    UNDEFINED,
    dictionary_vr,
    valid_vr_bytes,
)
from gateway.dicom.part10 import read_meta
from gateway.dicom.rejection import InstanceRejected

_PREAMBLE_AND_PREFIX = 132
_GROUP_LENGTH = 0x00020000
_MEDIA_SOP_INSTANCE = 0x00020003
_SOURCE_AE_TITLE = 0x00020016
# What pydicom's enforce_file_format would add when missing (PS3.10 7.1): left to the full parse.
_REQUIRED_META = frozenset({0x00020001, 0x00020002, 0x00020003, 0x00020010, 0x00020012})
_SPECIFIC_CHARACTER_SET = 0x00080005
_SOP_INSTANCE_UID = 0x00080018
_UNPACK_TAG = struct.Struct("<HH").unpack_from
_UNPACK_TAG_LENGTH = struct.Struct("<HHL").unpack_from
_UNPACK_UL = struct.Struct("<L").unpack_from
_UNPACK_US = struct.Struct("<H").unpack_from
# Sequences and items are written with undefined length, as pydicom writes them (PS3.5 7.5.2).
_ITEM_START = struct.pack("<HHL", 0xFFFE, 0xE000, UNDEFINED)
_ITEM_END = struct.pack("<HHL", 0xFFFE, 0xE00D, 0)
_SEQUENCE_END = struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)


class _Unusual(Exception):
    """An encoding the walk leaves to the full parse."""


def deidentified_part10(data: bytes, deidentifier: Deidentifier) -> bytes:
    """``data`` (a whole Part 10 file) de-identified, as a Part 10 file in the same syntax."""
    walked = walked_part10(data, deidentifier)
    return walked if walked is not None else parsed_part10(data, deidentifier)


def walked_part10(data: bytes, deidentifier: Deidentifier) -> bytes | None:
    """:func:`deidentified_part10` by the walk over the encoded elements; None for an encoding
    it leaves to :func:`parsed_part10`."""
    try:
        return _Rewrite(data, deidentifier).part10()
    except (_Unusual, InstanceRejected, struct.error):
        return None


def parsed_part10(data: bytes, deidentifier: Deidentifier) -> bytes:
    """:func:`deidentified_part10` through a full pydicom parse of the instance."""
    ds = pydicom.dcmread(io.BytesIO(data), force=True)
    original_sop = ds.get("SOPInstanceUID")
    deidentifier.dataset(ds)
    meta = ds.file_meta
    if original_sop is not None:
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    elif "MediaStorageSOPInstanceUID" in meta:
        meta.MediaStorageSOPInstanceUID = UID(deidentifier.uid(meta.MediaStorageSOPInstanceUID))
    # Who wrote this file now: the gateway's rewrite, not the original's implementation.
    meta.pop(0x00020016, None)  # Source Application Entity Title names the sending site
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


class _Rewrite:
    """One instance's walk: ``out`` collects the encoded pieces of the de-identified data set."""

    def __init__(self, data: bytes, deidentifier: Deidentifier) -> None:
        self.data = data
        self.view = memoryview(data)  # kept elements are sliced from it: no copy until the join
        self.profile = deidentifier
        self.out: list[bytes | memoryview] = []
        self.sop_instance_uid: str | None = None

    def part10(self) -> bytes:
        data = self.data
        meta = read_meta(io.BytesIO(data), len(data))
        if not {tag for tag, _ in meta.elements} >= _REQUIRED_META:
            raise _Unusual
        syntax = UID(meta.transfer_syntax)
        if syntax.is_deflated or not syntax.is_little_endian:
            raise _Unusual
        implicit = syntax.is_implicit_VR
        start = meta.dataset_start
        if len(data) >= start + 6 and implicit == valid_vr_bytes(data[start + 4 : start + 6]):
            raise _Unusual  # pydicom follows the encoding it finds, not the one declared
        self._items(start, len(data), implicit, None, top=True)
        return b"".join([*self._file_meta(meta.elements), *self.out])

    def _file_meta(self, elements: tuple[tuple[int, bytes], ...]) -> list[bytes]:
        kept = []
        for tag, raw in elements:
            if tag in (_GROUP_LENGTH, _SOURCE_AE_TITLE):
                # Source AE Title names the sending site; the group length is counted anew.
                continue
            if tag == _MEDIA_SOP_INSTANCE:
                original = raw[8:].decode("ascii", "replace").rstrip("\x00 ")
                replacement = self.sop_instance_uid or self.profile.uid(original)
                value = replacement.encode("ascii")
                value += b"\x00" * (len(value) % 2)
                raw = raw[:6] + struct.pack("<H", len(value)) + value
            kept.append(raw)
        length = struct.pack("<HH2sHL", 0x0002, 0x0000, b"UL", 4, sum(len(raw) for raw in kept))
        return [self.data[:_PREAMBLE_AND_PREFIX], length, *kept]

    def _items(
        self, pos: int, end: int | None, implicit: bool, charset: bytes | None, *, top: bool = False, emit: bool = True
    ) -> int:
        """Rewrite the elements of a data set or item from ``pos`` to ``end`` (None: to its
        delimitation item); where it ended. ``emit`` False: only walked over (a removed sequence)."""
        data, out, profile = self.data, self.out, self.profile
        marks = list(_marks(profile.options, implicit)) if top else []
        while end is None or pos < end:
            group, element = _UNPACK_TAG(data, pos)
            tag = group << 16 | element
            if tag == ITEM_DELIM and end is None:
                return pos + 8
            if implicit:
                (length,) = _UNPACK_UL(data, pos + 4)
                header = 8
                vr = _dictionary_vr(tag)
            else:
                vrb = data[pos + 4 : pos + 6]
                if not valid_vr_bytes(vrb):
                    raise _Unusual
                vr = vrb.decode("ascii")
                if vrb in LONG_VRS:
                    (length,) = _UNPACK_UL(data, pos + 8)
                    header = 12
                    if vr == "UN" and _dictionary_vr(tag) not in (None, "UN"):
                        raise _Unusual  # pydicom reads it in the VR the dictionary gives
                else:
                    (length,) = _UNPACK_US(data, pos + 6)
                    header = 8
            value_pos = pos + header
            defined_end = None if length == UNDEFINED else value_pos + length
            while marks and marks[0][0] <= tag:
                mark_tag, encoded = marks.pop(0)
                out.append(encoded)
                if mark_tag == tag:
                    emit_this = False  # replaced by the mark
                    break
            else:
                emit_this = emit
            action = profile.tag_action(tag) if emit_this else "X"
            if tag == _SPECIFIC_CHARACTER_SET:
                charset = data[value_pos:defined_end] or charset  # empty: the enclosing one (as pydicom)
            if vr == "SQ" or (defined_end is None and vr is None and _starts_item(data, value_pos)):
                if action == "X" or action == "Z":
                    if action == "Z":
                        out.append(_header(tag, "SQ", 0, implicit))
                    pos = defined_end or self._sequence(value_pos, None, implicit, charset, emit=False)
                    continue
                out.append(_header(tag, "SQ", UNDEFINED, implicit))
                pos = self._sequence(value_pos, defined_end, implicit, charset, emit=True)
                out.append(_SEQUENCE_END)
                continue
            if defined_end is None:
                if tag not in PIXEL_TAGS:
                    raise _Unusual  # an undefined-length UN: a sequence pydicom may read as such
                defined_end = _after_fragments(data, value_pos)
            if action is None or action == "K":
                out.append(self.view[pos:defined_end])
            elif action == "Z":
                out.append(_header(tag, vr or "UN", 0, implicit))
            elif action != "X":
                out.append(self._changed(tag, vr, length, value_pos, implicit, charset, action, top))
            pos = defined_end
        out.extend(encoded for _, encoded in marks)
        return pos

    def _sequence(self, pos: int, end: int | None, implicit: bool, charset: bytes | None, *, emit: bool) -> int:
        """Rewrite (or walk over) the items of a sequence value; where the value ended."""
        data = self.data
        while end is None or pos < end:
            tag_group, tag_element, length = _UNPACK_TAG_LENGTH(data, pos)
            tag = tag_group << 16 | tag_element
            if tag == SEQ_DELIM and end is None:
                return pos + 8
            if tag != ITEM:
                raise _Unusual
            if (
                not implicit
                and length != 0
                and _UNPACK_TAG(data, pos + 8) != (0xFFFE, 0xE00D)
                and not valid_vr_bytes(data[pos + 12 : pos + 14])
            ):
                raise _Unusual  # implicit VR items inside an explicit VR data set
            if emit:
                self.out.append(_ITEM_START)
            item_end = None if length == UNDEFINED else pos + 8 + length
            pos = self._items(pos + 8, item_end, implicit, charset, emit=emit)
            if emit:
                self.out.append(_ITEM_END)
        return pos

    def _changed(
        self,
        tag: int,
        vr: str | None,
        length: int,
        value_pos: int,
        implicit: bool,
        charset: bytes | None,
        action: str,
        top: bool,
    ) -> bytes:
        """One element the profile changes: decoded, changed and encoded as pydicom does."""
        value = self.data[value_pos : value_pos + length]
        if vr in _STRING_VRS and value.isascii() and b"\x1b" not in value:
            # Plain ASCII (no ISO 2022 escape) reads the same in every character set: the
            # values are split and stripped here the way pydicom's converters do it.
            encoded = self._changed_string(tag, vr, value.decode("ascii"), action, implicit, top)
            if encoded is not None:
                return encoded
        raw = RawDataElement(BaseTag(tag), vr, length, value, value_pos, implicit, True)
        encodings = _encodings(charset)
        elem: DataElement = convert_raw_data_element(raw, encoding=encodings)
        if elem.VR not in _WRITABLE_VRS:
            raise _Unusual  # an ambiguous VR ("US or SS") needs the data set around it
        self.profile.data_element(elem, action)
        if top and tag == _SOP_INSTANCE_UID and isinstance(elem.value, str):
            self.sop_instance_uid = elem.value
        fp = DicomBytesIO()
        fp.is_little_endian = True
        fp.is_implicit_VR = implicit
        write_data_element(fp, elem, encodings)
        return fp.getvalue()

    def _changed_string(self, tag: int, vr: str, text: str, action: str, implicit: bool, top: bool) -> bytes | None:
        if vr in _SPLIT_THEN_STRIPPED:  # pydicom.values.convert_text
            values: list[str | None] = [v.rstrip("\x00 ") for v in text.split("\\")]
        elif vr == "PN":  # pydicom.values.convert_PN
            values = list(text.rstrip("\x00 ").split("\\"))
        else:  # pydicom.values.multi_string: UI, CS, AS, DA, DT, TM
            values = list(text.rstrip(" \x00").split("\\"))
        if action == "D" and values == [""]:
            values = [None]
        changed = self.profile.changed_values(vr, action, values)
        if not all(isinstance(v, str) for v in changed):
            return None
        if top and tag == _SOP_INSTANCE_UID:
            self.sop_instance_uid = changed[0]
        value = "\\".join(changed).encode("ascii")
        if len(value) % 2:
            value += b"\x00" if vr == "UI" else b" "
        return _header(tag, vr, len(value), implicit) + value


# VRs whose values (of plain ASCII) the walk splits and strips itself; pydicom decodes the others.
_STRING_VRS = frozenset({"UI", "CS", "AS", "DA", "DT", "TM", "SH", "LO", "UC", "PN"})
_SPLIT_THEN_STRIPPED = frozenset({"SH", "LO", "UC"})
_WRITABLE_VRS = frozenset(vr.decode("ascii") for vr in LONG_VRS) | frozenset(
    {"AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "PN", "SH", "SL", "SS", "ST"}
    | {"TM", "UI", "UL", "US"}
)


def _header(tag: int, vr: str, length: int, implicit: bool) -> bytes:
    group, element = tag >> 16, tag & 0xFFFF
    if implicit:
        return struct.pack("<HHL", group, element, length)
    if vr.encode("ascii") in LONG_VRS:
        return struct.pack("<HH2sHL", group, element, vr.encode("ascii"), 0, length)
    return struct.pack("<HH2sH", group, element, vr.encode("ascii"), length)


def _starts_item(data: bytes, pos: int) -> bool:
    return len(data) >= pos + 4 and _UNPACK_TAG(data, pos) == (0xFFFE, 0xE000)


def _after_fragments(data: bytes, pos: int) -> int:
    """Where encapsulated pixel data (PS3.5 A.4) ends: after its sequence delimitation item."""
    while True:
        group, element, length = _UNPACK_TAG_LENGTH(data, pos)
        tag = group << 16 | element
        if tag == SEQ_DELIM:
            return pos + 8
        if tag != ITEM or length == UNDEFINED:
            raise _Unusual
        pos += 8 + length


@functools.lru_cache(maxsize=4096)
def _dictionary_vr(tag: int) -> str | None:
    return dictionary_vr(tag)


@functools.lru_cache(maxsize=64)
def _encodings_of(charset: bytes) -> tuple[str, ...]:
    from pydicom.charset import convert_encodings

    terms = [term.strip() for term in charset.decode("ascii", "replace").rstrip("\x00 ").split("\\")]
    return tuple(convert_encodings(terms))


def _encodings(charset: bytes | None) -> list[str] | None:
    return None if charset is None else list(_encodings_of(charset))


@functools.lru_cache(maxsize=32)
def _marks(options: ProfileOptions, implicit: bool) -> tuple[tuple[int, bytes], ...]:
    """The attributes marking a de-identified instance, each encoded, in tag order (they are
    the same for every instance under the same options)."""
    marks = Deidentifier(b"", options).marks()
    encoded = []
    for elem in marks:
        fp = DicomBytesIO()
        fp.is_little_endian = True
        fp.is_implicit_VR = implicit
        write_dataset(fp, _single(marks, elem.tag))
        encoded.append((int(elem.tag), fp.getvalue()))
    return tuple(encoded)


def _single(ds: pydicom.Dataset, tag: BaseTag) -> pydicom.Dataset:
    one = pydicom.Dataset()
    one[tag] = ds[tag]
    return one
