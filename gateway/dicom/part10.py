"""The Part 10 file framing around a data set: preamble, File Meta Information, deflate.

A DICOM file (PS3.10 7.1) starts with a 128-byte preamble, the ``DICM`` prefix and the File
Meta Information (group 0002, always Explicit VR Little Endian), which names the transfer syntax
of the data set that follows. A Deflated Explicit VR Little Endian data set (PS3.5 A.5) is
inflated here, in bounded steps, to a plain Explicit VR Little Endian copy that the rest of the
parser reads like any other file.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from pydicom.uid import UID

from gateway.dicom.layout import LONG_VRS, SHORT_VRS, UNDEFINED
from gateway.dicom.rejection import FailureReason, reject, truncated
from gateway.dicom.uids import is_valid_uid

CHUNK = 1 << 20  # how much is read or inflated at a time
_PREAMBLE = 128
_META_TS = 0x00020010
_META_GROUP_LENGTH = 0x00020000


@dataclass(frozen=True)
class FileMeta:
    transfer_syntax: str
    dataset_start: int
    # (tag, raw element bytes) in file order, kept to rebuild the header of an inflated copy
    elements: tuple[tuple[int, bytes], ...]
    sop_class_uid: str | None  # Media Storage SOP Class / Instance UID, to name a rejected file
    sop_instance_uid: str | None


def read_meta(f: IO[bytes], size: int) -> FileMeta:
    """Read and check the preamble and File Meta Information of the file ``f`` of ``size`` bytes."""
    head = f.read(_PREAMBLE + 4)
    if len(head) < _PREAMBLE + 4 or head[_PREAMBLE:] != b"DICM":
        raise reject(FailureReason.CANNOT_UNDERSTAND, "not a DICOM Part 10 file (no preamble and DICM prefix)")
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
        if vr in LONG_VRS:
            more = f.read(4)
            if len(more) < 4:
                raise truncated("the File Meta Information")
            (length,) = struct.unpack("<L", more)
            header = 12
        elif vr in SHORT_VRS:
            (length,) = struct.unpack("<H", hdr[6:8])
            header = 8
        else:
            raise reject(FailureReason.CANNOT_UNDERSTAND, "not a DICOM Part 10 file (malformed File Meta Information)")
        if length == UNDEFINED or pos + header + length > size:
            raise truncated("the File Meta Information")
        if length > 1 << 16:
            raise reject(FailureReason.CANNOT_UNDERSTAND, "not a DICOM Part 10 file (File Meta element too long)")
        f.seek(pos)
        raw = f.read(header + length)
        tag = group << 16 | elem
        if tag == _META_TS:
            ts = raw[header:].decode("ascii", "replace").rstrip("\x00 ")
        elements.append((tag, raw))
        pos += header + length
    if not elements:
        raise reject(FailureReason.CANNOT_UNDERSTAND, "not a DICOM Part 10 file (no File Meta Information)")
    if not ts:
        raise reject(FailureReason.CANNOT_UNDERSTAND, "not a DICOM Part 10 file (no Transfer Syntax UID)")
    sop_class, sop_instance = _meta_uid(elements, 0x00020002), _meta_uid(elements, 0x00020003)
    if not UID(ts).is_transfer_syntax:
        shown = ts if is_valid_uid(ts) else "(invalid UID)"
        raise reject(
            FailureReason.TRANSFER_SYNTAX_NOT_SUPPORTED,
            f"transfer syntax {shown} is not supported",
            sop_class_uid=sop_class,
            sop_instance_uid=sop_instance,
        )
    return FileMeta(ts, pos, tuple(elements), sop_class, sop_instance)


def _meta_uid(elements: list[tuple[int, bytes]], tag: int) -> str | None:
    for t, raw in elements:
        if t == tag:
            value = raw[8:].decode("ascii", "replace").rstrip("\x00 ")  # UI: 8-byte header
            return value if is_valid_uid(value) else None
    return None


def dataset_start(f: IO[bytes], size: int) -> int:
    """Offset of the first element after group 0002 (re-read: the file may be the inflated copy)."""
    pos = _PREAMBLE + 4
    while pos + 8 <= size:
        f.seek(pos)
        hdr = f.read(8)
        if struct.unpack("<H", hdr[:2])[0] != 0x0002:
            break
        if hdr[4:6] in LONG_VRS:
            (length,) = struct.unpack("<L", f.read(4))
            pos += 12 + length
        else:
            pos += 8 + struct.unpack("<H", hdr[6:8])[0]
    return pos


def inflate(src: Path, meta: FileMeta, dst: Path, allowance: int) -> None:
    """Write an Explicit VR Little Endian copy of ``src`` to ``dst``, inflating in bounded steps.

    pydicom would inflate the whole data set in memory; here at most one chunk of output exists
    at a time and a data set that inflates beyond ``allowance`` bytes is refused before it is.
    """
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
            while not inflater.eof and (chunk := fin.read(CHUNK)):
                data = chunk
                while data and not inflater.eof:
                    out = inflater.decompress(data, CHUNK)
                    total += len(out)
                    if total > allowance:
                        raise reject(
                            FailureReason.OUT_OF_RESOURCES,
                            f"deflated data set inflates beyond the limit of {allowance} bytes",
                        )
                    fout.write(out)
                    data = inflater.unconsumed_tail
            tail = inflater.flush()
        except zlib.error:
            raise reject(FailureReason.CANNOT_UNDERSTAND, "deflated data set is corrupt") from None
        if total + len(tail) > allowance:
            raise reject(FailureReason.OUT_OF_RESOURCES, f"deflated data set inflates beyond {allowance} bytes")
        fout.write(tail)
        if not inflater.eof:
            raise truncated("the deflated data set")
