"""The one place where errors become HTTP responses.

Bodies are small JSON objects with the reason; never a stack trace or patient data.
"""

from __future__ import annotations

import logging

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from gateway.errors import GatewayError, RangeNotSatisfiable, ServiceUnavailable

log = logging.getLogger("gateway.http")


def error_response(status: int, reason: str, headers: dict[str, str] | None = None) -> Response:
    body = orjson.dumps({"status": status, "reason": reason})
    return Response(body, status_code=status, media_type="application/json", headers=headers)


async def gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    headers: dict[str, str] = {}
    if isinstance(exc, ServiceUnavailable):
        headers["Retry-After"] = str(exc.retry_after)
    if isinstance(exc, RangeNotSatisfiable):
        headers["Content-Range"] = f"bytes */{exc.length}"
    if exc.status >= 500:
        log.warning("%s %s -> %d: %s", request.method, request.url.path, exc.status, exc.reason)
    return error_response(exc.status, exc.reason, headers)


async def http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return error_response(exc.status_code, exc.detail, dict(exc.headers or {}))


async def unexpected_error(request: Request, exc: Exception) -> Response:
    if gateway_error_behind(exc) is None:
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    # else: a GatewayError after the response started (Starlette re-raises it as a RuntimeError):
    # an expected fault, logged in one line by gateway.http.middleware.broken_off.
    return error_response(500, "internal error; see the gateway log")


EXCEPTION_HANDLERS = {
    GatewayError: gateway_error,
    HTTPException: http_exception,
    Exception: unexpected_error,
}


def gateway_error_behind(exc: BaseException) -> GatewayError | None:
    """The GatewayError behind ``exc`` (Starlette re-raises a handled error that came too late
    as a RuntimeError caused by it)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, GatewayError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None
