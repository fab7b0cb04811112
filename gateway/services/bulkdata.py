"""Where a bulk data value lies in a stored object, found with ranged reads only.

A BulkDataURI names an element by its tag path (gateway.dicom.dicomjson). Only the paths the
instance's metadata hands out are served: any other is answered 404 from the index alone, without
touching the object. A path that is handed out is found by the header-only walk of
:mod:`gateway.dicom.layout` over ranged reads of the stored object (a few blocks: values are
sought over, never read), and its value is then read as one byte range, streamed in chunks.
"""

from __future__ import annotations

import re
from typing import IO, cast

import anyio
from pydicom.uid import UID

from gateway.dicom.layout import UNDEFINED, Walker
from gateway.dicom.part10 import dataset_start
from gateway.ports import BlobStore, InstanceRecord, Span

# "TAG" or "SEQ/index/TAG"..., tags in upper-case hex as the metadata spells them.
_TAG_PATH = re.compile(r"[0-9A-F]{8}(?:/(?:0|[1-9][0-9]{0,8})/[0-9A-F]{8}){0,64}")
_BLOCK = 64 << 10  # read-ahead of the walk: element headers of a data set lie close together
# A stored data set that passed ingest is nested at most limits.max_sequence_depth levels; the
# walk does not recurse, so a generous bound costs nothing.
_DEPTH = 1024


def handed_out(record: InstanceRecord, path: str) -> str | None:
    """The tag path ``path`` names, when the metadata of ``record`` hands out its BulkDataURI."""
    tagpath = path.upper()
    if not _TAG_PATH.fullmatch(tagpath):
        return None
    # The index keeps compact orjson, where this byte sequence can only be a BulkDataURI member
    # (inside a string the quotes would be escaped), and the path above has no quote to forge one.
    uri = (
        f'"BulkDataURI":"studies/{record.study_uid}/series/{record.series_uid}'
        f'/instances/{record.sop_uid}/bulkdata/{tagpath}"'
    )
    return tagpath if uri.encode() in record.metadata else None


class RangedReader:
    """A read-only file over ranged reads of one stored object, for a walk in a worker thread
    (each miss is one :meth:`BlobStore.read_range`, run on the event loop)."""

    def __init__(self, store: BlobStore, key: str, size: int, block: int = _BLOCK) -> None:
        self._store = store
        self._key = key
        self._size = size
        self._block = block
        self._pos = 0
        self._start = 0
        self._buf = b""
        self.reads = 0

    def seek(self, pos: int, whence: int = 0) -> int:
        self._pos = pos if whence == 0 else self._pos + pos if whence == 1 else self._size + pos
        return self._pos

    def tell(self) -> int:
        return self._pos

    def read(self, n: int = -1) -> bytes:
        end = self._size if n < 0 else min(self._pos + n, self._size)
        if end <= self._pos:
            return b""
        if not (self._start <= self._pos and end <= self._start + len(self._buf)):
            length = min(max(end - self._pos, self._block), self._size - self._pos)
            self._buf = anyio.from_thread.run(self._store.read_range, self._key, self._pos, length)
            self._start = self._pos
            self.reads += 1
        out = self._buf[self._pos - self._start : end - self._start]
        self._pos += len(out)
        return out


def locate(store: BlobStore, key: str, record: InstanceRecord, tagpath: str) -> Span | None:
    """(offset, length) of the value ``tagpath`` names in the stored object, or None when it has
    no such element. Blocking: run it in a worker thread. Not for deflated data sets, whose bytes
    in the store are compressed as a whole."""
    reader = RangedReader(store, key, record.size)
    f = cast(IO[bytes], reader)
    ts = UID(record.transfer_syntax)
    walker = Walker(f, record.size, _DEPTH)
    located = walker.locate(dataset_start(f, record.size), ts.is_implicit_VR, ts.is_little_endian, tagpath)
    if located is None:
        return None
    if located.length != UNDEFINED:
        return located.value_pos, located.length
    # Encapsulated data: the value is its items, up to (not including) the sequence delimiter.
    fragments = located.fragments or ()
    end = fragments[-1][0] + fragments[-1][1] if fragments else located.value_pos
    return located.value_pos, end - located.value_pos


def stream_fragments(store: BlobStore, key: str, record: InstanceRecord) -> tuple[Span, ...] | None:
    """The fragments of encapsulated Pixel Data (Basic Offset Table item left out), whose values
    in order are a video's bitstream (PS3.5 A.4, 8.2.5); None when there is no encapsulated Pixel
    Data. Blocking, like :func:`locate`: the item headers are read by ranged reads, values skipped."""
    reader = RangedReader(store, key, record.size)
    f = cast(IO[bytes], reader)
    ts = UID(record.transfer_syntax)
    walker = Walker(f, record.size, _DEPTH)
    located = walker.locate(dataset_start(f, record.size), ts.is_implicit_VR, ts.is_little_endian, "7FE00010")
    if located is None or not located.fragments:
        return None
    return located.fragments[1:]
