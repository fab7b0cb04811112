"""Reading stored instances (PS3.18 10.4): instances, metadata, frames and bulk data from the
store and index, in the stored transfer syntax or transcoded. It knows nothing of a PACS: which
instances to read, and whether a PACS must first be asked, is :mod:`gateway.services.retrieval`'s
decision.

Metadata is answered from the index without touching the Part 10 objects; a frame is one ranged
read of the stored object using the frame spans recorded at ingest.
"""

from __future__ import annotations

import io
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Sequence

import anyio
import pydicom
from pydicom.encaps import generate_frames
from pydicom.uid import DeflatedExplicitVRLittleEndian

from gateway.dicom import transcode, uids
from gateway.dicom.media import (
    AS_STORED,
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    JPEG_BASELINE_8BIT,
    Negotiated,
    is_video,
)
from gateway.errors import BadRequest, NotAcceptable, NotFound
from gateway.ports import BlobStore, Index, InstanceRecord, PixelDescription, Span
from gateway.security.access import Restriction
from gateway.services import bulkdata
from gateway.services.budget import ByteBudget, whole_object_cost
from gateway.services.byte_slices import ByteSlices, InMemory, StoredSpans
from gateway.services.singleflight import SingleFlightCache
from gateway.services.visibility import Visibility

# What this service can produce from stored instances (besides the stored bytes themselves):
# uncompressed, and the compressed syntaxes of gateway.dicom.transcode (JPEG Baseline only for
# 8-bit data, and only when a client names it: see check_transcodable and frame_syntaxes).
INSTANCE_SYNTAXES = frozenset({AS_STORED, EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN} | transcode.ENCODABLE)
FRAME_SYNTAXES = frozenset({AS_STORED, EXPLICIT_VR_LITTLE_ENDIAN})
DEFAULT_FRAME_CACHE_BYTES = 256 << 20

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
        # At most 9 digits: int() of a huge digit string is slow and, past 4300 digits, an error.
        if not item.isdigit() or len(item) > 9 or int(item) < 1:
            raise BadRequest(f"frame list {text[:80]!r} must be comma-separated positive integers")
        numbers.append(int(item))
    if len(numbers) > 10_000:
        raise BadRequest("frame list names more than 10000 frames")
    return numbers


class InstanceReader:
    """Reads what the store and index hold: selections, instance bytes, frames, bulk data."""

    def __init__(
        self,
        store: BlobStore,
        index: Index,
        *,
        transcode_threads: int = 2,
        max_decoded_frame_bytes: int = 256 << 20,
        frame_cache_bytes: int = DEFAULT_FRAME_CACHE_BYTES,
        budget: ByteBudget | None = None,
        visibility: Visibility | None = None,
    ) -> None:
        self._store = store
        self._index = index
        # The composition root passes the one rule every service shares; tests may omit it.
        self._visibility = visibility or Visibility(index)
        # Work that must hold a whole object in memory reserves its cost here first (see budget).
        self.budget = budget or ByteBudget()
        self._cpu = anyio.CapacityLimiter(transcode_threads)
        self._max_decoded_frame_bytes = max_decoded_frame_bytes
        # Decoded and re-encoded frames, keyed by (object digest, frame number, syntax): many
        # viewers asking for one frame at once decode it once (gateway.services.singleflight).
        self.frame_cache: SingleFlightCache[tuple[str, int, str], bytes] = SingleFlightCache(
            "frames", max_bytes=frame_cache_bytes, size=len
        )

    # -- selection ---------------------------------------------------------------------------

    async def select(
        self, study: str, series: str | None = None, sop: str | None = None, *, restriction: Restriction | None = None
    ) -> list[InstanceRecord]:
        """The stored instances a study/series/instance URL names; NotFound when there are none.

        With a ``restriction`` (gateway.security.access), a study outside it is NotFound with
        the very message of an absent one: the client cannot tell "forbidden" from "absent".
        """
        uids.require_uid(study, "StudyInstanceUID")
        if series is not None:
            uids.require_uid(series, "SeriesInstanceUID")
        if sop is not None:
            uids.require_uid(sop, "SOPInstanceUID")
        absent = (
            f"instance {sop} not found in series {series} of study {study}"
            if sop is not None
            else f"series {series} of study {study} not found"
            if series
            else f"study {study} not found"
        )
        if restriction is not None and not await self.visible(study, restriction):
            raise NotFound(absent)
        if sop is not None:
            record = await self._index.get(study, series, sop)
            if record is None:
                raise NotFound(absent)
            return [record]
        records = await self._index.instances(study, series)
        if not records:
            raise NotFound(absent)
        return records

    async def visible(self, study: str, restriction: Restriction) -> bool:
        """Whether the study is inside ``restriction`` (gateway.services.visibility)."""
        return await self._visibility.study_visible(study, restriction)

    # -- instances ---------------------------------------------------------------------------

    def instance_part(self, record: InstanceRecord, negotiated: Negotiated) -> tuple[str, AsyncIterator[bytes]]:
        """Content-Type and body of one ``application/dicom`` part."""
        stored = record.transfer_syntax
        target = stored if negotiated.as_stored else negotiated.transfer_syntax or EXPLICIT_VR_LITTLE_ENDIAN
        content_type = negotiated.part_content_type(target)
        if target == stored:
            return content_type, self._store.stream(self.key(record))
        return content_type, self._transcoded(record, target)

    @staticmethod
    def stored_part(record: InstanceRecord, negotiated: Negotiated) -> tuple[str, int] | None:
        """Content-Type and length of the part :meth:`instance_part` makes of ``record`` when
        that part is the stored object as it is (None when it is transcoded)."""
        stored = record.transfer_syntax
        target = stored if negotiated.as_stored else negotiated.transfer_syntax or EXPLICIT_VR_LITTLE_ENDIAN
        return (negotiated.part_content_type(target), record.size) if target == stored else None

    async def _transcoded(self, record: InstanceRecord, target: str) -> AsyncIterator[bytes]:
        async with self.budget.reserve(whole_object_cost(record), f"transcoding instance {record.sop_uid}"):
            data = await self._store.read_all(self.key(record))
            out = await anyio.to_thread.run_sync(transcode.transcode_instance, data, target, limiter=self._cpu)
            del data
            yield out

    async def check_transcodable(self, study: str, series: str | None, sop: str | None, negotiated: Negotiated) -> None:
        """Refuse (406), before a response starts, a compressed syntax that instances held in the
        store cannot be encoded in (JPEG Baseline of 16-bit data, say). Call it after the
        selection was authorised; instances still to come from a PACS are not checked."""
        target = negotiated.transfer_syntax
        if target is None or target == AS_STORED or target not in transcode.ENCODABLE:
            return
        if sop is not None:
            found = await self._index.get(study, series, sop)
            records = [found] if found is not None else []
        else:
            records = await self._index.instances(study, series)
        for record in records:
            if record.transfer_syntax != target:
                self.budget.check(whole_object_cost(record), f"transcoding instance {record.sop_uid}")
            if record.transfer_syntax != target and target not in transcode.encodable_syntaxes(
                record.pixel, record.transfer_syntax
            ):
                raise NotAcceptable(
                    f"instance {record.sop_uid} cannot be sent in transfer syntax {target}"
                    + (" (JPEG Baseline needs 8-bit data)" if target == JPEG_BASELINE_8BIT else "")
                )

    # -- metadata ----------------------------------------------------------------------------

    @staticmethod
    def metadata_body(records: Sequence[InstanceRecord], base_url: str) -> bytes:
        """The DICOM JSON array of the instances' metadata, from the index alone."""
        return b"[" + b",".join(absolute_bulk_uris(r.metadata, base_url) for r in records) + b"]"

    @staticmethod
    def instance_metadata(records: Sequence[InstanceRecord], base_url: str) -> Iterator[bytes]:
        """The DICOM JSON of each instance of :meth:`metadata_body`, one at a time."""
        return (absolute_bulk_uris(r.metadata, base_url) for r in records)

    # -- frames ------------------------------------------------------------------------------

    def frame_syntaxes(self, record: InstanceRecord) -> frozenset[str]:
        """What frames of ``record`` can be sent in: as stored, uncompressed, and the compressed
        syntaxes its decoded pixels can be encoded in (for gateway.dicom.media.negotiate_frames)."""
        return FRAME_SYNTAXES | transcode.encodable_syntaxes(record.pixel, record.transfer_syntax)

    def _check_frames(self, record: InstanceRecord, numbers: Sequence[int]) -> PixelDescription:
        count = record.pixel.number_of_frames if record.pixel else 0
        if record.pixel is None:
            raise NotFound(f"instance {record.sop_uid} has no pixel data")
        for n in numbers:
            if n > count:
                raise NotFound(f"frame {n} does not exist: instance {record.sop_uid} has {count} frame(s)")
        return record.pixel

    async def frames(
        self, record: InstanceRecord, numbers: Sequence[int], negotiated: Negotiated
    ) -> AsyncGenerator[bytes, None]:
        """The requested frames in the negotiated syntax: as stored, or decoded (and re-encoded).

        What can be refused (a missing frame, a syntax it cannot make) is refused here; the
        frames themselves are read one at a time as the iterator is consumed, so a response
        holds one frame in memory, not the request's all, and a client gone stops the reading."""
        self._check_frames(record, numbers)
        return self._frame_stream(record, list(numbers), self._frame_target(record, negotiated))

    async def frame_slices(self, record: InstanceRecord, number: int, negotiated: Negotiated) -> ByteSlices:
        """Frame ``number`` as a value read by byte ranges: a frame sent as stored is read from its
        spans in the stored object (only the bytes asked for), any other is made (or taken from
        the frame cache) whole, then sliced."""
        self._check_frames(record, [number])
        target = self._frame_target(record, negotiated)
        if target is None and record.frames:
            return StoredSpans(self._store, self.key(record), record.frames[number - 1])
        frames = self._frame_stream(record, [number], target)
        try:
            return InMemory(await anext(frames))
        finally:
            await frames.aclose()

    def _frame_target(self, record: InstanceRecord, negotiated: Negotiated) -> str | None:
        """The syntax frames of ``record`` must be made in, None when they go out as stored."""
        target = negotiated.transfer_syntax
        as_stored = negotiated.as_stored or target == record.transfer_syntax or target is None
        if target == EXPLICIT_VR_LITTLE_ENDIAN and record.transfer_syntax in transcode.NATIVE_LITTLE_ENDIAN:
            as_stored = True
        if not as_stored and target != EXPLICIT_VR_LITTLE_ENDIAN and target not in self.frame_syntaxes(record):
            raise NotAcceptable(f"frames cannot be transcoded to {target}")
        return None if as_stored else target

    async def _frame_stream(
        self, record: InstanceRecord, numbers: list[int], target: str | None
    ) -> AsyncGenerator[bytes, None]:
        """Frames ``numbers`` one by one: as stored (``target`` None), or made in ``target``."""
        if target is None and not record.frames:
            # Deflated instances have no byte-addressable frames: the object is read once.
            for frame in await self._frames_from_object(record, numbers):
                yield frame
            return
        for n in numbers:
            if target is None:
                yield (await self._stored_frames(record, [n]))[0]
            else:
                yield await self.frame_in(record, n, target)

    async def frame_in(self, record: InstanceRecord, number: int, target: str) -> bytes:
        """Frame ``number`` decoded (``target`` Explicit VR Little Endian) or re-encoded in
        ``target``; computed once however many requests ask at once, then cached."""
        pixel = self._check_frames(record, [number])
        if target in transcode.NATIVE_LITTLE_ENDIAN:
            target = EXPLICIT_VR_LITTLE_ENDIAN
            if record.transfer_syntax in transcode.NATIVE_LITTLE_ENDIAN:
                return (await self._stored_frames(record, [number]))[0]

        async def compute() -> bytes:
            if target == EXPLICIT_VR_LITTLE_ENDIAN:
                return await self._decode(record, pixel, number)
            native = await self.frame_in(record, number, EXPLICIT_VR_LITTLE_ENDIAN)
            decoded = transcode.decoded_description(pixel, record.transfer_syntax)
            return await anyio.to_thread.run_sync(transcode.encode_frame, native, decoded, target, limiter=self._cpu)

        return await self.frame_cache.get((record.sha256, number, target), compute)

    async def decoded_frame(self, record: InstanceRecord, number: int) -> tuple[bytes, PixelDescription]:
        """Frame ``number`` as native little-endian pixels, and what describes them (rendering)."""
        pixel = self._check_frames(record, [number])
        if not transcode.can_decode(record.transfer_syntax):
            raise NotAcceptable(f"frames in transfer syntax {record.transfer_syntax} cannot be decoded here")
        data = await self.frame_in(record, number, EXPLICIT_VR_LITTLE_ENDIAN)
        return data, transcode.decoded_description(pixel, record.transfer_syntax)

    async def _decode(self, record: InstanceRecord, pixel: PixelDescription, number: int) -> bytes:
        decoded = pixel.rows * pixel.columns * pixel.samples_per_pixel * max(pixel.bits_allocated, 8) // 8
        if decoded > self._max_decoded_frame_bytes:
            # A few compressed bytes may declare an enormous frame: refuse before decoding.
            raise NotAcceptable(
                f"a decoded frame would be {decoded} bytes, over the limit of {self._max_decoded_frame_bytes};"
                " ask for transfer-syntax=* to get the frames as stored"
            )
        raw = (await self._stored_frames(record, [number]))[0]
        return await anyio.to_thread.run_sync(
            transcode.decode_frame, raw, record.transfer_syntax, pixel, limiter=self._cpu
        )

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
        async with self.budget.reserve(whole_object_cost(record), f"frames of instance {record.sop_uid}"):
            data = await self._store.read_all(self.key(record))
            return await anyio.to_thread.run_sync(_extract_frames, data, list(numbers), limiter=self._cpu)

    # -- bulk data ---------------------------------------------------------------------------

    async def bulkdata(self, record: InstanceRecord, path: str) -> AsyncIterator[bytes]:
        """The value of the element a BulkDataURI names (``7FE00010`` or ``SEQ/index/TAG`` paths),
        in chunks (:meth:`bulkdata_slices` read whole)."""
        value = await self.bulkdata_slices(record, path)
        return value.read(0, value.length)

    async def bulkdata_slices(self, record: InstanceRecord, path: str) -> ByteSlices:
        """The value a BulkDataURI ``path`` names, read by byte ranges. A path the metadata never
        handed out is NotFound without reading the object; the value is found by ranged reads of
        the element headers and read as byte ranges of its span (a deflated instance has no byte
        ranges: its value is read out of the whole object, within the budget, then sliced)."""
        tagpath = bulkdata.handed_out(record, path)
        if tagpath is None:
            raise NotFound(f"instance {record.sop_uid} has no bulk data {path[:80]!r}")
        span = await self._bulk_span(record, tagpath)
        if span is None:
            return InMemory(b"".join([chunk async for chunk in self._bulk_from_object(record, tagpath)]))
        return StoredSpans(self._store, self.key(record), [span])

    async def video_slices(self, record: InstanceRecord) -> ByteSlices:
        """The video bitstream of an instance in a video transfer syntax, as stored: its Pixel Data
        fragments' values in order (PS3.5 8.2.5, 8.2.8, 8.2.12), read by byte ranges of just those
        values (a browser seeking asks for ranges). Never transcoded."""
        if not is_video(record.transfer_syntax):
            raise NotAcceptable(f"instance {record.sop_uid} is not a video (transfer syntax {record.transfer_syntax})")
        key = self.key(record)
        fragments = await anyio.to_thread.run_sync(bulkdata.stream_fragments, self._store, key, record)
        if not fragments:
            raise NotFound(f"instance {record.sop_uid} has no encapsulated video stream")
        return StoredSpans(self._store, key, fragments)

    async def bulkdata_bytes(self, record: InstanceRecord, path: str) -> bytes:
        """:meth:`bulkdata` in one piece (small values: the LUTs a rendering needs)."""
        return b"".join([chunk async for chunk in await self.bulkdata(record, path)])

    async def _bulk_span(self, record: InstanceRecord, tagpath: str) -> Span | None:
        if record.transfer_syntax == DeflatedExplicitVRLittleEndian:
            return None
        native = record.transfer_syntax in transcode.NATIVE_LITTLE_ENDIAN
        if tagpath == PIXEL_DATA_PATH and record.frames and native and len(record.frames[0]) == 1:
            # Native pixel data: its frames, back to back, from the index alone.
            start = record.frames[0][0][0]
            end = record.frames[-1][-1][0] + record.frames[-1][-1][1]
            return start, end - start
        span = await anyio.to_thread.run_sync(bulkdata.locate, self._store, self.key(record), record, tagpath)
        if span is None:
            raise NotFound(f"bulk data {tagpath} not found in instance {record.sop_uid}")
        return span

    async def _bulk_from_object(self, record: InstanceRecord, tagpath: str) -> AsyncGenerator[bytes, None]:
        async with self.budget.reserve(whole_object_cost(record), f"bulk data of instance {record.sop_uid}"):
            data = await self._store.read_all(self.key(record))
            value = await anyio.to_thread.run_sync(_element_value, data, tagpath, limiter=self._cpu)
            del data
            yield value

    @staticmethod
    def key(record: InstanceRecord) -> str:
        return record.object_key


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
