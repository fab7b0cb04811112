"""What endpoints reach through ``request.app.state``: the wired services (the bundle of
``gateway.services.bundle``) and the URL helpers."""

from __future__ import annotations

from starlette.requests import Request

from gateway.services.bundle import Gateway


def gateway_of(request: Request) -> Gateway:
    gw: Gateway = request.app.state.gateway
    return gw


def base_url(request: Request) -> str:
    """The absolute DICOMweb base URL clients must use for RetrieveURL and BulkDataURIs.

    A configured ``public_base_url`` wins (the gateway behind a reverse proxy); otherwise the
    URL the request came in on, including any ASGI root_path.
    """
    settings = gateway_of(request).settings
    if settings.public_base_url:
        return settings.public_base_url.rstrip("/")
    # X-Forwarded-Prefix from a trusted proxy (gateway.http.middleware.forwarded): the path it strips.
    prefix: str = request.scope.get("state", {}).get("forwarded_prefix", "")
    return str(request.base_url).rstrip("/") + prefix + settings.base_path


def accept_of(request: Request) -> str | None:
    """The ``accept`` query parameter (PS3.18 8.3.3.1) when given, else the Accept header.

    Cornerstone3D's loader sends a fixed multipart Accept header with every frame request; its
    ``urlArguments: "accept=..."`` option is how a viewer asks for another media type."""
    return request.query_params.get("accept") or request.headers.get("accept")
