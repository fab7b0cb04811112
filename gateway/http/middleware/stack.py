"""The middleware stack around the routes, outermost first, and the security objects it uses.

1. forwarded headers from trusted proxies (so everything inside sees the real scheme/client);
2. response headers every answer carries (nosniff, no-store, HSTS over HTTPS);
3. audit (sees every outcome, including 400/401/403/413 answered further in);
4. the Host check (no URL is ever built from an untrusted Host header);
5. CORP and CORS (preflights answered before authentication; 401s still carry CORS headers,
   so a browser viewer can read them);
6. authentication, scope check and rate limit;
7. the request body limit and minimum rate (bodies of rejected requests are never read);
8. content coding of DICOM JSON answers (innermost: it sees the routes' bodies as they are made).
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.middleware import Middleware

from gateway.http.middleware.audit import AuditMiddleware
from gateway.http.middleware.compression import CompressionMiddleware
from gateway.http.middleware.cors import cors_middleware
from gateway.http.middleware.forwarded import ForwardedMiddleware
from gateway.http.middleware.hosts import TrustedHostMiddleware, default_trusted_hosts
from gateway.http.middleware.limits import BodyLimitMiddleware
from gateway.http.middleware.response_headers import ResponseHeadersMiddleware
from gateway.http.middleware.security import AuthMiddleware
from gateway.security.audit import AuditLog
from gateway.security.authenticator import Authenticator
from gateway.security.ratelimit import RateLimiter
from gateway.settings import Settings


@dataclass(frozen=True)
class Security:
    authenticator: Authenticator
    rate_limiter: RateLimiter
    audit: AuditLog

    def open(self) -> None:
        self.audit.open()

    async def aclose(self) -> None:
        self.audit.close()
        await self.authenticator.aclose()


def build_security(settings: Settings) -> Security:
    limits = settings.limits
    return Security(
        authenticator=Authenticator(settings),
        rate_limiter=RateLimiter(limits.rate_per_second, limits.rate_burst),
        audit=AuditLog(settings.audit_destination, include_query_values=settings.audit.include_query_values),
    )


def middleware_stack(settings: Settings, security: Security) -> list[Middleware]:
    stack: list[Middleware] = []
    if settings.trusted_proxies:
        stack.append(Middleware(ForwardedMiddleware, trusted=settings.trusted_proxies))
    stack.append(Middleware(ResponseHeadersMiddleware))
    stack.append(Middleware(AuditMiddleware, audit=security.audit, base_path=settings.base_path))
    stack.append(Middleware(TrustedHostMiddleware, trusted=default_trusted_hosts(settings)))
    stack += cors_middleware(settings.cors)
    stack.append(Middleware(AuthMiddleware, authenticator=security.authenticator, rate_limiter=security.rate_limiter))
    stack.append(
        Middleware(
            BodyLimitMiddleware,
            max_body_bytes=settings.limits.max_body_bytes,
            body_timeout=settings.limits.body_timeout,
            min_body_rate=settings.limits.min_body_rate,
        )
    )
    if settings.json_compression:
        stack.append(Middleware(CompressionMiddleware, min_bytes=settings.json_compression_min_bytes))
    return stack
