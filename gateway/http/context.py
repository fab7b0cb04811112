"""What endpoints reach through ``request.app.state``: the wired services and URL helpers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from starlette.requests import Request

from gateway.ports import BlobStore, Index, Upstream
from gateway.services.federation import QidoFederation
from gateway.services.forward import ForwardService
from gateway.services.retrieval import RetrievalService
from gateway.services.stow import StowService
from gateway.settings import Settings


@dataclass(frozen=True)
class Gateway:
    settings: Settings
    store: BlobStore
    index: Index
    stow: StowService
    qido: QidoFederation  # QIDO over the index and the PACS nodes
    retrieval: RetrievalService  # WADO: the cache, or a PACS through it; frames, bulk data, rendered
    forward: ForwardService | None  # STOW forwarding to settings.forward_to
    upstreams: Mapping[str, Upstream] = field(default_factory=dict)  # the PACS nodes, by name (readiness)


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
    # X-Forwarded-Prefix from a trusted proxy (gateway.http.forwarded): the path it strips.
    prefix: str = request.scope.get("state", {}).get("forwarded_prefix", "")
    return str(request.base_url).rstrip("/") + prefix + settings.base_path
