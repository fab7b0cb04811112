"""Data set fragments received straight into their file, past pynetdicom's per-PDU stack.

pynetdicom takes every P-DATA-TF PDU (PS3.8 9.3.5) through all its layers: two reads, a decode
into PDU and PDV objects, Evt10 queued for the state machine, whose action (Sta6, DT-2) makes it
a P-DATA primitive for the DIMSE provider, which writes a data set fragment to the message's
file and flushes it. A PACS that sends 16 kB PDUs (Orthanc, and DCMTK's default maximum) makes
32 of those passes per 512 kB CT image, and on a C-GET they were most of the Python a received
instance cost, on the thread whose pace sets the PACS's (it sends the next instance only once
this one is answered). Each read and write there also gives up the interpreter lock, which
the thread then waits to get back from the threads streaming the response.

A :class:`FragmentReader` (the waking reactor's ``receive``, :mod:`gateway.netdicom.reactor`)
reads instead while the data set of a C-STORE request is received into a file
(:func:`gateway.dicom.received.receive_into_files`) in Sta6: as much as the socket holds, in
one read of up to :data:`CHUNK` bytes. From what it read it takes, in order, each P-DATA-TF PDU
holding one presentation data value that is a data set fragment on the message's presentation
context, and writes the fragments to that file in one ``writev``; a PDU whose end has not
arrived yet is continued in the next read, so memory stays one read whatever the PDU length
(a PACS may send a whole data set as one PDU). Once the last fragment is in the file, the same
PDU without its data (an empty last fragment, PS3.8 E.2) is handed to pynetdicom, which
completes the message as before. The first PDU of any other kind (a command set, an A-RELEASE,
anything) is decoded and queued for the state machine exactly as pynetdicom's own read does;
either way the reader stops there until the state machine has acted on it: the order of events
is pynetdicom's. Until every byte it read has been handed on, the socket is
the reader's (pynetdicom's transport is not asked); then pynetdicom reads again as before, and
at once when the association leaves data transfer (an abort: what is held is dropped, as the
state machine would ignore it).

What differs: the association's idle timer is restarted per read rather than per PDU, and
``EVT_PDU_RECV`` for the fragments taken here is triggered without the PDU (its value went to
the file) and at most every :data:`NOTIFY_EVERY` seconds (the DIMSE watchdog notes activity
from it). A TLS socket, or pynetdicom's own PDU trace being bound (``--log-level debug``,
:mod:`gateway.netdicom.quiet`), keeps pynetdicom's reads throughout.
"""

from __future__ import annotations

import logging
import os
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
PDU_HEADER = struct.Struct(">BBL")  # PDU type, reserved, PDU length (PS3.8 9.3.1)
PDV_HEADER = struct.Struct(">LBB")  # item length, presentation context ID, message control header
HEADER = struct.Struct(">BBLLBB")  # both: a P-DATA-TF PDU of one presentation data value
CHUNK = 1 << 20  # the most read from the socket at once
IOV_MAX = 512  # fragments handed to one writev (below the system's IOV_MAX, 1024 on Linux)
# EVT_PDU_RECV for the PDUs taken here, at most this often (seconds): its handlers want to know
# that PDUs still arrive (the watchdog's stall timeout is seconds), and an event per 16 kB PDU
# cost as much as reading it.
NOTIFY_EVERY = 0.05


class FragmentReader:
    """The fast path of one association's DUL thread (see the module), called once per pass:
    None leaves the pass to pynetdicom's transport; True when it received something (bytes, or
    the end of the connection: then Evt17 is queued, as pynetdicom queues it); False when the
    socket is its own but nothing can be done now (the state machine acts first, or no byte
    is waiting)."""

    def __init__(self) -> None:
        self._pending = bytearray()  # read and not yet handed on: whole PDUs, or the start of one
        self._left = 0  # bytes of the fragment being taken that have not been read yet
        self._file: Any = None  # ... and the file they go to
        self._closing: bytes | None = None  # ... and, for the last fragment, the PDU that ends it
        self._notified = 0.0

    def __call__(self, dul: Any) -> bool | None:
        holding = bool(self._pending) or self._left > 0 or self._closing is not None
        if holding and dul.state_machine.current_state != "Sta6":
            # Aborted (by the watchdog, a cancel, the peer) with a data set half received: the
            # state machine now ignores data PDUs (PS3.8 9.2, Sta13: AA-6) and, in Sta13, closes
            # the connection once nothing more is to be read; that is pynetdicom's to do.
            self._pending.clear()
            self._left, self._closing = 0, None
            return None
        if not holding and (_receiving_file(dul) is None or not _plain(dul)):
            return None
        elif not (dul.event_queue.empty() and dul._recv_pdu.empty()):
            return False  # the state machine acts on the PDU queued before the bytes held here
        # Read more only when what is held does not end in a whole PDU for pynetdicom.
        if not self._take(dul):
            received = _read(dul.socket.socket)
            if received is None:
                return False
            if not received:
                self._pending.clear()
                self._left, self._closing = 0, None
                dul.event_queue.put("Evt17")  # the peer closed the connection (PS3.8 9.2, AA-4)
                return True
            self._pending += received
            self._take(dul)
        return True

    def _take(self, dul: Any) -> bool:
        """Write the fragments at the head of what is held to their file; queue the PDU that
        ends a data set, or the first PDU of another kind, for the state machine. Whether one
        was queued."""
        pending = self._pending
        fragments: list[memoryview] = []
        view = memoryview(pending)
        position, queued = 0, False
        try:
            while True:
                if self._left:
                    step = min(self._left, len(pending) - position)
                    if not step:
                        break
                    fragments.append(view[position : position + step])
                    position += step
                    self._left -= step
                    continue
                if self._closing is not None:  # the last fragment is in the file: end the message
                    self._write(fragments)
                    _queue(dul, self._closing)
                    self._closing, queued = None, True
                    break
                if len(pending) - position < PDU_HEADER.size:
                    break
                pdu_type, _, length = PDU_HEADER.unpack_from(pending, position)
                if pdu_type == P_DATA_TF and len(pending) - position < PDU_HEADER.size + PDV_HEADER.size:
                    break  # not yet known whether it is a fragment to take
                target = self._fragment_of(dul, pending, position, pdu_type, length)
                if target is not None:
                    if fragments and target is not self._file:
                        self._write(fragments)
                    self._file = target
                    self._left = length - PDV_HEADER.size  # the fragment: the PDU body after its PDV header
                    context_id, control = pending[position + 10], pending[position + 11]
                    if control & LAST:
                        # pynetdicom is handed the same PDU without its data, which went to the file.
                        self._closing = HEADER.pack(P_DATA_TF, 0, PDV_HEADER.size, 2, context_id, control)
                    position += PDU_HEADER.size + PDV_HEADER.size
                    continue
                end = position + PDU_HEADER.size + length
                if len(pending) < end:
                    break  # a PDU for pynetdicom, not all here yet
                self._write(fragments)
                _queue(dul, pending[position:end])
                position, queued = end, True
                break
            self._write(fragments)
        finally:
            for fragment in fragments:
                fragment.release()
            view.release()
            del pending[:position]
        if position:
            self._notify(dul)
        return queued

    @staticmethod
    def _fragment_of(dul: Any, pending: bytearray, position: int, pdu_type: int, length: int) -> Any:
        """The file the PDU at ``position`` goes to when it is a fragment to take, else None."""
        if pdu_type != P_DATA_TF or not (dul.event_queue.empty() and dul._recv_pdu.empty()):
            return None
        item_length, context_id, control = PDV_HEADER.unpack_from(pending, position + PDU_HEADER.size)
        if item_length + 4 != length or item_length < 2 or control & COMMAND:
            return None  # several values in the PDU, or a command set fragment
        message = _receiving_file(dul)
        if message is None or context_id != message.context_id:
            return None
        return message._data_set_file.file  # the NamedTemporaryFile's own buffered writer

    def _write(self, fragments: list[memoryview]) -> None:
        if not fragments:
            return
        file = self._file
        file.flush()  # what pynetdicom wrote through the buffer (the File Meta Information) first
        for start in range(0, len(fragments), IOV_MAX):
            batch = fragments[start : start + IOV_MAX]
            written = os.writev(file.fileno(), batch)
            total = sum(len(b) for b in batch)
            while written < total:  # a short write (rare on a file): the rest, in order
                rest = b"".join(batch)[written:]
                written += os.write(file.fileno(), rest[: total - written])
            for fragment in batch:
                fragment.release()
        fragments.clear()

    def _notify(self, dul: Any) -> None:
        now = time.monotonic()
        if now - self._notified >= NOTIFY_EVERY:
            self._notified = now
            evt.trigger(dul.assoc, evt.EVT_PDU_RECV, {"pdu": None})


def _receiving_file(dul: Any) -> Any:
    """The DIMSE message whose data set is being received into a file, in Sta6, else None."""
    if dul.state_machine.current_state != "Sta6" or not dul.event_queue.empty() or not dul._recv_pdu.empty():
        return None  # the state machine has something to do first: keep the order
    message = dul.assoc.dimse.message
    file = getattr(message, "_data_set_file", None)
    if file is None or file.closed or message.context_id is None:
        return None
    return message


def _plain(dul: Any) -> bool:
    """Whether ``dul``'s socket can be read here: connected, not TLS, no PDU trace bound."""
    transport = dul.socket
    sock = None if transport is None else transport.socket
    if sock is None or isinstance(sock, ssl.SSLSocket) or not transport._is_connected or sock.fileno() < 0:
        return False
    return not any(handler is standard_pdu_recv_handler for handler, _ in dul.assoc.get_handlers(evt.EVT_PDU_RECV))


def _read(sock: socket.socket) -> bytes | None:
    """What the socket holds, up to :data:`CHUNK` bytes (``b""``: the peer closed the
    connection, or it failed); None when nothing is waiting."""
    try:
        if not select.select([sock], [], [], 0)[0]:
            return None
        return sock.recv(CHUNK)
    except (OSError, ValueError) as exc:
        LOGGER.error("Connection closed before the entire PDU was received: %s", exc)
        return b""


def _queue(dul: Any, pdu: bytes | bytearray) -> None:
    """What pynetdicom's transport does with a PDU it read (``_read_pdu_data``)."""
    try:
        decoded, event = dul._decode_pdu(pdu)
    except Exception as exc:
        LOGGER.error("Unable to decode the received PDU data")
        LOGGER.exception(exc)
        dul.event_queue.put("Evt19")  # unrecognised or invalid PDU (PS3.8 9.2, AA-1)
        return
    dul.event_queue.put(event)
    dul._recv_pdu.put(decoded)
