"""The listener's presentation contexts, copied cheaply for each association.

pynetdicom gives every accepted association a ``copy.deepcopy`` of the server's contexts
(``RequestHandler._create_association``). The front door supports every storage SOP class with
every transfer syntax (gateway.dimse.front_door), thousands of ``UID`` objects, and
``deepcopy`` re-creates each through pydicom's validating constructor: profiled at about 60 ms
of one core per association, more than a whole C-ECHO takes otherwise. Negotiation
(``pynetdicom.presentation.negotiate_as_acceptor``) only reads the acceptor's contexts, so each
association gets its own context objects and lists while the immutable UIDs are shared.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

from pynetdicom.presentation import PresentationContext


class SharedContexts(list[PresentationContext]):
    """The server's context list; its "deep" copy copies contexts and their lists, not UIDs."""

    def __init__(self, contexts: Iterable[PresentationContext]) -> None:
        super().__init__(contexts)

    def __deepcopy__(self, memo: dict[int, Any]) -> list[PresentationContext]:
        return [_copy(cx) for cx in self]


def _copy(context: PresentationContext) -> PresentationContext:
    twin = copy.copy(context)
    twin._transfer_syntax = list(context._transfer_syntax)
    return twin


def share_contexts(server: Any) -> None:
    """Give a pynetdicom ``AssociationServer`` the cheap copy (before it serves, or at once)."""
    server.contexts = SharedContexts(server.contexts)
