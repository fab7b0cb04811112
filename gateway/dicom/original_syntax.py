"""The transfer syntax an instance was received in, recorded in its File Meta Information when
the gateway stores it in another one (``storage_compression``).

PS3.10 7.1 gives File Meta Information a place for exactly this kind of note: Private
Information (0002,0102), whose meaning is named by Private Information Creator UID (0002,0100).
The note travels with the stored object (the source of truth, so ``reindex`` keeps it), needs no
index column, and leaves the data set itself, and so the DICOM JSON metadata, untouched. It
describes the stored object: an instance sent in another syntax does not carry it.
"""

from __future__ import annotations

from pydicom.dataset import Dataset

# A UUID-derived UID (PS3.5 B.2) naming "the transfer syntax this object was received in".
CREATOR_UID = "2.25.193923037457986864863047971980588404334"
_CREATOR = 0x00020100
_INFORMATION = 0x00020102


def record(file_meta: Dataset, received_syntax: str) -> None:
    """Note ``received_syntax`` in ``file_meta`` (an OB value: the UID, padded to even length
    with NUL as UIDs are, PS3.5 9.1)."""
    value = received_syntax.encode("ascii")
    file_meta.add_new(_CREATOR, "UI", CREATOR_UID)
    file_meta.add_new(_INFORMATION, "OB", value + b"\0" * (len(value) % 2))


def recorded(file_meta: Dataset) -> str | None:
    """The received syntax noted by :func:`record`, or None (another creator's note, or none)."""
    if _CREATOR not in file_meta or str(file_meta[_CREATOR].value) != CREATOR_UID or _INFORMATION not in file_meta:
        return None
    value = file_meta[_INFORMATION].value
    return bytes(value).rstrip(b"\0 ").decode("ascii", "replace") if isinstance(value, bytes) else None


def forget(file_meta: Dataset) -> None:
    """Drop the note: the object is being sent in another syntax than the stored one."""
    if recorded(file_meta) is not None:
        del file_meta[_CREATOR]
        del file_meta[_INFORMATION]
