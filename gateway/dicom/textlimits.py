"""Bounds on text values (PS3.5 Table 6.2-1), applied wherever DICOM text comes in.

Text values are kept in the index and sent in every QIDO and metadata answer that names them, so
one huge value costs memory and bandwidth on every search. Explicit VR caps most text VRs at
64 KiB by its 16-bit length field; implicit VR does not, and UT, UC and UR have no maximum at all.

The policy:

* VRs with a maximum length (AE 16, AS 4, CS 16, DA 8, DS 16, DT 26, IS 12, LO 64, LT 10240,
  PN 64 per component group, SH 16, ST 1024, TM 14, UI 64 characters): a value longer than its
  maximum is accepted (modalities do send a 70-character LO), up to :data:`TOLERANCE` times the
  maximum, counted in encoded bytes per value (every character is at least one byte, so a value
  within its maximum in characters is never refused; 4 is the longest UTF-8 character). Beyond
  that it is refused. The whole element (all its values) is also held to 65535 bytes, what explicit
  VR can encode, so implicit VR is no way around the cap.
* UT, UC and UR (no maximum): the whole element is refused beyond a configured number of bytes
  (``limits.max_text_value_bytes``, 64 KiB by default).

Values are measured from their encoded length, without decoding (nor reading deferred ones).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from gateway.dicom.dicomjson import raw_vr

# PS3.5 Table 6.2-1: the maximum length of one value, in characters. PN: of each of its three
# component groups (alphabetic, ideographic, phonetic), with the two "=" delimiters.
MAX_CHARS: dict[str, int] = {
    "AE": 16,
    "AS": 4,
    "CS": 16,
    "DA": 8,
    "DS": 16,
    "DT": 26,
    "IS": 12,
    "LO": 64,
    "LT": 10240,
    "PN": 3 * 64 + 2,
    "SH": 16,
    "ST": 1024,
    "TM": 14,
    "UI": 64,
}
UNBOUNDED = frozenset({"UC", "UR", "UT"})
TEXT_VRS = frozenset(MAX_CHARS) | UNBOUNDED
# PS3.5 6.2: in these the backslash is text, not a value delimiter (a single value each).
_SINGLE_VALUED = frozenset({"LT", "ST", "UR", "UT"})
TOLERANCE = 4
ELEMENT_CAP = 0xFFFF  # the 16-bit length field of these VRs in explicit VR (PS3.5 7.1.2)
DEFAULT_MAX_TEXT_VALUE_BYTES = 64 << 10


@dataclass(frozen=True)
class Oversized:
    """One text element over its bound: where it is, and what was measured against what."""

    container: Dataset  # the data set (or sequence item) holding it
    tag: int
    vr: str
    where: str  # "PatientName (0010,0010)", with the enclosing sequences when nested
    length: int  # bytes: of the longest value, or of the whole element
    limit: int

    def reason(self) -> str:
        what = "value" if self.limit != ELEMENT_CAP and self.vr not in UNBOUNDED else "element"
        if self.vr in UNBOUNDED:
            bound = "limits.max_text_value_bytes"
        elif self.limit == ELEMENT_CAP:
            bound = "what explicit VR can encode"
        else:
            bound = f"{TOLERANCE} x the PS3.5 maximum of {MAX_CHARS[self.vr]} characters"
        return f"{self.where} {self.vr} {what} of {self.length} bytes exceeds {self.limit} ({bound})"


def oversized(ds: Dataset, max_unbounded_bytes: int = DEFAULT_MAX_TEXT_VALUE_BYTES) -> Iterator[Oversized]:
    """Every text element of ``ds`` (sequence items included) over its bound."""
    yield from _walk(ds, max_unbounded_bytes, "")


def _walk(ds: Dataset, max_unbounded: int, outer: str) -> Iterator[Oversized]:
    for tag in list(ds.keys()):
        item: DataElement | RawDataElement = ds.get_item(tag, keep_deferred=True)
        vr = (item.VR or raw_vr(ds, item)) if isinstance(item, RawDataElement) else str(item.VR)
        if vr == "SQ":
            items = ds[tag].value or ()
            for i, sub in enumerate(items):
                yield from _walk(sub, max_unbounded, f"{outer}{_name(tag)} item {i + 1}, ")
            continue
        if vr not in TEXT_VRS:
            continue
        total, longest = _lengths(item, vr)
        limit: int | None = None
        if vr in UNBOUNDED:
            if total > max_unbounded:
                limit, length = max_unbounded, total
        elif total > ELEMENT_CAP:
            limit, length = ELEMENT_CAP, total
        elif longest > TOLERANCE * MAX_CHARS[vr]:
            limit, length = TOLERANCE * MAX_CHARS[vr], longest
        if limit is not None:
            yield Oversized(ds, int(tag), vr, f"{outer}{_name(tag)}", length, limit)


def _lengths(item: DataElement | RawDataElement, vr: str) -> tuple[int, int]:
    """(length of the whole element, of its longest value), in bytes (characters once decoded)."""
    if isinstance(item, RawDataElement):
        raw = item.value
        if raw is None:  # deferred: only its length is known, and that is enough
            return item.length, item.length
        raw = raw.rstrip(b" \x00")  # the padding to an even length (PS3.5 6.2) is not the value
        values: list[Any] = [raw] if vr in _SINGLE_VALUED else raw.split(b"\\")
        return len(raw), max(len(v) for v in values)
    value = item.value
    if value is None:
        return 0, 0
    texts = [str(v) for v in value] if isinstance(value, MultiValue | list | tuple) else [str(value)]
    if not texts:
        return 0, 0
    return sum(len(t) for t in texts) + len(texts) - 1, max(len(t) for t in texts)


def _name(tag: int) -> str:
    keyword = keyword_for_tag(tag) or "private element"
    return f"{keyword} ({tag >> 16:04X},{tag & 0xFFFF:04X})"
