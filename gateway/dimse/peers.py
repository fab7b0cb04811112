"""The peers of the DIMSE front door: who may open an association, and what it may do.

Two kinds, both told apart by their calling AE title (PS3.8 7.1.1.3), which settings
validation keeps unique across both lists:

* the ``[[pacs]]`` nodes: they send the C-STORE sub-operations of the gateway's own C-MOVEs
  and may C-ECHO; with ``scopes = ["write"]`` a node also pushes (C-STORE, storage
  commitment) under the same AE title, as a PACS auto-routing new studies to the cloud does
  (one entry per node, as in Orthanc's DicomModalities); a PACS that also queries the
  gateway is a ``[[dimse_clients]]`` entry under another AE title;
* the ``[[dimse_clients]]``: modalities, routing PACS, workstations and viewers, with scopes
  (``write``: C-STORE, storage commitment; ``read``: C-FIND, C-MOVE, C-GET), an optional
  address they must come from, an optional port of their own storage SCP (the C-MOVE
  destination) and the study-level restriction HTTP principals have.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from gateway.dicom.restriction import Restriction
from gateway.settings import PacsTls, Settings

log = logging.getLogger(__name__)

READ = "read"
WRITE = "write"


@dataclass(frozen=True)
class DimsePeer:
    name: str
    ae_title: str
    kind: Literal["pacs", "client"]
    host: str | None = None  # clients: associations from other addresses are refused
    port: int | None = None  # its storage SCP (C-MOVE destination, storage commitment reports)
    scopes: frozenset[str] = frozenset()
    restriction: Restriction | None = None
    deidentify: str | None = None  # "basic": its C-FIND answers and retrieved instances are de-identified
    tls: PacsTls = field(default_factory=PacsTls)  # DICOM TLS when the gateway calls its port

    @property
    def origin(self) -> str:
        """The origin of what it pushes, as the audit trail names it: ``dimse:<name>``, a PACS's
        pushes included (``pacs:<name>`` marks the copies the gateway fetched from a PACS, which
        cache expiry may delete)."""
        return f"dimse:{self.name}"

    def may(self, scope: str) -> bool:
        return scope in self.scopes


class DimsePeers:
    """The configured peers by calling AE title (leading and trailing spaces not significant)."""

    def __init__(self, peers: Iterable[DimsePeer]) -> None:
        self._by_ae = {peer.ae_title.strip(): peer for peer in peers}

    @classmethod
    def from_settings(cls, settings: Settings) -> DimsePeers:
        pacs = [DimsePeer(node.name, node.ae_title, "pacs", scopes=frozenset(node.scopes)) for node in settings.pacs]
        clients = [
            DimsePeer(
                c.name,
                c.ae_title,
                "client",
                host=c.host,
                port=c.port,
                scopes=frozenset(c.scopes),
                restriction=c.restriction,
                deidentify=c.deidentify,
                tls=c.tls,
            )
            for c in settings.dimse_clients
        ]
        return cls([*pacs, *clients])

    def __iter__(self) -> Iterator[DimsePeer]:
        return iter(self._by_ae.values())

    def by_calling_ae(self, ae_title: str) -> DimsePeer | None:
        return self._by_ae.get(ae_title.strip())

    def of(self, event: Any) -> DimsePeer:
        """The peer of an accepted association's event (the gate let only known ones in)."""
        peer = self.by_calling_ae(str(event.assoc.requestor.ae_title))
        if peer is None:  # cannot happen past the gate; never answer as somebody else
            raise LookupError(f"no DIMSE peer has the AE title {event.assoc.requestor.ae_title!r}")
        return peer


def address_allowed(peer: DimsePeer, address: str) -> bool:
    """Whether an association from ``address`` may be ``peer``'s: any address when it names no
    ``host``; else one of the host's addresses (a name is resolved now, so a peer whose DNS
    entry moves is followed)."""
    if peer.host is None:
        return True
    try:
        calling = _normal(address)
    except ValueError:
        return False
    try:
        return calling == _normal(peer.host)
    except ValueError:
        pass  # a host name
    try:
        infos = socket.getaddrinfo(peer.host, None, type=socket.SOCK_STREAM)
    except OSError as exc:
        log.warning("DIMSE peer %s: cannot resolve its host %s: %s", peer.name, peer.host, exc)
        return False
    return any(_normal(str(info[4][0])) == calling for info in infos)


def _normal(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped  # ::ffff:10.1.2.3 from a dual-stack socket is 10.1.2.3
    return ip
