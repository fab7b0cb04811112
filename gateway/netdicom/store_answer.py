"""The C-STORE response of a C-MOVE sub-operation, read from the socket by the thread that sent
the request (PS3.7 9.3.1.2).

Through pynetdicom, each response of a C-MOVE sub-association is read by the DUL thread, taken
through the state machine (PS3.8 9.2, DT-2), decoded into a pydicom data set and a primitive,
queued for the DIMSE provider, and handed back to the sending thread, waking the association's
own thread on the way: three thread hops and two decodings for six elements of
group 0000, a third of the gateway's CPU time per instance of a C-MOVE. On that association the
peer is a Storage SCP that only answers what it is sent, and the sender waits for each answer
before the next request (no asynchronous operations are negotiated: PS3.7 D.3.3.3), so the next
P-DATA-TF PDU on the wire is the answer: :func:`read` takes it straight off the socket while
the sender still holds the association's send lock (the DUL thread reads nothing then), and
decodes only the Command Field, the Message ID Being Responded To and the Status.

Anything else stays pynetdicom's: a PDU that is not P-DATA-TF (an A-ABORT, an A-RELEASE-RQ)
is left on the socket for the DUL (:data:`LEAVE`); a response with a status other than
success is decoded by pynetdicom for its optional elements (PS3.7 C.4); a message that is not
the response to the request, or a data set fragment, is a protocol error the caller aborts on
(:data:`BROKEN`).
"""

from __future__ import annotations

import select
import socket
import struct
import time
from dataclasses import dataclass
from io import BytesIO
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dsutils import decode

__all__ = ["BROKEN", "LEAVE", "TIMED_OUT", "Answer", "read"]

P_DATA_TF = 0x04
COMMAND, LAST = 0x01, 0x02  # PS3.8 E.2: the message control header's bits
C_STORE_RSP_FIELD = 0x8001
SUCCESS = 0x0000
# An answer is six elements; a PDU (or a command set) beyond this is not one (the peer's PDU length is no bound:
# it is what the gateway proposed, up to megabytes).
MAX_ANSWER_PDU = 64 * 1024
SLICE = 0.05  # seconds: how often a wait looks whether the association is being ended


@dataclass(frozen=True)
class Answer:
    """A C-STORE response read off the socket: its status data set (as pynetdicom's
    ``send_c_store`` returns it)."""

    status: Dataset


LEAVE = "leave"  # nothing read: pynetdicom's DUL is to read what comes
BROKEN = "broken"  # no answer (the connection closed, or what came is not one): abort
TIMED_OUT = "timed out"  # nothing came before the deadline (the DIMSE timeout)


def read(assoc: Any, message_id: int, deadline: float | None) -> Answer | str:
    """The answer to the C-STORE request ``message_id`` just written to ``assoc``'s socket,
    read before ``deadline``; to be called holding the association's send lock."""
    sock: socket.socket = assoc.dul.socket.socket
    command = bytearray()
    started = False  # once a byte of a PDU is taken, the whole message must be
    while True:
        if not started:
            coming = _coming(assoc, sock, deadline)
            if isinstance(coming, str):
                return coming
        started = True
        header = _exact(sock, 6, deadline)
        if header is None:
            return BROKEN
        kind, length = struct.unpack(">BxL", header)
        if kind != P_DATA_TF or length > MAX_ANSWER_PDU:
            return BROKEN
        body = _exact(sock, length, deadline)
        if body is None:
            return BROKEN
        assoc.dul._idle_timer.restart()  # as pynetdicom's DUL does for each PDU it receives
        last = False
        offset = 0
        while offset + 6 <= len(body):  # PS3.8 9.3.5.1: presentation data value items
            item_length, _, control = struct.unpack_from(">LBB", body, offset)
            if item_length < 2 or offset + 4 + item_length > len(body) or not control & COMMAND or last:
                return BROKEN  # a data set fragment, or anything after the last fragment
            command += body[offset + 6 : offset + 4 + item_length]
            last = bool(control & LAST)
            offset += 4 + item_length
        if offset != len(body) or len(command) > MAX_ANSWER_PDU:
            return BROKEN
        if last:
            return _answer(assoc, bytes(command), message_id)


def _answer(assoc: Any, command: bytes, message_id: int) -> Answer | str:
    fields = _fields(command)
    if fields is None:
        return BROKEN
    field, responding_to, status = fields
    if field != C_STORE_RSP_FIELD or responding_to != message_id or status is None:
        return BROKEN
    if status == SUCCESS:
        ds = Dataset()
        ds.Status = SUCCESS
        return Answer(ds)
    # A warning or failure may carry an Error Comment, an Offending Element...: pynetdicom's
    # decoding keeps them (it is rare).
    message = C_STORE_RSP()
    message.command_set = decode(BytesIO(command), True, True)
    primitive = message.message_to_primitive()
    return Answer(assoc._check_received_status(primitive))


def _fields(command: bytes) -> tuple[int | None, int | None, int | None] | None:
    """Command Field, Message ID Being Responded To and Status of a command set (group 0000,
    Implicit VR Little Endian: PS3.7 6.3.1), or ``None`` if it does not parse."""
    field = responding_to = status = None
    offset = 0
    while offset + 8 <= len(command):
        group, element, length = struct.unpack_from("<HHL", command, offset)
        offset += 8
        if group != 0x0000 or offset + length > len(command):
            return None
        if length == 2 and element in (0x0100, 0x0120, 0x0900):
            (value,) = struct.unpack_from("<H", command, offset)
            if element == 0x0100:
                field = value
            elif element == 0x0120:
                responding_to = value
            else:
                status = value
        offset += length
    if offset != len(command):
        return None
    return field, responding_to, status


def _coming(assoc: Any, sock: socket.socket, deadline: float | None) -> int | str:
    """Wait until a PDU starts on the socket: :data:`P_DATA_TF` when it is one; :data:`LEAVE` when
    another PDU comes or the association is being ended (a primitive queued for the DUL, which
    waits for the send lock held meanwhile); :data:`BROKEN` when the connection closed;
    :data:`TIMED_OUT` once ``deadline`` passed."""
    dul = assoc.dul
    while True:
        if not dul.to_provider_queue.empty() or not dul.is_alive():
            return LEAVE
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            return TIMED_OUT
        wait = SLICE if remaining is None else min(SLICE, remaining)
        try:
            ready, _, _ = select.select([sock], [], [], wait)
            if not ready:
                continue
            first = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            continue
        except (OSError, ValueError):
            return BROKEN
        if not first:
            return BROKEN
        return P_DATA_TF if first[0] == P_DATA_TF else LEAVE


def _exact(sock: socket.socket, size: int, deadline: float | None) -> bytearray | None:
    """``size`` bytes from ``sock`` before ``deadline``, or ``None`` (closed, timed out)."""
    buffer = bytearray(size)
    view = memoryview(buffer)
    got = 0
    try:
        while got < size:
            try:
                n = sock.recv_into(view[got:], size - got, socket.MSG_DONTWAIT)
            except BlockingIOError:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                ready, _, _ = select.select([sock], [], [], remaining)
                if not ready:
                    return None
                continue
            except OSError:
                return None
            if not n:
                return None
            got += n
    finally:
        view.release()
    return buffer
