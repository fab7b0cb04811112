"""X-Forwarded-Proto/Host/Prefix/For from trusted reverse proxies only (pure ASGI middleware).

Behind a TLS-terminating proxy the gateway must emit ``https://public-host/prefix/...`` URLs
(RetrieveURL, BulkDataURIs: PS3.18 8.6) although it is reached over plain HTTP. Those headers
are trivially forged, so they are honoured only when the connecting address is in
``trusted_proxies``; from anyone else they are ignored. The client address (for the audit
trail and rate limits) becomes the right-most X-Forwarded-For entry that is not a trusted
proxy. The prefix is kept in ``scope["state"]["forwarded_prefix"]`` for
:func:`gateway.http.context.base_url`; routing is unaffected.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

_HOST = re.compile(r"[A-Za-z0-9.\-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")
_PREFIX = re.compile(r"(/[A-Za-z0-9._~\-]+)+")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ForwardedMiddleware:
    def __init__(self, app: ASGIApp, *, trusted: Iterable[str]) -> None:
        self.app = app
        self.trusted: list[Network] = [ipaddress.ip_network(t, strict=False) for t in trusted]

    def _trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.strip())
        except ValueError:
            return False
        return any(ip in net for net in self.trusted)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = scope.get("client")
        if scope["type"] != "http" or not client or not self._trusted(client[0]):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        proto = headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
        if proto in ("http", "https"):
            scope["scheme"] = proto
        host = headers.get("x-forwarded-host", "").split(",")[0].strip()
        if host and _HOST.fullmatch(host):
            scope["headers"] = [(k, v) for k, v in scope["headers"] if k != b"host"] + [(b"host", host.encode())]
        prefix = headers.get("x-forwarded-prefix", "").split(",")[0].strip().rstrip("/")
        if prefix and _PREFIX.fullmatch(prefix):
            scope.setdefault("state", {})["forwarded_prefix"] = prefix
        forwarded_for = [a.strip() for a in headers.get("x-forwarded-for", "").split(",") if a.strip()]
        for address in reversed(forwarded_for):
            if not self._trusted(address):
                try:
                    ipaddress.ip_address(address)
                except ValueError:
                    break
                scope["client"] = (address, 0)
                break
        await self.app(scope, receive, send)
