"""A C-FIND SCP for the tests: :class:`gateway.dimse.find.FindHandler` over an in-process
gateway's services, served by a plain pynetdicom AE on a free port.

It stands in for the gateway's DIMSE listener until that exists; the tests of
``test_dimse_find`` talk to it only over the network (DCMTK findscu, pynetdicom SCU), so they
can be switched to the real listener by replacing this one module.

    with find_scp(tmp_path, peers={"FINDSCU": Peer("findscu")}) as scp:
        scp.stow(*instances)
        # C-FIND to scp.ae_title at 127.0.0.1:scp.port
"""

from __future__ import annotations

from collections.abc import Coroutine, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from anyio.from_thread import BlockingPortal, start_blocking_portal
from pynetdicom import AE, evt
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
)

from gateway.app import create_app
from gateway.dimse.find import FindHandler
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
class FindScp:
    port: int
    ae_title: str
    portal: BlockingPortal
    http: httpx.AsyncClient

    def stow(self, *instances: bytes) -> None:
        body, content_type = stow_body(list(instances))
        response = self.portal.call(
            lambda: self.http.post("/dicomweb/studies", content=body, headers={"Content-Type": content_type})
        )
        assert response.status_code == 200, response.text


@contextmanager
def find_scp(tmp_path: Path, *, peers: Mapping[str, Peer], pacs: Sequence[Mapping[str, Any]] = ()) -> Iterator[FindScp]:
    """The SCP, accepting the calling AE titles of ``peers``; ``pacs``: ``[[pacs]]`` tables."""
    settings = load_settings(
        environ={},
        overrides={"data_dir": tmp_path / "data", "ae_title": GATEWAY_AET, "pacs": [dict(p) for p in pacs]},
    )
    app = create_app(settings)
    with (
        start_blocking_portal("asyncio") as portal,
        portal.wrap_async_context_manager(app.router.lifespan_context(app)),
    ):

        def run(coroutine: Coroutine[Any, Any, Any]) -> Any:
            async def awaited() -> Any:
                return await coroutine

            return portal.call(awaited)

        handler = FindHandler(
            app.state.gateway.qido,
            ae_title=GATEWAY_AET,
            portal=run,
            peer_of=lambda event: peers[event.assoc.requestor.ae_title.strip()],
        )
        ae = AE(ae_title=GATEWAY_AET)
        ae.add_supported_context(PatientRootQueryRetrieveInformationModelFind)
        ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
        ae.require_calling_aet = list(peers)
        port = free_port()
        server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_FIND, handler)])
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1")
        try:
            yield FindScp(port, GATEWAY_AET, portal, http)
        finally:
            server.shutdown()
            portal.call(http.aclose)
