"""The outermost middleware: request id, access log and HTTP metrics; and ``GET /metrics``.

Pure ASGI (no response buffering, streaming bodies pass through untouched). For each HTTP request
it picks the request id (:func:`gateway.observability.new_request_id`), sets it for everything
that runs on the request's behalf, sends it back as ``X-Request-ID``, counts body bytes both
ways, and when the response is done records count and latency by method, route template and
status, and writes one access-log line (logger ``gateway.access``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.http.middleware.traffic import counted
from gateway.observability import (
    HTTP_BYTES,
    HTTP_DURATION,
    HTTP_IN_FLIGHT,
    HTTP_REQUESTS,
    metrics_exposition,
    new_request_id,
    request_context,
)

access_log = logging.getLogger("gateway.access")

UNMATCHED = "<unmatched>"  # one label for every path no route serves (no unbounded label values)


async def metrics(request: Request) -> Response:
    """Prometheus text exposition of :data:`gateway.observability.REGISTRY`."""
    body, content_type = metrics_exposition()
    return Response(body, media_type=content_type)


class ObservabilityMiddleware:
    def __init__(self, app: ASGIApp, *, access_log_enabled: bool = True) -> None:
        self.app = app
        self.access_log_enabled = access_log_enabled

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # The routers rewrite root_path and path_params as they descend: keep what matching needs.
        original = {k: scope[k] for k in ("type", "path", "method") if k in scope}
        original["root_path"] = scope.get("root_path", "")
        incoming = _header(scope, b"x-request-id")
        request_id = new_request_id(incoming)
        header = request_id.encode("latin-1")
        traffic, counting_receive, counting_send = counted(scope, receive, send)

        async def tagging_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                message = {**message, "headers": [*headers, (b"x-request-id", header)]}
            await counting_send(message)

        started = time.perf_counter()
        HTTP_IN_FLIGHT.inc()
        try:
            with request_context(request_id):
                await self.app(scope, counting_receive, tagging_send)
        finally:
            HTTP_IN_FLIGHT.dec()
            elapsed = time.perf_counter() - started
            app = scope.get("app")
            routes: Sequence[BaseRoute] = getattr(getattr(app, "router", None), "routes", ())
            route = route_template(routes, original)
            method = str(scope.get("method", ""))
            status, received, sent = traffic.status, traffic.received, traffic.sent
            HTTP_REQUESTS.labels(method, route, str(status)).inc()
            HTTP_DURATION.labels(method, route, str(status)).observe(elapsed)
            HTTP_BYTES.labels("in").inc(received)
            HTTP_BYTES.labels("out").inc(sent)
            if self.access_log_enabled:
                access_log.info(
                    "%s %s %d %.1f ms",
                    method,
                    route,
                    status,
                    elapsed * 1000,
                    extra={
                        "request_id": request_id,
                        "method": method,
                        "route": route,
                        "status": status,
                        "duration_ms": round(elapsed * 1000, 3),
                        "bytes_in": received,
                        "bytes_out": sent,
                    },
                )


def route_template(routes: Sequence[BaseRoute], scope: dict[str, Any]) -> str:
    """The template of the route serving ``scope`` (mount prefixes included), e.g.
    ``/dicomweb/studies/{study}/series``; :data:`UNMATCHED` when no route matches the path."""
    prefix = ""
    current: dict[str, Any] = dict(scope)
    candidates = routes
    while True:
        for route in candidates:
            match, child = route.matches(current)
            if match is Match.NONE:
                continue
            if isinstance(route, Mount):
                prefix += route.path
                current = {**current, **child}
                candidates = route.routes
                break
            path = getattr(route, "path", None)
            return prefix + path if isinstance(path, str) else UNMATCHED
        else:
            return UNMATCHED


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None
