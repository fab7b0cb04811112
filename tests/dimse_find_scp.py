"""The C-FIND SCP for the tests: the gateway's real DIMSE front door (tests/dimse_gateway.py),
with each test peer a ``[[dimse_clients]]`` entry with the ``read`` scope.

The tests of ``test_dimse_find`` talk to it only over the network (DCMTK findscu, pynetdicom SCU).

    with find_scp(tmp_path, peers={"FINDSCU": Peer("findscu")}) as scp:
        scp.stow(*instances)
        # C-FIND to scp.ae_title at 127.0.0.1:scp.port
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.security.access import Restriction
from tests.dimse_gateway import DimseGateway, client, dimse_gateway

FindScp = DimseGateway


@dataclass(frozen=True)
class Peer:
    """A calling AE the SCP accepts: its name and study-level restriction."""

    name: str
    restriction: Restriction | None = None

    def table(self, ae_title: str) -> dict[str, Any]:
        options: dict[str, Any] = {"scopes": ["read"]}
        if self.restriction is not None:
            options["restriction"] = {
                "PatientID": sorted(self.restriction.patient_ids),
                "StudyInstanceUID": sorted(self.restriction.study_uids),
            }
        return client(ae_title, name=self.name, **options)


@contextmanager
def find_scp(tmp_path: Path, *, peers: Mapping[str, Peer], pacs: Sequence[Mapping[str, Any]] = ()) -> Iterator[FindScp]:
    """The gateway's front door, accepting the calling AE titles of ``peers``; ``pacs``: ``[[pacs]]`` tables."""
    clients = [peer.table(ae_title) for ae_title, peer in peers.items()]
    with dimse_gateway(tmp_path, clients=clients, pacs=pacs) as gateway:
        yield gateway
