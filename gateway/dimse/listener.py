"""The gateway's one DIMSE listener: a pynetdicom AE on ``scp_port`` as ``ae_title``.

It is both the destination of the gateway's own C-MOVEs to ``[[pacs]]`` nodes and the DIMSE
front door for ``[[dimse_clients]]``. What it answers is a list of :class:`Service` entries
(event, handler, the presentation contexts it needs), built by
:mod:`gateway.dimse.front_door`; who may associate is decided by :class:`gateway.dimse.gate.Gate`.
Every association and DIMSE message has a timeout (``[dimse]``): a peer that goes silent is
aborted after ``network_timeout``, one that never finishes its association request after
``acse_timeout``; no thread waits for ever.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from pynetdicom import AE, evt

from gateway.dicom.received import discard_unfinished
from gateway.dimse.acceptor_contexts import share_contexts
from gateway.dimse.gate import Gate
from gateway.dimse.get_syntaxes import follow_requester
from gateway.dimse.move_receiver import MoveReceiver
from gateway.dimse.peers import DimsePeers
from gateway.dimse.unknown_storage import UnknownStorage
from gateway.netdicom.tune import TunedAE, tune_accepted
from gateway.settings import DimseSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Service:
    """One DIMSE service of the listener: pynetdicom ``event`` answered by ``handler``, over
    presentation contexts for each of ``abstract_syntaxes`` with ``transfer_syntaxes``.

    ``roles``: accept SCP/SCU role selection (PS3.7 D.3.3.4), which C-GET needs for its storage
    sub-operations and a storage commitment SCU for its N-EVENT-REPORT; ``read``: offered only
    to peers with the ``read`` scope (the Query/Retrieve services); ``unknown_classes``: also
    any storage SOP class the listener does not know that a peer proposes
    (:mod:`gateway.dimse.unknown_storage`), with these transfer syntaxes and roles."""

    event: Any
    handler: Callable[[Any], Any]
    abstract_syntaxes: Sequence[str]
    transfer_syntaxes: Sequence[str]
    roles: bool = False
    read: bool = False
    unknown_classes: bool = False


class DimseListener:
    """Started and stopped by the app's lifespan (gateway.app). Not re-entrant."""

    def __init__(
        self,
        *,
        ae_title: str,
        host: str,
        port: int,
        limits: DimseSettings,
        max_message_bytes: int,
        peers: DimsePeers,
        services: Sequence[Service],
        receiver: MoveReceiver | None = None,
        ssl_context: ssl.SSLContext | None = None,
        on_reject: Callable[[str, str, str], None] | None = None,
    ) -> None:
        self.ae_title = ae_title
        self.host = host
        self.port = port
        self._limits = limits
        self._cap = MessageCap(max_message_bytes)
        self._peers = peers
        self._services = list(services)
        self._receiver = receiver
        self._ssl = ssl_context
        self._on_reject = on_reject
        self._ae: AE | None = None
        self._server: Any = None

    def start(self) -> None:
        """Bind and serve on pynetdicom's threads (raises OSError when the port is taken)."""
        limits = self._limits
        ae = TunedAE(ae_title=self.ae_title)  # its C-MOVE sub-associations are tuned too
        ae.maximum_associations = limits.max_associations
        ae.acse_timeout = limits.acse_timeout
        ae.dimse_timeout = limits.dimse_timeout
        ae.network_timeout = limits.network_timeout
        ae.maximum_pdu_size = limits.max_pdu_length
        # The gate checks calling and called AE titles itself, with the reasons it logs.
        ae.require_calling_aet = []
        ae.require_called_aet = False
        read_only: set[str] = set()
        added: set[str] = set()
        for service in self._services:
            for abstract in service.abstract_syntaxes:
                if abstract in added:
                    continue
                added.add(abstract)
                ae.add_supported_context(
                    abstract,
                    list(service.transfer_syntaxes),
                    scu_role=service.roles or None,
                    scp_role=service.roles or None,
                )
                if service.read:
                    read_only.add(abstract)
        unknown = [UnknownStorage(added, s.transfer_syntaxes) for s in self._services if s.unknown_classes][:1]
        # Per association, once the peer's contexts are set: the unknown storage classes it
        # proposes, then the requester's syntax order where it receives C-GET sub-operations.
        offers: list[Callable[[Any], None]] = [*(u.offer for u in unknown), follow_requester]

        def also_offer(assoc: Any) -> None:
            for offer in offers:
                offer(assoc)

        gate = Gate(
            self._peers,
            ae_title=self.ae_title,
            read_only=read_only,
            max_associations=limits.max_associations,
            on_reject=self._on_reject,
            also_offer=also_offer,
        )
        handlers: list[tuple[Any, Callable[[Any], Any]]] = [
            # First: the tuned recv is what _tune_connection's PDU length cap then wraps.
            (evt.EVT_CONN_OPEN, tune_accepted),
            (
                evt.EVT_CONN_OPEN,
                partial(_tune_connection, timeout=limits.network_timeout, max_pdu=max(limits.max_pdu_length, 1 << 20)),
            ),
            (evt.EVT_CONN_CLOSE, _closed_before_request),
            (evt.EVT_CONN_CLOSE, self._cap.closed),
            (evt.EVT_CONN_CLOSE, discard_unfinished),
            (evt.EVT_DATA_RECV, self._cap.received),
            (evt.EVT_DIMSE_RECV, self._cap.complete),
            (evt.EVT_REQUESTED, gate),
            *((evt.EVT_SOP_COMMON, u) for u in unknown),
            *((s.event, s.handler) for s in self._services),
        ]
        if self._receiver is not None:
            handlers += [(evt.EVT_ACCEPTED, self._receiver.accepted), (evt.EVT_CONN_CLOSE, self._receiver.closed)]
        self._server = ae.start_server(
            (self.host, self.port),
            block=False,
            evt_handlers=handlers,  # type: ignore[arg-type]
            ssl_context=self._ssl,
        )
        share_contexts(self._server)
        self._ae = ae
        log.info(
            "DIMSE listener %s on %s:%d%s (%d peers)",
            self.ae_title,
            self.host,
            self.port,
            " with TLS" if self._ssl is not None else "",
            sum(1 for _ in self._peers),
        )

    def stop(self) -> None:
        """Stop accepting, and abort the associations still open (their handlers end)."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server = None
        ae, self._ae = self._ae, None
        if ae is not None:
            for assoc in ae.active_associations:
                assoc.abort()

    @property
    def receiving(self) -> int:
        """Bytes of DIMSE messages being received now (e.g. a C-STORE data set on its way)."""
        return self._cap.in_progress()

    @property
    def active_associations(self) -> int:
        return 0 if self._ae is None else sum(1 for a in self._ae.active_associations if a.is_acceptor)


# PS3.8 9.3.8: A-ABORT from the service provider, reason not specified.
A_ABORT_PDU = b"\x07\x00\x00\x00\x00\x04\x00\x00\x02\x00"


class MessageCap:
    """Aborts an association whose peer sends one DIMSE message (a C-STORE data set, a C-FIND
    identifier) larger than ``max_bytes`` (``limits.max_part_bytes``, the one-instance limit of
    STOW): pynetdicom gathers a message in memory (a C-STORE data set on disk, in the spool:
    :func:`gateway.dicom.received.receive_into_files`), so without a cap one endless message
    would take all of either. Counted on the PDUs as they arrive (``EVT_DATA_RECV``), reset by each
    complete message (``EVT_DIMSE_RECV``)."""

    def __init__(self, max_bytes: int) -> None:
        self._max = max_bytes
        self._counts: dict[int, int] = {}
        self._stopped: set[int] = set()
        self._lock = threading.Lock()

    def received(self, event: Any) -> None:
        key = id(event.assoc)
        with self._lock:
            count = self._counts.get(key, 0) + len(event.data)
            self._counts[key] = count
            over = count > self._max and key not in self._stopped
            if over:
                self._stopped.add(key)  # the PDUs already buffered still arrive: stop once
        if over:
            log.warning(
                "DIMSE association from %r aborted: a message over %d bytes",
                str(event.assoc.requestor.ae_title).strip(),
                self._max,
            )
            # On pynetdicom's socket thread: an A-ABORT written now, then the connection closed
            # (the association ends as if the peer had gone); assoc.abort() would wait for this
            # very thread.
            sock = event.assoc.dul.socket
            if sock is not None and sock.socket is not None:
                with contextlib.suppress(OSError):
                    sock.socket.sendall(A_ABORT_PDU)
                    sock.socket.shutdown(socket.SHUT_RDWR)

    def complete(self, event: Any) -> None:
        with self._lock:
            self._counts.pop(id(event.assoc), None)

    def in_progress(self) -> int:
        """Bytes of DIMSE messages being received now, over every association."""
        with self._lock:
            return sum(self._counts.values())

    def closed(self, event: Any) -> None:
        with self._lock:
            self._counts.pop(id(event.assoc), None)
            self._stopped.discard(id(event.assoc))


def _tune_connection(event: Any, *, timeout: float, max_pdu: int) -> None:
    """``EVT_CONN_OPEN``: disable Nagle, as on the adapter's associations (PEERS.md): small
    DIMSE responses otherwise wait for the peer's delayed ACK. Bound every socket read and
    write by ``timeout``: pynetdicom sets no timeout on accepted sockets, so a peer that sends
    half a PDU and goes silent would hold its thread, and one of ``max_associations``, for
    ever; a read that times out is a closed connection to pynetdicom (the association ends).
    And refuse a PDU longer than ``max_pdu`` before reading it (see :class:`_PduLengthCap`)."""
    sock = event.assoc.dul.socket
    if sock is not None and sock.socket is not None:
        sock.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.socket.settimeout(timeout)
        sock.recv = _PduLengthCap(sock, max_pdu)


class _PduLengthCap:
    """The association socket's ``recv`` with a cap: pynetdicom reads a PDU's 6-byte header,
    then its whole body at once (``recv(length)``), however long the header says it is, before
    anything can look at it. A body over ``max_pdu`` bytes (the Maximum Length the listener
    announces, PS3.8 D.1, or 1 MiB for association PDUs, whichever is larger) is a protocol
    error: the connection is closed instead, and pynetdicom ends the association as if the peer
    had gone (PS3.8 9.3.1: the provider may abort on an invalid PDU)."""

    def __init__(self, sock: Any, max_pdu: int) -> None:
        self._sock = sock
        self._recv = sock.recv
        self._max = max_pdu

    def __call__(self, nr_bytes: int) -> bytearray:
        if nr_bytes > self._max:
            log.warning(
                "DIMSE peer sent a PDU of %d bytes (at most %d accepted): connection closed", nr_bytes, self._max
            )
            with contextlib.suppress(OSError):
                self._sock.socket.shutdown(socket.SHUT_RDWR)
            raise ConnectionAbortedError(f"PDU of {nr_bytes} bytes refused")
        data: bytearray = self._recv(nr_bytes)
        return data


def _closed_before_request(event: Any) -> None:
    """``EVT_CONN_CLOSE``: a connection closed (or cut by a malformed PDU) before its association
    request was read leaves pynetdicom's association thread waiting ``acse_timeout`` for a
    request that cannot come, holding one of ``max_associations``; wake it now (``None`` is what
    that wait returns when it times out, and the thread then ends)."""
    assoc = event.assoc
    if assoc.is_acceptor and not (assoc.is_established or assoc.is_rejected or assoc.is_aborted or assoc.is_released):
        assoc.dul.to_user_queue.put(None)
