"""A header-read deadline for uvicorn connections (slowloris defence).

uvicorn arms its keep-alive timer only after a response, and cancels it on the first byte of
the next request; nothing bounds how long a client may take to *send* a request head, nor how
long a fresh connection may stay silent. A client trickling one header byte every few seconds
holds a connection (and a file descriptor) forever, and a few thousand of them exhaust the
server. This protocol subclass closes a connection whose request head is not complete within
``header_timeout`` seconds of the connection opening or of the first byte of a keep-alive
request; the deadline is absolute, so trickled bytes do not extend it. Idle keep-alive
connections remain bounded by uvicorn's own ``timeout_keep_alive``.

It works on uvicorn's httptools and h11 protocols alike, through the attributes they share
(``cycle``, ``loop``, ``transport``): a new request head completed when ``cycle`` changes.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _Base
except ImportError:  # pragma: no cover - httptools comes with uvicorn[standard]
    _Base = H11Protocol  # type: ignore[assignment,misc]


class HeaderDeadlineProtocol(_Base):
    """uvicorn's HTTP/1.1 protocol with a deadline on reading each request head."""

    header_timeout: float = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._cycle_at_arm: object = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        cycle = self.cycle
        if self._deadline is None and (cycle is None or cycle.response_complete):
            self._arm()  # the first bytes of a keep-alive request: its head is now being read
        super().data_received(data)
        if self._deadline is not None and self.cycle is not self._cycle_at_arm:
            self._disarm()  # a request head completed and started a new cycle

    def _arm(self) -> None:
        self._disarm()
        self._cycle_at_arm = self.cycle
        self._deadline = self.loop.call_later(self.header_timeout, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self.transport.close()


def protocol_with_deadline(header_timeout: float) -> type[asyncio.Protocol]:
    """A protocol class for ``uvicorn.Config(http=...)`` with the given deadline."""
    return type("GatewayHttpProtocol", (HeaderDeadlineProtocol,), {"header_timeout": header_timeout})
