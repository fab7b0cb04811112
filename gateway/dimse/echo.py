"""C-ECHO SCP (PS3.7 9.1.5): the "test connection" of every configured peer.

Past the gate (gateway.dimse.gate) the peer is known, so the answer is always Success; what a
viewer's test proves is that the gateway accepts its AE title, from its address, on this port.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from gateway.dimse.observe import Operation
from gateway.dimse.peers import DimsePeer

SUCCESS = 0x0000


class EchoHandler:
    """``EVT_C_ECHO`` handler. ``on_outcome``: the listener's audit and metrics hook."""

    def __init__(
        self, *, peer_of: Callable[[Any], DimsePeer], on_outcome: Callable[[Operation], None] | None = None
    ) -> None:
        self._peer_of = peer_of
        self._on_outcome = on_outcome

    def __call__(self, event: Any) -> int:
        started = time.monotonic()
        peer = self._peer_of(event)
        if self._on_outcome is not None:
            self._on_outcome(
                Operation(
                    peer.name,
                    peer.ae_title,
                    str(event.assoc.requestor.address),
                    "C-ECHO",
                    SUCCESS,
                    time.monotonic() - started,
                )
            )
        return SUCCESS
