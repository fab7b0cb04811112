"""What endpoints reach through ``request.app.state``: the wired services and URL helpers."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request

from gateway.ports import BlobStore, Index
from gateway.services.stow import StowService
from gateway.services.wado import WadoService
from gateway.settings import Settings


@dataclass(frozen=True)
class Gateway:
    settings: Settings
    store: BlobStore
    index: Index
    stow: StowService
    wado: WadoService


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
    return str(request.base_url).rstrip("/") + settings.base_path
