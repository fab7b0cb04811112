"""A Storage Commitment SCP for the tests: :class:`gateway.dimse.commitment.CommitmentHandler`
over an in-process gateway's services, served by a plain pynetdicom AE on a free port.

It stands in for the gateway's DIMSE listener until that exists; the tests of
``test_dimse_commitment`` talk to it only over the network (pynetdicom SCU, Orthanc), so they
can be switched to the real listener by replacing this one module.

    with commitment_scp(tmp_path, peers={"MODALITY": Peer("modality", port=...)}) as scp:
        scp.stow(*instances)
        # N-ACTION to scp.ae_title at 127.0.0.1:scp.port

``scp.hold()`` keeps the background checks from starting until it is left: what a slow index
would do, so that a test can end the requesting association before the report is ready.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Collection, Coroutine, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from anyio.from_thread import BlockingPortal, start_blocking_portal
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt

from gateway.app import create_app
from gateway.dimse.commitment import Checker, CommitmentHandler, CommitmentOutcome
from gateway.dimse.commitment_journal import CommitmentJournal
from gateway.dimse.commitment_report import NewAssociationReporter, ReportNotDelivered, ReportTarget
from gateway.dimse.commitment_request import STORAGE_COMMITMENT_PUSH_MODEL
from gateway.ports import PendingCommitments
from gateway.security.access import Restriction
from gateway.settings import PacsTls, load_settings
from tests.http_helpers import stow_body
from tests.peers.ports import free_port

GATEWAY_AET = "GATEWAY"


@dataclass(frozen=True)
class Peer:
    """A calling AE the SCP accepts, as a ``[[dimse_clients]]`` entry would declare it."""

    name: str
    restriction: Restriction | None = None
    scopes: Collection[str] = ("read", "write")
    host: str | None = None
    port: int | None = None
    tls: PacsTls = field(default_factory=PacsTls)


@dataclass
class CommitmentScp:
    port: int
    ae_title: str
    portal: BlockingPortal
    http: httpx.AsyncClient
    handler: CommitmentHandler
    outcomes: list[CommitmentOutcome] = field(default_factory=list)
    gate: threading.Event = field(default_factory=threading.Event)
    changed: threading.Condition = field(default_factory=threading.Condition)
    failed_reports: queue.Queue[str] = field(default_factory=queue.Queue)
    index: Any = None  # the app's Index

    def wait_outcomes(self, n: int, timeout: float = 60.0) -> list[CommitmentOutcome]:
        """The first ``n`` outcomes, once there are (``timeout`` only bounds a broken run)."""
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.outcomes) >= n, timeout), self.outcomes
            return self.outcomes[:n]

    def first_failed_report(self, timeout: float = 60.0) -> str:
        """Why the first report on a new association was not delivered, once one was not."""
        return self.failed_reports.get(timeout=timeout)

    def stow(self, *instances: bytes) -> None:
        body, content_type = stow_body(list(instances))
        response = self.portal.call(
            lambda: self.http.post("/dicomweb/studies", content=body, headers={"Content-Type": content_type})
        )
        assert response.status_code == 200, response.text

    @contextmanager
    def hold(self) -> Iterator[None]:
        """Checks wait while inside (see the module docstring)."""
        self.gate.clear()
        try:
            yield
        finally:
            self.gate.set()


@contextmanager
def commitment_scp(
    tmp_path: Path,
    *,
    peers: Mapping[str, Peer],
    port: int | None = None,
    max_pending: int = 64,
    report_retry_delays: tuple[float, ...] = (0.2, 0.5, 1.0, 2.0),
    wrap_check: Callable[[Checker], Checker] | None = None,
    holder: str | None = None,
    wrap_journal: Callable[[PendingCommitments], PendingCommitments] | None = None,
) -> Iterator[CommitmentScp]:
    """The SCP, accepting the calling AE titles of ``peers`` (looked up per request, so a peer's
    entry may be completed once it runs); ``wrap_check`` stands between the handler and the
    commitment check (a fault to inject). ``holder``: requests are kept in the index under this
    replica name (as the listener does), resumed every 0.2 s; ``wrap_journal`` stands between the
    journal and the index. Two SCPs on the same ``tmp_path`` share the store and the index, as
    two replicas do."""
    settings = load_settings(environ={}, overrides={"data_dir": tmp_path / "data", "ae_title": GATEWAY_AET})
    app = create_app(settings)
    gate = threading.Event()
    gate.set()
    with (
        start_blocking_portal("asyncio") as portal,
        portal.wrap_async_context_manager(app.router.lifespan_context(app)),
    ):

        def run(coroutine: Coroutine[Any, Any, Any]) -> Any:
            gate.wait()

            async def awaited() -> Any:
                return await coroutine

            return portal.call(awaited)

        outcomes: list[CommitmentOutcome] = []
        changed = threading.Condition()
        failed_reports: queue.Queue[str] = queue.Queue()

        def on_outcome(outcome: CommitmentOutcome) -> None:
            with changed:
                outcomes.append(outcome)
                changed.notify_all()

        reporter = NewAssociationReporter(GATEWAY_AET, acse_timeout=5, dimse_timeout=10)

        def send_report(target: ReportTarget, event_type: int, info: Dataset) -> None:
            try:
                reporter(target, event_type, info)
            except ReportNotDelivered as exc:
                failed_reports.put(str(exc))
                raise

        check: Checker = app.state.gateway.commitment
        journal = None
        if holder is not None:

            def call(coroutine: Coroutine[Any, Any, Any]) -> Any:
                async def awaited() -> Any:
                    return await coroutine

                return portal.call(awaited)

            store: PendingCommitments = app.state.gateway.index
            journal = CommitmentJournal(wrap_journal(store) if wrap_journal else store, holder=holder, portal=call)
        handler = CommitmentHandler(
            wrap_check(check) if wrap_check else check,
            ae_title=GATEWAY_AET,
            portal=run,
            peer_of=lambda event: peers[event.assoc.requestor.ae_title.strip()],
            send_report=send_report,
            on_outcome=on_outcome,
            max_pending=max_pending,
            report_retry_delays=report_retry_delays,
            check_retry_delays=(0.1, 0.2, 0.4, 0.8),  # the handler's are seconds apart
            journal=journal,
            peer_by_ae=lambda ae_title: peers.get(ae_title.strip()),
            resume_interval=0.2,
        )
        handler.start()
        ae = AE(ae_title=GATEWAY_AET)
        ae.dimse_timeout = 10
        ae.add_supported_context(STORAGE_COMMITMENT_PUSH_MODEL, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        ae.require_calling_aet = list(peers)
        port = port or free_port()
        server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_N_ACTION, handler)])
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1")
        try:
            yield CommitmentScp(
                port,
                GATEWAY_AET,
                portal,
                http,
                handler,
                outcomes,
                gate,
                changed,
                failed_reports,
                app.state.gateway.index,
            )
        finally:
            gate.set()
            server.shutdown()
            handler.close()
            portal.call(http.aclose)
