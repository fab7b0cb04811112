"""PACS flights: one retrieve from a PACS, shared by every request that wants it, written
through into the cache.

A flight (:class:`gateway.services.flight.Flight`) is one C-GET or C-MOVE at the level asked
(study, series or instance; :meth:`gateway.ports.Upstream.retrieve`). Each instance received is
handed to every request following the flight at once (the first part of a response goes out
while the PACS is still sending the rest), and written through to the store and index by the one
instance writer STOW uses too (:mod:`gateway.services.instance_writer`, origin ``pacs:<name>``).
The write-through runs when the retrieve has ended, so that parsing and indexing do not slow the
DIMSE receive (one interpreter lock); the flight, and with it the spooled files, ends when
everything is cached. The entity is then marked *retrieved* in the ledger
(:class:`gateway.ports.BridgeState`), which :meth:`PacsFlights.retrieved` reads back.

Single flight: concurrent requests for the same entity share one retrieval (keyed by the
entity's UIDs, whichever selector each request came through). The flight runs in the service's
own task group, not in a request: a client that disconnects leaves it running for the others and
for the cache. The cache expiry holds a study (:meth:`PacsFlights.holding`) while it removes
instances of it, so a write-through never races the removal of the same instance.

Which PACS: the selected one (``{base}/pacs/{name}``), else each node in configuration order.
A node is first asked by C-FIND whether it holds the entity at all (PACS answer a C-GET of
something unknown differently: dcmqrscp with success and nothing, Orthanc with 0xC000), and the
first that holds it and delivers anything is used. The same C-FIND asks which SOP Classes the
entity holds (SOP Classes in Study, PS3.4 C.6.2.1; an instance's SOP Class UID), so that a C-GET
can propose every syntax for exactly those classes and receive originals as stored
(:mod:`gateway.adapters.dimse_contexts`); a PACS that does not say gets the generic proposal.

A retrieve that ends with a warning status (some sub-operations failed, PS3.4 C.4.2.1.5 /
C.4.3.1.3) delivered only part of the entity: the flight keeps its words (``Flight.warnings``)
and the entity is not marked retrieved, so the next request asks the PACS again. A node that
fails before delivering is skipped for the next; if none delivers, the first error is raised
(502/504), or NotFound when every node answered that it has nothing.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import aclosing

import anyio
from anyio.abc import TaskGroup

from gateway import observability
from gateway.dicom.attributes import SERIES_INSTANCE_UID, SOP_INSTANCE_UID, STUDY_INSTANCE_UID, tag_of
from gateway.dicom.parse import InstanceRejected, ParseLimits, parse_part10
from gateway.dicom.query import Match, QidoQuery
from gateway.errors import GatewayError, NotFound, UpstreamError, UpstreamTimeout
from gateway.ports import BridgeState, DicomJson, Index, InstanceRecord, ReceivedInstance, Upstream
from gateway.security.access import Restriction
from gateway.services.flight import Arrival, Flight
from gateway.services.instance_writer import InstanceWriter
from gateway.services.outcomes import FailedInstance
from gateway.services.visibility import Visibility

log = logging.getLogger(__name__)

PERSIST_CONCURRENCY = 3  # instances parsed and written through at once per flight
SOP_CLASS_UID = tag_of("SOPClassUID")
SOP_CLASSES_IN_STUDY = tag_of("SOPClassesInStudy")


class PacsFlights:
    """Runs the retrieves from the PACS ``upstreams`` and writes what they deliver into the cache."""

    def __init__(
        self,
        writer: InstanceWriter,
        index: Index,
        upstreams: Mapping[str, Upstream],
        state: BridgeState | None,
        *,
        parse_limits: ParseLimits,
        parse_threads: int = 2,
    ) -> None:
        self._writer = writer
        self._index = index
        self._upstreams = dict(upstreams)
        self._state = state
        self._parse_limits = parse_limits
        self._parse_limiter = anyio.CapacityLimiter(parse_threads)
        self._flights: dict[tuple[str, str, str], Flight] = {}
        self._held: dict[str, anyio.Event] = {}  # studies the cache expiry is removing from
        self._tasks: TaskGroup | None = None

    def start(self, tasks: TaskGroup) -> None:
        """Run flights in ``tasks`` (the application's lifespan task group)."""
        self._tasks = tasks

    @property
    def configured(self) -> bool:
        """Whether any PACS node is configured (without one, the index alone answers)."""
        return bool(self._upstreams)

    def knows(self, pacs: str) -> bool:
        """Whether a PACS node named ``pacs`` is configured."""
        return pacs in self._upstreams

    async def retrieved(self, study: str, series: str | None) -> bool:
        """Whether the ledger says the study (or the series, or its study) was retrieved whole."""
        keys = [study] if series is None else [study, f"{study}/{series}"]
        return self._state is not None and await self._state.retrieved(keys)

    async def join(
        self, study: str, series: str | None, sop: str | None, *, pacs: str | None, restriction: Restriction | None
    ) -> Flight:
        """The flight retrieving the entity, started now unless one already is. A study outside
        ``restriction`` on every node asked is NotFound; a study being expired waits first."""
        nodes = [pacs] if pacs is not None else list(self._upstreams)
        if restriction is not None and not await self._visible(study, nodes, restriction):
            raise NotFound(f"study {study} not found")
        while (held := self._held.get(study)) is not None:
            await held.wait()  # the cache expiry is removing instances of this study right now
        # Keyed by the entity alone: the cache is shared, so a request through one selector joins
        # a retrieve another started (through another selector, or none) instead of repeating it.
        key = (study, series or "", sop or "")
        flight = self._flights.get(key)
        if flight is None:
            if self._tasks is None:
                raise RuntimeError("PacsFlights.start() was not called")
            flight = Flight(key, study, series, sop)
            self._flights[key] = flight
            # The flight outlives this request; its log lines name the request that started it.
            self._tasks.start_soon(self._fly, flight, nodes, observability.current_request_id())
        return flight

    @contextlib.asynccontextmanager
    async def holding(self, study: str) -> AsyncIterator[bool]:
        """For removals (:mod:`gateway.services.removal`, retention sweeps): True, and new retrieves
        of ``study`` wait until the block ends; or False (nothing held) when one is in flight."""
        if study in self._held or any(key[0] == study for key in self._flights):
            yield False
            return
        done = self._held[study] = anyio.Event()
        try:
            yield True
        finally:
            del self._held[study]
            done.set()

    async def _visible(self, study: str, nodes: list[str], restriction: Restriction) -> bool:
        for name in nodes:
            try:
                if await Visibility.pacs_study_visible(self._upstreams[name], study, restriction):
                    return True
            except (UpstreamError, UpstreamTimeout) as exc:
                log.warning("cannot check access to study %s on %s: %s", study, name, exc.reason)
        return False

    async def _fly(self, flight: Flight, nodes: list[str], request_id: str | None) -> None:
        what = _describe(flight) + (f" (for request {request_id})" if request_id else "")
        errors: list[GatewayError] = []
        try:
            for name in nodes:
                upstream = self._upstreams[name]
                try:
                    sop_classes = await self._locate(upstream, flight)
                    if sop_classes is None:
                        continue
                    log.info("retrieving %s from PACS %s", what, name)
                    delivered = await self._retrieve_from(flight, upstream, sop_classes)
                except (UpstreamError, UpstreamTimeout) as exc:
                    if flight.arrivals:
                        raise
                    log.warning("retrieving %s from PACS %s failed: %s", what, name, exc.reason)
                    errors.append(exc)
                    continue
                if delivered:
                    # Whole only when no sub-operation failed: else the next request asks again.
                    if self._state is not None and not flight.warnings:
                        await self._state.mark_retrieved(_ledger_key(flight), name)
                    log.info("retrieved %s from PACS %s: %d instance(s)", what, name, delivered)
                    flight.finish()
                    return
            raise errors[0] if errors else NotFound(f"{what} not found in the gateway or any PACS")
        except BaseException as exc:
            # Retrieve errors were logged where they happened; anything else is worth a line.
            if flight.arrivals and not isinstance(
                exc, (UpstreamError, UpstreamTimeout, anyio.get_cancelled_exc_class())
            ):
                log.error("caching %s failed: %s", what, exc)
            flight.finish(exc if isinstance(exc, Exception) else UpstreamError(f"retrieving {what} was interrupted"))
            if not isinstance(exc, Exception):
                raise
        finally:
            self._flights.pop(flight.key, None)

    @staticmethod
    async def _locate(upstream: Upstream, flight: Flight) -> frozenset[str] | None:
        """None when the PACS lacks the flight's entity (one C-FIND on its unique key), else the
        SOP Classes it holds there when the PACS says (empty when it does not).

        An instance's row carries its SOP Class UID (a standard IMAGE-level key). For a study or
        series, the study's SOP Classes in Study (an optional STUDY-level key, PS3.4 Table
        C.6-5): asking each instance's class of a series would cost one C-FIND response per
        instance (~160 ms for 300 from Orthanc) before the first byte."""
        study_query = QidoQuery(
            level="study",
            matches=(Match.uid(STUDY_INSTANCE_UID, "study", flight.study),),
            includes=frozenset({SOP_CLASSES_IN_STUDY}),
        )
        if flight.sop is not None and flight.series is not None:
            match = Match.uid(SOP_INSTANCE_UID, "instance", flight.sop)
            query = QidoQuery(
                level="instance",
                study=flight.study,
                series=flight.series,
                matches=(match,),
                includes=frozenset({SOP_CLASS_UID}),
            )
            found = await upstream.find(query, 1)
            return _values(found.rows, SOP_CLASS_UID) if found.rows else None
        if flight.series is not None:
            match = Match.uid(SERIES_INSTANCE_UID, "series", flight.series)
            found = await upstream.find(QidoQuery(level="series", study=flight.study, matches=(match,)), 1)
            if not found.rows:
                return None
        found = await upstream.find(study_query, 1)
        if not found.rows:
            return None if flight.series is None else frozenset()
        return _values(found.rows, SOP_CLASSES_IN_STUDY)

    async def _retrieve_from(self, flight: Flight, upstream: Upstream, sop_classes: frozenset[str]) -> int:
        """Retrieve, handing each instance to the flight (and so to the responses) at once, then
        write them through to the cache; the count received.

        Writing through waits for the end of the retrieve: parsing and indexing would compete
        with the DIMSE receive for the interpreter (one GIL) and slow the PACS down, while the
        responses only need the spooled files. So a response ends with the retrieve, and the
        cache is complete (the flight over, the entity marked retrieved) shortly after. When the
        retrieve fails midway, what was received is still cached before the error is raised."""
        received = 0
        failure: GatewayError | None = None
        started = time.monotonic()
        try:
            retrieve = upstream.retrieve(
                flight.study, flight.series, flight.sop, sop_classes=sop_classes, warnings=flight.warnings
            )
            async with aclosing(retrieve) as instances:
                async for item in instances:
                    if not received:
                        log.info("first instance of %s received from PACS %s", _describe(flight), upstream.name)
                    received += 1
                    flight.add(Arrival(item))
        except (UpstreamError, UpstreamTimeout) as exc:
            failure = exc
        if received:
            log.info(
                "received %d instance(s) of %s from PACS %s in %.0f ms",
                received,
                _describe(flight),
                upstream.name,
                (time.monotonic() - started) * 1000,
            )
            if failure is not None:  # the responses end now, truncated: say why
                log.error(
                    "retrieving %s broke off after %d instance(s): %s", _describe(flight), received, failure.reason
                )
            flight.end_arrivals(failure)
            await self._write_through(flight.arrivals, upstream.name)
        if failure is not None:
            raise failure
        return received

    async def _write_through(self, arrivals: list[Arrival], node: str) -> None:
        pending = iter(arrivals)

        async def worker() -> None:
            for arrival in pending:  # shared: each arrival goes to one worker
                arrival.settle(await self._cache(arrival.received, node))

        async with anyio.create_task_group() as tg:
            for _ in range(PERSIST_CONCURRENCY):
                tg.start_soon(worker)

    async def _cache(self, item: ReceivedInstance, node: str) -> InstanceRecord | None:
        """Parse and write through one received instance; its record in the cache (None: the
        instance was refused). The spool file stays: the flight removes it when done."""
        try:
            record = await anyio.to_thread.run_sync(self._parse, item, node, limiter=self._parse_limiter)
            outcome = await self._writer.write(record, item.path)
        except InstanceRejected as exc:
            log.warning("PACS %s sent an instance the gateway cannot store (%s): %s", node, item.sop_uid, exc.reason)
            return None
        if isinstance(outcome, FailedInstance):
            # Cached before with other bytes (e.g. STOWed): serve the copy the cache holds.
            return await self._index.get(record.study_uid, record.series_uid, record.sop_uid)
        return record

    def _parse(self, item: ReceivedInstance, node: str) -> InstanceRecord:
        return parse_part10(item.path, origin=f"pacs:{node}", limits=self._parse_limits)


def _values(rows: list[DicomJson], tag: str) -> frozenset[str]:
    """The UI values of ``tag`` in C-FIND rows (empty when the PACS left the key empty)."""
    found: set[str] = set()
    for row in rows:
        element = row.get(tag)
        values = element.get("Value") if isinstance(element, dict) else None
        found.update(v for v in values or () if isinstance(v, str) and v)
    return frozenset(found)


def _ledger_key(flight: Flight) -> str:
    return "/".join(u for u in (flight.study, flight.series, flight.sop) if u)


def _describe(flight: Flight) -> str:
    if flight.sop:
        return f"instance {flight.sop}"
    return f"series {flight.series}" if flight.series else f"study {flight.study}"
