"""The request body limit, for every route (pure ASGI middleware).

A declared Content-Length over the limit is refused before any of the body is read; a chunked
(or lying) body is counted as it is received and refused as soon as it passes the limit, so at
most the limit plus one chunk is ever read. The refusal is raised from ``receive`` as
:class:`PayloadTooLarge`: the consumer's cleanup runs (STOW spool files are deleted) and the
error handler answers 413 with ``Connection: close``, so the rest of the body is not drained.

A body that stalls for ``body_timeout`` seconds between chunks is answered 408 and the
connection closed: a slow client cannot hold a request (and its spool file) open forever. Nor
can one that trickles a byte before each gap would expire: once the body has been waited for
``body_timeout`` seconds in all, it must have averaged ``min_body_rate`` bytes per second of
waiting, or it is answered 408 too. Only time spent waiting for the client counts, so a slow
store behind the gateway never cuts an upload.
"""

from __future__ import annotations

import time

import anyio
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import PayloadTooLarge, RequestTimeout
from gateway.http.errors import error_response


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int, body_timeout: float, min_body_rate: float) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.body_timeout = body_timeout
        self.min_body_rate = min_body_rate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > limit:
            reason = f"request body of {int(declared)} bytes exceeds the limit of {limit}"
            await error_response(413, reason, {"Connection": "close"})(scope, receive, send)
            return
        received = 0
        failed = False
        has_body = declared not in (None, "0") or Headers(scope=scope).get("transfer-encoding") is not None

        body_done = False
        waited_in_all = 0.0  # seconds spent waiting for body chunks

        async def limited_receive() -> Message:
            nonlocal received, failed, body_done, waited_in_all
            if body_done:
                # After the body only http.disconnect can come, possibly long after (streaming
                # responses listen for it): no deadline on that wait.
                return await receive()
            # The rate allowance: the grace period plus the time the bytes so far justify.
            allowance = self.body_timeout + received / self.min_body_rate - waited_in_all
            wait = max(0.0, min(self.body_timeout, allowance))
            started = time.monotonic()
            with anyio.move_on_after(wait) as waited:
                message = await receive()
            waited_in_all += time.monotonic() - started
            if waited.cancelled_caught:
                failed = True
                if wait < self.body_timeout:
                    raise RequestTimeout(f"request body arrived slower than {self.min_body_rate:g} bytes per second")
                raise RequestTimeout(f"no request body received for {self.body_timeout:g} seconds")
            if message["type"] == "http.request":
                body_done = not message.get("more_body", False)
                received += len(message.get("body", b""))
                if received > limit:
                    failed = True
                    raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
            return message

        async def closing_send(message: Message) -> None:
            # An error answered before the body was read whole (a limit, a malformed part):
            # close rather than drain the rest of an upload nobody will read.
            unread = failed or (message.get("status", 200) >= 400 and not body_done and has_body)
            if message["type"] == "http.response.start" and unread:
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"connection", b"close")]
            await send(message)

        await self.app(scope, limited_receive, closing_send)
