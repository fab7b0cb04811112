"""Which transfer syntax the gateway accepts for a storage context that a C-GET requester will
receive instances on (it proposes the SCP role, PS3.7 D.3.3.4).

As acceptor the gateway picks one syntax per presentation context (PS3.8 9.3.2.2), and for
pushes it follows its own order (:data:`gateway.dimse.front_door.STORE_SYNTAXES`: what it
receives is stored as sent, never degraded). On a C-GET it is the sender, and the requester
lists what it wants to receive in the order it prefers; so for those contexts the gateway
takes the requester's order, among the syntaxes it can deliver any instance in
(:data:`DELIVERABLE`): Explicit and Implicit VR Little Endian, and the lossless ones it encodes
(RLE, JPEG-LS, JPEG 2000, HTJ2K lossless). A syntax it can only send as stored (a lossy one, or
one it does not encode) is taken only when the requester lists none of those in the context,
so that an instance stored otherwise is never refused, nor lossily re-encoded, for the sake of
the requester's first choice.

Per instance (:meth:`gateway.dimse.retrieve.Retriever.sub_operations`): as stored when its
stored syntax was accepted on any context for its SOP Class (its bytes, nothing decoded), else
transcoded to the requester's most preferred accepted syntax the gateway can deliver.
"""

from __future__ import annotations

from typing import Any

from gateway.dicom.media import EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN
from gateway.dicom.transcode import LOSSLESS_ENCODABLE

__all__ = ["DELIVERABLE", "follow_requester"]

DELIVERABLE = frozenset({EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN}) | LOSSLESS_ENCODABLE


def follow_requester(assoc: Any) -> None:
    """Order this association's acceptor contexts (its own copies) of the SOP Classes the
    requester takes the SCP role for as the requester proposed them; call it from
    ``EVT_REQUESTED`` after the contexts offered to the peer are set."""
    receiving = {str(uid) for uid, item in assoc.requestor.role_selection.items() if item.scp_role}
    if not receiving:
        return
    proposed: dict[str, list[str]] = {}
    for context in assoc.requestor.primitive.presentation_context_definition_list or []:
        sop_class = str(context.abstract_syntax)
        if sop_class in receiving:
            order = proposed.setdefault(sop_class, [])
            order += [str(ts) for ts in context.transfer_syntax if str(ts) not in order]
    for context in assoc.acceptor.supported_contexts:
        wanted = proposed.get(str(context.abstract_syntax), [])
        offered = {str(ts) for ts in context.transfer_syntax}
        ranked = [ts for ts in wanted if ts in offered and ts in DELIVERABLE]
        ranked += [ts for ts in wanted if ts in offered and ts not in DELIVERABLE]
        if ranked:
            context.transfer_syntax = ranked
