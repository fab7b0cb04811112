"""The parts of a multipart response, each read one part ahead of the one being sent.

A stored instance's first chunk comes from a worker thread (the file store's open-and-read hop,
an S3 GET): done only when the writer asks for it, the event loop waits for that hop between
every two instances. :func:`read_ahead` starts reading the next part's first chunk when the
current part is handed out, so the read runs while the current part is written and drained to
the client. At most one part is read ahead: memory holds two instances' first chunks at most.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator

__all__ = ["Part", "read_ahead"]

Part = tuple[str, AsyncIterator[bytes]]
# A part whose body's first chunk is being read: (Content-Type, body, that read).
_Ahead = tuple[str, AsyncIterator[bytes], "asyncio.Future[bytes | None]"]


async def read_ahead(parts: AsyncIterator[Part]) -> AsyncGenerator[Part, None]:
    """``parts``, each body's first chunk read while the part before it is sent. Closing this
    generator (the client went away) stops a read under way and closes the parts and bodies."""
    current: _Ahead | None = None
    handed: _Ahead | None = None  # the part being sent: closed here too if its writer never began it
    try:
        current = await _start_next(parts)
        while current is not None:
            following = await _start_next(parts)  # its read runs while this part is sent
            handed, current = current, following
            yield handed[0], _after(handed[2], handed[1])
    finally:
        for left in (handed, current):
            if left is not None:
                await _abandon(left[1], left[2])
        aclose = getattr(parts, "aclose", None)
        if aclose is not None:
            await aclose()


async def _start_next(parts: AsyncIterator[Part]) -> _Ahead | None:
    try:
        content_type, body = await anext(parts)
    except StopAsyncIteration:
        return None
    return content_type, body, asyncio.ensure_future(_first_chunk(body))


async def _first_chunk(body: AsyncIterator[bytes]) -> bytes | None:
    try:
        return await anext(body)
    except StopAsyncIteration:
        return None


async def _after(first: asyncio.Future[bytes | None], body: AsyncIterator[bytes]) -> AsyncGenerator[bytes, None]:
    """The body: its first chunk (read ahead), then the rest as the body gives it."""
    try:
        chunk = await first
        if chunk is None:
            return
        yield chunk
        async for chunk in body:
            yield chunk
    finally:
        await _abandon(body, first)


async def _abandon(body: AsyncIterator[bytes], first: asyncio.Future[bytes | None]) -> None:
    """Stop the read ahead of ``body`` if it is still under way, then close ``body`` (a running
    async generator cannot be closed). Idempotent."""
    if not first.done():
        first.cancel()
    await asyncio.wait({first})  # its outcome is the body's: a failure was or will never be sent
    if not first.cancelled():
        first.exception()  # retrieved: not reported as "never retrieved"
    aclose = getattr(body, "aclose", None)
    if aclose is not None:
        await aclose()
