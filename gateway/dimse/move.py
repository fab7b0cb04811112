"""The C-MOVE SCP (PS3.4 C.4.2): instances of the store, or of a PACS through the cached
upstream retrieve, sent by C-STORE sub-operations to the ``port`` of a configured client.

:class:`MoveHandler` is a pynetdicom ``EVT_C_MOVE`` handler (pynetdicom's protocol: yield the
destination's address, then the number of sub-operations, then one ``(status, data set)`` per
sub-operation; see :mod:`gateway.dimse.retrieve`). For each request:

1. the Move Destination must be a configured client with a ``port`` (``destination_of``);
   any other is 0xA801 "move destination unknown" (PS3.4 C.4.2.1.5), before anything is read.
   A client without a ``host`` is reached at the address its own request came from, so it is a
   destination only for itself (a mobile viewer moving to itself);
2. the identifier is translated (:func:`gateway.dimse.retrieve_query.parse_retrieve`); a bad
   one is answered with its failure status and ErrorComment. pynetdicom only sends a failure
   after it associated with the destination, so that sub-association is opened (proposing
   Verification and the common storage classes) and released without a sub-operation;
3. the retrieve is planned with the peer's restriction (outside it, a study is as absent: zero
   sub-operations, final status 0x0000, as for any unknown study); an unavailable index or store
   is 0xA701 (out of resources: unable to calculate the number of matches);
4. the gateway AE (``ae_title``) associates with the destination as its own calling AE,
   proposing the SOP Classes of the instances in their stored syntaxes and uncompressed; each
   instance then goes out as read or as it arrives, in the stored syntax when the destination
   accepted it, else transcoded (:meth:`gateway.dimse.retrieve.Retriever.sub_operations`);
5. pending responses carry the remaining/completed/failed/warning counts; C-CANCEL gives
   0xFE00; the final status is 0x0000, 0xB000 with the Failed SOP Instance UID List, or 0xA702
   when every sub-operation failed.

A destination that goes away fails the remaining sub-operations at once; a requester that goes
away ends the generator (pynetdicom closes it), and with it the streams of the retrieve. The
timeouts of the sub-association (connection, ACSE, DIMSE) are those of the listener's AE.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Iterator
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import build_context, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from gateway.dimse.find import FindPeer, Searcher
from gateway.dimse.portal import LoopPortal
from gateway.dimse.retrieve import MAX_CONTEXTS, Retriever, accepted_syntaxes, generic_contexts
from gateway.dimse.retrieve_outcome import RetrieveOutcome
from gateway.dimse.retrieve_query import MOVE_SOP_CLASSES
from gateway.dimse.retrieve_run import SUCCESS, RetrieveRun
from gateway.netdicom import encoded_store
from gateway.netdicom.client_tls import client_tls_args
from gateway.services.deidentified import DeidentifiedViews
from gateway.services.retrieval import RetrievalService
from gateway.settings import PacsTls

__all__ = ["MoveHandler"]

log = logging.getLogger(__name__)

MOVE_DESTINATION_UNKNOWN = 0xA801

Destination = tuple[str | None, int, PacsTls]  # host (None: where the request came from), port, TLS
# What the sub-association that only carries a refusal proposes: anything a storage SCP accepts.
REFUSAL_CONTEXTS = [build_context(Verification), *generic_contexts()[: MAX_CONTEXTS - 1]]


class MoveHandler:
    """``EVT_C_MOVE`` handler; see the module docstring.

    ``retrieval``: the retrieval service; ``search``: the QIDO federation (counts the instances
    of a PACS flight, finds a patient's studies); ``ae_title``: the gateway's AE title, the
    calling AE of the sub-association (pynetdicom calls from the listener's AE); ``portal``: runs a
    coroutine on the gateway's event loop; ``peer_of``: the calling peer of an event;
    ``destination_of``: a Move Destination AE title → the (host, port, TLS settings) of its
    storage SCP, or None (host None: the client has no configured address; it is then a destination only for
    its own requests, at the address they come from); ``on_outcome``: called once per request
    (the listener's audit and metrics hook).
    """

    def __init__(
        self,
        retrieval: RetrievalService,
        search: Searcher,
        *,
        ae_title: str,
        portal: LoopPortal,
        peer_of: Callable[[Any], FindPeer],
        destination_of: Callable[[str], Destination | None],
        on_outcome: Callable[[RetrieveOutcome], None] | None = None,
        views: DeidentifiedViews | None = None,
    ) -> None:
        self._retriever = Retriever(retrieval, search, portal=portal, views=views)
        self._ae_title = ae_title
        self._peer_of = peer_of
        self._destination_of = destination_of
        self._on_outcome = on_outcome

    def __call__(self, event: Any) -> Iterator[Any]:
        run = RetrieveRun("C-MOVE", self._peer_of(event), self._retriever)
        target = str(event.move_destination or "").strip()
        sub_association: dict[str, Any] = {}
        try:
            destination = self._destination_of(target)
            if destination is None:
                run.status, run.comment = MOVE_DESTINATION_UNKNOWN, f"move destination {target[:16]!r} unknown"
                yield None, None  # pynetdicom answers 0xA801
                return
            host, port, tls = destination
            if host is None:
                # A client configured without a host: reachable where it calls from, so it is
                # only a destination for its own requests (a viewer moving to itself).
                if target != str(event.assoc.requestor.ae_title).strip():
                    run.status, run.comment = MOVE_DESTINATION_UNKNOWN, f"move destination {target[:16]!r} has no host"
                    yield None, None
                    return
                host = str(event.assoc.requestor.address)
            # DICOM TLS to the destination when its [[dimse_clients]] entry asks for it.
            tls_args = client_tls_args(tls, host)
            secured: dict[str, Any] = {} if tls_args is None else {"tls_args": tls_args}
            plan = run.planned(event, MOVE_SOP_CLASSES)
            if isinstance(plan, Dataset):
                yield host, port, {"contexts": REFUSAL_CONTEXTS, **secured}
                yield 1
                yield plan, None
                return

            def accepted(event: Any) -> None:
                sub_association["assoc"] = event.assoc
                # The destination only answers: its responses are read by the sending thread.
                encoded_store.answers_to(event.assoc, run.tally.answered)

            handlers = [(evt.EVT_CONN_OPEN, _tune_connection), (evt.EVT_ACCEPTED, accepted)]
            log.debug("C-MOVE from %s: %s sends %d instance(s) to %s at %s:%d", run.peer.name, self._ae_title,
                      plan.count, target, host, port)  # fmt: skip
            yield host, port, {"contexts": plan.contexts(), "evt_handlers": handlers, **secured}
            if plan.count == 0:
                run.status, run.comment = SUCCESS, ""
                yield 0  # pynetdicom answers 0x0000 without a sub-association
                return
            # pynetdicom associates with the destination now; it comes back only if it could.
            # Meanwhile the first instance is read.
            run.status, run.comment = MOVE_DESTINATION_UNKNOWN, "the destination cannot be reached"
            self._retriever.prefetch(plan)
            yield plan.count
            run.status, run.comment = SUCCESS, ""

            def receiver_up() -> bool:
                assoc = sub_association.get("assoc")
                return assoc is not None and bool(assoc.is_established)

            def accepted_now() -> dict[str, list[str]]:
                assoc = sub_association.get("assoc")
                return accepted_syntaxes(assoc.accepted_contexts if assoc is not None else ())

            yield from run.sub_operations(
                plan,
                accepted=accepted_now,
                receiver_up=receiver_up,
                cancelled=lambda: bool(event.is_cancelled),
                sends_encoded=lambda: encoded_store.installed(sub_association.get("assoc")),
            )
        except GeneratorExit:
            run.left()
            raise
        finally:
            run.finish(target, self._on_outcome)


def _tune_connection(event: Any) -> None:
    """``EVT_CONN_OPEN`` of the sub-association: disable Nagle, as on every other association of
    the gateway (PEERS.md): each C-STORE otherwise ends with a small last PDU that waits for the
    destination's delayed ACK (~40 ms per instance). And bound each socket write by the AE's
    network timeout, so a destination that stops reading cannot hold the sending thread."""
    sock = event.assoc.dul.socket
    if sock is not None and sock.socket is not None:
        sock.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        timeout = event.assoc.ae.network_timeout
        if timeout:
            sock.socket.settimeout(timeout)
