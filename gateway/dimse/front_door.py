"""The DIMSE front door: which handler answers which DIMSE service, and its listener's life.

:func:`front_door_services` is the one registration table. Each entry is a
:class:`gateway.dimse.listener.Service`: a pynetdicom event, its handler (built over the shared
services of :class:`gateway.services.bundle.Gateway`, reaching them through the
:class:`gateway.dimse.portal.LoopPortal`), and its presentation contexts. Scopes:

* C-ECHO: every configured peer;
* C-STORE (and storage commitment): ``write``; refused per request with 0x0124 otherwise;
* C-FIND, C-MOVE, C-GET: ``read``; their contexts are not offered to other peers (the gate).

Handlers are built with ``peer_of`` (the :class:`gateway.dimse.peers.DimsePeer` of an event:
name, scopes, restriction), ``portal`` and an ``on_outcome`` hook (audit and metrics,
:class:`gateway.dimse.observe.Observer`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import anyio
from pydicom.uid import AllTransferSyntaxes, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AllStoragePresentationContexts, evt

from gateway.dimse.commitment import CommitmentHandler, CommitmentOutcome
from gateway.dimse.commitment_journal import CommitmentJournal
from gateway.dimse.commitment_report import NewAssociationReporter
from gateway.dimse.commitment_request import STORAGE_COMMITMENT_PUSH_MODEL
from gateway.dimse.echo import EchoHandler
from gateway.dimse.find import FindHandler, FindOutcome
from gateway.dimse.get import GetHandler
from gateway.dimse.listener import DimseListener, Service
from gateway.dimse.move import Destination, MoveHandler
from gateway.dimse.move_receiver import MoveReceiver
from gateway.dimse.observe import Observer, Operation
from gateway.dimse.peers import DimsePeers
from gateway.dimse.portal import LoopPortal
from gateway.dimse.retrieve_outcome import RetrieveOutcome
from gateway.dimse.retrieve_query import GET_SOP_CLASSES, MOVE_SOP_CLASSES
from gateway.dimse.store import StoreHandler
from gateway.dimse.tls import listener_context
from gateway.ports import PendingCommitments
from gateway.security.audit import AuditLog
from gateway.services.bundle import Gateway

log = logging.getLogger(__name__)

# PS3.5 10: the syntaxes a DICOM peer negotiates for commands and query identifiers.
NATIVE = (str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian))
# Data sets are stored as sent: every transfer syntax the store accepts (gateway.dicom.part10
# takes any pydicom knows), compressed ones included. The acceptor's order decides when a sender
# offers several in one context (PS3.8 9.3.2.2): Explicit VR Little Endian first, then the
# other native ones and the lossless compressed ones, so what is picked never degrades what
# the sender holds (a PACS answering the gateway's C-MOVE sends its originals as they are).
_PREFERRED = (
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian (retired)
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.5",  # RLE Lossless
)
STORE_SYNTAXES = _PREFERRED + tuple(str(ts) for ts in AllTransferSyntaxes if str(ts) not in _PREFERRED)
STORAGE_CLASSES = tuple(str(cx.abstract_syntax) for cx in AllStoragePresentationContexts)
VERIFICATION = "1.2.840.10008.1.1"
# PS3.4 C.6.1.1.2, C.6.2.1.2: Patient Root and Study Root Query/Retrieve Information Model - FIND.
FIND_CLASSES = ("1.2.840.10008.5.1.4.1.2.1.1", "1.2.840.10008.5.1.4.1.2.2.1")
MOVE_CLASSES = tuple(MOVE_SOP_CLASSES)
GET_CLASSES = tuple(GET_SOP_CLASSES)


def front_door_services(
    gateway: Gateway,
    *,
    peers: DimsePeers,
    portal: LoopPortal,
    observer: Observer,
    spool_dir: Path,
    receiver: MoveReceiver | None = None,
    commitment: CommitmentHandler | None = None,
) -> list[Service]:
    """What the listener answers; each service is one entry (see the module docstring).
    ``commitment``: the storage commitment handler (:func:`commitment_handler`), whose worker
    threads outlive one request, so its owner closes it after the listener stops."""
    ae_title = gateway.settings.ae_title
    peer_of = peers.of
    on_find = _find_outcome(observer)
    on_retrieve = _retrieve_outcome(observer)
    services = [
        Service(evt.EVT_C_ECHO, EchoHandler(peer_of=peer_of, on_outcome=observer.operation), (VERIFICATION,), NATIVE),
        # Storage: roles accepted for C-GET's sub-operations (the requester is their SCP).
        Service(
            evt.EVT_C_STORE,
            StoreHandler(
                gateway.stow,
                portal=portal,
                peer_of=peer_of,
                spool_dir=spool_dir,
                max_bytes=gateway.settings.limits.max_part_bytes,
                receiver=receiver,
                on_outcome=observer.operation,
            ),
            STORAGE_CLASSES,
            STORE_SYNTAXES,
            roles=True,
            unknown_classes=True,  # private and newer storage SOP classes too (dimse/unknown_storage.py)
        ),
        Service(
            evt.EVT_C_FIND,
            FindHandler(
                gateway.qido,
                ae_title=ae_title,
                portal=portal,
                peer_of=peer_of,
                on_outcome=on_find,
                views=gateway.deidentified,
            ),
            FIND_CLASSES,
            NATIVE,
            read=True,
        ),
        # C-MOVE to a client's own storage SCP, C-GET on the requester's association (its
        # storage sub-operations use the storage contexts above, with role selection).
        Service(
            evt.EVT_C_MOVE,
            MoveHandler(
                gateway.retrieval,
                gateway.qido,
                ae_title=ae_title,
                portal=portal,
                peer_of=peer_of,
                destination_of=_destinations(peers),
                on_outcome=on_retrieve,
                views=gateway.deidentified,
            ),
            MOVE_CLASSES,
            NATIVE,
            read=True,
        ),
        Service(
            evt.EVT_C_GET,
            GetHandler(
                gateway.retrieval,
                gateway.qido,
                ae_title=ae_title,
                portal=portal,
                peer_of=peer_of,
                on_outcome=on_retrieve,
                views=gateway.deidentified,
            ),
            GET_CLASSES,
            NATIVE,
            read=True,
        ),
    ]
    if commitment is not None:
        # Storage Commitment Push Model: scope write, checked by the handler (0x0124). Roles
        # accepted: a peer may propose them, though a report on its own association needs none.
        services.append(Service(evt.EVT_N_ACTION, commitment, (STORAGE_COMMITMENT_PUSH_MODEL,), NATIVE, roles=True))
    return services


def _destinations(peers: DimsePeers) -> Callable[[str], Destination | None]:
    """A Move Destination AE title → the (host, port, TLS) of a ``[[dimse_clients]]`` entry with
    a ``port`` (host None: it has none configured, see :class:`gateway.dimse.move.MoveHandler`)."""

    def destination_of(ae_title: str) -> Destination | None:
        peer = peers.by_calling_ae(ae_title)
        if peer is None or peer.kind != "client" or peer.port is None:
            return None
        return peer.host, peer.port, peer.tls

    return destination_of


def _retrieve_outcome(observer: Observer) -> Callable[[RetrieveOutcome], None]:
    def report(outcome: RetrieveOutcome) -> None:
        query = (outcome.level,) + (
            (f"MoveDestination:{outcome.destination}",) if outcome.operation == "C-MOVE" else ()
        )
        observer.operation(
            Operation(
                outcome.peer,
                "",
                None,
                outcome.operation,
                outcome.status,
                outcome.duration,
                outcome.comment,
                instances=outcome.instances,
                failed=outcome.failures,
                query=query,
                suboperations=(outcome.completed, outcome.failed, outcome.warning),
            )
        )

    return report


def _find_outcome(observer: Observer) -> Callable[[FindOutcome], None]:
    def report(outcome: FindOutcome) -> None:
        observer.operation(
            Operation(
                outcome.peer,
                "",
                None,
                "C-FIND",
                outcome.status,
                outcome.duration,
                outcome.comment,
                query=outcome.keys,
                level=outcome.level,
            )
        )

    return report


def commitment_handler(
    gateway: Gateway, *, peers: DimsePeers, portal: LoopPortal, observer: Observer, holder: str
) -> CommitmentHandler:
    """The Storage Commitment Push Model SCP (PS3.4 Annex J) of the front door: reports on a
    new association go from the gateway's AE title with the listener's timeouts; requests are
    kept in the index until reported, under ``holder`` (this replica's name)."""
    settings = gateway.settings
    limits = settings.dimse
    index = gateway.index
    journal = CommitmentJournal(index, holder=holder, portal=portal) if isinstance(index, PendingCommitments) else None
    return CommitmentHandler(
        gateway.commitment,
        ae_title=settings.ae_title,
        portal=portal,
        peer_of=peers.of,
        send_report=NewAssociationReporter(
            settings.ae_title, acse_timeout=limits.acse_timeout, dimse_timeout=limits.dimse_timeout
        ),
        on_outcome=_commitment_outcome(observer),
        max_pending=limits.max_pending_commitments,
        journal=journal,
        peer_by_ae=peers.by_calling_ae,
    )


def _commitment_outcome(observer: Observer) -> Callable[[CommitmentOutcome], None]:
    def report(outcome: CommitmentOutcome) -> None:
        comment = outcome.comment or (f"report on the {outcome.delivered}" if outcome.delivered else "")
        observer.operation(
            Operation(
                outcome.peer,
                outcome.ae_title,
                outcome.address,
                "N-ACTION",
                outcome.status,
                outcome.duration,
                comment,
                instances=outcome.instances,
                failed=outcome.failed,
            )
        )

    return report


@contextlib.asynccontextmanager
async def open_front_door(
    gateway: Gateway, *, receiver: MoveReceiver | None, audit: AuditLog | None, spool_dir: Path, holder: str
) -> AsyncIterator[DimseListener | None]:
    """The DIMSE listener on ``scp_port`` for the app's lifetime (None without ``scp_port``);
    ``holder``: this replica's name (the holder of the storage commitments it reports)."""
    settings = gateway.settings
    if settings.scp_port is None:
        yield None
        return
    peers = DimsePeers.from_settings(settings)
    portal = LoopPortal(asyncio.get_running_loop(), timeout=settings.dimse.operation_timeout)
    observer = Observer(audit)
    commitment = commitment_handler(gateway, peers=peers, portal=portal, observer=observer, holder=holder)
    listener = DimseListener(
        ae_title=settings.ae_title,
        host=settings.effective_scp_host,
        port=settings.scp_port,
        limits=settings.dimse,
        max_message_bytes=settings.limits.max_part_bytes,
        peers=peers,
        services=front_door_services(
            gateway,
            peers=peers,
            portal=portal,
            observer=observer,
            spool_dir=spool_dir,
            receiver=receiver,
            commitment=commitment,
        ),
        receiver=receiver,
        ssl_context=listener_context(settings.dimse_tls),
        on_reject=observer.rejected,
    )
    try:
        await anyio.to_thread.run_sync(listener.start)
    except OSError as exc:
        await anyio.to_thread.run_sync(commitment.close)
        where = f"{settings.effective_scp_host}:{settings.scp_port}"
        raise RuntimeError(f"cannot run the DIMSE listener on {where}: {exc.strerror or exc}") from exc
    commitment.start()  # the reports a previous run (or a stopped replica) still owes
    try:
        yield listener
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(listener.stop)
            await anyio.to_thread.run_sync(commitment.close)
