"""DICOM JSON (PS3.18 Annex F) on pydicom + orjson.

pydicom's ``DataElement.to_json_dict`` produces the JSON of each element; this module only walks
the data set (so that it knows each element's *path* for its BulkDataURI), supplies the
BulkDataURIs, and repairs the few places where pydicom's output does not meet PS3.18 F.2:

* IS and DS values are JSON numbers (Table F.2.3-1). pydicom truncates a non-integer IS ("1.5"
  becomes 1) and raises on values it cannot parse; here they are read from the raw bytes, kept
  as faithfully as a JSON number allows, and an unparseable or non-finite value becomes ``null``.
* Empty values inside a multi-valued element are ``null`` (F.2.5), not ``""``.
* Non-finite floats (FL/FD NaN, Inf) have no JSON representation: ``null``.
* An empty sequence is present without "Value" (F.2.5, a zero-length attribute).

BulkDataURIs are relative *tag paths* appended to ``bulk_uri_prefix``: ``"00281201"`` for a
top-level element, ``"00540016/0/00181072"`` (sequence tag / zero-based item index / tag) for a
nested one. :func:`element_at` resolves such a path back to the element.

Values that pydicom deferred while reading (larger than ``dcmread``'s ``defer_size``) are never
loaded here when their VR may be sent as a BulkDataURI (F.2.7), so converting a data set read
with ``defer_size`` does not pull large values into memory.
"""

from __future__ import annotations

import math
import re
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.hooks import hooks
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag, Tag

# PS3.18 F.2.7 (and Table F.2.3-1): binary VRs whose value is InlineBinary or BulkDataURI.
BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
# PS3.18 F.2.7: every VR that may be sent as a BulkDataURI instead of a Value.
BULK_CAPABLE_VRS = BINARY_VRS | frozenset(
    {"DS", "FL", "FD", "IS", "LT", "SL", "SS", "ST", "SV", "UC", "UL", "UR", "US", "UT", "UV"}
)
# Binary values above this many bytes become BulkDataURIs, smaller ones InlineBinary.
DEFAULT_BULK_THRESHOLD = 1024

_PADDING_TAG = 0xFFFCFFFC  # Data Set Trailing Padding (PS3.10 7.2): no meaning in JSON
_STRING_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "LO", "LT", "SH", "ST", "TM", "UC", "UI", "UR", "UT"})
_INT_RE = re.compile(r"[+-]?\d+")
# orjson refuses integers outside 64 bits; IS is only 32-bit (PS3.5 6.2) anyway.
_INT64 = (-(2**63), 2**64 - 1)

_WARNINGS_LOCK = threading.RLock()  # re-entrant: nested use in one thread is harmless


@contextmanager
def pydicom_warnings_suppressed() -> Iterator[None]:
    """Silence warnings raised inside pydicom while the block runs.

    pydicom warns (and logs) on every odd value it reads; for a store that accepts what real
    modalities send, those are not errors. ``warnings.catch_warnings`` swaps process-global
    state, so concurrent users in worker threads are serialized by a lock; only warnings
    attributed to pydicom's own modules are affected.
    """
    with _WARNINGS_LOCK, warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=r"pydicom(\.|$)")
        yield


def dumps(obj: Any) -> bytes:
    """Serialize DICOM JSON (or any JSON value) with orjson."""
    return orjson.dumps(obj)


# ---------------------------------------------------------------------------------------------
# Dataset -> DICOM JSON
# ---------------------------------------------------------------------------------------------


def dataset_to_json(ds: Dataset, bulk_uri_prefix: str, bulk_threshold: int = DEFAULT_BULK_THRESHOLD) -> dict[str, Any]:
    """The DICOM JSON object (PS3.18 F.2) of ``ds``.

    Binary values (OB/OD/OF/OL/OV/OW/UN) longer than ``bulk_threshold`` bytes, and any
    F.2.7-capable value pydicom deferred, get ``BulkDataURI = bulk_uri_prefix + tagpath``.
    Group length (gggg,0000) and trailing padding elements are left out.
    """
    return _dataset(ds, bulk_uri_prefix, "", bulk_threshold)


def _dataset(ds: Dataset, prefix: str, path: str, threshold: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for tag in sorted(ds.keys()):
        if tag.element == 0 or tag == _PADDING_TAG:
            # PS3.5 7.2: group lengths are retired and would be wrong after any re-encoding.
            continue
        key = f"{tag:08X}"
        tagpath = f"{path}{key}"
        entry = _element(ds, tag, prefix, tagpath, threshold)
        if entry is not None:
            out[key] = entry
    return out


def _element(ds: Dataset, tag: BaseTag, prefix: str, tagpath: str, threshold: int) -> dict[str, Any] | None:
    item: DataElement | RawDataElement = ds.get_item(tag, keep_deferred=True)
    uri = f"{prefix}{tagpath}"
    if isinstance(item, RawDataElement):
        vr = raw_vr(ds, item)
        if item.value is None and item.length != 0:
            # Deferred by dcmread: answer with a URI rather than reading the value (F.2.7).
            bulk_vr = vr or _deferred_ambiguous_vr(item)
            if bulk_vr in BULK_CAPABLE_VRS:
                return {"vr": bulk_vr, "BulkDataURI": uri}
        elif vr in BINARY_VRS and item.length > threshold:
            return {"vr": vr, "BulkDataURI": uri}
        elif vr in ("IS", "DS") and item.value is not None:
            return _number_string_element(vr, item.value.decode("latin-1"))
    try:
        elem = ds[tag]
    except RecursionError:
        raise
    except Exception:
        # One value pydicom cannot convert must not sink the whole object: keep it, empty.
        return _empty_for(ds, item)
    vr = str(elem.VR)
    if vr == "SQ":
        items = [_dataset(sub, prefix, f"{tagpath}/{i}/", threshold) for i, sub in enumerate(elem.value or ())]
        return {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}
    if vr in ("IS", "DS"):
        return _number_string_element(vr, _as_text(elem))
    if vr == "PN":
        return _person_name_element(elem)

    def handler(_: DataElement) -> str:
        return uri

    try:
        bulk = vr in BINARY_VRS and not elem.is_empty and len(elem.value) > threshold
        # Threshold 0 with a handler: pydicom emits the BulkDataURI; without one, InlineBinary.
        js = elem.to_json_dict(handler if bulk else None, 0)
    except RecursionError:
        raise
    except Exception:
        return {"vr": vr}
    value = js.get("Value")
    if isinstance(value, list):
        js["Value"] = [_fix_value(vr, v) for v in value]
    return js


def raw_vr(ds: Dataset, raw: RawDataElement) -> str | None:
    """The VR pydicom will give a raw element, found without converting (or reading) its value.

    Asks pydicom's own VR hook (dictionary, private dictionary, UN replacement). None when that
    VR is still ambiguous ("OB or OW", "US or SS"...): pydicom settles those from other
    attributes when it converts the element.
    """
    data: dict[str, Any] = {}
    try:
        hooks.raw_element_vr(raw, data, encoding=None, ds=ds, **hooks.raw_element_kwargs)
    except KeyError:  # unknown tag with reading validation set to raise
        return "UN"
    vr = str(data.get("VR") or "UN")
    return None if " or " in vr else vr


def _deferred_ambiguous_vr(raw: RawDataElement) -> str | None:
    """VR for a large deferred element with an ambiguous dictionary VR, without reading it.

    Only "OB or OW", "US or OW" and "US or SS or OW" elements can be that large; PS3.5 A.1
    encodes them as OW in implicit VR, which is the only case where the file does not say.
    """
    try:
        vr = str(dictionary_VR(raw.tag))
    except KeyError:
        return None
    return "OW" if "OW" in vr else None


def _empty_for(ds: Dataset, item: DataElement | RawDataElement) -> dict[str, Any] | None:
    vr = raw_vr(ds, item) if isinstance(item, RawDataElement) else str(item.VR)
    return {"vr": vr} if vr else None


def _as_text(elem: DataElement) -> str:
    """The element's value as its DICOM string (IS/DS keep their original spelling)."""
    value = elem.value
    if value is None:
        return ""
    values = list(value) if isinstance(value, list | tuple | MultiValue) else [value]
    return "\\".join(str(getattr(v, "original_string", None) or v) for v in values)


def _person_name_element(elem: DataElement) -> dict[str, Any]:
    """PS3.18 F.2.2: each name an object of its non-empty component groups; empty ones null.

    Done here because pydicom's ``to_json_dict`` fails on an empty value inside a multi-valued
    PN (IndexError on its components).
    """
    if elem.is_empty:
        return {"vr": "PN"}
    values = elem.value if isinstance(elem.value, MultiValue | list | tuple) else [elem.value]
    out: list[dict[str, str] | None] = []
    for name in values:
        components = getattr(name, "components", None)
        if components is None:
            components = tuple(str(name).split("="))
        groups = {key: c for key, c in zip(("Alphabetic", "Ideographic", "Phonetic"), components, strict=False) if c}
        out.append(groups or None)
    return {"vr": "PN", "Value": out}


def _number_string_element(vr: str, text: str) -> dict[str, Any]:
    """PS3.18 Table F.2.3-1: IS and DS are JSON numbers; empty or bad values are null (F.2.5)."""
    text = text.rstrip("\x00 ")
    if not text.strip():
        return {"vr": vr}
    return {"vr": vr, "Value": [_number(vr, part.strip()) for part in text.split("\\")]}


def _number(vr: str, s: str) -> int | float | None:
    if not s:
        return None
    if vr == "IS" and _INT_RE.fullmatch(s):
        n = int(s)
        return n if _INT64[0] <= n <= _INT64[1] else float(n)
    try:
        f = float(s)
    except ValueError:
        return None
    if not math.isfinite(f):
        return None
    if vr == "IS" and f.is_integer() and abs(f) < 2**53:
        # "1.0" is not a valid IS, but its integer meaning is unambiguous.
        return int(f)
    return f


def _fix_value(vr: str, v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, int) and not isinstance(v, bool) and not (_INT64[0] <= v <= _INT64[1]):
        return float(v)
    if v == "" and vr in _STRING_VRS:
        return None
    return v


# ---------------------------------------------------------------------------------------------
# Tag paths
# ---------------------------------------------------------------------------------------------


def element_at(ds: Dataset, tagpath: str) -> DataElement:
    """The element a BulkDataURI tag path (``"SEQ/index/TAG"``...) names; KeyError if none."""
    parts = tagpath.split("/")
    if len(parts) % 2 != 1:
        raise KeyError(tagpath)
    current = ds
    try:
        for i in range(0, len(parts) - 1, 2):
            seq = current[Tag(int(parts[i], 16))]
            current = seq.value[int(parts[i + 1])]
        return current[Tag(int(parts[-1], 16))]
    except (ValueError, IndexError, TypeError, AttributeError) as exc:
        raise KeyError(tagpath) from exc


# ---------------------------------------------------------------------------------------------
# Accessors over DICOM JSON objects
# ---------------------------------------------------------------------------------------------


def first_value(js: dict[str, Any], tag_hex: str) -> Any | None:
    """The first entry of ``js[tag_hex]["Value"]``, or None when absent or empty."""
    attr = js.get(tag_hex.upper())
    if not isinstance(attr, dict):
        return None
    value = attr.get("Value")
    if not isinstance(value, list) or not value:
        return None
    return value[0]


def str_value(js: dict[str, Any], tag_hex: str) -> str | None:
    """The first value as a string: PN gives its Alphabetic group, numbers their JSON spelling."""
    v = first_value(js, tag_hex)
    if v is None:
        return None
    if isinstance(v, dict):
        alphabetic = v.get("Alphabetic")
        return alphabetic if isinstance(alphabetic, str) else None
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return None
    if isinstance(v, int | float):
        return orjson.dumps(v).decode()
    return None


def pn_alphabetic(js: dict[str, Any], tag_hex: str) -> str | None:
    """The Alphabetic component group of the first PN value (F.2.2), or None."""
    v = first_value(js, tag_hex)
    if isinstance(v, dict):
        alphabetic = v.get("Alphabetic")
        return alphabetic if isinstance(alphabetic, str) else None
    return None


__all__ = [
    "BINARY_VRS",
    "BULK_CAPABLE_VRS",
    "DEFAULT_BULK_THRESHOLD",
    "dataset_to_json",
    "dumps",
    "element_at",
    "first_value",
    "pn_alphabetic",
    "pydicom_warnings_suppressed",
    "raw_vr",
    "str_value",
]
