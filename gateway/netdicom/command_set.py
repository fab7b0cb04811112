"""The command sets of the messages a C-MOVE or C-GET sends once per instance, encoded directly.

pynetdicom builds each command set as a pydicom Dataset (validating every value) and encodes it;
for a C-STORE request and a pending C-MOVE/C-GET response per instance that was about a
millisecond of a sub-operation's ~3 ms; the C-STORE response of every instance received is
built the same way. These functions write the same bytes: group 0000 in
Implicit VR Little Endian (PS3.7 6.3.1), elements in tag order, each value padded to an even
length (UI with NUL, AE with a space: PS3.5 6.2), the Command Group Length first (PS3.7 E.1).
The fields are those pynetdicom writes for these messages (PS3.7 9.3.1.1 C-STORE-RQ, 9.3.1.2
C-STORE-RSP, 9.3.3.2 C-GET-RSP, 9.3.4.2 C-MOVE-RSP), so the bytes are identical (tests/test_netdicom.py compares).
"""

from __future__ import annotations

import struct

__all__ = ["C_GET_RSP", "C_MOVE_RSP", "c_store_rq", "c_store_rsp", "retrieve_rsp"]

C_STORE_RQ = 0x0001
C_STORE_RSP = 0x8001
C_GET_RSP = 0x8010
C_MOVE_RSP = 0x8021
DATA_SET_PRESENT = 0x0001  # Command Data Set Type: any value but 0x0101 (pynetdicom's choice)
NO_DATA_SET = 0x0101


def c_store_rq(
    *,
    sop_class_uid: str,
    sop_instance_uid: str,
    message_id: int,
    priority: int,
    originator_aet: str | None,
    originator_id: int | None,
) -> bytes:
    """A C-STORE-RQ command set announcing a data set."""
    elements = [
        _ui(0x0002, sop_class_uid),
        _us(0x0100, C_STORE_RQ),
        _us(0x0110, message_id),
        _us(0x0700, priority),
        _us(0x0800, DATA_SET_PRESENT),
        _ui(0x1000, sop_instance_uid),
    ]
    if originator_aet is not None:
        elements.append(_ae(0x1030, originator_aet))
    if originator_id is not None:
        elements.append(_us(0x1031, originator_id))
    return _group(elements)


def c_store_rsp(*, sop_class_uid: str, sop_instance_uid: str, responding_to: int, status: int) -> bytes:
    """A C-STORE-RSP command set without an Error Comment or Offending Element (PS3.7 9.3.1.2)."""
    return _group(
        [
            _ui(0x0002, sop_class_uid),
            _us(0x0100, C_STORE_RSP),
            _us(0x0120, responding_to),
            _us(0x0800, NO_DATA_SET),
            _us(0x0900, status),
            _ui(0x1000, sop_instance_uid),
        ]
    )


def retrieve_rsp(
    command_field: int,
    *,
    sop_class_uid: str,
    responding_to: int,
    status: int,
    remaining: int,
    completed: int,
    failed: int,
    warning: int,
) -> bytes:
    """A C-GET-RSP or C-MOVE-RSP command set without an identifier (a pending response)."""
    return _group(
        [
            _ui(0x0002, sop_class_uid),
            _us(0x0100, command_field),
            _us(0x0120, responding_to),
            _us(0x0800, NO_DATA_SET),
            _us(0x0900, status),
            _us(0x1020, remaining),
            _us(0x1021, completed),
            _us(0x1022, failed),
            _us(0x1023, warning),
        ]
    )


def _group(elements: list[bytes]) -> bytes:
    body = b"".join(elements)
    return _element(0x0000, struct.pack("<I", len(body))) + body


def _element(element: int, value: bytes) -> bytes:
    return struct.pack("<HHI", 0x0000, element, len(value)) + value


def _ui(element: int, uid: str) -> bytes:
    value = uid.encode("ascii")
    return _element(element, value + b"\0" * (len(value) % 2))


def _ae(element: int, title: str) -> bytes:
    value = title.strip().encode("ascii")
    return _element(element, value + b" " * (len(value) % 2))


def _us(element: int, number: int) -> bytes:
    return _element(element, struct.pack("<H", number))
