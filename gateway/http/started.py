"""Read the first bytes of a streamed body before its response is committed.

A streamed response sends its status line before its body is produced, so an object store that
fails on the first read would leave the client a ``200`` that breaks off. Reading the first
chunk up front turns the common failure (store down or hung when the request comes) into an
error status, a 503 with Retry-After. A failure later in the stream can only end it early: the
connection is aborted, never left hanging, as every store read is bounded by its timeouts.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import TypeVar

T = TypeVar("T")

Part = tuple[str, AsyncIterator[bytes]]


async def started(items: AsyncIterator[T]) -> AsyncGenerator[T, None]:
    """``items`` with its first item already taken: its errors are raised here."""
    try:
        first = await anext(items)
    except StopAsyncIteration:
        return _chain((), items)
    except BaseException:
        await _close(items)
        raise
    return _chain((first,), items)


async def started_parts(parts: AsyncIterator[Part]) -> AsyncGenerator[Part, None]:
    """Multipart ``parts`` whose first part's body is :func:`started`."""
    try:
        first = await anext(parts)
    except StopAsyncIteration:
        return _chain((), parts)
    except BaseException:
        await _close(parts)
        raise
    try:
        body = await started(first[1])
    except BaseException:
        await _close(parts)
        raise
    return _chain(((first[0], body),), parts)


async def _chain(head: tuple[T, ...], rest: AsyncIterator[T]) -> AsyncGenerator[T, None]:
    try:
        for item in head:
            yield item
        async for item in rest:
            yield item
    finally:
        await _close(rest)


async def _close(iterator: object) -> None:
    aclose = getattr(iterator, "aclose", None)  # async generators; plain iterators hold nothing
    if aclose is not None:
        await aclose()
