"""The File Meta Information of a received data set, encoded directly (PS3.10 7.1).

Every instance received by C-STORE gets this header twice: pynetdicom writes it at the head of
the file it receives the data set into, and :func:`gateway.dicom.received.spool_received`
builds it again to check that file before adopting it. Built by pydicom (a ``FileMetaDataset``
and ``write_file_meta_info``) that cost ~0.15 ms each time, on the two threads whose pace sets a
PACS's during a C-GET (it sends the next instance only once this one is answered). The bytes
are those pydicom writes for the same values (a test holds them together): Explicit VR Little
Endian, the group length first, UIDs padded with NUL and the version name with a space to an
even length.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from pydicom.filewriter import write_file_meta_info
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID

__all__ = ["IMPLEMENTATION_VERSION", "ReceivedMeta", "file_meta", "write_meta"]

IMPLEMENTATION_VERSION = "DICOMWEB_GW"
PREAMBLE = b"\x00" * 128 + b"DICM"  # PS3.10 7.1
_SHORT = struct.Struct("<HH2sH")  # group, element, VR, 16-bit length (UI, SH, UL)
_LONG = struct.Struct("<HH2s2xI")  # group, element, VR, reserved, 32-bit length (OB)


@dataclass(frozen=True)
class ReceivedMeta:
    """What pynetdicom's ``create_file_meta`` is given for a received data set, kept as it is
    (the stand-in :func:`gateway.dicom.received.receive_into_files` gives pynetdicom)."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str

    @classmethod
    def create(cls, *, sop_class_uid: Any, sop_instance_uid: Any, transfer_syntax: Any) -> ReceivedMeta:
        return cls(str(sop_class_uid), str(sop_instance_uid), str(transfer_syntax))


def file_meta(sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str) -> bytes:
    """The preamble, ``DICM`` and the File Meta Information group of a received data set."""
    body = b"".join(
        (
            _LONG.pack(0x0002, 0x0001, b"OB", 2) + b"\x00\x01",  # File Meta Information Version
            _text(0x0002, b"UI", sop_class_uid, b"\x00"),  # Media Storage SOP Class UID
            _text(0x0003, b"UI", sop_instance_uid, b"\x00"),  # Media Storage SOP Instance UID
            _text(0x0010, b"UI", transfer_syntax, b"\x00"),  # Transfer Syntax UID
            _text(0x0012, b"UI", PYNETDICOM_IMPLEMENTATION_UID, b"\x00"),  # Implementation Class UID
            _text(0x0013, b"SH", IMPLEMENTATION_VERSION, b" "),  # Implementation Version Name
        )
    )
    group_length = _SHORT.pack(0x0002, 0x0000, b"UL", 4) + struct.pack("<I", len(body))
    return PREAMBLE + group_length + body


def write_meta(fp: Any, meta: Any, enforce_standard: bool = True) -> None:
    """pydicom's ``write_file_meta_info`` as pynetdicom's receiving code calls it (after it wrote
    the preamble): a :class:`ReceivedMeta` is encoded here, anything else by pydicom."""
    if isinstance(meta, ReceivedMeta):
        fp.write(file_meta(meta.sop_class_uid, meta.sop_instance_uid, meta.transfer_syntax)[len(PREAMBLE) :])
        return
    write_file_meta_info(fp, meta, enforce_standard=enforce_standard)


def _text(element: int, vr: bytes, value: str, pad: bytes) -> bytes:
    encoded = value.encode("ascii")
    if len(encoded) % 2:
        encoded += pad
    return _SHORT.pack(0x0002, element, vr, len(encoded)) + encoded
