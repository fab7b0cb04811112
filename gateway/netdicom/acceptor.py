"""A waking association reactor for pynetdicom associations (acceptors, and requestors:
pynetdicom runs one loop for both).

An association's own thread (``Association._run_reactor``) polls too: every 1 ms it
looks for a decoded DIMSE message, a release or abort from the peer, a dead DUL thread or an
expired network timeout. :func:`install` gives one association the same loop (pynetdicom 3.0),
in the same order, waiting on an event set whenever the DUL hands it a message or a primitive,
the DUL thread ends, or the association is killed, so a C-STORE or C-FIND request is served as
soon as it is decoded. The network timeout is checked at least every :data:`BACKSTOP` seconds.

While it waits the reactor counts as paused (``_is_paused``): pynetdicom's ``send_*`` methods
pause it before they use the association from another thread and spin until it says so; it
then stops at ``_reactor_checkpoint`` before touching a message, exactly as pynetdicom's does.

That handshake has a gap: a reactor just let through the checkpoint still says it is paused
until it says otherwise, and then takes a message off the queue; a sender that paused it in
between has its response taken (pynetdicom logs "Received unexpected C-STORE service
message" and the sender waits for the DIMSE timeout). A response that comes back within a
millisecond falls into it. :func:`pause` closes it: the reactor looks at the checkpoint again
and takes a message only under a gate that :func:`pause` passes through after closing the
checkpoint.

Killing the association (after a release or an abort) waits for its DUL as pynetdicom does,
but looks every half millisecond rather than every 10 (:func:`_kill`).
"""

from __future__ import annotations

import logging
import threading
import time
import types
from typing import Any

from pynetdicom import evt

# pynetdicom's own logger: its messages stay what they were.
LOGGER = logging.getLogger("pynetdicom.association")

BACKSTOP = 0.1  # seconds: the network timeout's resolution, and what a missed signal could cost
# Between looks at a DUL finishing its last action once the association is killed
# (pynetdicom: 10 ms, see _kill).
KILL_POLL = 0.0005


GATE = "_gateway_reactor_gate"


def install(assoc: Any) -> threading.Event:
    """Replace ``assoc``'s acceptor loop (before its thread starts); the returned event wakes it."""
    signal = threading.Event()
    setattr(assoc, GATE, threading.Lock())
    for q in (assoc.dimse.msg_queue, assoc.dul.to_user_queue):
        _signal_after(q, signal)

    def kill_and_wake() -> None:
        signal.set()
        _kill(assoc)

    assoc.kill = kill_and_wake
    assoc._run_reactor = types.MethodType(lambda self: _run(self, signal), assoc)
    return signal


def _signal_after(q: Any, signal: threading.Event) -> None:
    put = q.put

    def put_and_signal(item: Any, block: bool = True, timeout: float | None = None) -> None:
        put(item, block, timeout)
        signal.set()

    q.put = put_and_signal


def pause(assoc: Any) -> None:
    """What pynetdicom's ``send_*`` methods do before using ``assoc`` from a thread other than
    its reactor's, without the gap (see the module docstring); ``_reactor_checkpoint.set()``
    lets the reactor go on."""
    assoc._reactor_checkpoint.clear()
    gate = getattr(assoc, GATE, None)
    if gate is not None and not assoc._is_paused:
        with gate:  # a reactor past its checkpoint has taken its message (or sees it closed)
            pass
    while not assoc._is_paused:
        time.sleep(0.0001)


def _kill(assoc: Any) -> None:
    """pynetdicom's ``Association.kill`` (3.0), looking every :data:`KILL_POLL` instead of every
    10 ms whether the DUL reached Sta1 and stopped. A release is killed as soon as the
    A-RELEASE-RP is handed over (PS3.8 9.2, AR-3), which is before the DUL has closed the
    connection and reached Sta1: pynetdicom's first look nearly always misses it, and a C-MOVE
    releases its sub-association before its final response, so each C-MOVE waited 10 ms."""
    assoc._reactor_checkpoint.set()
    assoc._kill = True
    assoc.is_established = False
    assoc._is_paused = True
    dul = assoc.dul
    while dul.is_alive() and not dul.stop_dul():
        time.sleep(KILL_POLL)


def _run(assoc: Any, signal: threading.Event) -> None:
    """pynetdicom's ``Association._run_reactor``, its 1 ms sleep replaced by ``signal``."""
    gate: threading.Lock = getattr(assoc, GATE)
    while not assoc._kill:
        assoc._is_paused = True
        signal.wait(BACKSTOP)
        signal.clear()  # what arrived before this is handled below; anything later sets it again
        assoc._reactor_checkpoint.wait()
        with gate:
            if not assoc._reactor_checkpoint.is_set():
                continue  # paused again since: by a sender whose response must stay queued
            assoc._is_paused = False
            context_id, msg = assoc.dimse.get_msg(block=False)
        if msg:
            assoc._serve_request(msg, context_id)
            signal.set()  # another message may have been queued meanwhile: look again at once

        if assoc.is_established and assoc.acse.is_release_requested():
            assoc.acse.send_release(is_response=True)
            LOGGER.info("Association Released")
            assoc.is_released = True
            assoc.is_established = False
            evt.trigger(assoc, evt.EVT_RELEASED, {})
            assoc.kill()
            return

        if assoc.acse.is_aborted():
            LOGGER.info("Association Aborted" + (" (A-P-ABORT)" if assoc.acse.is_aborted("a-p-abort") else ""))
            assoc.dul.receive_pdu(wait=False)  # so that EVT_ACSE_RECV fires for subscribers
            assoc.is_aborted = True
            assoc.is_established = False
            evt.trigger(assoc, evt.EVT_ABORTED, {})
            assoc.kill()
            return

        if not assoc.dul.is_alive():
            assoc.kill()
            return

        if assoc.dul.idle_timer_expired():
            LOGGER.error("Network timeout reached")
            if assoc.network_timeout_response == "A-RELEASE":
                assoc._is_paused = True
                assoc._reactor_checkpoint.wait()
                assoc.release()
                assoc._is_paused = False
            else:
                assoc.abort()
            assoc.kill()
            return
