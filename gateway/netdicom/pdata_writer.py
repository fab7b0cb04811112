"""DIMSE messages written to the association's socket by the thread that sends them.

pynetdicom hands every P-DATA primitive of a message to the DUL thread, which takes it through
the state machine (PS3.8 9.2, DT-1: Sta6 stays Sta6) and encodes and sends its PDU: a thread
round trip per PDU, and for a C-MOVE every pending response waited for its turn on the
requester's DUL thread too. :func:`install` gives a tuned association a ``send_msg`` that
writes the message's P-DATA-TF PDUs itself (PS3.8 9.3.5: one presentation data value per PDU,
each fragment at most the peer's Maximum Length Received minus its 6 header bytes, command
first; PS3.8 E.2: the message control header says command or data set, and last fragment or
not), with ``sendmsg`` from slices of the encoded bytes (no copy). A TLS association, or one
not established, keeps pynetdicom's path.

The DUL thread keeps sending everything else (A-ASSOCIATE, A-RELEASE, A-ABORT): the waking
reactor (:mod:`gateway.netdicom.reactor`) holds the association's send lock while it handles a
primitive or a PDU, and a message is written only while holding it with nothing queued for the
DUL, so two messages never interleave on the wire (PS3.8 9.3.5: no fragment of another message
until all fragments of the current one are sent).
"""

from __future__ import annotations

import logging
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

from pynetdicom import evt
from pynetdicom.dimse import _RQ_TO_MESSAGE, _RSP_TO_MESSAGE
from pynetdicom.dimse_primitives import C_GET, C_MOVE, C_STORE
from pynetdicom.dsutils import encode

from gateway.netdicom import command_set

__all__ = ["install", "write_message"]

LOGGER = logging.getLogger("pynetdicom.dimse")

P_DATA_TF = 0x04
COMMAND, LAST = 0x01, 0x02  # PS3.8 E.2: the message control header's bits
IOVEC_BATCH = 64  # PDUs handed to one sendmsg (well below IOV_MAX)
QUIET_WAIT = 0.0002  # between looks at a DUL still sending what was queued before


def install(assoc: Any, send_lock: threading.Lock) -> None:
    """Give ``assoc``'s DIMSE provider a ``send_msg`` that writes the message itself;
    ``send_lock``: the one its DUL thread holds while it handles a primitive or a PDU."""
    dimse = assoc.dimse
    original = dimse.send_msg

    def send_msg(primitive: Any, context_id: int) -> None:
        if not direct(assoc) or getattr(primitive, "_dataset_path", None) is not None:
            original(primitive, context_id)
            return
        timeout = dimse.dimse_timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        per_instance = _per_instance_response(primitive) if not logged(assoc) else None
        if per_instance is not None:  # one per instance stored or sent: encoded directly
            if not write_message(assoc, send_lock, context_id, per_instance, None, deadline):
                assoc.dul.event_queue.put("Evt17")
            return
        if primitive.MessageIDBeingRespondedTo is None:
            message = _RQ_TO_MESSAGE[primitive.__class__]()
        else:
            message = _RSP_TO_MESSAGE[primitive.__class__]()
        message.primitive_to_message(primitive)
        message.context_id = context_id
        evt.trigger(assoc, evt.EVT_DIMSE_SENT, {"message": message})
        command = encode(message.command_set, True, True)  # PS3.7 6.3.1: Implicit VR Little Endian
        if command is None:
            raise ValueError("Failed to encode the DIMSE command set")
        data = message.data_set.getvalue() if message.data_set is not None else b""
        if not write_message(assoc, send_lock, context_id, command, memoryview(data) if data else None, deadline):
            assoc.dul.event_queue.put("Evt17")  # as pynetdicom's transport does when a send fails

    dimse.send_msg = send_msg


def logged(assoc: Any) -> bool:
    """Whether a handler wants each sent message (pynetdicom's log of them, at INFO or DEBUG:
    see :mod:`gateway.netdicom.quiet`); then messages are built as pynetdicom builds them."""
    return bool(assoc.get_handlers(evt.EVT_DIMSE_SENT))


def _per_instance_response(primitive: Any) -> bytes | None:
    """The command set of a C-STORE response, or a pending C-MOVE or C-GET response, without
    an identifier or error fields; ``None`` for any other message."""
    if isinstance(primitive, C_STORE):
        return _store_response(primitive)
    if isinstance(primitive, C_MOVE):
        field = command_set.C_MOVE_RSP
    elif isinstance(primitive, C_GET):
        field = command_set.C_GET_RSP
    else:
        return None
    counts = (
        primitive.NumberOfRemainingSuboperations,
        primitive.NumberOfCompletedSuboperations,
        primitive.NumberOfFailedSuboperations,
        primitive.NumberOfWarningSuboperations,
    )
    if (
        primitive.MessageIDBeingRespondedTo is None
        or primitive.Status not in (0xFF00, 0xFF01)
        or primitive.Identifier is not None
        or not primitive.AffectedSOPClassUID
        or None in counts
    ):
        return None
    remaining, completed, failed, warning = counts
    return command_set.retrieve_rsp(
        field,
        sop_class_uid=str(primitive.AffectedSOPClassUID),
        responding_to=int(primitive.MessageIDBeingRespondedTo),
        status=int(primitive.Status),
        remaining=int(remaining),
        completed=int(completed),
        failed=int(failed),
        warning=int(warning),
    )


def _store_response(primitive: Any) -> bytes | None:
    if (
        primitive.MessageIDBeingRespondedTo is None
        or primitive.Status is None
        or primitive.ErrorComment is not None
        or primitive.OffendingElement is not None
        or not primitive.AffectedSOPClassUID
        or not primitive.AffectedSOPInstanceUID
    ):
        return None
    return command_set.c_store_rsp(
        sop_class_uid=str(primitive.AffectedSOPClassUID),
        sop_instance_uid=str(primitive.AffectedSOPInstanceUID),
        responding_to=int(primitive.MessageIDBeingRespondedTo),
        status=int(primitive.Status),
    )


def direct(assoc: Any) -> bool:
    """Whether ``assoc`` can take a message written to its socket now."""
    sock = getattr(assoc.dul.socket, "socket", None)
    return bool(assoc.is_established) and sock is not None and not isinstance(sock, ssl.SSLSocket)


def write_message(
    assoc: Any,
    send_lock: threading.Lock,
    context_id: int,
    command: bytes,
    data: memoryview | None,
    deadline: float | None,
    then: Callable[[], object] | None = None,
) -> bool:
    """Write one message (``command``, then ``data`` if any) as P-DATA-TF PDUs once nothing else
    is being sent; whether all of it went out before ``deadline``. ``then`` is called once it
    has, still holding ``send_lock`` (the DUL thread neither sends nor reads meanwhile)."""
    dul = assoc.dul
    sock: socket.socket = dul.socket.socket
    limit = assoc.dimse.maximum_pdu_size  # the peer's Maximum Length Received; 0: no limit
    while True:
        if not (assoc.is_established and dul.is_alive()):
            return False  # what is still queued will never be sent: neither will this
        with send_lock:
            if dul.to_provider_queue.empty():
                buffers = _pdus(context_id, memoryview(command), COMMAND, limit)
                if data is not None:
                    buffers += _pdus(context_id, data, 0, limit)
                if not _send_all(sock, buffers, deadline):
                    return False
                if then is not None:
                    then()
                return True
        if deadline is not None and time.monotonic() > deadline:
            return False
        time.sleep(QUIET_WAIT)


def _pdus(context_id: int, payload: memoryview, kind: int, limit: int) -> list[memoryview | bytes]:
    """The buffers of the P-DATA-TF PDUs carrying ``payload``, one fragment per PDU."""
    step = limit - 6 if limit else max(len(payload), 1)
    buffers: list[memoryview | bytes] = []
    for start in range(0, max(len(payload), 1), step):
        fragment = payload[start : start + step]
        control = kind | (LAST if start + step >= len(payload) else 0)
        # PDU type, reserved, PDU length; PDV item length, context ID, message control header.
        buffers.append(struct.pack(">BBLLBB", P_DATA_TF, 0, 6 + len(fragment), 2 + len(fragment), context_id, control))
        buffers.append(fragment)
    return buffers


def _send_all(sock: socket.socket, buffers: list[memoryview | bytes], deadline: float | None) -> bool:
    """``sendmsg`` without blocking the socket for others (MSG_DONTWAIT), waiting for room until
    ``deadline``; whether everything was sent."""
    views = [memoryview(b) for b in buffers]
    while views:
        try:
            sent = sock.sendmsg(views[:IOVEC_BATCH], [], socket.MSG_DONTWAIT)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            # The text, not the exception: a log record kept by a handler (a test's capture, an
            # in-memory buffer) would keep its traceback, and through it every caller's frame:
            # pynetdicom's C-MOVE loop holds the handler's generator, whose outcome is reported
            # only when it is closed, so the move would end when the garbage collector runs.
            LOGGER.error("Connection closed while sending a DIMSE message: %s", str(exc))
            return False
        while sent and views:
            if sent >= len(views[0]):
                sent -= len(views[0])
                views.pop(0)
            else:
                views[0] = views[0][sent:]
                sent = 0
        if views:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            _, writable, _ = select.select([], [sock], [], remaining)
            if not writable:
                return False
    return True
