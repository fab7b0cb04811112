"""Authentication, scope check and rate limit for every request (pure ASGI middleware).

Runs before routing, so no endpoint can forget it. What each request needs (issue #4 scopes):

* ``/healthz``, ``/readyz``: nothing (probes);
* GET / HEAD / OPTIONS (QIDO, WADO, capabilities): ``read``;
* POST / PUT (STOW): ``write``;
* DELETE, a rejection (``POST .../reject/{code}``: it deletes), a metadata correction
  (``POST .../studies/$bulkUpdate``), and anything else that changes state: ``admin``; so do
  reading what corrections did (``GET .../operations/{id}``, ``GET .../instances/{sop}/original``);
* ``GET /metrics``: ``metrics``, and an unrestricted principal (the counters cover every
  study; a study-restricted principal gets 403 even with the scope).

Missing or invalid credentials answer 401 with ``WWW-Authenticate: Bearer`` and, when
credentials were sent, ``error`` / ``error_description`` (RFC 6750 3.1); a valid principal
without the scope answers 403 ``insufficient_scope``; past its rate, 429 with Retry-After.
CORS preflights never reach this middleware (the CORS middleware outside answers them, and
browsers send them without credentials).

The principal is handed to endpoints in ``scope["state"]["principal"]`` (``request.state``).
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.errors import ServiceUnavailable
from gateway.http.errors import error_response
from gateway.security.access import Restriction
from gateway.security.authenticator import Authenticator
from gateway.security.jwt_auth import AuthError
from gateway.security.principal import ADMIN, METRICS, READ, WRITE, Principal
from gateway.security.ratelimit import RateLimiter, retry_after_header

OPEN_PATHS = frozenset({"/healthz", "/readyz"})
METRICS_PATH = "/metrics"
REALM = "dicomweb-gateway"


def required_scope(method: str, path: str) -> str | None:
    if path in OPEN_PATHS:
        return None
    if path == METRICS_PATH:
        return METRICS
    if method in ("GET", "HEAD") and is_correction_record(path):
        return ADMIN
    if method in ("GET", "HEAD", "OPTIONS"):
        return READ
    if method in ("POST", "PUT") and not is_rejection(path) and not is_protection(path) and not is_bulk_update(path):
        return WRITE
    return ADMIN


def is_rejection(path: str) -> bool:
    """``.../reject/{code}``: a rejection (gateway.http.delete), which deletes."""
    segments = path.rstrip("/").split("/")
    return len(segments) >= 3 and segments[-2] == "reject"


def is_protection(path: str) -> bool:
    """``.../studies/{study}/protected``: what retention may delete (gateway.http.protection)."""
    segments = path.rstrip("/").split("/")
    return len(segments) >= 3 and segments[-1] == "protected" and segments[-3] == "studies"


def is_bulk_update(path: str) -> bool:
    """``.../studies/$bulkUpdate``: a metadata correction (gateway.http.bulk_update)."""
    segments = path.rstrip("/").split("/")
    return len(segments) >= 2 and segments[-1] == "$bulkUpdate" and segments[-2] == "studies"


def is_correction_record(path: str) -> bool:
    """``.../operations/{id}`` or ``.../instances/{sop}/original``: what a correction did and replaced."""
    segments = path.rstrip("/").split("/")
    return len(segments) >= 3 and (
        segments[-2] == "operations" or (segments[-1] == "original" and segments[-3] == "instances")
    )


def principal_of(request: Request) -> Principal | None:
    principal: Principal | None = request.scope.get("state", {}).get("principal")
    return principal


def restriction_of(request: Request) -> Restriction | None:
    """The study restriction endpoints pass on to services (None: every study)."""
    principal = principal_of(request)
    return principal.restriction if principal is not None else None


def _challenge(error: str | None, description: str, scope: str | None = None) -> str:
    # RFC 6750 3: error_description is a quoted-string of %x20-21 / %x23-5B / %x5D-7E; a claim
    # name from the token may end up in it, so anything else is replaced.
    safe = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "?" for c in description)
    params = [f'realm="{REALM}"']
    if error:
        params += [f'error="{error}"', f'error_description="{safe}"']
    if scope:
        params.append(f'scope="{scope}"')
    return "Bearer " + ", ".join(params)


class AuthMiddleware:
    def __init__(self, app: ASGIApp, *, authenticator: Authenticator, rate_limiter: RateLimiter) -> None:
        self.app = app
        self.authenticator = authenticator
        self.rate_limiter = rate_limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        needed = required_scope(scope["method"], scope["path"])
        if needed is None:
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        try:
            principal = await self.authenticator.authenticate(Headers(scope=scope).get("authorization"))
        except AuthError as exc:
            state["auth_failure"] = exc.reason  # for the audit trail (gateway.http.middleware.audit)
            challenge = _challenge(exc.error, exc.description)
            response = error_response(401, exc.description, {"WWW-Authenticate": challenge})
            await response(scope, receive, send)
            return
        except ServiceUnavailable as exc:
            headers = {"Retry-After": str(exc.retry_after)}
            await error_response(503, exc.reason, headers)(scope, receive, send)
            return
        state["principal"] = principal
        if needed not in principal.scopes or (needed == METRICS and principal.restriction is not None):
            description = f"this request needs the {needed} scope"
            if needed in principal.scopes:
                description = "this request needs the metrics scope without a study restriction"
            challenge = _challenge("insufficient_scope", description, needed)
            await error_response(403, description, {"WWW-Authenticate": challenge})(scope, receive, send)
            return
        if principal.kind != "anonymous":
            wait = self.rate_limiter.acquire(principal.rate_key)
            if wait > 0:
                headers = {"Retry-After": retry_after_header(wait)}
                await error_response(429, "request rate limit exceeded", headers)(scope, receive, send)
                return
        await self.app(scope, receive, send)
