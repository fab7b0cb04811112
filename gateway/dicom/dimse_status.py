"""DIMSE status codes: their class (PS3.7 Annex C) and a readable name, in one table.

PACS differ in the exact code they send for the same condition (Orthanc answers a C-MOVE to an
unknown destination with 0xC000, the standard suggests 0xA801), so callers act on the *class*
of a status, never on individual codes; the names only make error messages readable.
"""

from __future__ import annotations

import enum


class StatusClass(enum.Enum):
    SUCCESS = "success"
    PENDING = "pending"
    CANCEL = "cancel"
    WARNING = "warning"
    FAILURE = "failure"


# PS3.7 C.1-C.6 (general) and PS3.4 C.4.1.1.4, C.4.2.1.5, C.4.3.1.4, B.2.3 (Q/R and Storage
# service specific). Ranges such as 0xA7xx / 0xCxxx are named by their first code.
_NAMES: dict[int, str] = {
    0x0000: "Success",
    0x0001: "Warning: requested optional attributes are not supported",
    0x0107: "Warning: attribute list error",
    0x0110: "Failure: processing failure",
    0x0111: "Failure: duplicate SOP Instance",
    0x0116: "Warning: attribute value out of range",
    0x0117: "Failure: invalid object instance",
    0x0122: "Failure: SOP Class not supported",
    0x0124: "Failure: refused, not authorized",
    0x0210: "Failure: duplicate invocation",
    0x0211: "Failure: unrecognized operation",
    0x0212: "Failure: mistyped argument",
    0x0213: "Failure: resource limitation",
    0xA700: "Refused: out of resources",
    0xA701: "Refused: out of resources, unable to calculate number of matches",
    0xA702: "Refused: out of resources, unable to perform sub-operations",
    0xA801: "Refused: move destination unknown",
    0xA900: "Error: identifier does not match SOP Class",
    0xB000: "Warning: sub-operations complete, one or more failures or warnings",
    0xB006: "Warning: elements discarded",
    0xB007: "Warning: data set does not match SOP Class",
    0xC000: "Failed: unable to process",
    0xFE00: "Cancel: matching or sub-operations terminated by C-CANCEL",
    0xFF00: "Pending",
    0xFF01: "Pending: optional keys not supported",
}

_WARNINGS = frozenset({0x0001, 0x0107, 0x0116})


def status_class(code: int) -> StatusClass:
    """The class of a status code (PS3.7 Annex C): what every caller branches on."""
    if code == 0x0000:
        return StatusClass.SUCCESS
    if code in (0xFF00, 0xFF01):
        return StatusClass.PENDING
    if code == 0xFE00:
        return StatusClass.CANCEL
    if code in _WARNINGS or 0xB000 <= code <= 0xBFFF:
        return StatusClass.WARNING
    # 0x01xx, 0x02xx, 0xA7xx, 0xA8xx, 0xA9xx, 0xCxxx and anything unassigned (C.4: "Failure").
    return StatusClass.FAILURE


def describe(code: int) -> str:
    """``0xA801 (Refused: move destination unknown)``; unknown codes by their range."""
    name = _NAMES.get(code)
    if name is None:
        if 0xA700 <= code <= 0xA7FF:
            name = _NAMES[0xA700]
        elif 0xA900 <= code <= 0xA9FF:
            name = _NAMES[0xA900]
        elif 0xC000 <= code <= 0xCFFF:
            name = _NAMES[0xC000]
        else:
            name = status_class(code).value
    return f"0x{code:04X} ({name})"
