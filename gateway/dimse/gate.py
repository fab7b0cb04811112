"""Association acceptance (PS3.8 7.1.1): only configured peers, on the right AE title, from
the right address, and not more at once than ``dimse.max_associations``.

The checks run in pynetdicom's ``EVT_REQUESTED`` handler, before any negotiation, and answer
an A-ASSOCIATE-RJ with the PS3.8 Table 9-21 reason:

=========================================  =====================================================
unknown calling AE title                   rejected-permanent, service-user,
                                           "calling-AE-title-not-recognized" (1, 1, 3)
a peer's AE title from another address     the same: that AE title is not recognised from there
                                           (nothing tells the caller the title exists)
called AE title not the gateway's          rejected-permanent, service-user,
                                           "called-AE-title-not-recognized" (1, 1, 7)
more than ``dimse.max_associations``       rejected-transient, service-provider (presentation),
                                           "local-limit-exceeded" (2, 3, 2)
=========================================  =====================================================

The limit is checked here too (so the rejection is logged, counted and audited like the others);
pynetdicom's own check (``AE.maximum_associations``) stays behind it.
The gate also sets the presentation contexts this peer is offered: the Query/Retrieve ones
(C-FIND, C-MOVE, C-GET) only to peers with the ``read`` scope, so a peer without it has them
rejected at negotiation ("abstract syntax not supported"); storage and verification are
offered to all (a PACS sends C-MOVE sub-operations; C-STORE without ``write`` is refused per
instance with 0x0124), and so are the storage SOP classes the listener does not know
(``also_offer``, :mod:`gateway.dimse.unknown_storage`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from typing import Any

from gateway.dimse.peers import READ, DimsePeer, DimsePeers, address_allowed

log = logging.getLogger(__name__)

REJECTED_PERMANENT = 0x01
REJECTED_TRANSIENT = 0x02
SERVICE_USER = 0x01
SERVICE_PROVIDER_PRESENTATION = 0x03
CALLING_AE_NOT_RECOGNISED = 0x03
CALLED_AE_NOT_RECOGNISED = 0x07
LOCAL_LIMIT_EXCEEDED = 0x02


class Gate:
    """``EVT_REQUESTED`` handler; see the module docstring.

    ``read_only``: the abstract syntaxes (SOP Class UIDs) offered only to ``read`` peers;
    ``on_reject(calling_ae, address, reason)``: the listener's audit and metrics hook;
    ``also_offer(assoc)``: adds contexts of its own once the peer's are set."""

    def __init__(
        self,
        peers: DimsePeers,
        *,
        ae_title: str,
        read_only: Collection[str],
        max_associations: int,
        on_reject: Callable[[str, str, str], None] | None = None,
        also_offer: Callable[[Any], None] | None = None,
    ) -> None:
        self._peers = peers
        self._ae_title = ae_title.strip()
        self._read_only = frozenset(read_only)
        self._max = max_associations
        self._on_reject = on_reject
        self._also_offer = also_offer

    def __call__(self, event: Any) -> None:
        assoc = event.assoc
        request = assoc.requestor.primitive
        calling = str(request.calling_ae_title).strip()
        called = str(request.called_ae_title).strip()
        address = str(assoc.requestor.address)
        peer = self._peers.by_calling_ae(calling)
        if peer is None:
            self._reject(assoc, calling, address, "calling AE title not recognised", CALLING_AE_NOT_RECOGNISED)
        elif not address_allowed(peer, address):
            self._reject(
                assoc, calling, address, f"calling AE title not recognised from {address}", CALLING_AE_NOT_RECOGNISED
            )
        elif called != self._ae_title:
            self._reject(assoc, calling, address, "called AE title not recognised", CALLED_AE_NOT_RECOGNISED)
        elif sum(1 for a in assoc.ae.active_associations if a.is_acceptor) > self._max:  # this one included
            self._reject(
                assoc,
                calling,
                address,
                "local limit exceeded",
                LOCAL_LIMIT_EXCEEDED,
                result=REJECTED_TRANSIENT,
                source=SERVICE_PROVIDER_PRESENTATION,
            )
        else:
            self._offer(assoc, peer)

    def _offer(self, assoc: Any, peer: DimsePeer) -> None:
        if not peer.may(READ):
            assoc.acceptor.supported_contexts = [
                cx for cx in assoc.acceptor.supported_contexts if str(cx.abstract_syntax) not in self._read_only
            ]
        if self._also_offer is not None:
            self._also_offer(assoc)

    def _reject(
        self,
        assoc: Any,
        calling: str,
        address: str,
        reason: str,
        diagnostic: int,
        *,
        result: int = REJECTED_PERMANENT,
        source: int = SERVICE_USER,
    ) -> None:
        log.warning("DIMSE association from %r at %s rejected: %s", calling, address, reason)
        assoc.acse.send_reject(result, source, diagnostic)
        assoc.kill()  # as pynetdicom does after its own rejections: the reactor never starts
        if self._on_reject is not None:
            try:
                self._on_reject(calling, address, reason)
            except Exception:
                log.exception("DIMSE rejection hook failed")
