"""Limits on what a client may make a uvicorn connection hold before the app sees a request:
a deadline on the request head (slowloris), a cap on its size and header count, and a cap on
open connections.

uvicorn arms its keep-alive timer only after a response, and cancels it on the first byte of
the next request; nothing bounds how long a client may take to *send* a request head, nor how
long a fresh connection may stay silent. A client trickling one header byte every few seconds
holds a connection (and a file descriptor) forever, and a few thousand of them exhaust the
server. This protocol subclass closes a connection whose request head is not complete within
``header_timeout`` seconds of the connection opening or of the first byte of a keep-alive
request; the deadline is absolute, so trickled bytes do not extend it. Idle keep-alive
connections remain bounded by uvicorn's own ``timeout_keep_alive``.

Nor does anything bound a head's *size*: httptools keeps every header line it parses, so a
client streaming header lines fast makes the process buffer them all before authentication
can answer (eight such connections took a gateway past 2 GB in ten seconds). Here the bytes of
a head are counted as they arrive and at most ``max_head_bytes`` of them are ever given to the
parser; a head that is not complete by then, or that has more than ``max_header_fields``
header lines, is answered ``431 Request Header Fields Too Large`` and the connection closed.

``max_connections`` bounds how many connections are open at once (uvicorn's
``limit_concurrency`` does not: it answers 503 only after reading a whole head, and counts
connections it has already accepted and buffered). A connection past the cap is answered 503
at once, without reading from it, and closed.

It works on uvicorn's httptools and h11 protocols alike, through the attributes they share
(``cycle``, ``loop``, ``transport``, ``connections``): a new request head completed when
``cycle`` changes. The header-line count is httptools' (``on_header``); h11 bounds a head by
its own ``max_incomplete_event_size``, which the server sets to ``max_head_bytes``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from uvicorn.protocols.http.h11_impl import H11Protocol

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _Base
except ImportError:  # pragma: no cover - httptools comes with uvicorn[standard]
    _Base = H11Protocol  # type: ignore[assignment,misc]


LINGER_SECONDS = 1.0  # after answering 431 / 503: input is read and dropped this long, then closed


class HeadTooLarge(Exception):
    """Raised from the parser's header callback past ``max_header_fields`` (httptools turns it
    into a parser error, answered 431 instead of uvicorn's 400)."""


def _plain_answer(status: int, reason: str, extra: bytes = b"") -> bytes:
    body = orjson.dumps({"status": status, "reason": reason})
    phrase = {431: b"Request Header Fields Too Large", 503: b"Service Unavailable"}[status]
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
        b"x-content-type-options: nosniff\r\ncache-control: no-store\r\n%sconnection: close\r\n\r\n"
        % (status, phrase, len(body), extra)
    ) + body


class HeaderDeadlineProtocol(_Base):
    """uvicorn's HTTP/1.1 protocol with a deadline and size caps on each request head, and a
    cap on open connections."""

    header_timeout: float = 10.0
    max_head_bytes: int = 64 << 10
    max_header_fields: int = 100
    max_connections: int = 1000

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._cycle_at_arm: object = None
        self._head_bytes = 0
        self._header_fields = 0
        self._refused = False  # answered by this class: nothing more is read

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            self._answer_and_close(_plain_answer(503, "too many open connections", b"retry-after: 1\r\n"))
            return
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused or self.transport.is_closing():
            return
        cycle = self.cycle
        if self._deadline is None and (cycle is None or cycle.response_complete):
            self._arm()  # the first bytes of a keep-alive request: its head is now being read
        if self._deadline is not None:  # reading a head: give the parser no more than the cap
            room = self.max_head_bytes - self._head_bytes
            if len(data) > room:
                self._head_bytes = self.max_head_bytes
                self._feed(data[:room])
                if self._refused or self.transport.is_closing():
                    return
                if self._deadline is not None:
                    self._refuse_head(f"request head exceeds {self.max_head_bytes} bytes")
                    return
                data = data[room:]
            else:
                self._head_bytes += len(data)
        if data and not self._refused and not self.transport.is_closing():
            self._feed(data)

    def _feed(self, data: bytes) -> None:
        super().data_received(data)
        if self._deadline is not None and self.cycle is not self._cycle_at_arm:
            self._disarm()  # a request head completed and started a new cycle

    # httptools' header callback (h11 has none: see the module docstring).
    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_fields += 1
        if self._header_fields > self.max_header_fields:
            raise HeadTooLarge
        super().on_header(name, value)

    def send_400_response(self, msg: str) -> None:
        if self._header_fields > self.max_header_fields:
            self._refuse_head(f"request head has more than {self.max_header_fields} header fields")
            return
        super().send_400_response(msg)

    def _refuse_head(self, reason: str) -> None:
        self._disarm()
        self._answer_and_close(_plain_answer(431, reason))

    def _answer_and_close(self, answer: bytes) -> None:
        """Send ``answer``, then discard whatever else arrives for a moment before closing:
        closing a socket with unread data makes the kernel reset the connection, and the client
        could lose the answer. Nothing is buffered meanwhile."""
        self._refused = True
        self.transport.write(answer)
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_SECONDS, self._close)

    def _close(self) -> None:
        if not self.transport.is_closing():
            self.transport.close()

    def _arm(self) -> None:
        self._disarm()
        self._cycle_at_arm = self.cycle
        self._head_bytes = 0
        self._header_fields = 0
        self._deadline = self.loop.call_later(self.header_timeout, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self.transport.close()


def protocol_with_limits(
    *, header_timeout: float, max_head_bytes: int, max_header_fields: int, max_connections: int
) -> type[asyncio.Protocol]:
    """A protocol class for ``uvicorn.Config(http=...)`` with the given limits."""
    return type(
        "GatewayHttpProtocol",
        (HeaderDeadlineProtocol,),
        {
            "header_timeout": header_timeout,
            "max_head_bytes": max_head_bytes,
            "max_header_fields": max_header_fields,
            "max_connections": max_connections,
        },
    )
