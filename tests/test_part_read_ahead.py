"""Parts read one ahead (gateway/services/part_read_ahead.py): the next body's first read starts
while the current part is sent, the bytes and order are the parts', a failed read reaches the
part it belongs to, and a response closed early stops the read under way and closes every body."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator

import anyio
import pytest

from gateway.dicom.multipart import multipart_stream
from gateway.services.part_read_ahead import read_ahead

pytestmark = pytest.mark.anyio


class Bodies:
    """Bodies that note when their first chunk is asked for and whether they were closed."""

    def __init__(self, count: int, *, failing: int | None = None, slow: float = 0.0) -> None:
        self.count = count
        self.failing = failing
        self.slow = slow
        self.started: list[int] = []
        self.closed: list[int] = []

    async def body(self, n: int) -> AsyncGenerator[bytes, None]:
        try:
            self.started.append(n)
            await anyio.sleep(self.slow)
            if n == self.failing:
                raise OSError(f"object {n} unreadable")
            yield f"part {n} first;".encode()
            yield f"part {n} rest".encode()
        finally:
            self.closed.append(n)

    async def parts(self) -> AsyncIterator[tuple[str, AsyncIterator[bytes]]]:
        for n in range(self.count):
            yield f"application/x-{n}", self.body(n)


async def test_the_bytes_and_order_are_the_parts_and_the_next_read_starts_before_this_part_is_sent() -> None:
    bodies = Bodies(4)
    got: list[tuple[str, bytes]] = []
    async for content_type, body in read_ahead(bodies.parts()):
        await anyio.sleep(0.01)  # the writer is busy with the part before: the next one is read meanwhile
        n = len(got)
        if n + 1 < bodies.count:
            assert n + 1 in bodies.started, "the next part's read had not started while this part was sent"
        got.append((content_type, b"".join([chunk async for chunk in body])))
    assert got == [(f"application/x-{n}", f"part {n} first;part {n} rest".encode()) for n in range(4)]
    assert sorted(bodies.closed) == [0, 1, 2, 3]


async def test_a_failed_read_is_raised_by_its_own_part() -> None:
    bodies = Bodies(3, failing=1)
    stream = read_ahead(bodies.parts())
    _, first = await anext(stream)
    assert b"".join([c async for c in first]) == b"part 0 first;part 0 rest"
    _, second = await anext(stream)
    with pytest.raises(OSError, match="object 1 unreadable"):
        await anext(second)
    await stream.aclose()
    assert sorted(bodies.closed) == [0, 1, 2]


async def test_closing_early_stops_the_read_under_way_and_closes_every_body() -> None:
    bodies = Bodies(5, slow=0.5)  # part 1's read is still under way when the client leaves
    written: list[bytes] = []
    with anyio.fail_after(5):
        stream = multipart_stream(read_ahead(bodies.parts()), "b0undary")
        async for chunk in stream:
            written.append(chunk)
            if b"part 0 rest" in chunk:
                break
        await stream.aclose()
    assert bodies.started == [0, 1]
    assert sorted(bodies.closed) == [0, 1]


async def test_no_parts() -> None:
    assert [part async for part in read_ahead(Bodies(0).parts())] == []
