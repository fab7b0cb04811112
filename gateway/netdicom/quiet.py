"""pynetdicom's per-PDU and per-message log handlers, unbound unless its debug log is on.

Every association binds pynetdicom's "standard" notification handlers (``_bind_defaults``),
which build a multi-line description of each PDU and DIMSE message before ``LOGGER.debug``
drops it: measurable per P-DATA PDU on a C-STORE stream. With ``pynetdicom`` logging at DEBUG
(``--log-level debug``) they stay, so the trace is still there when asked for.
"""

from __future__ import annotations

import logging
from typing import Any

from pynetdicom import evt
from pynetdicom._handlers import (
    standard_dimse_recv_handler,
    standard_dimse_sent_handler,
    standard_pdu_recv_handler,
    standard_pdu_sent_handler,
)

_STANDARD = (
    (evt.EVT_DIMSE_RECV, standard_dimse_recv_handler),
    (evt.EVT_DIMSE_SENT, standard_dimse_sent_handler),
    (evt.EVT_PDU_RECV, standard_pdu_recv_handler),
    (evt.EVT_PDU_SENT, standard_pdu_sent_handler),
)


def quiet(assoc: Any) -> None:
    """Unbind the standard log handlers from ``assoc`` unless pynetdicom logs at DEBUG."""
    if logging.getLogger("pynetdicom").isEnabledFor(logging.DEBUG):
        return
    for event, handler in _STANDARD:
        assoc.unbind(event, handler)
