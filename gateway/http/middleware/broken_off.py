"""Responses that break off after they started, logged as what they are.

A streamed response (a series from the store or from a PACS) has sent its status line when a
later read fails: the PACS went silent, the store stopped. All that is left is to end the
connection without completing the body, so the client sees an incomplete message, never a
complete-looking one. Raising from the app does that, but uvicorn then logs the failure as a
crash with a traceback ("Exception in ASGI application"), which for an expected upstream fault
is noise that buries real bugs. So, outside the whole application: a :class:`GatewayError` after
the response started is logged as one warning line, and the app returns without completing the
response; uvicorn then closes the connection (its own one-line complaint about that is dropped
for these requests only). Anything that is not a GatewayError is re-raised untouched: a bug
keeps its traceback.
"""

from __future__ import annotations

import contextvars
import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.http.errors import gateway_error_behind

log = logging.getLogger("gateway.http")

# uvicorn's message when an app returns without completing its response (uvicorn/protocols).
_INCOMPLETE = "ASGI callable returned without completing response."
# Set in the request's own task when it broke off on purpose; uvicorn logs from that same task.
_broke_off: contextvars.ContextVar[bool] = contextvars.ContextVar("broke_off", default=False)


class _ExpectedIncomplete(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (_broke_off.get() and record.getMessage() == _INCOMPLETE)


_FILTER = _ExpectedIncomplete()


class BrokenOffResponses:
    """ASGI wrapper around the application; see the module docstring."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        uvicorn_log = logging.getLogger("uvicorn.error")
        if _FILTER not in uvicorn_log.filters:
            uvicorn_log.addFilter(_FILTER)

    def __getattr__(self, name: str) -> object:
        return getattr(self.app, name)  # app.state and the like, for whoever holds the wrapper

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking)
        except Exception as exc:
            cause = gateway_error_behind(exc)
            if not started or cause is None:
                raise
            log.warning(
                "%s %s: the response broke off after it started: %s", scope["method"], scope["path"], cause.reason
            )
            _broke_off.set(True)
