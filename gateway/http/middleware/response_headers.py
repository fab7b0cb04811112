"""Headers every response carries (pure ASGI middleware).

* ``X-Content-Type-Options: nosniff``: a browser never second-guesses a declared type (a DICOM
  attribute value served as bulk data is not run as HTML or script);
* ``Cache-Control: no-store`` unless the endpoint chose its own: QIDO results, metadata, error
  answers and everything else. The retrieve endpoints say ``private, no-store`` (plus
  ``no-transform`` for DICOM data), rendered images and thumbnails included: every answer is
  patient data that no cache, shared or the browser's on a shared workstation, may keep. The
  gateway's own frame and rendered caches make repeated requests cheap instead;
* ``Strict-Transport-Security: max-age=31536000`` on responses sent over HTTPS, whether the
  gateway serves TLS itself or a trusted proxy says so (``X-Forwarded-Proto: https``, applied
  to the scope by :mod:`gateway.http.middleware.forwarded`, which runs before this).
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

HSTS = (b"strict-transport-security", b"max-age=31536000")
NOSNIFF = (b"x-content-type-options", b"nosniff")
NO_STORE = (b"cache-control", b"no-store")


class ResponseHeadersMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {bytes(k).lower() for k, _ in headers}
                headers = [(k, v) for k, v in headers if bytes(k).lower() != NOSNIFF[0]] + [NOSNIFF]
                if b"cache-control" not in names:
                    headers.append(NO_STORE)
                if scope.get("scheme") == "https" and b"strict-transport-security" not in names:
                    headers.append(HSTS)
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
