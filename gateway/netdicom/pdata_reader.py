"""Data set fragments received straight into their file, past pynetdicom's per-PDU stack.

pynetdicom takes every P-DATA-TF PDU (PS3.8 9.3.5) through all its layers: it is read, decoded
into PDU and PDV objects, queued as Evt10 for the state machine, whose action (Sta6, DT-2)
makes it a P-DATA primitive for the DIMSE provider, which writes a data set fragment to the
message's file and flushes it. A PACS that sends 16 kB PDUs (Orthanc, and DCMTK's default
maximum) makes 32 of those passes per 512 kB CT image, and on a C-GET they were most of the
Python a received instance cost, on the thread whose pace sets the PACS's (it sends the next
instance only once this one is answered).

:func:`receive_fragment` takes the common PDU past all that: in Sta6, while the data set of a
C-STORE request is being received into a file (:func:`gateway.dicom.received.receive_into_files`),
a P-DATA-TF PDU holding one presentation data value that is a data set fragment, not the
last, on the message's presentation context, is read in chunks of a fixed buffer and written to
that file. The state is the one DT-2 leaves (Sta6), the file and its bytes are the same, the
association's idle timer is restarted, and ``EVT_PDU_RECV`` is triggered (the DIMSE watchdog
notes activity from it) without the PDU, whose value went to the file, and at most every
:data:`NOTIFY_EVERY` seconds. Everything else takes
pynetdicom's path as before: another PDU type, a command fragment, the last fragment (it
completes the message, which pynetdicom decodes and queues for the association's thread), a
PDU of several values, a TLS socket, and any PDU while pynetdicom's own PDU handler is bound
(``--log-level debug`` traces each PDU: :mod:`gateway.netdicom.quiet`). The PDU is only peeked
at until it is known to be taken here, so nothing is read that pynetdicom would then miss.
"""

from __future__ import annotations

import logging
import select
import socket
import ssl
import struct
import time
from typing import Any

from pynetdicom import evt
from pynetdicom._handlers import standard_pdu_recv_handler

__all__ = ["FragmentReader"]

# pynetdicom's own logger: its messages stay what they were.
LOGGER = logging.getLogger("pynetdicom.dul")

P_DATA_TF = 0x04
COMMAND, LAST = 0x01, 0x02  # PS3.8 E.2: the message control header's bits
# PDU type, reserved, PDU length; PDV item length, presentation context ID, message control header.
HEADER = struct.Struct(">BBLLBB")
CHUNK = 1 << 20  # the most of a PDU held in memory at once, however long the PACS makes its PDUs
# EVT_PDU_RECV for the PDUs taken here, at most this often (seconds): its handlers want to know
# that PDUs still arrive (the watchdog's stall timeout is seconds), and an event per 16 kB PDU
# cost as much as reading it.
NOTIFY_EVERY = 0.05


class FragmentReader:
    """The fast path of one association's DUL thread (see the module); call it once per pass."""

    def __init__(self) -> None:
        self._buffer = bytearray(CHUNK)
        self._view = memoryview(self._buffer)
        self._notified = 0.0

    def __call__(self, dul: Any) -> bool:
        """Whether a PDU was taken (read and written, or the connection found lost: then Evt17
        is queued, as pynetdicom queues it); False leaves the socket as it was."""
        target = _target(dul)
        if target is None:
            return False
        sock, message = target
        try:
            if not select.select([sock], [], [], 0)[0]:
                return False
            head = sock.recv(HEADER.size, socket.MSG_PEEK)
        except (OSError, ValueError):
            return False  # pynetdicom's path finds out and says so
        if len(head) < HEADER.size:
            return False
        pdu_type, _, pdu_length, item_length, context_id, control = HEADER.unpack(head)
        if (
            pdu_type != P_DATA_TF
            or item_length + 4 != pdu_length  # one presentation data value fills the PDU
            or item_length < 2
            or control & (COMMAND | LAST)
            or context_id != message.context_id
        ):
            return False
        if not self._copy(sock, message._data_set_file, item_length - 2):
            dul.event_queue.put("Evt17")  # as pynetdicom does when the connection ends mid-PDU
            return True
        now = time.monotonic()
        if now - self._notified >= NOTIFY_EVERY:
            self._notified = now
            evt.trigger(dul.assoc, evt.EVT_PDU_RECV, {"pdu": None})
        return True

    def _copy(self, sock: socket.socket, file: Any, length: int) -> bool:
        """Read the PDU header off ``sock``, then its ``length`` bytes of fragment into ``file``;
        whether the whole PDU arrived."""
        view = self._view
        try:
            if _read_into(sock, view[: HEADER.size]) < HEADER.size:
                return _short(0, length)
            remaining = length
            while remaining:
                want = min(remaining, CHUNK)
                got = _read_into(sock, view[:want])
                file.file.write(view[:got])  # the NamedTemporaryFile's own file: no wrapper call
                remaining -= got
                if got < want:
                    return _short(length - remaining, length)
        except (OSError, TimeoutError) as exc:
            LOGGER.error("Connection closed before the entire PDU was received: %s", exc)
            return False
        return True


def _target(dul: Any) -> tuple[socket.socket, Any] | None:
    """The socket and the message being received when a PDU could be taken here, else None."""
    if dul.state_machine.current_state != "Sta6" or not dul.event_queue.empty() or not dul._recv_pdu.empty():
        return None  # the state machine has something to do first: keep the order
    message = dul.assoc.dimse.message
    file = getattr(message, "_data_set_file", None)
    if file is None or file.closed or message.context_id is None:
        return None
    transport = dul.socket
    sock = None if transport is None else transport.socket
    if sock is None or isinstance(sock, ssl.SSLSocket) or not transport._is_connected or sock.fileno() < 0:
        return None
    if any(handler is standard_pdu_recv_handler for handler, _ in dul.assoc.get_handlers(evt.EVT_PDU_RECV)):
        return None
    return sock, message


def _read_into(sock: socket.socket, view: memoryview) -> int:
    """Fill ``view`` from ``sock``; fewer bytes only when the peer closed the connection."""
    got = 0
    while got < len(view):
        n = sock.recv_into(view[got:])
        if not n:
            break
        got += n
    return got


def _short(got: int, length: int) -> bool:
    LOGGER.error("The received PDU is shorter than expected (%d of %d bytes of its fragment received)", got, length)
    return False
