"""One retrieval from a PACS shared by every request that wants it (single flight).

A :class:`Flight` collects the instances of one retrieve as they arrive (:class:`Arrival`: the
spooled Part 10 file, and later its index record once written through to the cache) and lets
any number of requests :meth:`~Flight.follow` it: each sees every arrival, those before it
joined and those still to come, then the flight's error if it failed.

An arrival can be served from its spool file at once, before it is parsed and cached, so the
first part of a response leaves as soon as the first instance is in. Spool files are therefore
kept until the flight is over *and* no request follows it any more; then they are removed (the
cache holds its own copy or hard link by then).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from gateway.errors import GatewayError
from gateway.ports import InstanceRecord, ReceivedInstance

log = logging.getLogger(__name__)

READ_CHUNK = 8 << 20


@dataclass(eq=False)
class Arrival:
    """One instance received for a flight. ``settled`` is set once it was written through to
    the cache (``record`` is then its index record) or refused (``record`` stays None)."""

    received: ReceivedInstance
    record: InstanceRecord | None = None
    settled: anyio.Event = field(default_factory=anyio.Event)

    def settle(self, record: InstanceRecord | None) -> None:
        self.record = record
        self.settled.set()


@dataclass(eq=False)
class Flight:
    key: tuple[str, str, str]  # study, series, sop ('' for the levels not asked)
    study: str
    series: str | None
    sop: str | None
    arrivals: list[Arrival] = field(default_factory=list)
    complete: bool = False  # no more arrivals: the retrieve is over
    done: bool = False  # ... and every arrival settled: the flight is over
    error: BaseException | None = None
    warnings: list[str] = field(default_factory=list)  # the retrieve's final warning status, if any
    readers: int = 0
    changed: anyio.Event = field(default_factory=anyio.Event)

    def _signal(self) -> None:
        changed, self.changed = self.changed, anyio.Event()
        changed.set()

    def add(self, arrival: Arrival) -> None:
        self.arrivals.append(arrival)
        self._signal()

    def end_arrivals(self, error: BaseException | None = None) -> None:
        """The retrieve is over (``error``: it broke off); arrivals may still be settling."""
        self.complete = True
        self.error = self.error or error
        self._signal()

    def finish(self, error: BaseException | None = None) -> None:
        """Every arrival is settled, or the flight failed: it is over."""
        self.complete = self.done = True
        self.error = self.error or error
        for arrival in self.arrivals:
            if not arrival.settled.is_set():  # interrupted before it was cached
                arrival.settle(None)
        self._signal()
        if self.readers == 0:
            self.release_spool()

    async def follow(self) -> AsyncGenerator[Arrival, None]:
        """Every arrival of the flight, those already in and those still to come; ends when the
        retrieve does (raising its error, if any), not waiting for the cache."""
        self.readers += 1
        try:
            i = 0
            while True:
                while i < len(self.arrivals):
                    yield self.arrivals[i]
                    i += 1
                if self.complete:
                    if self.error is not None:
                        raise reraised(self.error)
                    return
                await self.changed.wait()
        finally:
            self.readers -= 1
            if self.done and self.readers == 0:
                self.release_spool()

    async def first(self) -> None:
        """Wait until the flight has an arrival or has ended."""
        while not self.arrivals and not self.complete:
            await self.changed.wait()

    async def wait_done(self) -> None:
        """Wait until the flight is over: everything received is in the cache (or it failed)."""
        while not self.done:
            await self.changed.wait()

    def release_spool(self) -> None:
        for arrival in self.arrivals:
            arrival.received.path.unlink(missing_ok=True)


async def read_file(path: Path) -> AsyncIterator[bytes]:
    """A spooled file's bytes. Opened at the first read: the flight keeps the file until then.
    A typical instance is read in one go (one worker-thread hop instead of four)."""
    with await anyio.to_thread.run_sync(open, path, "rb") as f:
        while chunk := await anyio.to_thread.run_sync(f.read, READ_CHUNK):
            yield chunk
            if len(chunk) < READ_CHUNK:
                return


def reraised(error: BaseException) -> BaseException:
    """A flight's error, raised in each request that follows it: a fresh instance of the kind."""
    if isinstance(error, GatewayError):
        # Not type(error)(reason): subclasses may take more arguments (ConnectionLost's answered).
        fresh = type(error).__new__(type(error), *error.args)
        fresh.__dict__.update(error.__dict__)
        return fresh
    return error
