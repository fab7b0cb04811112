"""Content coding of DICOM JSON answers (pure ASGI middleware): QIDO results and metadata go out
gzip-, br- or zstd-coded when the client accepts it (gateway.http.content_coding) and the body
is worth it.

Only ``application/dicom+json`` and ``application/json`` bodies are coded: pixel data, frames,
bulk data, Part 10 instances and every multipart body pass untouched. Every JSON answer says
``Vary: Accept-Encoding``. A body that arrives in one piece below ``min_bytes`` goes out as it is
(a coded small body is no shorter on the wire); a streamed body (a large QIDO answer) is coded
chunk by chunk, each flushed so the client can decode as it arrives, holding one chunk at a time.
"""

from __future__ import annotations

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.http.content_coding import Encoder, chosen_coding, new_encoder

JSON_MEDIA_TYPES = frozenset({"application/dicom+json", "application/json"})
# Statuses whose body is not the representation (a range of it, or none).
_UNCODED_STATUSES = frozenset({204, 206, 304})


class CompressionMiddleware:
    def __init__(self, app: ASGIApp, *, min_bytes: int) -> None:
        self.app = app
        self.min_bytes = min_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        coding = None
        if scope["method"] != "HEAD":
            coding = chosen_coding(Headers(scope=scope).get("accept-encoding"))
        await self.app(scope, receive, _Coder(send, coding, self.min_bytes).send)


class _Coder:
    """One response: passed through, or coded once its first body chunk shows it is worth it."""

    def __init__(self, send: Send, coding: str | None, min_bytes: int) -> None:
        self._send = send
        self._coding = coding
        self._min_bytes = min_bytes
        self._start: Message | None = None  # held until the first body chunk
        self._encoder: Encoder | None = None
        self._passing = True

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            await self._on_start(message)
        elif message["type"] == "http.response.body" and not self._passing:
            await self._on_body(message)
        else:
            await self._send(message)

    async def _on_start(self, message: Message) -> None:
        headers = MutableHeaders(raw=list(message.get("headers", [])))
        media_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media_type not in JSON_MEDIA_TYPES or message["status"] in _UNCODED_STATUSES:
            await self._send(message)
            return
        headers.add_vary_header("Accept-Encoding")
        message = {**message, "headers": headers.raw}
        if self._coding is None or "content-encoding" in headers:
            await self._send(message)
            return
        self._start = message
        self._passing = False

    async def _on_body(self, message: Message) -> None:
        body: bytes = message.get("body", b"")
        more: bool = message.get("more_body", False)
        if self._start is not None:
            start, self._start = self._start, None
            if not more and len(body) < self._min_bytes:
                self._passing = True
                await self._send(start)
                await self._send(message)
                return
            assert self._coding is not None
            self._encoder = new_encoder(self._coding)
            coded = self._code(body, more)
            headers = MutableHeaders(raw=start["headers"])
            del headers["content-length"]
            if not more:  # the whole body in one piece: its coded length is known
                headers["content-length"] = str(len(coded))
            headers["content-encoding"] = self._coding
            await self._send({**start, "headers": headers.raw})
        else:
            coded = self._code(body, more)
        if coded or not more:
            await self._send({"type": "http.response.body", "body": coded, "more_body": more})

    def _code(self, body: bytes, more: bool) -> bytes:
        assert self._encoder is not None
        return self._encoder.compress(body) + (self._encoder.flush() if more else self._encoder.finish())
