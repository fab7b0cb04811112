"""Where the gateway's own C-MOVEs arrive: the C-STORE sub-operations a ``[[pacs]]`` node sends
to the DIMSE listener (PS3.4 C.4.2.3), handed to the retrieve waiting for them.

The DIMSE adapter (``gateway.adapters.dimse``) knows this only as a
:class:`gateway.ports.MoveReceiver`: it registers a move with :meth:`MoveReceiver.expect`
before sending the C-MOVE, and each instance is found by the C-STORE request's Move Originator
Message ID and the sending AE (PS3.7 9.1.1.1). A PACS that omits the Move Originator fields is
routed by its AE title when it has exactly one move in progress; an instance nobody waits for
is refused (0x0124).

A move the gateway gave up on (timeout, lost connection) may leave the PACS's association here
stuck in the middle of a PDU when the network went silent; :meth:`MoveReceiver.done` then
aborts that PACS's associations unless another move from it is still in progress, so no thread
or socket waits for a peer that is gone.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.dicom.received import spool_received
from gateway.ports import ReceivedInstance

log = logging.getLogger(__name__)

Sink = Callable[[ReceivedInstance], None]

# Storage statuses (PS3.4 B.2.3 / PS3.7 C.5).
STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_NOT_AUTHORIZED = 0x0124


@dataclass
class _Move:
    calling_ae: str
    message_id: int
    sink: Sink


class MoveReceiver:
    """Routes C-MOVE sub-operations; see the module docstring. Thread-safe.

    ``abort``: aborts an association at once without waiting for its peer (given by the
    composition root: the DIMSE adapter's watchdog has the one way to do that)."""

    def __init__(self, *, ae_title: str, spool_dir: Path, abort: Callable[[Any], None]) -> None:
        self._ae_title = ae_title
        self._spool_dir = spool_dir
        self._abort = abort
        self._lock = threading.Lock()
        self._moves: dict[tuple[str, int], _Move] = {}
        self._inbound: dict[str, set[Any]] = {}  # calling AE title -> its open associations
        self._ids = itertools.count(1)
        self.refused = 0  # instances nobody was waiting for (a counter for tests and logs)

    @property
    def ae_title(self) -> str:
        return self._ae_title

    def expect(self, calling_ae: str, sink: Sink) -> int:
        with self._lock:
            while True:
                message_id = next(self._ids) % 65535 + 1  # PS3.7 E.1: Message ID is 1-65535 (US)
                key = (calling_ae.strip(), message_id)
                if key not in self._moves:
                    self._moves[key] = _Move(calling_ae.strip(), message_id, sink)
                    return message_id

    def done(self, calling_ae: str, message_id: int, *, failed: bool = False) -> None:
        calling_ae = calling_ae.strip()
        with self._lock:
            self._moves.pop((calling_ae, message_id), None)
            busy = any(m.calling_ae == calling_ae for m in self._moves.values())
            stale = list(self._inbound.get(calling_ae, ())) if failed and not busy else []
        for assoc in stale:
            log.info("aborting the C-MOVE sub-association from %s: the move failed", calling_ae)
            self._abort(assoc)

    # -- the listener's events ----------------------------------------------------------------

    def accepted(self, event: Any) -> None:
        """``EVT_ACCEPTED``: remember the association (to abort it if its move fails)."""
        calling = str(event.assoc.requestor.ae_title).strip()
        with self._lock:
            self._inbound.setdefault(calling, set()).add(event.assoc)

    def closed(self, event: Any) -> None:
        """``EVT_CONN_CLOSE``: forget it."""
        with self._lock:
            for associations in self._inbound.values():
                associations.discard(event.assoc)

    def waiting(self, event: Any) -> bool:
        """Whether a move of this gateway waits for this C-STORE (else it is not a sub-operation)."""
        request = event.request
        calling = str(event.assoc.requestor.ae_title).strip()
        return (
            self._route(calling, request.MoveOriginatorApplicationEntityTitle, request.MoveOriginatorMessageID)
            is not None
        )

    def receive(self, event: Any) -> int:
        """The C-STORE status for a sub-operation: spooled and handed over, or refused."""
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

    def _route(self, calling_ae: str, originator_ae: str | None, message_id: int | None) -> _Move | None:
        with self._lock:
            if message_id is not None:
                move = self._moves.get((calling_ae, message_id))
                if move is not None and (not originator_ae or originator_ae.strip() == self._ae_title.strip()):
                    return move
            candidates = [m for m in self._moves.values() if m.calling_ae == calling_ae]
            return candidates[0] if len(candidates) == 1 and message_id is None else None
