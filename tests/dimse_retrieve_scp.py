"""A C-MOVE/C-GET SCP for the tests: :class:`gateway.dimse.move.MoveHandler` and
:class:`gateway.dimse.get.GetHandler` over an in-process gateway's services, served by a plain
pynetdicom AE on a free port.

It stands in for the gateway's DIMSE listener until that exists; the tests of
``test_dimse_retrieve`` talk to it only over the network (DCMTK movescu/getscu, pynetdicom
SCU), so they can be switched to the real listener by replacing this one module.

    with retrieve_scp(tmp_path, peers={"MOVESCU": Peer("movescu")}, destinations={...}) as scp:
        scp.stow(*instances)
        # C-MOVE / C-GET to scp.ae_title at 127.0.0.1:scp.port
"""

from __future__ import annotations

from collections.abc import Coroutine, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from anyio.from_thread import BlockingPortal, start_blocking_portal
from pynetdicom import AE, evt
from pynetdicom.presentation import StoragePresentationContexts
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from gateway.app import create_app
from gateway.dimse.get import GetHandler
from gateway.dimse.move import MoveHandler
from gateway.dimse.retrieve import LIKELY_STORED, UNCOMPRESSED, RetrieveOutcome
from gateway.security.access import Restriction
from gateway.settings import load_settings
from tests.http_helpers import stow_body
from tests.peers.ports import free_port

GATEWAY_AET = "GATEWAY"


@dataclass(frozen=True)
class Peer:
    """A calling AE the SCP accepts: its name and study-level restriction."""

    name: str
    restriction: Restriction | None = None


@dataclass
class RetrieveScp:
    port: int
    ae_title: str
    portal: BlockingPortal
    http: httpx.AsyncClient
    outcomes: list[RetrieveOutcome] = field(default_factory=list)

    def stow(self, *instances: bytes) -> None:
        body, content_type = stow_body(list(instances))
        response = self.portal.call(
            lambda: self.http.post("/dicomweb/studies", content=body, headers={"Content-Type": content_type})
        )
        assert response.status_code == 200, response.text


@contextmanager
def retrieve_scp(
    tmp_path: Path,
    *,
    peers: Mapping[str, Peer],
    destinations: Mapping[str, tuple[str, int]],
    pacs: Sequence[Mapping[str, Any]] = (),
    settings: Mapping[str, Any] | None = None,
) -> Iterator[RetrieveScp]:
    """The SCP, accepting the calling AE titles of ``peers`` and moving to ``destinations``
    (AE title → host, port); ``pacs``: ``[[pacs]]`` tables."""
    overrides = {"data_dir": tmp_path / "data", "ae_title": GATEWAY_AET, "pacs": [dict(p) for p in pacs]}
    app = create_app(load_settings(environ={}, overrides={**overrides, **(settings or {})}))
    with (
        start_blocking_portal("asyncio") as portal,
        portal.wrap_async_context_manager(app.router.lifespan_context(app)),
    ):

        def run(coroutine: Coroutine[Any, Any, Any]) -> Any:
            async def awaited() -> Any:
                return await coroutine

            return portal.call(awaited)

        port = free_port()
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1")
        scp = RetrieveScp(port, GATEWAY_AET, portal, http)
        gateway = app.state.gateway
        common: dict[str, Any] = {
            "ae_title": GATEWAY_AET,
            "portal": run,
            "peer_of": lambda event: peers[event.assoc.requestor.ae_title.strip()],
            "on_outcome": scp.outcomes.append,
        }
        move = MoveHandler(gateway.retrieval, gateway.qido, destination_of=destinations.get, **common)
        get = GetHandler(gateway.retrieval, gateway.qido, **common)
        ae = AE(ae_title=GATEWAY_AET)
        ae.acse_timeout = ae.network_timeout = 15
        ae.dimse_timeout = 30
        ae.maximum_associations = 8
        for sop_class in (
            Verification,
            PatientRootQueryRetrieveInformationModelMove,
            StudyRootQueryRetrieveInformationModelMove,
            PatientRootQueryRetrieveInformationModelGet,
            StudyRootQueryRetrieveInformationModelGet,
        ):
            ae.add_supported_context(sop_class)
        # C-GET: the requester proposes storage contexts with role selection (PS3.7 D.3.3.4).
        for cx in StoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, [*UNCOMPRESSED, *LIKELY_STORED], scu_role=True, scp_role=True)
        ae.require_calling_aet = list(peers)
        server = ae.start_server(
            ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_MOVE, move), (evt.EVT_C_GET, get)]
        )
        try:
            yield scp
        finally:
            server.shutdown()
            portal.call(http.aclose)
