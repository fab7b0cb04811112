"""The QIDO-RS query model (PS3.18 10.6.1, PS3.4 C.2.2.2) and its parser.

:func:`parse_qido` turns a request's query parameters into a :class:`QidoQuery`; it is pure and
raises only :class:`gateway.errors.BadRequest` (or its subclass ``InvalidUID``) for bad input.
A query is a level, the UIDs fixed by the path, a list of :class:`Match` keys (tag, VR, kind,
value) and the return-key options, so it can be answered by SQL or translated to a C-FIND
identifier alike.

Matching rules (PS3.4 C.2.2.2), per key:

* empty value: universal matching, the key is only returned; so is a value of only ``*``
  (C.2.2.2.4: equivalent to universal matching);
* ``*`` / ``?`` wildcards for AE, CS, LO, LT, PN, SH, ST, UC, UR, UT only — elsewhere they are
  ordinary characters (a ``*`` in a UI or DA key is simply an invalid value, 400);
* DA / TM / DT: a single value or a range ``a-b``, ``a-``, ``-b``; a partial value stands for
  the whole interval it names (see :func:`gateway.dicom.matching.temporal_bounds`);
* UI: one UID or a list separated by ``,`` or ``\\`` (PS3.18 8.3.4.1); CS likewise accepts a
  value list (``ModalitiesInStudy=CT\\MR`` matches studies with either);
* numeric VRs: one number, compared numerically;
* sequences and binary VRs: universal only; dotted sequence paths are rejected.

Person names (PN) always match case-insensitively (viewers such as OHIF send the user's typing
verbatim). With ``fuzzymatching=true`` they also match accent-insensitively, word by word: the
value is split into words at ``^``, spaces, commas, hyphens and dots, and a name matches when
*every* query word is the prefix of *some* word of the name's alphabetic group, in any order —
so ``smi``, ``john``, ``John Smith`` and ``muller`` match ``Smith^John`` / ``Müller^Hans``.
Only the alphabetic component group (before the first ``=``) is matched.

Matching keys allowed at a level (PS3.18 Table 10.6.1-5): the level's own attributes, plus those
of the levels above that the path does not fix (``/series`` also takes study keys, ``/instances``
study and series keys). Any dictionary attribute of an allowed level may be matched; indexes
answer the common keys from indexed columns and the rest from the stored DICOM JSON (slower).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydicom.datadict import keyword_for_tag, tag_for_keyword

from gateway.dicom.attributes import (
    LEVELS,
    PARENT_UIDS,
    PIXEL_DATA_TAGS,
    REQUIRED_RETURN,
    RETURN_ONLY_TAGS,
    Level,
    attribute_level,
    vr_of,
)
from gateway.dicom.matching import temporal_bounds
from gateway.dicom.restriction import Restriction
from gateway.dicom.uids import require_uid
from gateway.errors import BadRequest

__all__ = ["Level", "Match", "MatchKind", "QidoQuery", "parse_qido"]

MatchKind = Literal["universal", "single", "wildcard", "range", "list"]

WILDCARD_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"})
TEMPORAL_VRS = frozenset({"DA", "TM", "DT"})
INTEGER_VRS = frozenset({"IS", "SS", "US", "SL", "UL", "SV", "UV"})
DECIMAL_VRS = frozenset({"DS", "FL", "FD"})
UNMATCHABLE_VRS = frozenset({"SQ", "OB", "OW", "OF", "OD", "OL", "OV", "UN", "AT"})

_HEX_TAG = re.compile(r"[0-9A-Fa-f]{8}")
_INTEGER = re.compile(r"[+-]?[0-9]{1,20}")
_DECIMAL = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]{1,3})?")
_COUNT = re.compile(r"[0-9]{1,9}")
_LIST_SEPARATORS = re.compile(r"[,\\]")
# Each list element is one bound SQL parameter (SQLite allows 32766 per statement).
MAX_LIST_VALUES = 1000


@dataclass(frozen=True)
class Match:
    """One matching key. ``value`` is the value as received (spaces trimmed), which is what a
    C-FIND identifier carries; the other fields are its parsed form:

    * ``single`` / ``wildcard``: ``values == (value,)``;
    * ``list``: ``values`` are the elements (UIDs, or CS values possibly with wildcards);
    * DA/TM/DT ``single`` and ``range``: ``low`` / ``high`` are the normalized interval bounds
      (:func:`gateway.dicom.matching.temporal_bounds`), None for an open end;
    * numeric ``single``: ``number`` is the parsed value.
    """

    tag: str
    vr: str
    level: Level
    kind: MatchKind
    value: str = ""
    values: tuple[str, ...] = ()
    low: str | None = None
    high: str | None = None
    number: int | float | None = None

    @property
    def keyword(self) -> str:
        return keyword_for_tag(int(self.tag, 16)) or self.tag

    @classmethod
    def uid(cls, tag: str, level: Level, uid: str) -> Match:
        """Single value matching of one UID (PS3.4 C.2.2.2.1), e.g. a study by its UID."""
        return cls(tag=tag, vr="UI", level=level, kind="single", value=uid, values=(uid,))


@dataclass(frozen=True)
class QidoQuery:
    """A parsed QIDO-RS request. ``limit`` None means the server's maximum; ``includes`` are
    extra return tags; ``include_all`` is ``includefield=all``."""

    level: Level
    study: str | None = None
    series: str | None = None
    matches: tuple[Match, ...] = ()
    includes: frozenset[str] = field(default_factory=frozenset)
    include_all: bool = False
    fuzzy: bool = False
    limit: int | None = None
    offset: int = 0
    # Study-level access restriction of the requesting principal (gateway.dicom.restriction):
    # indexes apply it where rows are selected, so limit/offset count only visible rows.
    restriction: Restriction | None = None

    @property
    def spanned_levels(self) -> tuple[Level, ...]:
        """The query's level plus the levels above it that the path leaves open: their required
        return keys are returned too (PS3.18 10.6.3.3)."""
        levels: list[Level] = [self.level]
        if self.level == "instance" and self.series is None:
            levels.append("series")
        if self.level != "study" and self.study is None:
            levels.append("study")
        return tuple(levels)

    def return_keys(self) -> tuple[frozenset[str], frozenset[str]]:
        """(always, if_present): tags every row carries (empty when the entity has no value) and
        tags it carries only when present (conditional keys and includefield)."""
        always = set(PARENT_UIDS[self.level])
        optional = set(self.includes)
        for level in self.spanned_levels:
            required, conditional = REQUIRED_RETURN[level]
            always |= required
            optional |= conditional
        always |= {m.tag for m in self.matches}
        return frozenset(always), frozenset(optional - always)

    def match_for(self, tag: str) -> Match | None:
        return next((m for m in self.matches if m.tag == tag), None)


def build_row(query: QidoQuery, attributes: Mapping[str, Any]) -> dict[str, Any]:
    """One response row from everything known about a matched entity (stored and computed
    attributes, DICOM JSON), restricted to the query's return keys, in tag order. With
    ``includefield=all`` the caller decides what "all" is by what it passes in."""
    always, optional = query.return_keys()
    wanted = always | (attributes.keys() if query.include_all else optional & attributes.keys())
    row: dict[str, Any] = {}
    for tag in sorted(wanted - PIXEL_DATA_TAGS):
        element = attributes.get(tag)
        if element is None:
            vr = vr_of(tag)
            if vr is None:
                continue
            element = {"vr": vr}  # a requested key without value is returned empty (PS3.18 F.2.5)
        row[tag] = element
    return row


def parse_qido(
    level: Literal["study", "series", "instance"],
    params: Iterable[tuple[str, str]],
    *,
    study: str | None = None,
    series: str | None = None,
) -> QidoQuery:
    """Parse QIDO-RS query parameters (e.g. ``request.query_params.multi_items()``).

    ``study``/``series`` are the UIDs from the resource path (``/studies/{s}/series``, ...).
    Reserved parameters: ``includefield`` (comma list, repeatable, keyword, hex tag or ``all``),
    ``fuzzymatching`` (true/false), ``limit`` and ``offset`` (non-negative integers). Every other
    parameter is a matching key; unknown ones are a 400, as are keys not allowed at the level.
    """
    if level not in LEVELS:
        raise ValueError(f"unknown QIDO level {level!r}")
    if (level == "study" and (study or series)) or (series is not None and (level != "instance" or study is None)):
        raise ValueError("the path UIDs do not fit the QIDO level")
    if study is not None:
        require_uid(study, "StudyInstanceUID")
    if series is not None:
        require_uid(series, "SeriesInstanceUID")
    allowed = set(QidoQuery(level=level, study=study, series=series).spanned_levels)

    matches: dict[str, Match] = {}
    includes: set[str] = set()
    include_all = False
    reserved: dict[str, str] = {}
    for name, raw in params:
        _check_text(name, raw)
        key = name.lower()
        if key == "includefield":
            for item in raw.split(","):
                item = item.strip()
                if item.lower() == "all":
                    include_all = True
                elif item:
                    includes.add(_include_tag(item))
        elif key in ("fuzzymatching", "limit", "offset"):
            if reserved.setdefault(key, raw) != raw:
                raise BadRequest(f"QIDO parameter {key} given twice with different values")
        else:
            match = _parse_match(name, raw, level, allowed)
            if matches.setdefault(match.tag, match) != match:
                raise BadRequest(f"QIDO key {_shown(name)} given twice with different values")

    fuzzy = reserved.get("fuzzymatching", "false").lower()
    if fuzzy not in ("true", "false"):
        raise BadRequest("fuzzymatching must be true or false")
    limit = _count("limit", reserved["limit"]) if "limit" in reserved else None
    offset = _count("offset", reserved["offset"]) if "offset" in reserved else 0
    return QidoQuery(
        level=level,
        study=study,
        series=series,
        matches=tuple(matches.values()),
        includes=frozenset(includes),
        include_all=include_all,
        fuzzy=fuzzy == "true",
        limit=limit,
        offset=offset,
    )


# ---------------------------------------------------------------------------------------------


def _parse_match(name: str, raw: str, level: Level, allowed: set[Level]) -> Match:
    if "." in name:
        raise BadRequest(f"QIDO key {_shown(name)}: sequence matching is not supported")
    tag = _resolve(name)
    vr = vr_of(tag)
    if vr is None:
        raise BadRequest(f"QIDO key {_shown(name)} is not a DICOM data dictionary attribute")
    home = attribute_level(tag) or level
    if home not in allowed:
        where = ", ".join(sorted(allowed))
        raise BadRequest(f"QIDO key {_shown(name)} is a {home}-level attribute; this query matches {where} keys")
    value = raw.strip(" ")
    if value == "" or (vr in WILDCARD_VRS and value.strip("*") == ""):
        return Match(tag=tag, vr=vr, level=home, kind="universal", value=value)
    if tag in RETURN_ONLY_TAGS:
        raise BadRequest(f"QIDO key {_shown(name)} can be requested (empty value) but not matched")
    if vr in UNMATCHABLE_VRS:
        raise BadRequest(f"QIDO key {_shown(name)}: {vr} attributes support only universal matching")
    base: dict[str, Any] = {"tag": tag, "vr": vr, "level": home, "value": value}
    if value.count(",") + value.count("\\") >= MAX_LIST_VALUES:
        raise BadRequest(f"QIDO key {_shown(name)}: more than {MAX_LIST_VALUES} values in a list")
    if vr == "UI":
        uids = tuple(require_uid(u.strip(" "), _shown(name)) for u in _LIST_SEPARATORS.split(value))
        return Match(**base, kind="list" if len(uids) > 1 else "single", values=uids)
    if vr in TEMPORAL_VRS:
        return _parse_temporal(name, base, vr, value)
    if vr in INTEGER_VRS or vr in DECIMAL_VRS:
        return Match(**base, kind="single", values=(value,), number=_number(name, vr, value))
    if vr == "CS" and _LIST_SEPARATORS.search(value):
        items = tuple(v.strip(" ") for v in _LIST_SEPARATORS.split(value))
        if not all(items):
            raise BadRequest(f"QIDO key {_shown(name)}: empty element in value list {value!r}")
        return Match(**base, kind="list", values=items)
    if vr in WILDCARD_VRS and ("*" in value or "?" in value):
        return Match(**base, kind="wildcard", values=(value,))
    return Match(**base, kind="single", values=(value,))


def _parse_temporal(name: str, base: dict[str, Any], vr: str, value: str) -> Match:
    # A DT value may carry a "-hhmm" UTC offset, so a '-' is a range separator only where both
    # sides are valid values (or empty): try the whole value first, then each '-'.
    whole = temporal_bounds(vr, value)
    if whole is not None:
        return Match(**base, kind="single", values=(value,), low=whole[0], high=whole[1])
    for i, char in enumerate(value):
        if char != "-":
            continue
        left, right = value[:i], value[i + 1 :]
        low = temporal_bounds(vr, left) if left else None
        high = temporal_bounds(vr, right) if right else None
        if (left or right) and (low is not None or not left) and (high is not None or not right):
            return Match(
                **base,
                kind="range",
                values=(left, right),
                low=low[0] if low else None,
                high=high[1] if high else None,
            )
    raise BadRequest(f"QIDO key {_shown(name)}: {value!r} is not a valid {vr} value or range")


def _number(name: str, vr: str, value: str) -> int | float:
    if vr in INTEGER_VRS and _INTEGER.fullmatch(value):
        return int(value)
    if vr in DECIMAL_VRS and _DECIMAL.fullmatch(value):
        number = float(value)
        if math.isfinite(number):
            return number
    raise BadRequest(f"QIDO key {_shown(name)}: {value!r} is not a valid {vr} number")


def _resolve(name: str) -> str:
    """Hex tag of a keyword or hex key; BadRequest naming the key when it is neither."""
    if _HEX_TAG.fullmatch(name):
        tag = name.upper()
    else:
        number = tag_for_keyword(name)
        if number is None:
            raise BadRequest(f"QIDO key {_shown(name)} is not a DICOM attribute keyword or tag")
        tag = f"{number:08X}"
    group, element = int(tag[:4], 16), int(tag[4:], 16)
    # Command, file meta and item delimitation groups and group lengths are not dataset attributes.
    if group in (0x0000, 0x0002, 0xFFFE) or element == 0:
        raise BadRequest(f"QIDO key {_shown(name)} is not a queryable attribute")
    return tag


def _include_tag(item: str) -> str:
    # includefield may name an attribute inside a sequence (PS3.18 8.3.4.3); the top-level
    # sequence is returned whole, which includes it.
    parts = item.split(".")
    tags = [_resolve(p) for p in parts]
    for part, tag in zip(parts, tags, strict=True):
        if vr_of(tag) is None and int(tag[:4], 16) % 2 == 0:
            raise BadRequest(f"includefield {_shown(part)} is not a DICOM data dictionary attribute")
    return tags[0]


def _count(name: str, value: str) -> int:
    if not _COUNT.fullmatch(value.strip(" ")):
        raise BadRequest(f"{name} must be a non-negative integer, not {_shown(value)}")
    return int(value)


def _check_text(name: str, value: str) -> None:
    for text in (name, value):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise BadRequest(f"QIDO parameter {_shown(name)} is not valid text") from None


def _shown(text: str) -> str:
    return text if len(text) <= 64 and text.isprintable() else repr(text[:64])
