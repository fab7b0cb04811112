"""The Basic Application Level Confidentiality Profile (PS3.15 E.1), applied to DICOM JSON
(QIDO rows, metadata) and to pydicom datasets (Part 10 instances), from one table
(:mod:`gateway.dicom.deidentify_table`).

How the profile's actions are carried out (PS3.15 E.3):

* combined actions depend on the attribute's type in its IOD, which a gateway serving every IOD
  does not know; the choice that keeps any IOD valid is taken: an action offering ``D`` is ``D``,
  ``X/Z`` is ``Z``, and ``X/Z/U*`` (sequences of references) keeps the sequence with its UIDs
  replaced;
* ``D`` on text is a pseudonym ``ANON`` + 8 hex digits of a keyed hash of the value (so a
  de-identified Patient ID still tells patients apart without naming them), dates are
  19000101, numbers 0, sequences are kept with their items de-identified;
* ``U`` is ``2.25.`` + the decimal integer of the first 128 bits of HMAC-SHA256(key, UID)
  (PS3.5 B.2: a UUID-derived UID), the same UID for the same key wherever it appears;
* ``C`` (only under the Modified Dates option) shifts dates and date-times by a keyed number of
  days (1 to 3650 back), the same for every instance, so intervals survive; times are kept;
* every private attribute is removed (PS3.15 E.3.10 is not offered), and the profile is applied
  within every sequence item (PS3.15 E.1.1);
* attributes the table does not name are kept.

A de-identified instance also says so (PS3.15 E.1.1): Patient Identity Removed ``YES``,
De-identification Method and its Code Sequence (CID 7050), and Longitudinal Temporal
Information Modified. Instances with Burned In Annotation ``YES`` carry identity in their
pixels, which this profile does not clean: :meth:`Deidentifier.withholds` says to hold them back.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import hmac
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag

from gateway.dicom.deidentify_table import TABLE, WILDCARD_TABLE, Row

PATIENT_IDENTITY_REMOVED = "00120062"
DEIDENTIFICATION_METHOD = "00120063"
DEIDENTIFICATION_METHOD_CODES = "00120064"
LONGITUDINAL_TEMPORAL_INFORMATION_MODIFIED = "00280303"
BURNED_IN_ANNOTATION = "00280301"
RETRIEVE_URL = "00081190"
PROFILES = frozenset({"basic"})  # the Basic Application Level Confidentiality Profile (PS3.15 E.1)

_DUMMY_DATE = "19000101"
_AFTER_EVERY_TAG = "G"  # sorts after every tag of 8 hex digits
_TEXT_VRS = frozenset({"AE", "CS", "LO", "LT", "SH", "ST", "UC", "UT", "PN", "UR", "AS"})
_NUMBER_VRS = frozenset({"IS", "DS", "US", "SS", "UL", "SL", "FL", "FD", "SV", "UV", "AT"})
_SHIFT_DAYS = 3650
# Keyed hashes remembered, original to replacement (~250 bytes each): a series' study, series
# and frame of reference UIDs and its patient's pseudonyms are hashed once, not per instance.
_HASHES_REMEMBERED = 16_384

# CID 7050 De-identification Method (DCM scheme), PS3.16.
_BASIC_CODE = ("113100", "Basic Application Confidentiality Profile")
_OPTION_CODES = {
    "full_dates": ("113106", "Retain Longitudinal Temporal Information Full Dates Option"),
    "modified_dates": ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
    "patient_characteristics": ("113108", "Retain Patient Characteristics Option"),
    "device": ("113109", "Retain Device Identity Option"),
    "institution": ("113112", "Retain Institution Identity Option"),
}


@dataclass(frozen=True)
class ProfileOptions:
    """The options a site switches on (PS3.15 E.3.6-E.3.9), and whether instances with burned
    in annotation are served anyway (the site then answers for their pixels)."""

    full_dates: bool = False
    modified_dates: bool = False
    patient_characteristics: bool = False
    device: bool = False
    institution: bool = False
    serve_burned_in: bool = False

    def __post_init__(self) -> None:
        if self.full_dates and self.modified_dates:
            raise ValueError("the full dates and modified dates options exclude each other")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name in _OPTION_CODES if getattr(self, name))


def action_for(tag: str, options: ProfileOptions) -> str | None:
    """The single action the profile takes on ``tag`` (8 hex digits, upper case): ``D``, ``Z``,
    ``X``, ``K``, ``C`` or ``U``; ``X`` for a private attribute; None for one the table does not
    name (kept)."""
    if int(tag[3], 16) % 2 == 1:  # odd group: private (PS3.5 7.8)
        return "X"
    row = TABLE.get(tag) or _wildcard_row(tag)
    if row is None:
        return None
    action = row.basic
    for name in options.names:
        chosen = getattr(row, name)
        if chosen is not None:
            action = chosen
    return _resolved(action)


@functools.lru_cache(maxsize=8)
def table_actions(options: ProfileOptions) -> dict[str, str | None]:
    """:func:`action_for` of every tag the table names, for ``options`` (worked out once: a
    gateway does it when it starts, not in its first de-identified answer)."""
    return {tag: action_for(tag, options) for tag in TABLE if _TAG.fullmatch(tag)}


_TAG = re.compile("[0-9A-F]{8}")


def _wildcard_row(tag: str) -> Row | None:
    found = _WILDCARDS.fullmatch(tag)
    return None if found is None else WILDCARD_TABLE[_WILDCARD_PATTERNS[found.lastindex or 0]]


# The wildcard rows as one pattern, a group each ("60XX3000" matches 60003000 to 60FF3000).
_WILDCARD_PATTERNS = dict(enumerate(WILDCARD_TABLE, start=1))
_WILDCARDS = re.compile("|".join(f"({pattern.replace('X', '[0-9A-F]')})" for pattern in WILDCARD_TABLE))


def _resolved(action: str) -> str:
    if "U" in action:
        return "U"
    if "D" in action:
        return "D"
    if "Z" in action:
        return "Z"
    return action


class Deidentifier:
    """The profile with a site's key and options. ``on_uid`` and ``on_pseudonym`` are told each
    (original, replacement) pair handed out, so that the gateway can resolve replacements back."""

    def __init__(
        self,
        key: bytes,
        options: ProfileOptions = ProfileOptions(),
        on_uid: Callable[[str, str], None] | None = None,
        on_pseudonym: Callable[[str, str], None] | None = None,
    ) -> None:
        self.options = options
        self._key = key
        self._on_uid = on_uid
        self._on_pseudonym = on_pseudonym
        self._actions: dict[str, str | None] = dict(table_actions(options))
        self._tag_actions: dict[int, str | None] = {}
        self._json_marks: dict[str, dict[str, Any]] | None = None  # the same for every instance
        self._plain: dict[str, bool] = {}  # tag: kept as it is (see _kept_as_is)
        digest = hmac.new(key, b"date-shift", hashlib.sha256).digest()
        self._shift = datetime.timedelta(days=1 + int.from_bytes(digest[:4], "big") % _SHIFT_DAYS)

    # -- values --------------------------------------------------------------------------------

    def uid(self, uid: str) -> str:
        """The replacement of ``uid``: the same for the same key, never the original."""
        mapped = _keyed_uid(self._key, uid)
        if self._on_uid is not None:
            self._on_uid(uid, mapped)
        return mapped

    def pseudonym(self, text: str) -> str:
        pseudonym = _keyed_pseudonym(self._key, text)
        if self._on_pseudonym is not None:
            self._on_pseudonym(text, pseudonym)
        return pseudonym

    def shifted_date(self, value: str) -> str:
        """A DA or the date part of a DT moved back by the site's shift; unparsable: the dummy."""
        try:
            day = datetime.datetime.strptime(value[:8], "%Y%m%d").date()
        except ValueError:
            return _DUMMY_DATE + value[8:] if len(value) > 8 else _DUMMY_DATE
        return (day - self._shift).strftime("%Y%m%d") + value[8:]

    def action(self, tag: str) -> str | None:
        try:
            return self._actions[tag]
        except KeyError:
            action = self._actions[tag] = action_for(tag, self.options)
            return action

    def tag_action(self, tag: int) -> str | None:
        """:meth:`action` of a tag as an integer (``0x00100010``), as a Part 10 walk reads it."""
        try:
            return self._tag_actions[tag]
        except KeyError:
            action = self._tag_actions[tag] = self.action(f"{tag:08X}")
            return action

    # -- DICOM JSON ---------------------------------------------------------------------------

    def withholds(self, dataset: dict[str, Any]) -> bool:
        """Whether an instance (its DICOM JSON) is held back: burned in annotation, unless served."""
        if self.options.serve_burned_in:
            return False
        value = dataset.get(BURNED_IN_ANNOTATION, {}).get("Value") or [""]
        return str(value[0]).strip().upper() == "YES"

    def json_dataset(self, dataset: dict[str, Any], *, mark: bool = True) -> dict[str, Any]:
        """``dataset`` (DICOM JSON) de-identified, a new object. ``mark``: add the attributes
        saying so (a whole instance; a QIDO row keeps to the attributes asked for)."""
        out: dict[str, Any] = {}
        plain = self._plain
        for tag, element in dataset.items():
            try:
                kept = plain[tag]
            except KeyError:
                kept = plain[tag] = self._kept_as_is(tag)
            if kept and "BulkDataURI" not in element and element.get("vr") != "SQ":
                out[tag] = element
                continue
            done = self.json_top_level(tag, element)
            if done is not None:
                out[tag] = done
        if mark:
            out.update(self.json_marks())
        return dict(sorted(out.items()))

    def json_instances(self, instances: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """Whole instances (DICOM JSON, a metadata answer) de-identified and marked, as by
        :meth:`json_dataset`, their attributes in the order given. An attribute equal to the
        same attribute of an instance before it is given the same de-identified value without
        working it out again: instances of a series repeat most of their attributes (the
        profile is deterministic for one key). One instance at a time: what was done with one
        is let go before the next is read."""
        done: dict[str, tuple[Any, dict[str, Any] | None]] = {}  # tag: (element, de-identified)
        plain = self._plain
        every_mark = self.json_marks()
        marks = sorted(every_mark.items())
        for instance in instances:
            answer: dict[str, Any] = {}
            # The marks go in among the attributes, in tag order when the attributes are (as the
            # index keeps them): no sorting of every instance.
            pending, next_mark = 0, marks[0][0]
            for tag, element in instance.items():
                if tag >= next_mark:
                    while pending < len(marks) and marks[pending][0] <= tag:
                        answer[marks[pending][0]] = marks[pending][1]
                        pending += 1
                    next_mark = marks[pending][0] if pending < len(marks) else _AFTER_EVERY_TAG
                    if tag in answer:
                        continue  # replaced by a mark
                try:
                    kept = plain[tag]
                except KeyError:
                    kept = plain[tag] = self._kept_as_is(tag)
                if kept and "BulkDataURI" not in element and element.get("vr") != "SQ":
                    answer[tag] = element
                    continue
                seen = done.get(tag)
                if seen is None or seen[0] != element:
                    seen = done[tag] = (element, self.json_top_level(tag, element))
                if seen[1] is not None:
                    answer[tag] = seen[1]
            answer.update(every_mark)  # those after the last attribute; any an unordered one overwrote
            yield answer

    def _kept_as_is(self, tag: str) -> bool:
        """Whether an attribute of ``tag`` is kept as it is, unless it is bulk data (whose URI
        names the instance) or written as a sequence all the same (a sender's mistake whose
        items the profile still enters): no action, not a sequence (whose items it enters)."""
        if tag == RETRIEVE_URL or self.action(tag) is not None:
            return False
        try:
            return str(dictionary_VR(tag)) != "SQ"
        except KeyError:
            return False  # not in the dictionary: looked at element by element

    def json_top_level(self, tag: str, element: dict[str, Any]) -> dict[str, Any] | None:
        if tag == RETRIEVE_URL:
            return {**element, "Value": [self.url(str(v)) for v in element.get("Value") or []]}
        return self._json_element(tag, element)

    def json_marks(self) -> dict[str, dict[str, Any]]:
        if self._json_marks is None:
            self._json_marks = self._marks()
        return self._json_marks

    def url(self, url: str) -> str:
        """A RetrieveURL or BulkDataURI with the UIDs of its path replaced."""
        parts = url.split("/")
        for i in range(1, len(parts)):
            if parts[i - 1] in ("studies", "series", "instances") and parts[i][:1].isdigit():
                parts[i] = self.uid(parts[i])
        return "/".join(parts)

    def _json_element(self, tag: str, element: dict[str, Any]) -> dict[str, Any] | None:
        action = self.action(tag)
        vr = element.get("vr", "UN")
        if action == "X":
            return None
        if action == "Z":
            return {"vr": vr}
        if vr == "SQ":
            items = element.get("Value") or []
            return {"vr": vr, "Value": [self.json_dataset(item, mark=False) for item in items]}
        if "BulkDataURI" in element:
            return {**element, "BulkDataURI": self.url(element["BulkDataURI"])} if action is None else {"vr": vr}
        values = element.get("Value")
        if action is None or action == "K" or not values:
            return element if action != "D" or values else {"vr": vr, "Value": [self._dummy_json(vr, None)]}
        if action == "U":
            return {"vr": vr, "Value": [self.uid(str(v)) if v else v for v in values]}
        if action == "C":
            return {"vr": vr, "Value": [self._cleaned(vr, v) for v in values]}
        return {"vr": vr, "Value": [self._dummy_json(vr, v) for v in values]}

    def _dummy_json(self, vr: str, value: Any) -> Any:
        if vr == "PN":  # DICOM JSON's PN object: the pseudonym of the same text pydicom holds
            text = value.get("Alphabetic", "") if isinstance(value, dict) else value
            return {"Alphabetic": self._dummy(vr, text)}
        return self._dummy(vr, value)

    def _dummy(self, vr: str, value: Any) -> Any:
        if vr == "DA":
            return _DUMMY_DATE
        if vr == "TM":
            return "000000"
        if vr == "DT":
            return _DUMMY_DATE + "000000"
        if vr == "UI":
            return self.uid(str(value))
        if vr == "PN":  # a family name alone, delimited: the form PS3.5 6.2.1.1 defines
            return self.pseudonym(str(value)) + "^"
        if vr in _NUMBER_VRS:
            return 0 if vr not in ("IS", "DS") else "0"
        if vr in _TEXT_VRS:
            return self.pseudonym(str(value))
        return None

    def _cleaned(self, vr: str, value: Any) -> Any:
        if vr in ("DA", "DT") and isinstance(value, str) and value:
            return self.shifted_date(value)
        return value  # times and other cleaned values stay: the shift is in whole days

    def _marks(self) -> dict[str, dict[str, Any]]:
        codes = [_BASIC_CODE, *(_OPTION_CODES[name] for name in self.options.names)]
        method = "; ".join(meaning for _, meaning in codes)
        temporal = "MODIFIED" if self.options.modified_dates else "UNMODIFIED" if self.options.full_dates else "REMOVED"
        return {
            PATIENT_IDENTITY_REMOVED: {"vr": "CS", "Value": ["YES"]},
            DEIDENTIFICATION_METHOD: {"vr": "LO", "Value": [method[:64]]},
            DEIDENTIFICATION_METHOD_CODES: {
                "vr": "SQ",
                "Value": [
                    {
                        "00080100": {"vr": "SH", "Value": [value]},
                        "00080102": {"vr": "SH", "Value": ["DCM"]},
                        "00080104": {"vr": "LO", "Value": [meaning]},
                    }
                    for value, meaning in codes
                ],
            },
            LONGITUDINAL_TEMPORAL_INFORMATION_MODIFIED: {"vr": "CS", "Value": [temporal]},
        }

    # -- pydicom datasets (Part 10) -----------------------------------------------------------

    def dataset(self, ds: Dataset, *, mark: bool = True) -> None:
        """De-identify ``ds`` in place; Pixel Data and other values the table does not name are
        left as they are (their bytes unchanged)."""
        for key in list(ds.keys()):
            action = self.action(f"{key:08X}")
            if action == "X":
                del ds[key]
                continue
            if action is None and (ds.get_item(key).VR or ds[key].VR) != "SQ":
                continue  # kept undecoded (Pixel Data among them)
            self.data_element(ds[key], action)
        if mark:
            for tag, element in self._marks().items():
                _set_from_json(ds, tag, element)

    def marks(self) -> Dataset:
        """The attributes saying that an instance is de-identified, as a data set of their own."""
        ds = Dataset()
        for tag, element in self._marks().items():
            _set_from_json(ds, tag, element)
        return ds

    def data_element(self, elem: DataElement, action: str | None) -> None:
        """``elem`` de-identified in place by ``action`` (:meth:`action` of its tag); the items
        of a sequence by the whole profile."""
        if action == "Z":
            elem.value = Sequence() if elem.VR == "SQ" else None
            return
        if elem.VR == "SQ":
            for item in elem.value:
                self.dataset(item, mark=False)
            return
        if action in (None, "K"):
            return
        values = list(elem.value) if elem.VM > 1 else [elem.value]
        if action == "D" and (elem.VM == 0 or elem.value in (None, "", b"")):
            values = [None]
        values = self.changed_values(elem.VR, action, values)
        elem.value = values if len(values) > 1 else values[0]

    def changed_values(self, vr: str, action: str, values: list[Any]) -> list[Any]:
        """The values of an element of ``vr`` after ``action`` (``U``, ``C`` or ``D``);
        ``values`` as pydicom decodes them, ``[None]`` for an empty one under ``D``."""
        if action == "U":
            return [self.uid(str(v)) if v else v for v in values]
        if action == "C":
            return [self._cleaned(vr, str(v)) for v in values]
        if action == "D":
            return [self._dummy(vr, v) for v in values]
        return values


def forget_hashes() -> None:
    """Let go of the remembered keyed hashes, as a restart does (a benchmark timing first requests)."""
    _keyed_uid.cache_clear()
    _keyed_pseudonym.cache_clear()


@functools.lru_cache(maxsize=_HASHES_REMEMBERED)
def _keyed_uid(key: bytes, uid: str) -> str:
    digest = hmac.digest(key, uid.encode("ascii", "replace"), "sha256")
    return f"2.25.{int.from_bytes(digest[:16], 'big')}"


@functools.lru_cache(maxsize=_HASHES_REMEMBERED)
def _keyed_pseudonym(key: bytes, text: str) -> str:
    digest = hmac.digest(key, b"dummy:" + text.encode("utf-8", "replace"), "sha256").hex()
    return f"ANON{digest[:8].upper()}"


def _set_from_json(ds: Dataset, tag: str, element: dict[str, Any]) -> None:
    vr = element["vr"]
    if vr == "SQ":
        items = []
        for item_json in element["Value"]:
            item = Dataset()
            for item_tag, item_element in item_json.items():
                _set_from_json(item, item_tag, item_element)
            items.append(item)
        ds.add_new(BaseTag(int(tag, 16)), vr, Sequence(items))
        return
    value = element["Value"]
    ds.add_new(BaseTag(int(tag, 16)), vr, value[0] if len(value) == 1 else value)
