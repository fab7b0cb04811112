"""Associations to one PACS over pynetdicom: opened, classified when they fail, pooled, bounded.

Everything here blocks and runs in worker threads (see :mod:`gateway.adapters.dimse`).

* Every socket gets TCP_NODELAY when it connects: DIMSE sends small PDUs (command sets, C-FIND
  responses), and with Nagle's algorithm each waits for the peer's delayed ACK (~40 ms).
* An association that finished its operation cleanly goes back to an idle list and is reused
  by the next operation of the same *kind* (its presentation contexts); idle associations
  older than ``idle_seconds`` are released by a reaper. While idle, an association is *parked*:
  pynetdicom's reactor thread is paused (as pynetdicom itself does during a request), and its
  socket thread (gateway.netdicom.reactor, on every association of the pool's AEs) sleeps
  until the PACS sends something, so an idle association costs no CPU. A parked association the PACS closed
  meanwhile is noticed from its state machine, or fails before any answer and is replaced.
  Open associations (idle plus in use) never exceed the node's ``max_associations``: the
  caller bounds the ones in use, and an idle one of another kind is released to make room.
* Every operation is watched (:mod:`gateway.adapters.dimse_watchdog`): when no PDU moves for
  ``dimse_timeout`` or the operation outlives ``operation_timeout``, the association is aborted
  (A-ABORT, PS3.8 7.3), its socket shut and the waiting thread woken, so no thread waits on a
  silent PACS (a network partition) for longer than that. A failed association is aborted
  without waiting for the PACS; a stale idle one is released in the background.
* Failures to associate are told apart for the user: TCP connection refused or unreachable,
  the association rejected (with the reason, e.g. calling AE title not recognised), or no
  answer in time (a listener that accepts and never speaks).
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, TypeVar

from pynetdicom import AE, evt
from pynetdicom.association import Association

from gateway.adapters.dimse_watchdog import Watchdog, abort_now, activity_of
from gateway.dicom.received import discard_unfinished
from gateway.errors import UpstreamError, UpstreamTimeout
from gateway.netdicom.client_tls import client_tls_args
from gateway.netdicom.tune import TunedAE
from gateway.settings import PacsNode

log = logging.getLogger(__name__)

T = TypeVar("T")
# What an association of a kind proposes: (presentation contexts, extended negotiation items).
ContextFactory = Callable[[Hashable], tuple[list[Any], list[Any]]]

DATA_TRANSFER = "Sta6"  # PS3.8 Table 9-10: association established, ready for data transfer


def set_nodelay(event: Any) -> None:
    """EVT_CONN_OPEN handler: disable Nagle on the association's socket (PEERS.md)."""
    sock = event.assoc.dul.socket
    if sock is not None and sock.socket is not None:
        sock.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class AssociationRefused(UpstreamError):
    """No association: connection refused or unreachable, association rejected or aborted."""


class ConnectionLost(UpstreamError):
    """The association died mid-operation. ``answered`` tells whether any response had arrived
    (an idle pooled association the PACS closed fails before any)."""

    def __init__(self, reason: str, *, answered: bool) -> None:
        super().__init__(reason)
        self.answered = answered


@dataclass
class _Idle:
    assoc: Association
    kind: Hashable
    since: float


class AssociationPool:
    """The associations of one PACS node (thread-safe; all methods block)."""

    def __init__(self, node: PacsNode, calling_ae: str, contexts: ContextFactory, *, idle_seconds: float = 15.0):
        self.node = node
        self.calling_ae = calling_ae
        self._contexts = contexts
        self._idle_seconds = idle_seconds
        self._lock = threading.Lock()
        self._idle: list[_Idle] = []
        self._busy: set[Association] = set()
        self._opening = 0  # associations being requested by checkout(): they count against the cap
        self._aes: dict[Hashable, tuple[AE, list[Any]]] = {}
        self._closed = False
        self._reaper: threading.Timer | None = None
        self._watchdog = Watchdog(node.name)

    @property
    def where(self) -> str:
        n = self.node
        return f"PACS {n.name} ({n.ae_title}@{n.host}:{n.port})"

    # -- running operations ----------------------------------------------------------------

    def run(self, kind: Hashable, operation: Callable[[Association], T]) -> T:
        """Run ``operation`` on an association of ``kind``, watched for stalls (no PDU for
        ``dimse_timeout``) and for the node's ``operation_timeout``.

        A reused association that turns out to be dead before answering anything is replaced
        by a fresh one once; the caller sees every other failure.
        """
        assoc, reused = self.checkout(kind)
        node = self.node
        while True:
            watch = self._watchdog.watch(assoc, stall=node.dimse_timeout, limit=node.operation_timeout)
            healthy = False
            try:
                result = operation(assoc)
                healthy = True
                return result
            except ConnectionLost as exc:
                if watch.reason == "operation":
                    raise UpstreamTimeout(
                        f"{self.where} did not complete the operation within {node.operation_timeout:g} s"
                    ) from exc
                if watch.reason == "stall":
                    raise UpstreamTimeout(f"{self.where}: no DIMSE traffic for {node.dimse_timeout:g} s") from exc
                if not (reused and not exc.answered):
                    raise
                log.debug("%s: pooled association was closed by the PACS; opening a new one", self.where)
            finally:
                self._watchdog.unwatch(watch)
                self.checkin(assoc, kind, healthy=healthy and not watch.expired)
            assoc, reused = self.open(kind), False

    def checkout(self, kind: Hashable) -> tuple[Association, bool]:
        """An established association of ``kind``: a pooled one (reused=True) or a new one."""
        stale: list[Association] = []
        found: Association | None = None
        now = time.monotonic()
        with self._lock:
            if self._closed:
                raise UpstreamError(f"{self.where}: the gateway is shutting down")
            keep: list[_Idle] = []
            for idle in self._idle:
                if not _usable(idle.assoc) or now - idle.since > self._idle_seconds:
                    stale.append(idle.assoc)
                elif found is None and idle.kind == kind:
                    found = idle.assoc
                else:
                    keep.append(idle)
            # Make room under max_associations by closing an idle association of another kind.
            in_use = len(self._busy) + self._opening
            while keep and found is None and len(keep) + in_use >= self.node.max_associations:
                stale.append(keep.pop(0).assoc)
            self._idle = keep
            if found is not None:
                self._busy.add(found)
            else:
                self._opening += 1
        if stale:
            # Not on this request's time: releasing waits for the PACS (up to acse_timeout).
            threading.Thread(target=_release_all, args=(stale,), name=f"release-{self.node.name}", daemon=True).start()
        if found is not None:
            return found, True
        try:
            return self.open(kind), False
        finally:
            with self._lock:
                self._opening -= 1

    def checkin(self, assoc: Association, kind: Hashable, *, healthy: bool) -> None:
        with self._lock:
            self._busy.discard(assoc)
            if healthy and _usable(assoc) and not self._closed:
                # Park: pynetdicom's send_*/release pause the reactor the same way and wait for
                # it to be paused, so they work unchanged on a parked association.
                assoc._reactor_checkpoint.clear()
                self._idle.append(_Idle(assoc, kind, time.monotonic()))
                if self._reaper is None:
                    self._reaper = threading.Timer(self._idle_seconds, self._reap)
                    self._reaper.daemon = True
                    self._reaper.start()
                return
        # A failed operation leaves the association in an unknown state (timed out, aborted,
        # half a response read): abort it; an A-RELEASE could wait acse_timeout for nothing.
        abort_now(assoc)

    def discard(self, assoc: Association) -> None:
        """Release an association that worked but is not to be pooled (C-ECHO's)."""
        with self._lock:
            self._busy.discard(assoc)
        _release(assoc)

    def _reap(self) -> None:
        """Release idle associations past ``idle_seconds`` (or closed by the PACS meanwhile)."""
        now = time.monotonic()
        with self._lock:
            self._reaper = None
            expired = [i for i in self._idle if not _usable(i.assoc) or now - i.since >= self._idle_seconds]
            self._idle = [i for i in self._idle if i not in expired]
            if self._idle and not self._closed:
                wait = max(0.1, self._idle_seconds - (now - min(i.since for i in self._idle)))
                self._reaper = threading.Timer(wait, self._reap)
                self._reaper.daemon = True
                self._reaper.start()
        for item in expired:
            _release(item.assoc)

    def close(self) -> None:
        """Release idle associations and abort those in use (their operations fail at once)."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
            busy = list(self._busy)
            if self._reaper is not None:
                self._reaper.cancel()
        for item in idle:
            _release(item.assoc)
        for assoc in busy:
            abort_now(assoc)

    # -- opening ---------------------------------------------------------------------------

    def open(self, kind: Hashable, *, retry: bool = True) -> Association:
        """A new association of ``kind``, or UpstreamError / UpstreamTimeout saying why not."""
        ae, ext_neg = self._ae(kind)
        node = self.node
        connected = threading.Event()
        answers: list[Any] = []

        def on_open(event: Any) -> None:
            connected.set()
            set_nodelay(event)

        def on_acse(event: Any) -> None:
            answers.append(event.primitive)  # keeps an A-ASSOCIATE-RJ even if the close wins the race

        started = time.monotonic()
        assoc = ae.associate(
            node.host,
            node.port,
            ae_title=node.ae_title,
            ext_neg=ext_neg,
            # A C-GET's storage sub-operation cut off mid data set leaves pynetdicom's file behind.
            evt_handlers=[
                (evt.EVT_CONN_OPEN, on_open),
                (evt.EVT_ACSE_RECV, on_acse),
                (evt.EVT_CONN_CLOSE, discard_unfinished),
            ],
            tls_args=self._tls_args(),
        )
        if not assoc.is_established:
            rejection = next((a for a in answers if getattr(a, "result", 0) in (1, 2)), None)
            problem = self._why_not(assoc, connected.is_set(), time.monotonic() - started, rejection)
            if retry and isinstance(problem, AssociationRefused) and "aborted" in problem.reason:
                # An abort with no reason given is sometimes a lost race in the socket layer:
                # one more attempt tells a transient failure from a PACS that always aborts.
                return self.open(kind, retry=False)
            raise problem
        with self._lock:
            if self._closed:
                abort_now(assoc)
                raise UpstreamError(f"{self.where}: the gateway is shutting down")
            self._busy.add(assoc)
        activity = activity_of(assoc)
        assoc.bind(evt.EVT_PDU_SENT, activity.touch)
        assoc.bind(evt.EVT_PDU_RECV, activity.touch)
        return assoc

    def _why_not(self, assoc: Association, connected: bool, elapsed: float, rejection: Any) -> Exception:
        node = self.node
        if not connected:
            if elapsed >= node.connect_timeout * 0.9:
                # Not asking again: a silent network (a partition) would cost another timeout.
                return UpstreamTimeout(f"{self.where}: TCP connect timed out after {node.connect_timeout:g} s")
            # pynetdicom logs the socket error but keeps it; ask the network once more to name it.
            try:
                with socket.create_connection((node.host, node.port), timeout=node.connect_timeout):
                    pass
            except TimeoutError:
                return UpstreamTimeout(f"{self.where}: TCP connect timed out after {node.connect_timeout:g} s")
            except OSError as exc:
                return AssociationRefused(f"{self.where}: cannot connect: {exc.strerror or exc}")
            return AssociationRefused(f"{self.where}: cannot connect (the connection failed, then succeeded on retry)")
        if assoc.is_rejected or rejection is not None:
            rsp = rejection or assoc.acceptor.primitive
            detail = f"{rsp.result_str}, {rsp.source_str}: {rsp.reason_str}" if rsp is not None else "no reason"
            # e.g. "Rejected Permanent, Service User: Calling AE title not recognised"
            return AssociationRefused(f"{self.where} rejected the association ({detail}); calling AE {self.calling_ae}")
        if elapsed >= node.acse_timeout * 0.9:
            return UpstreamTimeout(f"{self.where}: no answer to the association request within {node.acse_timeout:g} s")
        return AssociationRefused(f"{self.where} aborted the association request")

    def _ae(self, kind: Hashable) -> tuple[AE, list[Any]]:
        with self._lock:
            cached = self._aes.get(kind)
            if cached is not None:
                return cached
        contexts, ext_neg = self._contexts(kind)
        ae = TunedAE(ae_title=self.calling_ae)
        node = self.node
        ae.connection_timeout = node.connect_timeout
        ae.acse_timeout = node.acse_timeout
        ae.dimse_timeout = node.dimse_timeout
        # An idle pooled association gives up after this long without traffic (it is released
        # after idle_seconds anyway); during an operation only dimse_timeout applies.
        ae.network_timeout = max(node.dimse_timeout, self._idle_seconds * 2)
        ae.maximum_pdu_size = 0  # no limit on what the PACS may send us: fewer, larger PDUs
        for context in contexts:
            ae.add_requested_context(context.abstract_syntax, context.transfer_syntax)
        with self._lock:
            return self._aes.setdefault(kind, (ae, ext_neg))

    def _tls_args(self) -> tuple[ssl.SSLContext, str] | None:
        return client_tls_args(self.node.tls, self.node.host)


def _usable(assoc: Association) -> bool:
    """Established as far as the socket layer knows (a parked reactor does not update
    ``is_established`` when the PACS closes the connection; its state machine does)."""
    return bool(assoc.is_established) and assoc.dul.state_machine.current_state == DATA_TRANSFER


def _release_all(associations: list[Association]) -> None:
    for assoc in associations:
        _release(assoc)


def _release(assoc: Association) -> None:
    """A-RELEASE (PS3.8 7.2) when the association still works, else just drop it."""
    try:
        if _usable(assoc):
            assoc.release()
            return
    except Exception:
        log.debug("release failed", exc_info=True)
    abort_now(assoc)
