"""Ending associations whose PACS went silent: a watchdog over the operations in progress, and
an abort that never waits on the network.

Why pynetdicom's own timeouts are not enough. Its socket thread reads a PDU with blocking
``recv`` calls on a socket without a timeout; when the link dies in the middle of a PDU (a
partition: no FIN, no RST) that thread waits forever. Its ``dimse_timeout`` does fire in the
thread waiting for the response, but the reaction is a *blocking* A-ABORT, which waits for the
socket thread to reach the idle state (PS3.8 Sta1): so the operation never returns either.

So every operation in use is *watched*: a :class:`Watchdog` thread (one per PACS node, alive
only while something is watched) notes each PDU sent or received (EVT_PDU_SENT/RECV), and when
no PDU has moved for the node's ``dimse_timeout``, or the whole operation outlived
``operation_timeout``, it aborts the association *and shuts its socket down*. The blocked read
returns at once, the state machine goes idle (A-P-ABORT, PS3.8 9.2.1 AA-4), and the waiting
thread is woken. A stall is therefore noticed no later than ``dimse_timeout`` after the last
PDU, whatever pynetdicom was doing at the time.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
import weakref
from typing import Any

from pynetdicom.association import Association

log = logging.getLogger(__name__)

TICK = 0.2  # seconds between two looks at the watched operations
ABORT_LINGER = 1.0  # seconds an aborted association gets to send its A-ABORT before its socket is shut


class Activity:
    """When the association last sent or received a PDU (updated from pynetdicom's thread)."""

    def __init__(self) -> None:
        self.at = time.monotonic()

    def touch(self, _event: Any = None) -> None:
        self.at = time.monotonic()


_activities: weakref.WeakKeyDictionary[Association, Activity] = weakref.WeakKeyDictionary()


def activity_of(assoc: Association) -> Activity:
    """The :class:`Activity` of ``assoc`` (created on first use; bind its ``touch`` to
    EVT_PDU_SENT and EVT_PDU_RECV when the association is requested)."""
    return _activities.setdefault(assoc, Activity())


class Watch:
    """One operation under watch; ``reason`` says why the watchdog ended it (None: it did not)."""

    def __init__(self, assoc: Association, activity: Activity, *, stall: float, limit: float) -> None:
        self.assoc = assoc
        self.activity = activity
        self.stall = stall
        self.deadline = time.monotonic() + limit
        self.limit = limit
        self.reason: str | None = None

    @property
    def expired(self) -> bool:
        return self.reason is not None

    def check(self, now: float) -> str | None:
        if now >= self.deadline:
            return "operation"
        if now - self.activity.at >= self.stall:
            return "stall"
        return None


class Watchdog:
    """Ends watched operations that stall or outlive their limit (see the module docstring)."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._lock = threading.Lock()
        self._watches: set[Watch] = set()
        self._thread: threading.Thread | None = None

    def watch(self, assoc: Association, *, stall: float, limit: float) -> Watch:
        activity = activity_of(assoc)
        activity.touch()  # an operation starts now, whatever the association did before
        watch = Watch(assoc, activity, stall=stall, limit=limit)
        with self._lock:
            self._watches.add(watch)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=f"dimse-watchdog-{self._name}", daemon=True)
                self._thread.start()
        return watch

    def unwatch(self, watch: Watch) -> None:
        with self._lock:
            self._watches.discard(watch)

    def _run(self) -> None:
        while True:
            time.sleep(TICK)
            now = time.monotonic()
            expired: list[Watch] = []
            with self._lock:
                if not self._watches:
                    self._thread = None  # a new watch starts a new thread
                    return
                for watch in list(self._watches):
                    reason = watch.check(now)
                    if reason is not None:
                        watch.reason = reason
                        self._watches.discard(watch)
                        expired.append(watch)
            for watch in expired:
                log.debug("%s: ending a DIMSE operation (%s)", self._name, watch.reason)
                abort_now(watch.assoc, linger=0.0)


def abort_now(assoc: Association, *, linger: float = ABORT_LINGER) -> None:
    """A-ABORT ``assoc`` (PS3.8 7.3.1) without waiting, wake a thread blocked waiting for its next
    DIMSE message, and shut its socket down after ``linger`` seconds unless it is closed by then
    (a socket thread stuck in the middle of a PDU from a silent peer never closes it itself)."""
    try:
        assoc.abort(block=False)
    except Exception:  # the association may be half torn down already
        log.debug("abort failed", exc_info=True)
    # pynetdicom's waiters block on this queue for up to dimse_timeout; (None, None) is what it
    # puts there itself when the peer aborts.
    assoc.dimse.msg_queue.put((None, None))
    if linger <= 0:
        shut_socket(assoc)
        return
    timer = threading.Timer(linger, shut_socket, (assoc,))
    timer.daemon = True
    timer.start()


def shut_socket(assoc: Association) -> None:
    """Shut the association's TCP connection down in both directions: a blocked read returns,
    pynetdicom sees the connection closed (Evt17) and closes the socket itself."""
    transport = assoc.dul.socket
    raw = getattr(transport, "socket", None) if transport is not None else None
    if raw is None or assoc.dul.state_machine.current_state == "Sta1":
        return
    with contextlib.suppress(OSError):
        raw.shutdown(socket.SHUT_RDWR)
