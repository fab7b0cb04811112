"""The C-STORE SCP (PS3.4 Annex B) of the front door: a DIMSE client's push goes through the same
store service as a STOW-RS part.

For each C-STORE request:

1. a sub-operation of one of the gateway's own C-MOVEs (a ``[[pacs]]`` node answering it) is
   handed to the move waiting for it (:class:`gateway.dimse.move_receiver.MoveReceiver`);
2. a peer without the ``write`` scope is refused with 0x0124 "Refused: Not Authorized", the
   general status of PS3.7 C.5.2 (PS3.4 B.2.3 lists no storage-specific code for it), with an
   ErrorComment;
3. the data set, which pynetdicom received into a file (never whole in memory:
   :func:`gateway.dicom.received.receive_into_files`), is spooled as a Part 10 file exactly as
   received, in the transfer syntax of its presentation context (nothing is decoded or
   transcoded: ``storage_compression`` is applied, as for STOW, by the store service);
4. :meth:`gateway.services.stow.StowService.store_one` parses it and writes it through the one
   instance writer: the peer's restriction (an instance outside it, or clashing with a hidden
   one, is refused as not authorised, never naming what is hidden), the patient of its study,
   duplicates (an identical re-send succeeds; another object under a stored SOP Instance UID is
   0x0111), the parse limits. Success is answered only once the instance is durable. Its index
   row's origin is the peer's, ``dimse:<name>`` as the audit names it (a STOW part's is ``stow``),
   so an operator can tell where an instance came from.

Statuses (PS3.4 B.2.3, PS3.7 C.5): 0x0000 stored; the parser's codes for what it refuses
(0xC000 cannot understand, 0xA900 data set does not match SOP Class, its SOP Instance UID not
the request's included, 0xC122 transfer syntax not supported, 0xA700 a configured limit
exceeded, a data set over ``limits.max_part_bytes`` included: the listener aborts an
association whose message grows past it as it arrives); 0x0111 duplicate; 0x0124 not
authorised; 0xA779 patient mismatch; 0xA700 when the store or index is unavailable (worth
retrying later); 0xC001 for an unexpected failure (logged). Each failure carries an ErrorComment (64 characters at
most: LO, PS3.5). A handler never raises into pynetdicom, so bad input never drops the
association.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pydicom.dataset import Dataset

from gateway.dicom.received import received_size, spool_received
from gateway.dimse.move_receiver import MoveReceiver
from gateway.dimse.observe import Operation, notify
from gateway.dimse.peers import WRITE, DimsePeer
from gateway.dimse.status import failure
from gateway.errors import ServiceUnavailable
from gateway.security.access import Restriction
from gateway.services.outcomes import FailedInstance, StoredInstance

__all__ = ["StoreHandler", "Storer"]

log = logging.getLogger(__name__)

SUCCESS = 0x0000
NOT_AUTHORIZED = 0x0124
OUT_OF_RESOURCES = 0xA700
UNABLE_TO_PROCESS_INTERNAL = 0xC001

Portal = Callable[[Coroutine[Any, Any, Any]], Any]


class Storer(Protocol):
    """The store service (StowService has this shape)."""

    async def store_one(
        self, part: Any, *, study_uid: str | None, restriction: Restriction | None = None, origin: str = "stow"
    ) -> StoredInstance | FailedInstance: ...


@dataclass(frozen=True)
class _Part:
    """A spooled C-STORE data set as the store service takes a STOW part."""

    path: Path
    content_type: str = "application/dicom"


class StoreHandler:
    """``EVT_C_STORE`` handler; see the module docstring.

    ``spool_dir``: where data sets wait while they are stored (this process's spool);
    ``on_outcome``: the listener's audit and metrics hook, once per request."""

    def __init__(
        self,
        storer: Storer,
        *,
        portal: Portal,
        peer_of: Callable[[Any], DimsePeer],
        spool_dir: Path,
        max_bytes: int,
        receiver: MoveReceiver | None = None,
        on_outcome: Callable[[Operation], None] | None = None,
    ) -> None:
        self._storer = storer
        self._portal = portal
        self._peer_of = peer_of
        self._spool_dir = spool_dir
        self._max_bytes = max_bytes
        self._receiver = receiver
        self._on_outcome = on_outcome

    def __call__(self, event: Any) -> int | Dataset:
        started = time.monotonic()
        peer = self._peer_of(event)
        pushes = peer.kind == "client" or peer.may(WRITE)
        if self._receiver is not None and (not pushes or self._receiver.waiting(event)):
            # A sub-operation of the gateway's own C-MOVE (or a PACS without the write scope
            # storing unasked: refused there, 0x0124): the retrieve it belongs to is audited, not
            # each arrival. A PACS with ``write`` pushes what no move of the gateway waits for.
            return self._receiver.receive(event)
        sop_uid = str(event.request.AffectedSOPInstanceUID or "") or None
        status, comment, stored, failed = self._store(event, peer)
        if status != SUCCESS and not failed:
            failed = [(None, sop_uid, status)]
        self._report(
            Operation(
                peer.name,
                peer.ae_title,
                str(event.assoc.requestor.address),
                "C-STORE",
                status,
                time.monotonic() - started,
                comment,
                instances=stored,
                failed=failed,
            )
        )
        return SUCCESS if status == SUCCESS else failure(status, comment)

    def _store(
        self, event: Any, peer: DimsePeer
    ) -> tuple[int, str, list[tuple[str, str, str]], list[tuple[str | None, str | None, int]]]:
        if not peer.may(WRITE):
            return NOT_AUTHORIZED, f"{peer.ae_title.strip()} may not store here (no write scope)", [], []
        if received_size(event) > self._max_bytes:
            # limits.max_part_bytes, the one-instance limit of STOW (PS3.4 B.2.3: out of resources).
            return OUT_OF_RESOURCES, "the data set is over the gateway's instance size limit", [], []
        try:
            item = spool_received(event, self._spool_dir)
        except OSError as exc:
            log.error("C-STORE from %s: cannot spool the data set: %s", peer.name, exc)
            return OUT_OF_RESOURCES, "cannot spool the data set", [], []
        except Exception:
            log.exception("C-STORE from %s: cannot read the request", peer.name)
            return UNABLE_TO_PROCESS_INTERNAL, "cannot read the request", [], []
        try:
            result = self._portal(
                self._storer.store_one(
                    _Part(item.path), study_uid=None, restriction=peer.restriction, origin=peer.origin
                )
            )
        except ServiceUnavailable as exc:
            log.warning("C-STORE from %s: %s", peer.name, exc.reason)
            return OUT_OF_RESOURCES, "the store or index is unavailable", [], []
        except Exception:
            log.exception("C-STORE from %s failed", peer.name)
            return UNABLE_TO_PROCESS_INTERNAL, "internal error", [], []
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(item.path)
        if isinstance(result, StoredInstance):
            return SUCCESS, "", [(result.study_uid, result.series_uid, result.sop_instance_uid)], []
        status = OUT_OF_RESOURCES if result.retry_after is not None else result.failure_reason
        log.info("C-STORE of %s from %s refused: 0x%04X %s", result.sop_instance_uid, peer.name, status, result.detail)
        return status, result.detail, [], [(result.study_uid, result.sop_instance_uid, status)]

    def _report(self, outcome: Operation) -> None:
        notify(self._on_outcome, outcome, "C-STORE")
