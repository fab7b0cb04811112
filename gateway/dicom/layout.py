"""A structural walk of an encoded data set: element headers only, values are sought over.

It proves that every declared length fits inside the file and its enclosing item (pydicom
silently seeks past deferred values, so a truncated file would otherwise pass), bounds sequence
nesting before pydicom recurses into it, and records where the top-level pixel data and its
fragments lie, which is what frame retrieval needs (one ranged read per frame).

The encoding rules are those of PS3.5 7 (data elements, explicit and implicit VR), 7.5
(sequences and items, defined and undefined length) and A.4 (encapsulated pixel data); where
pydicom tolerates a deviation from them (implicit VR items in an explicit VR data set, unknown
VRs), the walk tolerates the same, so that both readers agree on the layout.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import IO

from pydicom.datadict import dictionary_VR

from gateway.dicom.records import Span
from gateway.dicom.rejection import FailureReason, malformed, reject, truncated

ITEM = 0xFFFEE000
ITEM_DELIM = 0xFFFEE00D
SEQ_DELIM = 0xFFFEE0DD
UNDEFINED = 0xFFFFFFFF
PIXEL_DATA = 0x7FE00010
FLOAT_PIXEL_DATA = 0x7FE00008
DOUBLE_PIXEL_DATA = 0x7FE00009
EXTENDED_OFFSETS = 0x7FE00001
EXTENDED_LENGTHS = 0x7FE00002
ENCAPSULATED_TOTAL_LENGTH = 0x7FE00003
PIXEL_TAGS = (PIXEL_DATA, FLOAT_PIXEL_DATA, DOUBLE_PIXEL_DATA)
_TOP_LEVEL_OF_INTEREST = frozenset({*PIXEL_TAGS, EXTENDED_OFFSETS, EXTENDED_LENGTHS})
# PS3.5 7.1.2: VRs with a 2-byte reserved field and a 4-byte length in explicit VR.
LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
SHORT_VRS = frozenset(
    {
        b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO", b"LT",
        b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US",
    }
)  # fmt: skip


@dataclass(frozen=True)
class Located:
    """A top-level element found by the walk: where its value lies, never the value itself."""

    value_pos: int
    length: int  # UNDEFINED for encapsulated data
    vr: str | None  # None when implicit
    fragments: tuple[Span, ...] | None = None  # item values of encapsulated data, BOT first


@dataclass
class _Container:
    kind: str  # "dataset", "sequence" or "item"
    end: int | None  # None for undefined length
    implicit: bool
    little: bool
    # Tag path of what it holds, as in a BulkDataURI (gateway.dicom.dicomjson): "" for the data
    # set, "SEQ/" for a sequence, "SEQ/index/" for one of its items. Kept only by :meth:`Walker.locate`.
    path: str = ""
    items: int = 0  # items of a sequence seen so far


class _Found(Exception):
    """Ends a :meth:`Walker.locate` walk at the element it looks for."""

    def __init__(self, located: Located) -> None:
        super().__init__()
        self.located = located


def valid_vr_bytes(b: bytes) -> bool:
    # The same test pydicom applies (filereader._is_implicit_vr): two upper-case letters.
    return len(b) == 2 and 0x40 < b[0] < 0x5B and 0x40 < b[1] < 0x5B


def dictionary_vr(tag: int) -> str | None:
    """The VR the data dictionary gives ``tag``; None for a tag it does not know (private)."""
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return None


class Walker:
    """Walks the data set of one open file; :meth:`read` serves later reads of located values."""

    def __init__(self, f: IO[bytes], size: int, max_sequence_depth: int) -> None:
        self.f = f
        self.size = size
        self.max_sequence_depth = max_sequence_depth
        self._target: str | None = None

    def locate(self, start: int, implicit: bool, little: bool, tagpath: str) -> Located | None:
        """Where the element a BulkDataURI tag path names lies (``"7FE00010"``,
        ``"00540016/0/00181072"``), by the same header-only walk, stopping once it is found;
        None when the data set has no such element. For encapsulated data ``length`` is
        UNDEFINED and the value ends where its last fragment ends."""
        self._target = tagpath.upper()
        try:
            self.walk(start, implicit, little)
        except _Found as found:
            return found.located
        finally:
            self._target = None
        return None

    def read(self, pos: int, n: int) -> bytes:
        self.f.seek(pos)
        return self.f.read(n)

    def walk(self, start: int, implicit: bool, little: bool) -> dict[int, Located]:
        """Check the data set from ``start`` to the end of file; locate top-level pixel data."""
        probe = self.read(start, 6)
        if len(probe) == 6:
            # pydicom follows the encoding it finds rather than the one declared; so do we.
            implicit = not valid_vr_bytes(probe[4:6])
        stack = [_Container("dataset", self.size, implicit, little)]
        depth = 0
        found: dict[int, Located] = {}
        pos = start
        while stack:
            c = stack[-1]
            if c.end is not None and pos >= c.end:
                if pos > c.end:
                    raise malformed("an element overruns its sequence item")
                stack.pop()
                depth -= c.kind == "sequence"
                continue
            if c.kind == "sequence":
                tag, length = self._item_header(pos, c.little)
                if tag == ITEM:
                    end = None if length == UNDEFINED else self._bounded(pos + 8 + length, stack, "a sequence item")
                    implicit = c.implicit or self._item_is_implicit(pos + 8, c.little, end)
                    path = f"{c.path}{c.items}/" if self._target is not None else ""
                    c.items += 1
                    stack.append(_Container("item", end, implicit, c.little, path))
                elif tag == SEQ_DELIM and c.end is None:
                    stack.pop()
                    depth -= 1
                else:
                    raise malformed("a sequence holds something other than items")
                pos += 8
                continue
            tag, vr, length, header, elem_implicit = self._element_header(pos, c)
            if tag == ITEM_DELIM:
                if c.kind == "item" and c.end is None:
                    stack.pop()
                    pos += 8
                    continue
                raise malformed("unexpected item delimiter")
            if tag in (ITEM, SEQ_DELIM):
                raise malformed("item outside a sequence")
            value_pos = pos + header
            top = len(stack) == 1
            if length == UNDEFINED:
                contents_implicit = self._undefined_sequence(tag, vr, value_pos, c.little, elem_implicit)
                if contents_implicit is not None:
                    depth += 1
                    self._check_depth(depth)
                    # PS3.5 6.2.2: the content of an undefined-length UN is implicit VR little endian.
                    little_inside = True if vr == "UN" else c.little
                    stack.append(
                        _Container("sequence", None, contents_implicit, little_inside, self._path(c, tag, "/"))
                    )
                    pos = value_pos
                else:
                    fragments, pos = self._fragments(value_pos, c.little, stack)
                    if top and tag in _TOP_LEVEL_OF_INTEREST:
                        found[tag] = Located(value_pos, UNDEFINED, vr, fragments)
                    self._check_target(c, tag, Located(value_pos, UNDEFINED, vr, fragments))
                continue
            end = self._bounded(value_pos + length, stack, "an element value")
            if length and (vr == "SQ" or (vr is None and dictionary_vr(tag) == "SQ")):
                depth += 1
                self._check_depth(depth)
                stack.append(_Container("sequence", end, elem_implicit, c.little, self._path(c, tag, "/")))
                pos = value_pos
                continue
            if top and tag in _TOP_LEVEL_OF_INTEREST:
                found[tag] = Located(value_pos, length, vr)
            self._check_target(c, tag, Located(value_pos, length, vr))
            pos = end
        return found

    def _path(self, c: _Container, tag: int, suffix: str = "") -> str:
        return f"{c.path}{tag:08X}{suffix}" if self._target is not None else ""

    def _check_target(self, c: _Container, tag: int, located: Located) -> None:
        if self._target is not None and self._path(c, tag) == self._target:
            raise _Found(located)

    def _check_depth(self, depth: int) -> None:
        if depth > self.max_sequence_depth:
            raise reject(
                FailureReason.OUT_OF_RESOURCES,
                f"sequences nested deeper than the limit of {self.max_sequence_depth} levels",
            )

    def _bounded(self, end: int, stack: list[_Container], what: str) -> int:
        if end > self.size:
            raise truncated(what)
        for c in reversed(stack):
            if c.end is not None:
                if end > c.end:
                    raise malformed(f"{what} overruns its sequence item")
                break
        return end

    def _item_header(self, pos: int, little: bool) -> tuple[int, int]:
        b = self.read(pos, 8)
        if len(b) < 8:
            raise truncated("a sequence")
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
        if group << 16 | elem == ITEM_DELIM:
            return False
        return not valid_vr_bytes(b[4:6])

    def _element_header(self, pos: int, c: _Container) -> tuple[int, str | None, int, int, bool]:
        """(tag, vr or None, length, header length, implicit) of the element at ``pos``."""
        b = self.read(pos, 8)
        if len(b) < 8:
            raise truncated("an element header")
        e = "<" if c.little else ">"
        group, elem = struct.unpack(e + "HH", b[:4])
        tag = group << 16 | elem
        vrb = b[4:6]
        if c.implicit or group == 0xFFFE or not valid_vr_bytes(vrb):
            # Items and delimiters have no VR; an element without a valid VR is read as
            # implicit, as pydicom does (config.assume_implicit_vr_switch).
            (length,) = struct.unpack(e + "L", b[4:8])
            return tag, None, length, 8, True
        vr = vrb.decode("ascii")
        if vrb in LONG_VRS:
            more = self.read(pos + 8, 4)
            if len(more) < 4:
                raise truncated("an element header")
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
        if tag in PIXEL_TAGS and vr != "SQ":
            return None
        if vr == "SQ":
            return implicit
        if vr == "UN":
            return True  # PS3.5 6.2.2: undefined-length UN is a sequence in implicit VR LE
        if vr is None:
            dict_vr = dictionary_vr(tag)
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
                raise truncated("encapsulated pixel data (no sequence delimiter)")
            group, elem, length = struct.unpack(fmt, b)
            tag = group << 16 | elem
            if tag == SEQ_DELIM:
                return tuple(spans), pos + 8
            if tag != ITEM or length == UNDEFINED:
                raise malformed("encapsulated pixel data holds something other than fragments")
            end = self._bounded(pos + 8 + length, stack, "a pixel data fragment")
            spans.append((pos + 8, length))
            pos = end
