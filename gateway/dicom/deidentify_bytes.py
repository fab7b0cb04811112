"""The profile (:mod:`gateway.dicom.deidentify`) applied to stored DICOM JSON as bytes: the
metadata of a series de-identified without parsing and writing again every instance.

The index keeps each instance's metadata as compact orjson output, top-level attributes in tag
order. Split at ``},"`` (the end of one element and the start of the next), an instance is a
list of its elements' texts; an element's text determines its de-identified text (the profile
is deterministic for one key), and the instances of a series repeat most of their elements, so
each distinct text is worked out once per answer and looked up (in C) for every instance after.
Working one out: an attribute the profile keeps (no action in PS3.15 Table E.1-1) is kept as it
is, without parsing; any other (an action, a private attribute, a sequence, bulk data) is parsed
alone, de-identified by :meth:`Deidentifier.json_top_level` (the one implementation of the
table's actions) and written back.

Compact orjson output escapes every quote inside a string, so ``},"`` inside a value can only be
a string that ends in ``},``: the text after that split starts with a bracket or a comma, not a
tag, and the instance goes the parsing way instead (:meth:`Deidentifier.json_instances`), as
does anything else the split cannot account for: an attribute the profile removes is never let
through by a surprise in the bytes. Elements inside a sequence's items are split too; a
sequence is put together again from the texts after it until it parses whole (a part of it
never does: it closes fewer brackets than it opens).
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import orjson

from gateway.dicom.deidentify import (
    DEIDENTIFICATION_METHOD,
    DEIDENTIFICATION_METHOD_CODES,
    LONGITUDINAL_TEMPORAL_INFORMATION_MODIFIED,
    PATIENT_IDENTITY_REMOVED,
    RETRIEVE_URL,
    Deidentifier,
)

_SPLIT = b'},"'
_HEADER = re.compile(rb'[0-9A-F]{8}":\{"vr":"[A-Z]{2}"(?:,|\Z)')
_SEQUENCE = b'"vr":"SQ"'
# One UID, and a BulkDataURI alone, rewritten without parsing (as orjson would write them).
_UID_ELEMENT = re.compile(rb'([0-9A-F]{8}":\{"vr":"UI","Value":\[")([0-9.]{1,64})"\]\Z')
_BULK_ELEMENT = re.compile(rb'([0-9A-F]{8}":\{"vr":"[A-Z]{2}","BulkDataURI":")([^"\\]*)"\Z')
_BULK = b'"BulkDataURI"'
_MARKS = (PATIENT_IDENTITY_REMOVED, DEIDENTIFICATION_METHOD, DEIDENTIFICATION_METHOD_CODES)
# Marks already in stored metadata give way to this gateway's own.
_REPLACED = frozenset({*_MARKS, LONGITUDINAL_TEMPORAL_INFORMATION_MODIFIED, RETRIEVE_URL})


class _Unaccounted(Exception):
    """Text the split does not account for: the instance goes the parsing way."""


class _Nested(Exception):
    """A sequence to put together: the instance goes the element by element way."""


class JsonBytesRewriter:
    """Instances' stored DICOM JSON (compact orjson bytes) de-identified by ``profile`` and
    marked, as :meth:`Deidentifier.json_instances` gives them, written as bytes. One rewriter
    per answer: the texts it worked out are kept while the answer is written."""

    def __init__(self, profile: Deidentifier) -> None:
        self._profile = profile
        marks = profile.json_marks()
        # Each group of marks as the text of elements (without the leading quote and the last
        # brace, as the split leaves them), with where it goes: before the first element not
        # below its first tag.
        self._marks = (
            (PATIENT_IDENTITY_REMOVED.encode(), _texts({tag: marks[tag] for tag in _MARKS})),
            (
                LONGITUDINAL_TEMPORAL_INFORMATION_MODIFIED.encode(),
                _texts({LONGITUDINAL_TEMPORAL_INFORMATION_MODIFIED: marks[LONGITUDINAL_TEMPORAL_INFORMATION_MODIFIED]}),
            ),
        )
        self._done = _Done(self._element)
        self._extents: dict[bytes, int] = {}  # a sequence's first text: how many texts it spanned
        self._kept: dict[bytes, bool] = {}  # an element's header: kept as it is (unless bulk data)
        self._uids: dict[bytes, bool] = {}  # an element's header: a UID replaced
        self._replacements: dict[str, str] = {}  # a UID: its replacement
        self._heads: dict[str, str] = {}  # a BulkDataURI up to its instance: that part de-identified
        self._mark_at = [0, 0]  # where each group of marks went in the instance before

    def instances(self, stored: Iterable[bytes]) -> Iterator[bytes]:
        for instance in stored:
            yield self.instance(instance)

    def answer(self, stored: Iterable[bytes]) -> bytes:
        """A metadata answer (a DICOM JSON array) of ``stored``, each instance de-identified and marked."""
        members = [self._members(instance) for instance in stored]
        return b'[{"' + b'}},{"'.join(members) + b"}}]" if members else b"[]"

    def instance(self, stored: bytes) -> bytes:
        """One instance's metadata de-identified and marked."""
        return b'{"' + self._members(stored) + b"}}"

    def _members(self, stored: bytes) -> bytes:
        """:meth:`instance` without its first two bytes and its last two (``{"``, ``}}``: the
        de-identified instance always has members, its marks)."""
        try:
            return self._rewritten(stored)
        except _Unaccounted:
            return orjson.dumps(next(self._profile.json_instances([orjson.loads(stored)])))[2:-2]

    def _rewritten(self, stored: bytes) -> bytes:
        if stored[:2] != b'{"' or stored[-2:] != b"}}":
            raise _Unaccounted
        texts = stored[2:-2].split(_SPLIT)
        try:  # text after text looked up in C; one not seen before worked out (_Done.__missing__)
            done = list(map(self._done.__getitem__, texts))
        except _Nested:
            texts, done = self._worked_out(texts)
        # The marks go before the first element not below their first tag (the stored elements
        # are in tag order), where they went in the instance before most often; the later ones
        # first, so that the earlier place stays where it is.
        (first, first_marks), (second, second_marks) = self._marks
        at = self._mark_at[1]
        if not (0 < at < len(texts) and texts[at - 1][:8] < second <= texts[at][:8]):
            at = self._mark_at[1] = bisect.bisect_left(texts, second, key=_tag)
        done.insert(at, second_marks)
        at = self._mark_at[0]
        if not (0 < at < len(texts) and texts[at - 1][:8] < first <= texts[at][:8]):
            at = self._mark_at[0] = bisect.bisect_left(texts, first, key=_tag)
        done.insert(at, first_marks)
        return _SPLIT.join(filter(None, done))

    def _worked_out(self, texts: list[bytes]) -> tuple[list[bytes], list[bytes]]:
        """The top-level elements of ``texts`` (a sequence's texts put together) and the
        de-identified text of each, working out those not done before."""
        elements: list[bytes] = []
        out: list[bytes] = []
        i = 0
        while i < len(texts):
            text = texts[i]
            if text[11:20] == _SEQUENCE:
                span = self._sequence_span(texts, i)
                text = _SPLIT.join(texts[i : i + span])
                i += span
            else:
                i += 1
            done = self._done.get(text)
            if done is None:
                done = self._done[text] = self._element(text)
            elements.append(text)
            out.append(done)
        return elements, out

    def _sequence_span(self, texts: list[bytes], start: int) -> int:
        """How many texts from ``start`` make up the sequence that starts there."""
        hint = self._extents.get(texts[start])
        if hint is not None and _SPLIT.join(texts[start : start + hint]) in self._done:
            return hint  # the same text as a sequence parsed whole before: that sequence again
        for span in range(1, len(texts) - start + 1):
            try:
                orjson.loads(b'{"' + _SPLIT.join(texts[start : start + span]) + b"}}")
            except orjson.JSONDecodeError:
                continue
            self._extents[texts[start]] = span
            return span
        raise _Unaccounted

    def _element(self, text: bytes) -> bytes:
        """The de-identified text of one element's text (b"": removed)."""
        header = text[:20]  # tag, VR and the text between: the same header, the same action
        kept = self._kept.get(header)
        if kept is None:
            if _HEADER.match(text) is None:
                raise _Unaccounted
            tag = text[:8].decode("ascii")
            action = self._profile.action(tag)
            kept = action in (None, "K") and tag not in _REPLACED and text[11:20] != _SEQUENCE
            self._kept[header] = kept
            self._uids[header] = action == "U"
        if kept:
            if _BULK not in text:
                return text
            found = _BULK_ELEMENT.match(text)
            if found is not None:  # a BulkDataURI alone: its path names UIDs
                return found[1] + self._url(found[2].decode("ascii")).encode("ascii") + b'"'
        elif self._uids[header] and (found := _UID_ELEMENT.match(text)) is not None:
            return found[1] + self._uid(found[2].decode("ascii")).encode("ascii") + b'"]'
        return self._parsed(text)

    def _uid(self, uid: str) -> str:
        try:
            return self._replacements[uid]
        except KeyError:
            replacement = self._replacements[uid] = self._profile.uid(uid)
            return replacement

    def _url(self, url: str) -> str:
        """:meth:`Deidentifier.url` of a BulkDataURI: its part up to the instance (the same in
        every instance of a series) worked out once."""
        head, found, tail = url.rpartition("/instances/")
        sop, slash, rest = tail.partition("/")
        if not (found and sop[:1].isdigit()) or "studies" in rest or "series" in rest or "instances" in rest:
            return self._profile.url(url)
        try:
            new_head = self._heads[head]
        except KeyError:
            new_head = self._heads[head] = self._profile.url(head)
        return new_head + found + self._uid(sop) + slash + rest

    def _parsed(self, text: bytes) -> bytes:
        try:
            ((tag, element),) = orjson.loads(b'{"' + text + b"}}").items()
        except (orjson.JSONDecodeError, ValueError) as exc:
            raise _Unaccounted from exc
        if tag in _REPLACED and tag != RETRIEVE_URL:
            return b""
        changed = self._profile.json_top_level(tag, element)
        return b"" if changed is None else _texts({tag: changed})


class _Done(dict[bytes, bytes]):
    """An element's text: its de-identified text (b"": removed), worked out when first asked
    for (by ``work_out``; a sequence's is put together first: :class:`_Nested`)."""

    def __init__(self, work_out: Callable[[bytes], bytes]) -> None:
        super().__init__()
        self._work_out = work_out

    def __missing__(self, text: bytes) -> bytes:
        if text[11:20] == _SEQUENCE:
            raise _Nested  # perhaps split into the elements of its items
        done = self[text] = self._work_out(text)
        return done


def _tag(text: bytes) -> bytes:
    return text[:8]


def _texts(elements: dict[str, Any]) -> bytes:
    """``elements`` as the split leaves them: without the first quote and the last brace."""
    return orjson.dumps(elements)[2:-2]
