"""CORS for browser viewers on other origins (OHIF), and Cross-Origin-Resource-Policy.

Starlette's CORSMiddleware meets the rules with the arguments built here: an explicit origin
allowlist (``*`` never with credentials; settings refuse it), preflights answered with
Allow-Methods, Allow-Headers (accept, authorization, content-type: what OHIF sends; range, for
the byte-range stage of progressive loading) and
Max-Age, and ``Vary: Origin`` on every response. Viewers that set COEP ``require-corp`` (OHIF
does, for SharedArrayBuffer) can load cross-origin responses only when they carry
``Cross-Origin-Resource-Policy: cross-origin``; :class:`CorpMiddleware` adds it when configured.
"""

from __future__ import annotations

from typing import Any

from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.settings import CorsSettings

ALLOW_METHODS = ("GET", "HEAD", "POST", "DELETE", "OPTIONS")
ALLOW_HEADERS = ("accept", "authorization", "content-type", "range")
# Headers a viewer may read from responses (PS3.18 8.3.4.4 Warning, frame Content-Location, ...);
# Cornerstone3D reads a frame's total size from Content-Range to pace its progressive decodes.
EXPOSE_HEADERS = (
    "Warning",
    "Content-Location",
    "Retry-After",
    "WWW-Authenticate",
    "Content-Length",
    "Content-Range",
    "Accept-Ranges",
)


class CorpMiddleware:
    def __init__(self, app: ASGIApp, *, value: str) -> None:
        self.app = app
        self.header = (b"cross-origin-resource-policy", value.encode("ascii"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_corp(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), self.header]
            await send(message)

        await self.app(scope, receive, send_with_corp)


def cors_middleware(cors: CorsSettings) -> list[Middleware]:
    stack: list[Middleware] = []
    if cors.corp:
        stack.append(Middleware(CorpMiddleware, value=cors.corp))
    if cors.origins:
        options: dict[str, Any] = {
            "allow_origins": list(cors.origins),
            "allow_methods": list(ALLOW_METHODS),
            "allow_headers": list(ALLOW_HEADERS),
            "allow_credentials": cors.allow_credentials,
            "expose_headers": list(EXPOSE_HEADERS),
            "max_age": cors.max_age,
        }
        stack.append(Middleware(CORSMiddleware, **options))
    return stack
