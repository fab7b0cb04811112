"""Only requests naming a trusted host are served (pure ASGI middleware).

Without ``public_base_url`` the URLs the gateway emits (RetrieveURL, BulkDataURIs, the Location
of a trailing-slash redirect) are built from the request's Host header; a client that sends
``Host: evil.example`` would otherwise get links, and redirects, pointing there. Requests whose
Host (after :mod:`gateway.http.middleware.forwarded`, so behind a trusted proxy its X-Forwarded-Host) is
not in ``trusted_hosts`` are answered 400 before anything else looks at them; a request without
a Host header is served (URLs then come from the bound address). The probes (``/healthz``,
``/readyz``, ``/metrics``) emit no URLs and are exempt: orchestrators and scrapers address the
pod by its IP.

``trusted_hosts`` entries are host names or addresses (ports are ignored), ``*.example.org``
for any subdomain, or ``*`` for any host. Empty (the default): the host of
``public_base_url``, the bound address unless it is a wildcard, and ``localhost``,
``127.0.0.1`` and ``::1`` when bound to loopback. A wildcard bind (``0.0.0.0``, ``::``) with
neither setting has no name to trust: any host is accepted and start-up logs a warning.
"""

from __future__ import annotations

import ipaddress
import logging
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.http.errors import error_response
from gateway.settings import Settings
from gateway.settings_security import is_loopback

log = logging.getLogger(__name__)

EXEMPT_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def _is_wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return False


def default_trusted_hosts(settings: Settings) -> tuple[str, ...]:
    """The trusted hosts in effect: the setting, or what the bind and public_base_url imply."""
    if settings.trusted_hosts:
        return tuple(h.lower() for h in settings.trusted_hosts)
    hosts: list[str] = []
    if settings.public_base_url:
        name = urlsplit(settings.public_base_url).hostname
        if name:
            hosts.append(name.lower())
    bound = settings.host.strip("[]").lower()
    if is_loopback(bound):
        hosts += [bound, *LOOPBACK_NAMES]
    elif not _is_wildcard(bound):
        hosts.append(bound)
    elif not hosts:
        return ("*",)
    return tuple(dict.fromkeys(hosts))


def host_of(header: str) -> str:
    """The host part of a Host header value, lower case, without port or IPv6 brackets."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else ""
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def host_allowed(host: str, trusted: tuple[str, ...]) -> bool:
    for pattern in trusted:
        if pattern == "*" or pattern == host:
            return True
        if pattern.startswith("*.") and host.endswith(pattern[1:]) and len(host) > len(pattern) - 1:
            return True
    return False


class TrustedHostMiddleware:
    def __init__(self, app: ASGIApp, *, trusted: tuple[str, ...]) -> None:
        self.app = app
        self.trusted = tuple(h.strip("[]").lower() for h in trusted)
        self.any = "*" in self.trusted

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.any or scope["type"] != "http" or scope["path"] in EXEMPT_PATHS:
            await self.app(scope, receive, send)
            return
        header = Headers(scope=scope).get("host")
        if header is not None and not host_allowed(host_of(header), self.trusted):
            await error_response(400, "the Host header names a host this gateway does not serve")(scope, receive, send)
            return
        await self.app(scope, receive, send)
