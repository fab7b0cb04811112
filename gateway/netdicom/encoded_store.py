"""C-STORE of a data set that is already encoded, written to the peer as it is (PS3.7 9.1.1).

pynetdicom's ``Association.send_c_store`` takes a decoded data set, encodes it again, cuts the
encoding into fragments of the peer's maximum PDU length and hands each P-DATA primitive to the
DUL thread, which takes it through the state machine (PS3.8 9.2, DT-1) and encodes its PDU: for
a 512 KiB CT slice to a peer taking 16 KiB PDUs, 32 round trips between two threads and a full
re-encoding of what the store already holds encoded. A C-MOVE or C-GET of a series spent most of
its time there (measured: 3.3 ms per slice for pynetdicom against 0.9 ms for DCMTK's storescu).

:class:`EncodedDataset` carries the stored Part 10 bytes to :func:`install`'s ``send_c_store``,
which writes the command set and the data set as P-DATA-TF PDUs (PS3.8 9.3.5: each PDU one
presentation data value, each fragment at most the peer's Maximum Length Received minus its 6
header bytes, command first; PS3.8 E.2: the message control header says command or data set,
and last fragment or not) straight to the socket, with ``sendmsg`` from slices of those bytes (no
copy), and then waits for the C-STORE response exactly as pynetdicom does. Anything else (a data
set of another kind, a TLS association) goes to pynetdicom's own ``send_c_store``.

The PDUs are written by :mod:`gateway.netdicom.pdata_writer`, as every other DIMSE message of
a tuned association is. On an association given :func:`answers_to` (a C-MOVE sub-association:
the peer only answers), the response is read off the socket by the same thread
(:mod:`gateway.netdicom.store_answer`), and every answer, however read, is reported to the
callback given there.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable
from io import BytesIO
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID
from pynetdicom import evt
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode

from gateway.netdicom import acceptor, command_set, reactor, store_answer
from gateway.netdicom.pdata_writer import logged, write_message

__all__ = ["EncodedDataset", "answers_to", "install", "installed"]

LOGGER = logging.getLogger("pynetdicom.assoc")
ANSWERS = "_gateway_store_answers"
# Handlers that want what pynetdicom's DUL reads (its log at DEBUG or INFO, see
# gateway.netdicom.quiet): with any bound, responses are read by pynetdicom.
RECEIVE_EVENTS = (evt.EVT_PDU_RECV, evt.EVT_DATA_RECV, evt.EVT_DIMSE_RECV)


class EncodedDataset(Dataset):
    """A data set to send as stored: ``part10`` holds a Part 10 file whose data set starts at
    ``offset``, encoded in ``syntax``. It has the SOP Class and Instance UIDs (what pynetdicom's
    Query/Retrieve service and the gateway's tally read) and the File Meta Transfer Syntax (what
    pynetdicom's ``send_c_store`` chooses a context by); :meth:`decoded` is the full data set."""

    def __init__(self, part10: bytes, offset: int, *, sop_class_uid: str, sop_uid: str, syntax: str) -> None:
        super().__init__()
        self.SOPClassUID = UID(sop_class_uid)
        self.SOPInstanceUID = UID(sop_uid)
        self.file_meta = FileMetaDataset()
        self.file_meta.TransferSyntaxUID = UID(syntax)
        self._part10 = part10
        self._offset = offset

    @property
    def encoded(self) -> memoryview:
        """The data set's bytes, as sent."""
        return memoryview(self._part10)[self._offset :]

    @property
    def syntax(self) -> UID:
        return UID(self.file_meta.TransferSyntaxUID)

    def decoded(self) -> Dataset:
        return dcmread(BytesIO(self._part10))


def install(assoc: Any, send_lock: threading.Lock) -> None:
    """Give ``assoc`` a ``send_c_store`` that writes an :class:`EncodedDataset` itself;
    ``send_lock``: the one its DUL thread holds while it handles a primitive or a PDU."""
    original = assoc.send_c_store

    def send_c_store(
        dataset: Any,
        msg_id: int = 1,
        priority: int = 2,
        originator_aet: str | None = None,
        originator_id: int | None = None,
    ) -> Dataset:
        # pynetdicom also sends a file given by its path (the gateway's forwarding to a PACS):
        # only a data set's SOP Instance UID is known here, and only its answer is reported.
        sop = str(dataset.get("SOPInstanceUID", "")) if isinstance(dataset, Dataset) else None
        if isinstance(dataset, EncodedDataset) and isinstance(getattr(assoc.dul.socket, "socket", None), ssl.SSLSocket):
            dataset = dataset.decoded()  # TLS: pynetdicom's path (sendmsg has no TLS)
        if isinstance(dataset, EncodedDataset):
            status = _send_encoded(assoc, send_lock, dataset, msg_id, priority, originator_aet, originator_id)
        else:
            status = original(
                dataset, msg_id=msg_id, priority=priority, originator_aet=originator_aet, originator_id=originator_id
            )
        on_answer = getattr(assoc, ANSWERS, None)
        if on_answer is not None and sop is not None and "Status" in status:
            on_answer(sop, int(status.Status))
        return status

    assoc.send_c_store = send_c_store
    assoc._gateway_sends_encoded = True


def answers_to(assoc: Any, on_answer: Callable[[str, int], None]) -> None:
    """Read the C-STORE responses of ``assoc`` (a tuned association whose peer only answers:
    a C-MOVE sub-association) on the sending thread, and report each, as
    ``on_answer(SOP Instance UID sent, status)``; a request without an answer is not reported."""
    setattr(assoc, ANSWERS, on_answer)


def installed(assoc: Any) -> bool:
    """Whether ``assoc`` sends an :class:`EncodedDataset` as it is (pynetdicom's own
    ``send_c_store`` would encode only its two UIDs)."""
    return getattr(assoc, "_gateway_sends_encoded", False) is True


def _logged_command(
    assoc: Any,
    dataset: EncodedDataset,
    msg_id: int,
    priority: int,
    originator_aet: str | None,
    originator_id: int | None,
) -> bytes:
    """The C-STORE-RQ command set as pynetdicom's message, announced to its EVT_DIMSE_SENT
    handlers as pynetdicom announces each message it sends."""
    request = C_STORE()
    request.MessageID = msg_id
    request.Priority = priority
    request.MoveOriginatorApplicationEntityTitle = originator_aet
    request.MoveOriginatorMessageID = originator_id
    request.AffectedSOPClassUID = dataset.SOPClassUID
    request.AffectedSOPInstanceUID = dataset.SOPInstanceUID
    request.DataSet = BytesIO()  # a data set follows (Command Data Set Type, PS3.7 9.3.1.1)
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    evt.trigger(assoc, evt.EVT_DIMSE_SENT, {"message": message})
    command = encode(message.command_set, True, True)  # PS3.7 6.3.1: Implicit VR Little Endian
    if command is None:
        raise ValueError("Failed to encode the C-STORE request")
    return command


def _send_encoded(
    assoc: Any,
    send_lock: threading.Lock,
    dataset: EncodedDataset,
    msg_id: int,
    priority: int,
    originator_aet: str | None,
    originator_id: int | None,
) -> Dataset:
    """What pynetdicom's ``send_c_store`` does, with the message written by :func:`write_message`."""
    if not assoc.is_established:
        raise RuntimeError("The association with a peer SCP must be established before sending a C-STORE request")
    # No conversion: the bytes are in ``syntax``, so only a context of that syntax can carry them.
    context = assoc._get_valid_context(dataset.SOPClassUID, dataset.syntax, "scu", allow_conversion=False)
    if logged(assoc):  # built as pynetdicom builds it, for its log of each message
        command = _logged_command(assoc, dataset, msg_id, priority, originator_aet, originator_id)
    else:
        command = command_set.c_store_rq(
            sop_class_uid=str(dataset.SOPClassUID),
            sop_instance_uid=str(dataset.SOPInstanceUID),
            message_id=msg_id,
            priority=priority,
            originator_aet=originator_aet,
            originator_id=originator_id,
        )

    direct = getattr(assoc, ANSWERS, None) is not None and not any(assoc.get_handlers(e) for e in RECEIVE_EVENTS)
    # As pynetdicom: the association's own reactor must not take the response off the queue
    # (should the DUL read it after all).
    acceptor.pause(assoc)
    try:
        timeout = assoc.dimse.dimse_timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        message = (int(context.context_id), command, dataset.encoded)
        written, got = _write(assoc, send_lock, message, msg_id, deadline, read_answer=direct)
        if not written:
            assoc.abort()
            raise ConnectionError("the C-STORE request could not be written to the peer")
        if isinstance(got, store_answer.Answer):
            return got.status
        if got == store_answer.BROKEN:
            LOGGER.error("No valid C-STORE response from the peer")
            assoc.abort()
            return Dataset()
        if got == store_answer.TIMED_OUT:
            response = None
        else:
            _, response = assoc.dimse.get_msg(block=True)
    finally:
        assoc._reactor_checkpoint.set()
    if response is None:  # the DIMSE timeout expired
        assoc._handle_no_response()
        return Dataset()
    status: Dataset = assoc._check_received_status(response)
    return status


def _write(
    assoc: Any,
    send_lock: threading.Lock,
    message: tuple[int, bytes, memoryview],
    msg_id: int,
    deadline: float | None,
    *,
    read_answer: bool,
) -> tuple[bool, store_answer.Answer | str | None]:
    """Write the C-STORE request ``message`` (context ID, command set, data set); whether it
    went out, and (``read_answer``) what :func:`gateway.netdicom.store_answer.read` then found,
    read before the send lock is let go. Meanwhile the DUL's wait leaves the socket alone; it is
    woken when what came is its to read."""
    context_id, command, data = message
    if not read_answer:
        return write_message(assoc, send_lock, context_id, command, data, deadline), None
    got: list[store_answer.Answer | str] = []
    reactor.sender_reads(assoc.dul, True)
    try:
        written = write_message(
            assoc,
            send_lock,
            context_id,
            command,
            data,
            deadline,
            lambda: got.append(store_answer.read(assoc, msg_id, deadline)),
        )
    finally:
        reactor.sender_reads(assoc.dul, False)
    answer = got[0] if got else None
    if not isinstance(answer, store_answer.Answer):
        reactor.wake(assoc.dul)  # what came is the DUL's to read (or the association ends)
    return written, answer
