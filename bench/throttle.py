"""A throttled network link for benchmarks: a TCP proxy with a bandwidth and a round-trip time.

``tc`` (netem, tbf) needs privileges the benchmark does not have, so the link is emulated in
user space: every byte going either way crosses one shared "wire" per direction that carries
``mbit`` megabits per second (all connections queue on it, as on one access link) and is
delivered ``rtt / 2`` later. Connection set-up is not delayed: a browser keeps its connections
open, so each request costs one round trip plus its bytes on the wire, as on a real link with
keep-alive. The proxy runs its own event loop in a thread; use it as a context manager.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from types import TracebackType

_CHUNK = 16 << 10  # bytes read at a time: 2.6 ms on a 50 Mbit/s wire
_QUEUED = 64  # chunks in flight per direction of a connection before its reader waits


class _Wire:
    """One direction of the link: when each chunk finishes crossing it, and arrives."""

    def __init__(self, bytes_per_second: float, delay: float) -> None:
        self._rate = bytes_per_second
        self._delay = delay
        self._free_at = 0.0

    def arrival(self, n: int, now: float) -> float:
        start = max(now, self._free_at)
        self._free_at = start + n / self._rate
        return self._free_at + self._delay


class ThrottledLink:
    """``127.0.0.1:port`` forwards to ``upstream`` over an emulated link."""

    def __init__(self, upstream_host: str, upstream_port: int, *, mbit: float, rtt_ms: float) -> None:
        self.upstream = (upstream_host, upstream_port)
        rate = mbit * 1e6 / 8
        self._wires = (_Wire(rate, rtt_ms / 2000), _Wire(rate, rtt_ms / 2000))  # to upstream, back
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="throttled-link")
        self._server: asyncio.Server | None = None
        self.port = 0

    def __enter__(self) -> ThrottledLink:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._connection, "127.0.0.1", 0), self._loop
        ).result()
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        async def stop() -> None:
            assert self._server is not None
            self._server.close()
            tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _connection(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_writer.close()
            return
        out, back = self._wires
        try:
            await asyncio.gather(
                self._pump(client_reader, upstream_writer, out), self._pump(upstream_reader, client_writer, back)
            )
        finally:
            for writer in (client_writer, upstream_writer):
                writer.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, wire: _Wire) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue(_QUEUED)

        async def deliver() -> None:
            while (item := await queue.get()) is not None:
                at, data = item
                if (wait := at - loop.time()) > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()
            with contextlib.suppress(OSError):
                writer.write_eof()

        delivery = asyncio.create_task(deliver())
        try:
            while data := await reader.read(_CHUNK):
                await queue.put((wire.arrival(len(data), loop.time()), data))
        except OSError:
            pass
        finally:
            await queue.put(None)
            with contextlib.suppress(OSError):
                await delivery
