"""pynetdicom's per-PDU and per-message log handlers, unbound when what they log is dropped.

Every association binds pynetdicom's "standard" notification handlers (``_bind_defaults``).
The PDU ones build a multi-line description of each PDU, P-DATA included, and log it at DEBUG;
the DIMSE ones describe each message and log a line at INFO for some (C-ECHO, C-STORE). Each
is unbound only when its logger would drop every line it writes, so the log stays exactly what
it was: with ``--log-level debug`` the full trace is still there.
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

_PDU = (  # DEBUG lines only
    (evt.EVT_PDU_RECV, standard_pdu_recv_handler),
    (evt.EVT_PDU_SENT, standard_pdu_sent_handler),
)
_DIMSE = (  # DEBUG and INFO lines
    (evt.EVT_DIMSE_RECV, standard_dimse_recv_handler),
    (evt.EVT_DIMSE_SENT, standard_dimse_sent_handler),
)


def quiet(assoc: Any) -> None:
    """Unbind from ``assoc`` the standard log handlers whose lines would all be dropped."""
    logger = logging.getLogger("pynetdicom._handlers")
    unbind = list(_PDU) if not logger.isEnabledFor(logging.DEBUG) else []
    if not logger.isEnabledFor(logging.INFO):
        unbind += _DIMSE
    for event, handler in unbind:
        assoc.unbind(event, handler)
