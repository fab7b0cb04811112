"""The C-MOVE/C-GET SCP for the tests: the gateway's real DIMSE front door
(tests/dimse_gateway.py), with each requesting test peer a ``[[dimse_clients]]`` entry with the
``read`` scope, and each C-MOVE destination one with a ``host`` and ``port``.

The tests of ``test_dimse_retrieve`` talk to it only over the network (DCMTK movescu/getscu,
pynetdicom SCU). The outcome of each C-MOVE/C-GET (what the front door hands its audit and
metrics) is also collected in ``scp.outcomes``, so that a test can check the counts it reports.

    with retrieve_scp(tmp_path, peers={"MOVESCU": Peer("movescu")}, destinations={...}) as scp:
        scp.stow(*instances)
        # C-MOVE / C-GET to scp.ae_title at 127.0.0.1:scp.port
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

from gateway.dimse import front_door
from gateway.dimse.observe import Observer
from gateway.dimse.retrieve_outcome import RetrieveOutcome
from tests.dimse_find_scp import Peer
from tests.dimse_gateway import DimseGateway, client, dimse_gateway

__all__ = ["Peer", "RetrieveScp", "retrieve_scp"]


@dataclass
class RetrieveScp:
    gateway: DimseGateway
    outcomes: list[RetrieveOutcome] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.gateway.port

    @property
    def ae_title(self) -> str:
        return self.gateway.ae_title

    def stow(self, *instances: bytes) -> None:
        self.gateway.stow(*instances)


@contextmanager
def retrieve_scp(
    tmp_path: Path,
    *,
    peers: Mapping[str, Peer],
    destinations: Mapping[str, tuple[str | None, int]],
    pacs: Sequence[Mapping[str, Any]] = (),
    options: Mapping[str, Mapping[str, Any]] | None = None,
    **settings: Any,
) -> Iterator[RetrieveScp]:
    """The gateway's front door, accepting the calling AE titles of ``peers`` and moving to
    ``destinations`` (AE title → host, port; a peer's own AE title gives it that port, and
    host None leaves its ``host`` out); ``options``: more keys of a destination's table (``tls``);
    ``pacs``: ``[[pacs]]`` tables; ``settings``: more overrides (``audit``...)."""
    options = options or {}
    clients = []
    for ae_title, peer in peers.items():
        table = peer.table(ae_title)
        if ae_title in destinations:
            host, table["port"] = destinations[ae_title]
            if host is not None:
                table["host"] = host
        clients.append(table)
    clients += [
        client(ae, host=host, port=port, **options.get(ae, {}))
        for ae, (host, port) in destinations.items()
        if ae not in peers
    ]
    outcomes: list[RetrieveOutcome] = []
    reporting = front_door._retrieve_outcome

    def collecting(observer: Observer) -> Callable[[RetrieveOutcome], None]:
        report = reporting(observer)

        def both(outcome: RetrieveOutcome) -> None:
            outcomes.append(outcome)
            report(outcome)

        return both

    # The hook is built when the listener starts, within the app's lifespan.
    with (
        mock.patch.object(front_door, "_retrieve_outcome", collecting),
        dimse_gateway(tmp_path, clients=clients, pacs=pacs, **settings) as gateway,
    ):
        yield RetrieveScp(gateway, outcomes)
