"""Values of known length read by byte ranges: a frame or a bulk data value, whole or in part.

A value that lies in the stored object (a frame as stored, the value a BulkDataURI names) is a
list of spans of that object, and any slice of it is read with ranged reads of just those bytes,
never of the whole object. A frame that had to be made (decoded, re-encoded, or read out of a
deflated object) is already in memory and is sliced there.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from gateway.ports import BlobStore, Span

_CHUNK = 1 << 20  # spans are read in ranged reads of at most this size


class ByteSlices(Protocol):
    """A value whose ``length`` is known before any of it is read."""

    @property
    def length(self) -> int: ...

    def read(self, start: int, stop: int) -> AsyncIterator[bytes]:
        """Bytes ``start`` to ``stop`` (exclusive) of the value, in chunks."""
        ...


@dataclass(frozen=True)
class InMemory:
    data: bytes

    @property
    def length(self) -> int:
        return len(self.data)

    async def read(self, start: int, stop: int) -> AsyncIterator[bytes]:
        yield self.data[start:stop]


@dataclass(frozen=True)
class StoredSpans:
    """The concatenation of ``spans`` of the object ``key``: the fragments of an encapsulated
    frame (PS3.5 A.4: item headers lie between them and are not part of the frame), or one span."""

    store: BlobStore
    key: str
    spans: Sequence[Span]

    @property
    def length(self) -> int:
        return sum(length for _, length in self.spans)

    async def read(self, start: int, stop: int) -> AsyncIterator[bytes]:
        position = 0  # where the current span begins within the value
        for offset, length in self.spans:
            lo, hi = max(start, position), min(stop, position + length)
            while lo < hi:
                n = min(_CHUNK, hi - lo)
                yield await self.store.read_range(self.key, offset + lo - position, n)
                lo += n
            position += length
            if position >= stop:
                return


async def read_all(value: ByteSlices, start: int, stop: int) -> bytes:
    return b"".join([chunk async for chunk in value.read(start, stop)])
