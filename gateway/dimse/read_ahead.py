"""The instances of one retrieve, each with its stored bytes, read one instance ahead of the
C-STORE sub-operation that sends it (see :mod:`gateway.dimse.retrieve`)."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import suppress
from typing import Any

from gateway.dimse.portal import LoopPortal
from gateway.ports import InstanceRecord
from gateway.services.flight import Arrival
from gateway.services.retrieval import RetrievalService

__all__ = ["ReadAhead", "collect", "next_item"]


class ReadAhead:
    """The instances of one part's stream with their stored bytes, read on the event loop one
    instance ahead of the sender: :meth:`start` begins reading the next while the current one is
    sent, :meth:`next` waits for it. At most two instances are in memory. Leaving the ``with``
    block stops a read still under way before anything else touches the stream."""

    def __init__(
        self,
        items: AsyncGenerator[InstanceRecord | Arrival, None],
        retrieval: RetrievalService,
        portal: LoopPortal,
    ) -> None:
        self._items = items
        self._retrieval = retrieval
        self._portal = portal
        self._pending: concurrent.futures.Future[Any] | None = None
        self._task: asyncio.Task[Any] | None = None

    def __enter__(self) -> ReadAhead:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop a read still under way (its instance is dropped)."""
        pending, self._pending = self._pending, None
        if pending is not None and not pending.done():
            with suppress(Exception):
                self._portal(self._stop())

    def start(self) -> None:
        if self._pending is None:
            self._pending = self._portal.submit(self._read())

    def next(self) -> tuple[InstanceRecord | Arrival, bytes | Exception] | None:
        """The next instance and its bytes (or why they could not be read); ``None`` at the
        end. Raises what broke the stream itself."""
        self.start()
        pending, self._pending = self._pending, None
        assert pending is not None
        got: tuple[InstanceRecord | Arrival, bytes | Exception] | None = self._portal.result(pending)
        return got

    async def _read(self) -> tuple[InstanceRecord | Arrival, bytes | Exception] | None:
        self._task = asyncio.current_task()
        item = await next_item(self._items)
        if item is None:
            return None
        try:
            return item, await collect(self._retrieval.instance_bytes(item, None))
        except Exception as exc:  # the store or the spool file failed: this one sub-operation
            return item, exc

    async def _stop(self) -> None:
        """Cancel the read under way and wait until it has let go of the stream (scheduled
        after it, so its task has started)."""
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            with suppress(BaseException):
                await task


async def next_item(items: AsyncGenerator[InstanceRecord | Arrival, None]) -> InstanceRecord | Arrival | None:
    try:
        return await items.__anext__()
    except StopAsyncIteration:
        return None


async def collect(body: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in body])
