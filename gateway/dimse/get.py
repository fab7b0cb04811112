"""The C-GET SCP (PS3.4 C.4.3): the instances a request names, sent by C-STORE sub-operations
on the requester's own association, for viewers behind NAT that cannot take a connection back.

:class:`GetHandler` is a pynetdicom ``EVT_C_GET`` handler (pynetdicom's protocol: yield the
number of sub-operations, then one ``(status, data set)`` per sub-operation; see
:mod:`gateway.dimse.retrieve`). The sub-operations use the storage presentation contexts the
requester proposed with SCP/SCU role selection (PS3.7 D.3.3.4: the requester takes the Storage
SCP role, the gateway the SCU role), with the syntax of each chosen in the requester's order
(:mod:`gateway.dimse.get_syntaxes`); each instance goes out in its stored syntax when that was
accepted for its SOP Class, else transcoded to the requester's most preferred accepted syntax;
an instance no accepted context can carry is a failed sub-operation (PS3.4 C.4.3.3.1: the SCU
must have negotiated the contexts it wants the instances on).

A bad identifier is answered with its failure status and ErrorComment (PS3.4 C.4.3.1.3); an
unavailable index or store is 0xA701; a study outside the peer's restriction is as absent
(zero sub-operations, 0x0000). Pending responses carry the counts; C-CANCEL gives 0xFE00; the
final status is 0x0000, 0xB000 with the Failed SOP Instance UID List, or 0xA702. A requester
that goes away ends the generator (pynetdicom stops once the association is down).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import evt

from gateway.dimse.find import FindPeer, Searcher
from gateway.dimse.portal import LoopPortal
from gateway.dimse.retrieve import Retriever, accepted_syntaxes
from gateway.dimse.retrieve_outcome import RetrieveOutcome
from gateway.dimse.retrieve_query import GET_SOP_CLASSES
from gateway.dimse.retrieve_run import SUCCESS, RetrieveRun
from gateway.netdicom import encoded_store
from gateway.services.deidentified import DeidentifiedViews
from gateway.services.retrieval import RetrievalService

__all__ = ["GetHandler"]

log = logging.getLogger(__name__)


class GetHandler:
    """``EVT_C_GET`` handler; see the module docstring. The arguments are those of
    :class:`gateway.dimse.move.MoveHandler` without a destination."""

    def __init__(
        self,
        retrieval: RetrievalService,
        search: Searcher,
        *,
        ae_title: str,
        portal: LoopPortal,
        peer_of: Callable[[Any], FindPeer],
        on_outcome: Callable[[RetrieveOutcome], None] | None = None,
        views: DeidentifiedViews | None = None,
    ) -> None:
        self._retriever = Retriever(retrieval, search, portal=portal, views=views)
        self._ae_title = ae_title
        self._peer_of = peer_of
        self._on_outcome = on_outcome

    def __call__(self, event: Any) -> Iterator[Any]:
        run = RetrieveRun("C-GET", self._peer_of(event), self._retriever)
        assoc = event.assoc
        assoc.bind(evt.EVT_DIMSE_RECV, run.tally.on_received)
        try:
            plan = run.planned(event, GET_SOP_CLASSES)
            if isinstance(plan, Dataset):
                yield 1
                yield plan, None
                return
            run.status, run.comment = SUCCESS, ""
            log.debug("C-GET from %s: %s sends %d instance(s) back", run.peer.name, self._ae_title, plan.count)
            yield plan.count
            if plan.count == 0:
                return
            yield from run.sub_operations(
                plan,
                accepted=lambda: accepted_syntaxes(assoc.accepted_contexts, as_scu=True),
                receiver_up=lambda: bool(assoc.is_established),
                cancelled=lambda: bool(event.is_cancelled),
                sends_encoded=lambda: encoded_store.installed(assoc),
            )
        except GeneratorExit:
            run.left()
            raise
        finally:
            assoc.unbind(evt.EVT_DIMSE_RECV, run.tally.on_received)
            run.finish(run.peer.name, self._on_outcome)
