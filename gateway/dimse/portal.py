"""The way from a pynetdicom thread into the gateway's async services.

pynetdicom runs each association on a thread of its own and calls the handlers there; the
services (index, store, PACS federation) are coroutines living on the gateway's event loop. A
:class:`LoopPortal` runs one coroutine on that loop and waits for its result, for at most
``timeout`` seconds: a handler never waits for ever on a stuck service (issue 15, item 8).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Coroutine
from typing import Any

from gateway.errors import ServiceUnavailable


class PortalTimeout(ServiceUnavailable):
    """A service did not answer a DIMSE request within ``dimse.operation_timeout`` (0xA700)."""


class LoopPortal:
    """Runs coroutines on ``loop`` from other threads (a handler's :data:`gateway.dimse.find.Portal`)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, *, timeout: float) -> None:
        self._loop = loop
        self._timeout = timeout

    def __call__(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        return self.result(self.submit(coroutine))

    def submit(self, coroutine: Coroutine[Any, Any, Any]) -> concurrent.futures.Future[Any]:
        """Start ``coroutine`` on the loop without waiting (a read-ahead); :meth:`result` waits."""
        try:
            return asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        except RuntimeError:  # the loop is closed: the gateway is stopping
            coroutine.close()
            raise ServiceUnavailable("the gateway is stopping") from None

    def result(self, future: concurrent.futures.Future[Any]) -> Any:
        """The result of a :meth:`submit`, waited for at most ``timeout`` seconds."""
        try:
            return future.result(self._timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise PortalTimeout(f"no answer from the gateway's services within {self._timeout:g} s") from None
        except concurrent.futures.CancelledError:
            raise ServiceUnavailable("the gateway is stopping") from None
