"""What endpoints reach through ``request.app.state``: the wired services and URL helpers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from starlette.requests import Request

from gateway.ports import BlobStore, Index, Upstream
from gateway.services.federation import QidoFederation
from gateway.services.forward import ForwardService
from gateway.services.instance_reader import InstanceReader
from gateway.services.rendered import RenderService
from gateway.services.stow import StowService
from gateway.services.upstream_retrieve import UpstreamRetrieveService
from gateway.settings import Settings


@dataclass(frozen=True)
class Gateway:
    settings: Settings
    store: BlobStore
    index: Index
    stow: StowService
    wado: InstanceReader
    qido: QidoFederation  # QIDO over the index and the PACS nodes
    retrieval: UpstreamRetrieveService  # WADO selections: the cache, or a PACS through it
    forward: ForwardService | None  # STOW forwarding to settings.forward_to
    upstreams: Mapping[str, Upstream] = field(default_factory=dict)  # the PACS nodes, by name (readiness)
    rendered: RenderService | None = None  # rendered images and thumbnails (always set by create_app)

    @property
    def renderer(self) -> RenderService:
        """The render service (built from the reader ``wado`` when not wired in)."""
        if self.rendered is None:
            object.__setattr__(self, "rendered", RenderService(self.wado))
        assert self.rendered is not None
        return self.rendered


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
