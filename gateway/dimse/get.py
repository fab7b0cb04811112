"""The C-GET SCP (PS3.4 C.4.3): the instances a request names, sent by C-STORE sub-operations
on the requester's own association, for viewers behind NAT that cannot take a connection back.

:class:`GetHandler` is a pynetdicom ``EVT_C_GET`` handler (pynetdicom's protocol: yield the
number of sub-operations, then one ``(status, data set)`` per sub-operation; see
:mod:`gateway.dimse.retrieve`). The sub-operations use the storage presentation contexts the
requester proposed with SCP/SCU role selection (PS3.7 D.3.3.4: the requester takes the Storage
SCP role, the gateway the SCU role); each instance goes out in its stored syntax when that
context was accepted for its SOP Class, else transcoded to Explicit or Implicit VR Little
Endian; an instance no accepted context can carry is a failed sub-operation (PS3.4 C.4.3.3.1:
the SCU must have negotiated the contexts it wants the instances on).

A bad identifier is answered with its failure status and ErrorComment (PS3.4 C.4.3.1.3); an
unavailable index or store is 0xA701; a study outside the peer's restriction is as absent
(zero sub-operations, 0x0000). Pending responses carry the counts; C-CANCEL gives 0xFE00; the
final status is 0x0000, 0xB000 with the Failed SOP Instance UID List, or 0xA702. A requester
that goes away ends the generator (pynetdicom stops once the association is down).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

from pynetdicom import evt

from gateway.dimse.find import FindPeer, Portal, Searcher
from gateway.dimse.retrieve import (
    CANCELLED,
    Plan,
    RetrieveOutcome,
    Retriever,
    Tally,
    accepted_syntaxes,
    failure,
    final_status,
    identifier_of,
    outcome,
    report,
)
from gateway.dimse.retrieve_query import GET_SOP_CLASSES, RetrieveFailure, parse_retrieve
from gateway.errors import ServiceUnavailable
from gateway.services.retrieval import RetrievalService

__all__ = ["GetHandler"]

log = logging.getLogger(__name__)

SUCCESS = 0x0000
OUT_OF_RESOURCES_MATCHES = 0xA701
UNABLE_TO_PROCESS_INTERNAL = 0xC001


class GetHandler:
    """``EVT_C_GET`` handler; see the module docstring. The arguments are those of
    :class:`gateway.dimse.move.MoveHandler` without a destination."""

    def __init__(
        self,
        retrieval: RetrievalService,
        search: Searcher,
        *,
        ae_title: str,
        portal: Portal,
        peer_of: Callable[[Any], FindPeer],
        on_outcome: Callable[[RetrieveOutcome], None] | None = None,
    ) -> None:
        self._retriever = Retriever(retrieval, search, portal=portal)
        self._ae_title = ae_title
        self._peer_of = peer_of
        self._on_outcome = on_outcome

    def __call__(self, event: Any) -> Iterator[Any]:
        started = time.monotonic()
        peer = self._peer_of(event)
        level, status, comment = "", UNABLE_TO_PROCESS_INTERNAL, "internal error"
        tally = Tally()
        plan: Plan | None = None
        assoc = event.assoc
        assoc.bind(evt.EVT_DIMSE_RECV, tally.on_received)
        try:
            try:
                request = parse_retrieve(identifier_of(event), str(event.request.AffectedSOPClassUID), GET_SOP_CLASSES)
                level = request.level
                plan = self._retriever.plan(request, peer.restriction)
            except RetrieveFailure as exc:
                status, comment = exc.status, exc.comment
                yield 1
                yield failure(exc.status, exc.comment, exc.offending), None
                return
            except ServiceUnavailable as exc:
                log.warning("C-GET from %s: %s", peer.name, exc.reason)
                status, comment = OUT_OF_RESOURCES_MATCHES, "the index or store is unavailable"
                yield 1
                yield failure(status, comment), None
                return
            except Exception:
                log.exception("C-GET from %s failed", peer.name)
                yield 1
                yield failure(status, comment), None
                return
            status, comment = SUCCESS, ""
            log.debug("C-GET from %s: %s sends %d instance(s) back", peer.name, self._ae_title, plan.count)
            yield plan.count
            if plan.count == 0:
                return
            for result in self._retriever.sub_operations(
                plan,
                accepted=lambda: accepted_syntaxes(assoc.accepted_contexts, as_scu=True),
                receiver_up=lambda: bool(assoc.is_established),
                cancelled=lambda: bool(event.is_cancelled),
                tally=tally,
            ):
                if result[0] == CANCELLED:
                    status = CANCELLED
                yield result
            if status != CANCELLED:
                status = final_status(plan.count, tally)
        except GeneratorExit:
            # pynetdicom closed the generator: the requester left mid-retrieve.
            if status == SUCCESS and plan is not None and plan.count > 0:
                status, comment = CANCELLED, "association ended"
            raise
        finally:
            assoc.unbind(evt.EVT_DIMSE_RECV, tally.on_received)
            if plan is not None:
                self._retriever.close(plan)
            done = outcome("C-GET", peer.name, level, peer.name, status, tally, plan, started, comment)
            report(done, self._on_outcome)
