"""WADO-RS (PS3.18 10.4): instances, metadata, frames and bulk data from the store and index.

Metadata is answered from the index without touching the Part 10 objects; a frame is one ranged
read of the stored object using the frame spans recorded at ingest.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Sequence

import anyio
import pydicom
from pydicom.encaps import generate_frames

from gateway.dicom import transcode, uids
from gateway.dicom.media import AS_STORED, EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN, Negotiated
from gateway.errors import BadRequest, NotAcceptable, NotFound
from gateway.ports import BlobStore, Index, InstanceRecord

# What this service can produce from any stored instance (besides the stored bytes themselves).
INSTANCE_SYNTAXES = frozenset({AS_STORED, EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN})
FRAME_SYNTAXES = frozenset({AS_STORED, EXPLICIT_VR_LITTLE_ENDIAN})

_BULK_KEY = b'"BulkDataURI":"'
PIXEL_DATA_PATH = "7FE00010"


def absolute_bulk_uris(metadata: bytes, base_url: str) -> bytes:
    """Make the index's relative BulkDataURIs absolute.

    The index stores metadata as compact orjson output, where the byte sequence
    ``"BulkDataURI":"`` can only be a key: inside a string value the quotes would be escaped.
    """
    return metadata.replace(_BULK_KEY, _BULK_KEY + base_url.encode() + b"/")


def parse_frame_list(text: str) -> list[int]:
    """``1,3,5`` → [1, 3, 5] (PS3.18 10.4.1.1.4: a comma-separated list of positive integers)."""
    numbers: list[int] = []
    for item in text.split(","):
        item = item.strip()
        if not item.isdigit() or int(item) < 1:
            raise BadRequest(f"frame list {text[:80]!r} must be comma-separated positive integers")
        numbers.append(int(item))
    if len(numbers) > 10_000:
        raise BadRequest("frame list names more than 10000 frames")
    return numbers


class WadoService:
    def __init__(self, store: BlobStore, index: Index, *, transcode_threads: int = 2) -> None:
        self._store = store
        self._index = index
        self._cpu = anyio.CapacityLimiter(transcode_threads)

    # -- selection ---------------------------------------------------------------------------

    async def select(self, study: str, series: str | None = None, sop: str | None = None) -> list[InstanceRecord]:
        """The stored instances a study/series/instance URL names; NotFound when there are none."""
        uids.require_uid(study, "StudyInstanceUID")
        if series is not None:
            uids.require_uid(series, "SeriesInstanceUID")
        if sop is not None:
            uids.require_uid(sop, "SOPInstanceUID")
            record = await self._index.get(study, series, sop)
            if record is None:
                raise NotFound(f"instance {sop} not found in series {series} of study {study}")
            return [record]
        records = await self._index.instances(study, series)
        if not records:
            raise NotFound(f"series {series} of study {study} not found" if series else f"study {study} not found")
        return records

    # -- instances ---------------------------------------------------------------------------

    def instance_part(self, record: InstanceRecord, negotiated: Negotiated) -> tuple[str, AsyncIterator[bytes]]:
        """Content-Type and body of one ``application/dicom`` part."""
        stored = record.transfer_syntax
        target = stored if negotiated.as_stored else negotiated.transfer_syntax or EXPLICIT_VR_LITTLE_ENDIAN
        content_type = negotiated.part_content_type(target)
        if target == stored:
            return content_type, self._store.stream(self.key(record))
        return content_type, self._transcoded(record, target)

    async def _transcoded(self, record: InstanceRecord, target: str) -> AsyncIterator[bytes]:
        data = await self._store.read_all(self.key(record))
        yield await anyio.to_thread.run_sync(transcode.instance_to_uncompressed, data, target, limiter=self._cpu)

    # -- metadata ----------------------------------------------------------------------------

    @staticmethod
    def metadata_body(records: Sequence[InstanceRecord], base_url: str) -> bytes:
        """The DICOM JSON array of the instances' metadata, from the index alone."""
        return b"[" + b",".join(absolute_bulk_uris(r.metadata, base_url) for r in records) + b"]"

    # -- frames ------------------------------------------------------------------------------

    async def frames(self, record: InstanceRecord, numbers: Sequence[int], negotiated: Negotiated) -> list[bytes]:
        """The requested frames in the negotiated syntax (as stored, or decoded to native)."""
        count = record.pixel.number_of_frames if record.pixel else 0
        if record.pixel is None:
            raise NotFound(f"instance {record.sop_uid} has no pixel data")
        for n in numbers:
            if n > count:
                raise NotFound(f"frame {n} does not exist: instance {record.sop_uid} has {count} frame(s)")
        raw = await self._stored_frames(record, numbers)
        if negotiated.as_stored or negotiated.transfer_syntax == record.transfer_syntax:
            return raw
        if negotiated.transfer_syntax != EXPLICIT_VR_LITTLE_ENDIAN:
            raise NotAcceptable(f"frames cannot be transcoded to {negotiated.transfer_syntax}")
        if record.transfer_syntax in transcode.NATIVE_LITTLE_ENDIAN:
            return raw
        pixel = record.pixel
        return [
            await anyio.to_thread.run_sync(transcode.decode_frame, f, record.transfer_syntax, pixel, limiter=self._cpu)
            for f in raw
        ]

    def frame_content_type(self, record: InstanceRecord, negotiated: Negotiated) -> str:
        actual = record.transfer_syntax if negotiated.as_stored else negotiated.transfer_syntax
        if actual in transcode.NATIVE_LITTLE_ENDIAN:
            actual = EXPLICIT_VR_LITTLE_ENDIAN
        return negotiated.part_content_type(actual)

    async def _stored_frames(self, record: InstanceRecord, numbers: Sequence[int]) -> list[bytes]:
        if not record.frames:
            # Deflated instances have no byte-addressable frames: read the object once.
            return await self._frames_from_object(record, numbers)
        out: list[bytes] = []
        for n in numbers:
            spans = record.frames[n - 1]
            start = spans[0][0]
            end = spans[-1][0] + spans[-1][1]
            blob = await self._store.read_range(self.key(record), start, end - start)
            # Fragments of one frame lie in order, separated by 8-byte item headers (PS3.5 A.4).
            out.append(b"".join(blob[off - start : off - start + length] for off, length in spans))
        return out

    async def _frames_from_object(self, record: InstanceRecord, numbers: Sequence[int]) -> list[bytes]:
        data = await self._store.read_all(self.key(record))
        return await anyio.to_thread.run_sync(_extract_frames, data, list(numbers), limiter=self._cpu)

    # -- bulk data ---------------------------------------------------------------------------

    async def bulkdata(self, record: InstanceRecord, path: str) -> bytes:
        """The value of the element a BulkDataURI names (``7FE00010`` or ``SEQ/index/TAG`` paths)."""
        if path.upper() == PIXEL_DATA_PATH and record.frames and record.pixel is not None:
            spans = [s for frame in record.frames for s in frame]
            if len(record.frames[0]) == 1 and record.transfer_syntax in transcode.NATIVE_LITTLE_ENDIAN:
                start = spans[0][0]
                end = spans[-1][0] + spans[-1][1]
                return await self._store.read_range(self.key(record), start, end - start)
        data = await self._store.read_all(self.key(record))
        return await anyio.to_thread.run_sync(_element_value, data, path, limiter=self._cpu)

    @staticmethod
    def key(record: InstanceRecord) -> str:
        return uids.instance_key(record.study_uid, record.series_uid, record.sop_uid)


def _extract_frames(data: bytes, numbers: list[int]) -> list[bytes]:
    ds = pydicom.dcmread(io.BytesIO(data))
    pixel_bytes = ds.PixelData
    if ds.file_meta.TransferSyntaxUID.is_encapsulated:
        nframes = int(ds.get("NumberOfFrames", 1) or 1)
        frames = list(generate_frames(pixel_bytes, number_of_frames=nframes))
        return [frames[n - 1] for n in numbers]
    nframes = int(ds.get("NumberOfFrames", 1) or 1)
    size = len(pixel_bytes) // nframes
    return [pixel_bytes[(n - 1) * size : n * size] for n in numbers]


def _element_value(data: bytes, path: str) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(data))
    parts = path.split("/")
    node: pydicom.Dataset = ds
    try:
        while len(parts) > 1:
            seq_tag, item = int(parts[0], 16), int(parts[1])
            node = node[seq_tag].value[item]
            parts = parts[2:]
        elem = node[int(parts[0], 16)]
    except (KeyError, IndexError, ValueError, TypeError):
        raise NotFound(f"bulk data {path} not found in instance") from None
    value = elem.value
    if not isinstance(value, bytes):
        raise NotFound(f"element {path} is not bulk data")
    return value
