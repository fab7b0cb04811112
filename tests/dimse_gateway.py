"""An in-process gateway with its real DIMSE listener on a free port, for the front door tests.

with dimse_gateway(tmp_path, clients=[client("CT1", scopes=["write"])]) as gw:
    # DIMSE to gw.ae_title at 127.0.0.1:gw.port; DICOMweb through gw.get / gw.stow
"""

from __future__ import annotations

from collections.abc import Coroutine, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from anyio.from_thread import BlockingPortal, start_blocking_portal

from gateway.app import create_app
from gateway.ports import BlobStore
from gateway.settings import Settings, load_settings
from tests.http_helpers import stow_body
from tests.peers.ports import free_port

GATEWAY_AET = "GATEWAY"


def client(ae_title: str, *, name: str | None = None, **options: Any) -> dict[str, Any]:
    """A ``[[dimse_clients]]`` table (``scopes``, ``host``, ``port``, ``restriction``...)."""
    return {"name": name or ae_title.lower(), "ae_title": ae_title, **options}


@dataclass
class DimseGateway:
    port: int
    ae_title: str
    settings: Settings
    portal: BlockingPortal
    http: httpx.AsyncClient
    listener: Any = None  # the app's DimseListener
    app: Any = None  # the Starlette app: its state.gateway holds the services (index, store...)

    @property
    def index(self) -> Any:
        """The app's Index."""
        return self.app.state.gateway.index

    def open_associations(self) -> int:
        return int(self.listener.active_associations)

    def receiving(self) -> int:
        """Bytes of DIMSE messages the listener is receiving now."""
        return int(self.listener.receiving)

    def run(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        async def awaited() -> Any:
            return await coroutine

        return self.portal.call(awaited)

    def stow(self, *instances: bytes) -> None:
        body, content_type = stow_body(list(instances))
        response = self.run(self.http.post("/dicomweb/studies", content=body, headers={"Content-Type": content_type}))
        assert response.status_code == 200, response.text

    def get(self, path: str, **headers: str) -> httpx.Response:
        response: httpx.Response = self.run(self.http.get(f"/dicomweb{path}", headers=headers))
        return response


@contextmanager
def dimse_gateway(
    tmp_path: Path,
    *,
    clients: Sequence[Mapping[str, Any]] = (),
    pacs: Sequence[Mapping[str, Any]] = (),
    store: BlobStore | None = None,
    **settings: Any,
) -> Iterator[DimseGateway]:
    """The app's lifespan (store, index, services, DIMSE listener) around the block; ``store``
    replaces the object store the settings name."""
    port = settings.pop("scp_port", None) or free_port()
    loaded = load_settings(
        environ={},
        overrides={
            "data_dir": tmp_path / "data",
            "ae_title": GATEWAY_AET,
            "scp_port": port,
            "pacs": [dict(p) for p in pacs],
            "dimse_clients": [dict(c) for c in clients],
            **settings,
        },
    )
    app = create_app(loaded, store=store)
    with (
        start_blocking_portal("asyncio") as portal,
        portal.wrap_async_context_manager(app.router.lifespan_context(app)),
    ):
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1")
        try:
            yield DimseGateway(port, GATEWAY_AET, loaded, portal, http, app.state.dimse_listener, app)
        finally:
            portal.call(http.aclose)
