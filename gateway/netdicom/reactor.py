"""A waking DUL reactor for pynetdicom associations, and whole-PDU reads.

pynetdicom's DUL thread (``DULServiceProvider.run_reactor``) polls: when a pass finds nothing
to do it sleeps ``_run_loop_delay`` (1 ms) and looks again, at its socket with a zero-timeout
``select`` and at its queues. Every PDU then waits up to that delay, each association's thread
wakes a thousand times a second while idle, and those wake-ups take the interpreter lock from
the event loop and the threads doing real work.

:func:`install` replaces that loop, for one association, with the same steps in the same order
(the state machine is untouched) but a wait that ends as soon as there is work: a ``select`` on
the association's socket and a wake socket pair, signalled whenever a primitive is queued for
the DUL to send, an event is queued for its state machine, or the thread is told to stop. The
wait is bounded by the ARTIM timer (PS3.8 9.1.5) and a short backstop, so a timer still fires
on time. It also reads each PDU with ``recv_into`` into one buffer instead of 4 KiB ``recv``
calls joined together, and, given a ``receive`` fast path (the associations the gateway requests:
:mod:`gateway.netdicom.pdata_reader`), lets it take a PDU before pynetdicom does. Its
``stop_dul`` wakes the thread and joins it rather than polling every millisecond until it has
ended.

Each pass (one primitive to send or one PDU received, and the state machine's action) runs
holding the association's send lock, which :mod:`gateway.netdicom.encoded_store` takes to write
a whole C-STORE message to the socket itself: what the DUL sends and what that writes never
interleave.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import select
import socket
import ssl
import threading
import time
import types
from collections.abc import Callable
from typing import Any

from pynetdicom.pdu import A_ABORT_RQ

# pynetdicom's own logger: its messages stay what they were.
LOGGER = logging.getLogger("pynetdicom.dul")

# The longest wait without a wake-up: nothing should need it, it bounds what a missed signal
# could cost.
BACKSTOP = 0.1
WAKER = "_gateway_waker"
SENDER_READS = "_gateway_sender_reads"


class Waker:
    """A socket pair: :meth:`wake` makes the reactor's ``select`` return."""

    def __init__(self) -> None:
        self.reader, self._writer = socket.socketpair()
        self.reader.setblocking(False)
        self._writer.setblocking(False)

    def wake(self) -> None:
        with contextlib.suppress(OSError):  # full (already signalled) or closed (reactor ended)
            self._writer.send(b"\0")

    def drain(self) -> None:
        with contextlib.suppress(OSError):
            while self.reader.recv(4096):
                pass

    def close(self) -> None:
        self.reader.close()
        self._writer.close()


def install(dul: Any, transport: Any, receive: Callable[[Any], bool | None] | None = None) -> threading.Lock:
    """Give ``dul`` (a ``DULServiceProvider`` whose thread has not started) the waking loop, and
    ``transport`` (its ``AssociationSocket``) whole-PDU reads; returns the send lock.
    ``receive(dul)``: asked before pynetdicom's transport in each pass: None leaves the pass to
    the transport, True says it received something, False that it holds the socket but had
    nothing to do (the pass goes on to the state machine, then waits)."""
    waker = Waker()
    setattr(dul, WAKER, waker)
    send_lock = threading.Lock()
    _wake_after(dul.to_provider_queue, waker, dul)
    _wake_after(dul.event_queue, waker, dul)
    kill = dul.kill_dul

    def kill_dul() -> None:
        kill()
        waker.wake()

    dul.kill_dul = kill_dul

    def stop_dul() -> bool:
        # pynetdicom's DULServiceProvider.stop_dul (3.0), its thread woken to see the kill
        # rather than polled for every 1 ms until it ends.
        if dul.state_machine.current_state != "Sta1":
            return False
        dul._kill_thread = True
        waker.wake()
        if dul.is_alive() and threading.current_thread() is not dul:
            dul.join()
        return True

    dul.stop_dul = stop_dul
    dul.run = types.MethodType(lambda self: _run(self, waker, send_lock, receive), dul)
    transport.recv = types.MethodType(_recv, transport)
    return send_lock


def _wake_after(q: queue.Queue[Any], waker: Waker, reactor: threading.Thread) -> None:
    put = q.put

    def put_and_wake(item: Any, block: bool = True, timeout: float | None = None) -> None:
        put(item, block, timeout)
        if threading.current_thread() is not reactor:  # the reactor itself looks again anyway
            waker.wake()

    q.put = put_and_wake  # type: ignore[method-assign]


def _run(dul: Any, waker: Waker, send_lock: threading.Lock, receive: Callable[[Any], bool | None] | None) -> None:
    """pynetdicom's ``run_reactor`` (3.0), its sleep replaced by :func:`_wait`, each pass
    holding ``send_lock``; ``receive`` may take a PDU before pynetdicom's transport does."""
    try:
        dul._idle_timer.start()
        idle = False
        while True:
            if not dul.assoc._dul_ready.is_set():
                dul.assoc._dul_ready.set()
            if idle:
                _wait(dul, waker)
            if dul._kill_thread:
                break
            if dul.artim_timer.expired:
                dul.event_queue.put("Evt18")
            with send_lock:
                try:
                    # One primitive to encode and send OR one PDU to receive and decode per pass.
                    if dul._process_recv_primitive():
                        pass
                    elif receive is not None and (received := receive(dul)) is not None:
                        if received:
                            dul._idle_timer.restart()
                            if dul.event_queue.empty():  # nothing for the state machine: read on
                                idle = False
                                continue
                    elif dul._is_transport_event():
                        dul._idle_timer.restart()
                except Exception:
                    LOGGER.exception("Exception in DUL.run(), aborting association")
                    _abort(dul)
                    return
                try:
                    event = dul.event_queue.get(block=False)
                except queue.Empty:
                    idle = True
                    continue
                dul.state_machine.do_action(event)
            idle = False
    finally:
        waker.close()


def sender_reads(dul: Any, reads: bool) -> None:
    """Whether the thread sending a message reads its answer itself
    (:mod:`gateway.netdicom.store_answer`): meanwhile the reactor's wait leaves the socket out,
    so that the answer does not wake it only to find the send lock taken. A wait begun before
    ends at the latest at :data:`BACKSTOP`; :func:`wake` ends it at once."""
    setattr(dul, SENDER_READS, reads)


def wake(dul: Any) -> None:
    """End the reactor's wait now (it looks at the socket again)."""
    waker = getattr(dul, WAKER, None)
    if waker is not None:
        waker.wake()


def _wait(dul: Any, waker: Waker) -> None:
    """Until the socket is readable, the waker is signalled, or the ARTIM timer is due."""
    transport = dul.socket
    sock = None if transport is None else transport.socket
    if sock is None or not transport._is_connected or sock.fileno() < 0:
        # Not connected yet (an unconnected socket would select() as ready at once), or closed:
        # pynetdicom's own pace.
        time.sleep(dul._run_loop_delay)
        return
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return  # decrypted bytes select() cannot see
    timeout = BACKSTOP
    artim = dul.artim_timer
    if artim._start_time is not None and artim._end_time is None:
        timeout = max(0.0, min(timeout, artim.remaining))
    try:
        watched = [waker.reader] if getattr(dul, SENDER_READS, False) else [sock, waker.reader]
        ready, _, _ = select.select(watched, [], [], timeout)
    except (OSError, ValueError):
        return  # closed under us: the next pass finds out (Evt17)
    if waker.reader in ready:
        waker.drain()


def _abort(dul: Any) -> None:
    """As pynetdicom does when its reactor fails: an A-ABORT past the state machine, then stop."""
    pdu = A_ABORT_RQ()
    pdu.source = 0x02
    pdu.reason_diagnostic = 0x00
    with contextlib.suppress(Exception):
        dul.socket.send(pdu.encode())
    assoc = dul.assoc
    assoc.is_aborted = True
    assoc.is_established = False
    assoc._kill = True
    dul._kill_thread = True


def _recv(transport: Any, nr_bytes: int) -> bytearray:
    """``AssociationSocket.recv``: ``nr_bytes`` or fewer when the peer closes; blocks until then."""
    sock = transport.socket
    buffer = bytearray(nr_bytes)
    view = memoryview(buffer)
    got = 0
    try:
        while got < nr_bytes:
            n = sock.recv_into(view[got:], nr_bytes - got)
            if not n:
                break
            got += n
    finally:
        view.release()
    if got < nr_bytes:
        del buffer[got:]
    return buffer
