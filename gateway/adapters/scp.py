"""The gateway's Storage SCP (PS3.4 Annex B) for C-MOVE sub-operations, and the one place a
received C-STORE data set becomes a spooled Part 10 file.

A C-MOVE asks the PACS to open its own association to the gateway and C-STORE each instance
(PS3.4 C.4.2.3). The SCP accepts associations only from the configured PACS AE titles (others
are rejected with "calling AE title not recognised", PS3.8 9.3.4), and hands each instance to
the retrieve waiting for it, found by the C-STORE request's Move Originator Message ID and the
sending AE (PS3.7 9.1.1.1). A PACS that omits the Move Originator fields is routed by its AE
title when it has exactly one move in progress; an instance nobody waits for is refused.

A move the gateway gave up on (timeout, lost connection) may leave the PACS's association here
stuck in the middle of a PDU when the network went silent; :meth:`StorageScp.done` then aborts
that PACS's associations unless another move from it is still in progress, so no thread or
socket waits for a peer that is gone.
"""

from __future__ import annotations

import itertools
import logging
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

from pydicom.dataset import FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID
from pynetdicom import AE, PYNETDICOM_IMPLEMENTATION_UID, StoragePresentationContexts, evt

from gateway.adapters.dimse_pool import set_nodelay
from gateway.adapters.dimse_watchdog import abort_now
from gateway.ports import ReceivedInstance

log = logging.getLogger(__name__)

Sink = Callable[[ReceivedInstance], None]

# Storage statuses sent back (PS3.4 B.2.3 / PS3.7 C.5).
STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_NOT_AUTHORIZED = 0x0124
IMPLEMENTATION_VERSION = "DICOMWEB_GW"


def spool_received(event: Any, spool_dir: Path) -> ReceivedInstance:
    """Write the C-STORE request's data set as a Part 10 file (PS3.10 7.1), without decoding it.

    The File Meta Information is written here, deterministically (no Source AE title, no time):
    the same data set from any PACS becomes the same bytes, so caching it twice is idempotent.
    """
    request = event.request
    syntax = UID(str(event.context.transfer_syntax))
    sop_uid = str(request.AffectedSOPInstanceUID)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(str(request.AffectedSOPClassUID))
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = syntax
    meta.ImplementationClassUID = PYNETDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION
    header = BytesIO()
    header.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(header, meta, enforce_standard=True)  # type: ignore[arg-type]
    data: BytesIO = request.DataSet
    spool_dir.mkdir(parents=True, exist_ok=True)
    path = spool_dir / f"recv-{uuid.uuid4().hex}.dcm"
    with path.open("wb") as f:
        f.write(header.getbuffer())
        f.write(data.getbuffer())
    return ReceivedInstance(path=path, sop_uid=sop_uid, transfer_syntax=str(syntax))


@dataclass
class _Move:
    calling_ae: str
    message_id: int
    sink: Sink


class StorageScp:
    """Receives C-MOVE sub-operations on ``host:port`` as ``ae_title``; see the module docstring.

    ``known_aes`` are the AE titles of the PACS allowed to store. Thread-safe.
    """

    def __init__(
        self, *, ae_title: str, host: str, port: int, spool_dir: Path, known_aes: list[str], syntaxes: list[str | UID]
    ) -> None:
        self.ae_title = ae_title
        self.host = host
        self.port = port
        self._spool_dir = spool_dir
        self._known = known_aes
        self._syntaxes = syntaxes
        self._lock = threading.Lock()
        self._moves: dict[tuple[str, int], _Move] = {}
        self._inbound: dict[str, set[Any]] = {}  # calling AE title -> its open associations
        self._ids = itertools.count(1)
        self._server: Any = None
        self.refused = 0  # instances nobody was waiting for (a counter for tests and logs)

    def start(self) -> None:
        ae = AE(ae_title=self.ae_title)
        ae.require_calling_aet = list(self._known)
        ae.maximum_pdu_size = 0
        for context in StoragePresentationContexts:
            ae.add_supported_context(str(context.abstract_syntax), list(self._syntaxes))
        self._server = ae.start_server(
            (self.host, self.port),
            block=False,
            evt_handlers=[
                (evt.EVT_CONN_OPEN, set_nodelay),
                (evt.EVT_ACCEPTED, self._on_accepted),
                (evt.EVT_CONN_CLOSE, self._on_closed),
                (evt.EVT_C_STORE, self._on_store),
            ],
        )
        log.info("storage SCP %s listening on %s:%d for C-MOVE", self.ae_title, self.host, self.port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    # -- routing ------------------------------------------------------------------------------

    def expect(self, calling_ae: str, sink: Sink) -> int:
        """Register a C-MOVE about to be sent to ``calling_ae``; returns the Message ID to use."""
        with self._lock:
            while True:
                message_id = next(self._ids) % 65535 + 1  # PS3.7 E.1: Message ID is 1-65535 (US)
                key = (calling_ae.strip(), message_id)
                if key not in self._moves:
                    self._moves[key] = _Move(calling_ae.strip(), message_id, sink)
                    return message_id

    def done(self, calling_ae: str, message_id: int, *, failed: bool = False) -> None:
        """The move has ended. ``failed``: the gateway gave up on it, so the PACS's associations
        are aborted (without waiting for the PACS) unless another of its moves is in progress."""
        calling_ae = calling_ae.strip()
        with self._lock:
            self._moves.pop((calling_ae, message_id), None)
            busy = any(m.calling_ae == calling_ae for m in self._moves.values())
            stale = list(self._inbound.get(calling_ae, ())) if failed and not busy else []
        for assoc in stale:
            log.info("aborting the C-MOVE sub-association from %s: the move failed", calling_ae)
            abort_now(assoc)

    def _on_accepted(self, event: Any) -> None:
        calling = str(event.assoc.requestor.ae_title).strip()
        with self._lock:
            self._inbound.setdefault(calling, set()).add(event.assoc)

    def _on_closed(self, event: Any) -> None:
        with self._lock:
            for associations in self._inbound.values():
                associations.discard(event.assoc)

    def _route(self, calling_ae: str, originator_ae: str | None, message_id: int | None) -> _Move | None:
        with self._lock:
            if message_id is not None:
                move = self._moves.get((calling_ae, message_id))
                if move is not None and (not originator_ae or originator_ae.strip() == self.ae_title.strip()):
                    return move
            candidates = [m for m in self._moves.values() if m.calling_ae == calling_ae]
            return candidates[0] if len(candidates) == 1 and message_id is None else None

    def _on_store(self, event: Any) -> int:
        request = event.request
        calling = str(event.assoc.requestor.ae_title).strip()
        move = self._route(calling, request.MoveOriginatorApplicationEntityTitle, request.MoveOriginatorMessageID)
        if move is None:
            self.refused += 1
            log.warning(
                "refused C-STORE of %s from %s: no C-MOVE of this gateway is waiting for it",
                request.AffectedSOPInstanceUID,
                calling,
            )
            return STATUS_NOT_AUTHORIZED
        try:
            item = spool_received(event, self._spool_dir)
        except OSError as exc:
            log.error("cannot spool C-STORE from %s: %s", calling, exc)
            return STATUS_OUT_OF_RESOURCES
        try:
            move.sink(item)
        except Exception as exc:  # the retrieve ended meanwhile: nobody will consume the file
            item.path.unlink(missing_ok=True)
            log.warning("dropped C-STORE of %s from %s: %s", item.sop_uid, calling, exc)
            return STATUS_OUT_OF_RESOURCES
        return STATUS_SUCCESS
