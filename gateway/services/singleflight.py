"""A bounded LRU cache whose misses are computed once, however many requests ask at once.

OHIF asks for every frame of a series at the same moment, and several viewers open the same
study together: decoding or re-encoding one frame (or rendering one thumbnail) for each of
them would multiply the CPU cost by the number of viewers. :class:`SingleFlightCache` keys
each result; the first request for a key computes it (the *leader*), the others wait for
that result, and it is kept in a least-recently-used cache bounded by total bytes.

A leader that is cancelled (its client went away) does not fail the others: one of the
waiters takes over and computes. An error is handed to every request that waited for that
computation, and is not cached (the next request tries again).
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import anyio

from gateway import observability

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass(eq=False)
class _Flight(Generic[V]):
    done: anyio.Event = field(default_factory=anyio.Event)
    value: V | None = None
    error: BaseException | None = None
    abandoned: bool = False


class SingleFlightCache(Generic[K, V]):
    """``await cache.get(key, compute)``: the cached value, or ``compute()`` run once for all.

    ``max_bytes`` bounds the sum of ``size(value)`` over the cached values; a value larger than
    a quarter of it is returned but not kept (one huge frame must not flush everything else).
    ``name`` labels the hit/miss metric (``dicomweb_gateway_cache_lookups_total``).
    """

    def __init__(self, name: str, *, max_bytes: int, size: Callable[[V], int]) -> None:
        self.name = name
        self.max_bytes = max_bytes
        self._size = size
        self._values: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._bytes = 0
        self._flights: dict[K, _Flight[V]] = {}
        self.computed = 0  # how many times a value was computed (tests and benchmarks read it)
        # A weak reference: the metric must not keep a discarded cache (and its values) alive.
        ref = weakref.ref(self)
        observability.cache_size(name, lambda: float(cache.bytes) if (cache := ref()) is not None else 0.0)

    def __len__(self) -> int:
        return len(self._values)

    @property
    def bytes(self) -> int:
        return self._bytes

    def peek(self, key: K) -> V | None:
        """The cached value without computing, or None."""
        entry = self._values.get(key)
        return None if entry is None else entry[0]

    async def get(self, key: K, compute: Callable[[], Awaitable[V]]) -> V:
        entry = self._values.get(key)
        if entry is not None:
            self._values.move_to_end(key)
            observability.cache_lookup(self.name, hit=True)
            return entry[0]
        observability.cache_lookup(self.name, hit=False)
        while True:
            flight = self._flights.get(key)
            if flight is None:
                return await self._lead(key, compute)
            await flight.done.wait()
            if flight.abandoned:
                continue  # the leader was cancelled: someone else (maybe this request) computes
            if flight.error is not None:
                raise flight.error
            return flight.value  # type: ignore[return-value]  # set whenever no error

    async def _lead(self, key: K, compute: Callable[[], Awaitable[V]]) -> V:
        flight: _Flight[V] = _Flight()
        self._flights[key] = flight
        try:
            value = await compute()
        except anyio.get_cancelled_exc_class():
            flight.abandoned = True
            raise
        except BaseException as exc:
            flight.error = exc
            raise
        else:
            flight.value = value
            self.computed += 1
            self._keep(key, value)
            return value
        finally:
            del self._flights[key]
            flight.done.set()

    def _keep(self, key: K, value: V) -> None:
        size = self._size(value)
        if size > self.max_bytes // 4:
            return
        old = self._values.pop(key, None)
        if old is not None:
            self._bytes -= old[1]
        self._values[key] = (value, size)
        self._bytes += size
        while self._bytes > self.max_bytes and self._values:
            _, (_, evicted) = self._values.popitem(last=False)
            self._bytes -= evicted

    def clear(self) -> None:
        self._values.clear()
        self._bytes = 0
