"""A process-wide budget of bytes for work that holds a whole stored object in memory.

Most reads are ranged (a frame, a bulk data value) or streamed (an instance as stored), and cost
a chunk of memory whatever the object's size. A few cannot be: transcoding an instance, reading
the frames of an object whose frames have no byte range (deflated data sets, video, encapsulated
data without findable frame boundaries), and bulk data of a deflated instance. Each of those
reserves its estimated cost here before it reads, so that many concurrent requests on a large
object queue instead of multiplying its size in the process's memory.

A reservation that does not fit waits a little for others to finish, then is refused with 503
and Retry-After; one that could never fit (an object larger than the whole budget) is refused
at once with 406, as a frame too large to decode is: the stored representation is still served.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio

from gateway.errors import NotAcceptable, ServiceUnavailable
from gateway.ports import InstanceRecord, PixelDescription

DEFAULT_BUDGET_BYTES = 512 << 20
DEFAULT_WAIT = 2.0  # seconds a reservation may wait for room before 503
RETRY_AFTER = 2  # seconds


def decoded_bytes(pixel: PixelDescription | None) -> int:
    """The size of an instance's pixel data once decoded (all frames)."""
    if pixel is None:
        return 0
    frame = pixel.rows * pixel.columns * pixel.samples_per_pixel * max(pixel.bits_allocated, 8) // 8
    return frame * pixel.number_of_frames


def whole_object_cost(record: InstanceRecord) -> int:
    """What reading and converting the whole of ``record`` may hold at once, estimated: the
    object and pydicom's copy of it, its decoded pixels, and an output of that size again
    (measured: a 50 MB native instance transcoded peaks at about 190 MB)."""
    return 2 * record.size + 2 * decoded_bytes(record.pixel)


class ByteBudget:
    """``async with budget.reserve(n, what):`` runs the block with ``n`` bytes of the budget."""

    def __init__(self, total: int = DEFAULT_BUDGET_BYTES, *, wait: float = DEFAULT_WAIT) -> None:
        self.total = total
        self.wait = wait
        self.used = 0
        self._room = anyio.Event()  # set (and replaced) whenever a reservation ends

    def check(self, n: int, what: str) -> None:
        """Refuse (406) work that needs more than the whole budget: waiting would not help."""
        if n > self.total:
            raise NotAcceptable(
                f"{what} would hold {n} bytes in memory, over the limit of {self.total}"
                " (limits.whole_object_bytes); ask for transfer-syntax=* to get the instance as stored"
            )

    @asynccontextmanager
    async def reserve(self, n: int, what: str) -> AsyncIterator[None]:
        self.check(n, what)
        with anyio.move_on_after(self.wait):
            while self.used + n > self.total:
                await self._room.wait()
        if self.used + n > self.total:
            raise ServiceUnavailable(
                f"too much whole-object work in progress ({self.used} of {self.total} bytes reserved); try again",
                retry_after=RETRY_AFTER,
            )
        self.used += n
        try:
            yield
        finally:
            self.used -= n
            room, self._room = self._room, anyio.Event()
            room.set()
