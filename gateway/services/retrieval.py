"""Retrieval: the one service every WADO route and the C-GET/C-MOVE SCP call.

It decides where the instances a selection names come from, and hands out what a response needs
of them; the work is delegated:

* instances the store holds are read by :class:`~gateway.services.instance_reader.InstanceReader`
  (stored bytes, transcoding, frames, bulk data, metadata);
* instances it does not hold are fetched by a PACS flight
  (:class:`~gateway.services.pacs_flights.PacsFlights`: one C-GET or C-MOVE shared by every
  request for the entity, each instance served from its spooled file as it arrives and written
  through to the cache);
* rendered images and thumbnails are made by :class:`~gateway.services.rendered.RenderService`.

Its API takes plain values (UIDs, a :class:`~gateway.dicom.media.Negotiated`, the principal's
:class:`~gateway.security.access.Restriction`), no HTTP types, so that any front door can use it.
A C-GET or C-MOVE SCP, for instance, serves a study/series/instance selection thus::

    retrieval = await service.stream(study, series, sop, restriction=principal_restriction)
    async with aclosing(retrieval.items) as items:  # stored instances, or PACS arrivals as they come
        async for item in items:
            sop_uid, stored_syntax = instance_identity(item)
            body = service.instance_bytes(item, accepted_syntax)  # None: as stored
            ...  # a Part 10 file (File Meta Information included), as an async byte iterator

A study outside the restriction is NotFound, exactly like an absent one.

When is the cache enough? An instance held in the index always is. A study or series is when
it holds anything that did not come from a PACS (the gateway is then its authority), or when
it, or its study, was marked retrieved; a series cached only in part (one instance fetched
alone, a retrieve that broke off) is fetched again.

A retrieve that ends with a warning status (some sub-operations failed, PS3.4 C.4.2.1.5 /
C.4.3.1.3) delivered only part of the entity: responses that wait for the retrieve (metadata,
frames, rendered) carry its words in a Warning header, a streamed response simply lacks the
missing instances (the log and the ``warning`` outcome of the DIMSE metric say why).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Sequence
from dataclasses import dataclass

from anyio.abc import TaskGroup

from gateway import observability
from gateway.dicom.media import APPLICATION_DICOM, AS_STORED, EXPLICIT_VR_LITTLE_ENDIAN, Negotiated
from gateway.dicom.multipart import multipart_length
from gateway.dicom.render import RenderOptions
from gateway.errors import NotFound, StorageError, UpstreamError
from gateway.ports import InstanceRecord
from gateway.security.access import Restriction
from gateway.services.access_clock import AccessClock
from gateway.services.byte_slices import ByteSlices
from gateway.services.flight import Arrival, read_file, reraised
from gateway.services.instance_reader import InstanceReader
from gateway.services.pacs_flights import PacsFlights
from gateway.services.rendered import RenderService


@dataclass(frozen=True)
class Retrieval:
    """What a WADO-RS instances response streams: index records (from the cache) or arrivals
    of a PACS retrieve (in arrival order), and the transfer syntaxes known when it starts (for
    Accept negotiation). Turn each item into a part with :meth:`RetrievalService.part`
    (or :meth:`RetrievalService.instance_bytes`).

    ``cached``: the records ``items`` will yield when the selection is answered from the cache
    (None when it follows a PACS flight), so that a front door can count and classify the
    instances before the first one is sent (a C-MOVE announces its sub-operations first)."""

    items: AsyncGenerator[InstanceRecord | Arrival, None]
    syntaxes: frozenset[str]
    cached: tuple[InstanceRecord, ...] | None = None


class RetrievalService:
    """Answers selections from the store, or from a PACS through the cache (see the module)."""

    def __init__(
        self,
        reader: InstanceReader,
        flights: PacsFlights,
        renderer: RenderService,
        access: AccessClock | None = None,
    ) -> None:
        # Public for the composition root (the cache expiry holds studies through the flights)
        # and for tests that look at caches and budgets; callers use the methods below.
        self.reader = reader
        self.flights = flights
        self.renderer = renderer
        self._access = access  # with max_idle_seconds rules: when each series was last read

    def start(self, tasks: TaskGroup) -> None:
        """Run PACS flights in ``tasks`` (the application's lifespan task group)."""
        self.flights.start(tasks)

    # -- entry points ------------------------------------------------------------------------

    async def select(
        self,
        study: str,
        series: str | None = None,
        sop: str | None = None,
        *,
        pacs: str | None = None,
        restriction: Restriction | None = None,
        warnings: list[str] | None = None,
    ) -> list[InstanceRecord]:
        """The instances a URL names, complete: from the cache, or retrieved into it first
        (metadata, frames and bulk data are then answered from the cache). ``warnings``: where
        the words of a retrieve's final warning status go (e.g. instances the PACS failed to send)."""
        local = await self._cached(study, series, sop, pacs, restriction)
        if local is not None:
            return local
        flight = await self.flights.join(study, series, sop, pacs=pacs, restriction=restriction)
        await flight.wait_done()
        if flight.error is not None:
            raise reraised(flight.error)
        if warnings is not None:
            warnings.extend(flight.warnings)
        return await self.reader.select(study, series, sop)

    async def stream(
        self,
        study: str,
        series: str | None = None,
        sop: str | None = None,
        *,
        pacs: str | None = None,
        restriction: Restriction | None = None,
    ) -> Retrieval:
        """The instances a URL names, as they become available. Errors before the first
        instance are raised here (so the response can still be an error status)."""
        local = await self._cached(study, series, sop, pacs, restriction)
        if local is not None:
            return Retrieval(_iterate(local), frozenset(r.transfer_syntax for r in local), tuple(local))
        flight = await self.flights.join(study, series, sop, pacs=pacs, restriction=restriction)
        await flight.first()
        if not flight.arrivals:
            raise reraised(flight.error or UpstreamError("the retrieve ended without a result"))
        return Retrieval(flight.follow(), frozenset({flight.arrivals[0].received.transfer_syntax}))

    def part(self, item: InstanceRecord | Arrival, negotiated: Negotiated) -> tuple[str, AsyncIterator[bytes]]:
        """Content-Type and body of one ``application/dicom`` part of a :class:`Retrieval`.

        An arrival already in the wanted syntax goes out from its spool file without waiting
        for the cache; one that needs transcoding waits until it is cached, then is served as
        any cached instance."""
        if isinstance(item, InstanceRecord):
            return self.reader.instance_part(item, negotiated)
        syntax = item.received.transfer_syntax
        if negotiated.as_stored or negotiated.transfer_syntax == syntax:
            return negotiated.part_content_type(syntax), read_file(item.received.path)
        target = negotiated.transfer_syntax or EXPLICIT_VR_LITTLE_ENDIAN
        return negotiated.part_content_type(target), self._cached_body(item, negotiated)

    def content_length(self, retrieval: Retrieval, negotiated: Negotiated, boundary: str) -> int | None:
        """The length of the multipart body of ``retrieval`` when it is known before it is read:
        every instance from the store, sent as stored (None otherwise: a PACS flight, or a part
        transcoded). Its parts then come from :meth:`sized_part`."""
        if retrieval.cached is None:
            return None
        parts = [self.reader.stored_part(record, negotiated) for record in retrieval.cached]
        known = [part for part in parts if part is not None]
        return multipart_length(known, boundary) if len(known) == len(parts) else None

    def sized_part(self, item: InstanceRecord | Arrival, negotiated: Negotiated) -> tuple[str, AsyncIterator[bytes]]:
        """:meth:`part` for a body whose length :meth:`content_length` announced: an object whose
        bytes differ in length from its index row ends the body with an error rather than break
        the announced framing silently (the connection is then aborted)."""
        content_type, body = self.part(item, negotiated)
        if not isinstance(item, InstanceRecord):
            raise TypeError("a sized body holds only stored instances")
        return content_type, _exactly(body, item.size, item.sop_uid)

    async def _cached_body(self, item: Arrival, negotiated: Negotiated) -> AsyncIterator[bytes]:
        await item.settled.wait()
        if item.record is None:
            # Refused by the cache (see the log): nothing can be transcoded. The part stays empty.
            return
        _, body = self.reader.instance_part(item.record, negotiated)
        async for chunk in body:
            yield chunk

    def instance_bytes(self, item: InstanceRecord | Arrival, transfer_syntax: str | None) -> AsyncIterator[bytes]:
        """One item of a :class:`Retrieval` as a Part 10 file in ``transfer_syntax`` (None: as
        stored), for a caller with no media types to negotiate (a C-GET/C-MOVE SCP)."""
        negotiated = Negotiated(APPLICATION_DICOM, transfer_syntax or AS_STORED, False)
        return self.part(item, negotiated)[1]

    async def check_transcodable(self, study: str, series: str | None, sop: str | None, negotiated: Negotiated) -> None:
        """Refuse (406), before a response starts, a syntax cached instances cannot be made in
        (:meth:`InstanceReader.check_transcodable`); call it after :meth:`stream` authorised."""
        await self.reader.check_transcodable(study, series, sop, negotiated)

    # -- what is answered from the cache once selected ---------------------------------------

    def metadata_body(self, records: Sequence[InstanceRecord], base_url: str) -> bytes:
        """The DICOM JSON array of the instances' metadata (BulkDataURIs under ``base_url``)."""
        return self.reader.metadata_body(records, base_url)

    def instance_metadata(self, records: Sequence[InstanceRecord], base_url: str) -> Iterator[bytes]:
        """The DICOM JSON of each instance, as :meth:`metadata_body` holds them."""
        return self.reader.instance_metadata(records, base_url)

    def frame_syntaxes(self, record: InstanceRecord) -> frozenset[str]:
        """What frames of ``record`` can be sent in (for negotiation)."""
        return self.reader.frame_syntaxes(record)

    async def frames(
        self, record: InstanceRecord, numbers: Sequence[int], negotiated: Negotiated
    ) -> AsyncGenerator[bytes, None]:
        """Frames ``numbers`` in the negotiated syntax, read as the iterator is consumed."""
        return await self.reader.frames(record, numbers, negotiated)

    async def frame_slices(self, record: InstanceRecord, number: int, negotiated: Negotiated) -> ByteSlices:
        """Frame ``number`` in the negotiated syntax, as a value read by byte ranges."""
        return await self.reader.frame_slices(record, number, negotiated)

    async def bulkdata_slices(self, record: InstanceRecord, path: str) -> ByteSlices:
        """The value a BulkDataURI ``path`` names, as a value read by byte ranges."""
        return await self.reader.bulkdata_slices(record, path)

    async def video_slices(self, record: InstanceRecord) -> ByteSlices:
        """The video bitstream of ``record`` (a video transfer syntax), as a value read by byte ranges."""
        return await self.reader.video_slices(record)

    def frame_content_type(self, record: InstanceRecord, negotiated: Negotiated) -> str:
        return self.reader.frame_content_type(record, negotiated)

    async def bulkdata(self, record: InstanceRecord, path: str) -> AsyncIterator[bytes]:
        """The value a BulkDataURI ``path`` names, in chunks (NotFound if never handed out)."""
        return await self.reader.bulkdata(record, path)

    async def render(self, record: InstanceRecord, frame: int, options: RenderOptions) -> bytes:
        """Frame ``frame`` (1-based) of ``record`` rendered as ``options`` say."""
        return await self.renderer.render(record, frame, options)

    async def thumbnail(self, records: Sequence[InstanceRecord], options: RenderOptions) -> bytes:
        """The thumbnail of an instance, series or study (its ``records``)."""
        return await self.renderer.thumbnail(records, options)

    # -- the cache ---------------------------------------------------------------------------

    async def _cached(
        self, study: str, series: str | None, sop: str | None, pacs: str | None, restriction: Restriction | None
    ) -> list[InstanceRecord] | None:
        """The records to answer from, or None when a PACS must be asked."""
        if pacs is None and not self.flights.configured:
            records: list[InstanceRecord] | None = await self.reader.select(study, series, sop, restriction=restriction)
        else:
            if pacs is not None and not self.flights.knows(pacs):
                raise NotFound(f"no PACS named {pacs!r} is configured")
            records = await self._complete_in_cache(study, series, sop, restriction)
            observability.cache_lookup("pacs", hit=records is not None)
        if records is not None and self._access is not None:
            await self._access.note(records)
        return records

    async def _complete_in_cache(
        self, study: str, series: str | None, sop: str | None, restriction: Restriction | None
    ) -> list[InstanceRecord] | None:
        try:
            records = await self.reader.select(study, series, sop, restriction=restriction)
        except NotFound:
            return None
        if sop is not None or any(not r.origin.startswith("pacs:") for r in records):
            return records
        if await self.flights.retrieved(study, series):
            return records
        return None


async def _exactly(body: AsyncIterator[bytes], size: int, sop: str) -> AsyncGenerator[bytes, None]:
    """``body``, checked to be ``size`` bytes long."""
    seen = 0
    try:
        async for chunk in body:
            seen += len(chunk)
            if seen > size:
                break
            yield chunk
    finally:
        aclose = getattr(body, "aclose", None)
        if aclose is not None:
            await aclose()
    if seen != size:
        more = "more than " if seen > size else ""
        raise StorageError(f"the object of instance {sop} holds {more}{seen} bytes, its index row says {size}")


async def _iterate(records: list[InstanceRecord]) -> AsyncGenerator[InstanceRecord | Arrival, None]:
    for record in records:
        yield record


def instance_identity(item: InstanceRecord | Arrival) -> tuple[str, str]:
    """The SOP Instance UID and stored transfer syntax of one item of a :class:`Retrieval`."""
    if isinstance(item, InstanceRecord):
        return item.sop_uid, item.transfer_syntax
    return item.received.sop_uid, item.received.transfer_syntax
