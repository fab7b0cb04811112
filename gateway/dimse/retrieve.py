"""What the C-MOVE and C-GET SCPs share (PS3.4 C.4.2, C.4.3): which instances a request names,
and each C-STORE sub-operation's data set, read from the one retrieval service.

Both handlers run inside pynetdicom's Query/Retrieve service class, which drives the protocol:
the handler announces the number of sub-operations, then yields one ``(0xFF00, data set)`` per
instance; pynetdicom sends each by C-STORE (on a sub-association to the destination for C-MOVE,
on the requester's own association for C-GET), counts the outcomes, answers each with a pending
response and ends with 0x0000, 0xB000 (some failed, with the Failed SOP Instance UID List) or
0xA702 (all failed).

:class:`Retriever` plans a request: every selection goes through
:meth:`gateway.services.retrieval.RetrievalService.stream`, which applies the peer's
restriction through the one visibility rule (a study outside it is absent: no sub-operations)
and decides whether the store answers or a PACS flight brings the instances. The instances the
store answers are known at once; those of a PACS flight are counted, and their SOP Classes
learnt, by IMAGE level queries of the QIDO federation (the index and every ``[[pacs]]`` node),
series by series, because the number of sub-operations must be announced before the first one.

:meth:`Retriever.sub_operations` then reads the instances one at a time, as the store streams
them or as they arrive from the PACS, the next one while the current one is sent (memory holds
two instances, never a series), each in the syntax the receiver accepted for its SOP Class:
the stored one when accepted (sent as stored, :mod:`gateway.netdicom.encoded_store`), else
the first accepted syntax, in the order of the accepted contexts, that the gateway can deliver
(:data:`gateway.dimse.get_syntaxes.DELIVERABLE`: uncompressed, or lossless it encodes), by the
retrieval service's transcoding; a C-MOVE proposes the uncompressed context of each SOP Class
first, a C-GET requester's contexts come in its own order. An instance that cannot be
sent (no accepted context, transcoding impossible, announced but never delivered by the PACS,
receiver gone) is yielded as a data set holding only its SOP Instance UID: pynetdicom's C-STORE
refuses it before anything is sent, and counts it as a failed sub-operation whose UID it lists
(Failed SOP Instance UID List, PS3.4 C.4.2.1.4.2). C-CANCEL is looked at before each
sub-operation (0xFE00 with the counts).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncGenerator, Callable, Iterable, Iterator
from contextlib import aclosing, suppress
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pynetdicom import build_context
from pynetdicom.presentation import PresentationContext, StoragePresentationContexts

from gateway.dicom.attributes import SERIES_INSTANCE_UID, SOP_INSTANCE_UID, tag_of
from gateway.dicom.media import (
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    JPEG_2000,
    JPEG_2000_LOSSLESS,
    JPEG_BASELINE_8BIT,
    JPEG_LOSSLESS_SV1,
    JPEG_LS_LOSSLESS,
    RLE_LOSSLESS,
)
from gateway.dicom.part10 import read_meta
from gateway.dicom.query import Match, QidoQuery, parse_qido
from gateway.dimse.find import Searcher
from gateway.dimse.get_syntaxes import DELIVERABLE
from gateway.dimse.portal import LoopPortal
from gateway.dimse.read_ahead import ReadAhead, collect
from gateway.dimse.retrieve_outcome import Tally
from gateway.dimse.retrieve_query import UNABLE_TO_PROCESS, RetrieveFailure, RetrieveRequest, Selection
from gateway.errors import GatewayError, NotFound
from gateway.netdicom.encoded_store import EncodedDataset
from gateway.ports import InstanceRecord
from gateway.security.access import Restriction
from gateway.services.deidentified import DeidentifiedViews
from gateway.services.flight import Arrival
from gateway.services.retrieval import Retrieval, RetrievalService

__all__ = [
    "CANCELLED",
    "MAX_CONTEXTS",
    "PENDING",
    "Plan",
    "Retriever",
    "accepted_syntaxes",
    "generic_contexts",
]

log = logging.getLogger(__name__)

PENDING = 0xFF00
CANCELLED = 0xFE00
UNCOMPRESSED = (EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN)
# What a PACS is likely to deliver in: proposed to a C-MOVE destination for the SOP Classes of a
# PACS flight (the stored syntax of those instances is only known when they arrive).
LIKELY_STORED = (
    JPEG_LS_LOSSLESS,
    JPEG_2000_LOSSLESS,
    JPEG_LOSSLESS_SV1,
    JPEG_BASELINE_8BIT,
    JPEG_2000,
    RLE_LOSSLESS,
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
)
MAX_CONTEXTS = 128  # PS3.8 9.3.2.2: presentation context IDs are odd numbers 1..255
MAX_SUB_OPERATIONS = 65535  # the counts are US (PS3.7 Table 9.3-6)
SOP_CLASS_UID = tag_of("SOPClassUID")
PATIENT_ID = tag_of("PatientID")
STUDY_INSTANCE_UID = tag_of("StudyInstanceUID")


@dataclass
class Part:
    """One selection being retrieved and the instances it is expected to yield."""

    retrieval: Retrieval
    expected: dict[str, str]  # SOP Instance UID → SOP Class UID ('' when unknown)
    where: dict[str, tuple[str, str]]  # SOP Instance UID → (study, series)
    stored: dict[str, set[str]] = field(default_factory=dict)  # SOP Class UID → stored syntaxes (cached)
    ahead: ReadAhead | None = None  # its reader, once started (Retriever.prefetch)


@dataclass
class Plan:
    """Every part of a request, and the number of sub-operations announced."""

    parts: list[Part]
    # The peer receives the instances de-identified (gateway.services.deidentified).
    views: DeidentifiedViews | None = None
    closed: bool = False  # every stream has been ended (Retriever.close)

    @property
    def count(self) -> int:
        return min(sum(len(p.expected) for p in self.parts), MAX_SUB_OPERATIONS)

    def where(self, sop: str) -> tuple[str | None, str | None]:
        """The (study, series) of an instance of the plan, for the audit."""
        for part in self.parts:
            if sop in part.where:
                return part.where[sop]
        return None, None

    def contexts(self) -> list[PresentationContext]:
        """What a C-MOVE sub-association proposes: each SOP Class of the
        instances with the uncompressed syntaxes, plus a context for each syntax they are (or,
        from a PACS, may be) stored in, so that the destination can take them as stored."""
        classes: dict[str, list[str]] = {}
        for part in self.parts:
            for sop_class in part.expected.values():
                if sop_class:
                    classes.setdefault(sop_class, [])
            for sop_class, stored in part.stored.items():
                syntaxes = classes.setdefault(sop_class, [])
                syntaxes += sorted(ts for ts in stored if ts not in UNCOMPRESSED and ts not in syntaxes)
            if part.retrieval.cached is None:
                for sop_class in part.expected.values():
                    if sop_class:
                        classes[sop_class] = list(dict.fromkeys([*classes[sop_class], *LIKELY_STORED]))
        if not classes:
            # The PACS did not say which SOP Classes: the common storage classes, uncompressed.
            return generic_contexts()
        contexts = [build_context(sop_class, list(UNCOMPRESSED)) for sop_class in classes]
        for sop_class, syntaxes in classes.items():
            for syntax in syntaxes:
                if len(contexts) < MAX_CONTEXTS:
                    contexts.append(build_context(sop_class, syntax))
        return contexts[:MAX_CONTEXTS]


def generic_contexts() -> list[PresentationContext]:
    """pynetdicom's common storage SOP Classes, uncompressed."""
    return [build_context(str(cx.abstract_syntax), list(UNCOMPRESSED)) for cx in StoragePresentationContexts]


def accepted_syntaxes(contexts: Iterable[PresentationContext], *, as_scu: bool = False) -> dict[str, list[str]]:
    """SOP Class UID → the transfer syntaxes accepted for it, in the order of their contexts'
    IDs, which is the order they were proposed in (``as_scu``: only contexts on which the
    gateway may be the Storage SCU, as role selection decided for C-GET, PS3.7 D.3.3.4)."""
    accepted: dict[str, list[str]] = {}
    for cx in sorted(contexts, key=lambda cx: cx.context_id or 0):
        if as_scu and not cx.as_scu:
            continue
        syntaxes = accepted.setdefault(str(cx.abstract_syntax), [])
        syntaxes += [str(ts) for ts in cx.transfer_syntax[:1] if str(ts) not in syntaxes]
    return accepted


class Retriever:
    """Plans a request and yields its sub-operations (see the module docstring)."""

    def __init__(
        self,
        retrieval: RetrievalService,
        search: Searcher,
        *,
        portal: LoopPortal,
        views: DeidentifiedViews | None = None,
    ) -> None:
        self._retrieval = retrieval
        self._search = search
        self._portal = portal
        self._views = views

    # -- planning (on the gateway's event loop) -----------------------------------------------

    def plan(self, request: RetrieveRequest, restriction: Restriction | None, *, deidentified: bool = False) -> Plan:
        """The parts of ``request`` (selections outside ``restriction`` or absent are left out).
        ``deidentified``: the request names de-identified UIDs, and its instances go out
        de-identified, burned in annotation withheld (failed sub-operations)."""
        if deidentified:
            if self._views is None:
                raise RetrieveFailure(UNABLE_TO_PROCESS, "de-identified views are not available")
            request = self._portal(self._original_request(request, self._views))
        plan: Plan = self._portal(self._plan(request, restriction))
        plan.views = self._views if deidentified else None
        return plan

    async def _original_request(self, request: RetrieveRequest, views: DeidentifiedViews) -> RetrieveRequest:
        if request.patient_id is not None:
            # The Patient ID such a peer sees is a dummy: it names no stored patient.
            raise RetrieveFailure(UNABLE_TO_PROCESS, "retrieve by Patient ID is not available to a de-identified peer")
        selections = [Selection(*(await views.originals(s.study, s.series, s.sop))) for s in request.selections]
        return dataclasses.replace(request, selections=tuple(selections))

    async def _plan(self, request: RetrieveRequest, restriction: Restriction | None) -> Plan:
        selections = request.selections
        if request.patient_id is not None and not selections:
            selections = tuple(Selection(uid) for uid in await self._studies_of(request.patient_id, restriction))
        elif request.patient_id is not None:
            # Patient Root below PATIENT level: the studies named must be that patient's.
            named = sorted({s.study for s in selections})
            theirs = set(await self._studies_of(request.patient_id, restriction, named))
            selections = tuple(s for s in selections if s.study in theirs)
        parts: list[Part] = []
        try:
            for selection in selections:
                part = await self._part(selection, restriction)
                if part is not None:
                    parts.append(part)
        except BaseException:
            for part in parts:
                with suppress(Exception):
                    await part.retrieval.items.aclose()
            raise
        return Plan(parts)

    async def _studies_of(
        self, patient_id: str, restriction: Restriction | None, among: list[str] | None = None
    ) -> list[str]:
        """The studies of a patient (``among`` those UIDs) in the index and every PACS."""
        keys = [(PATIENT_ID, patient_id)] + ([(STUDY_INSTANCE_UID, "\\".join(among))] if among else [])
        query = parse_qido("study", keys)
        query = QidoQuery(level="study", matches=query.matches, restriction=restriction)
        result = await self._search.search(query, base_url="")
        return list(dict.fromkeys(s for s in (_value(row, STUDY_INSTANCE_UID) for row in result.rows) if s))

    async def _part(self, selection: Selection, restriction: Restriction | None) -> Part | None:
        try:
            retrieval = await self._retrieval.stream(
                selection.study, selection.series, selection.sop, restriction=restriction
            )
        except NotFound:
            return None
        if retrieval.cached is not None:
            stored: dict[str, set[str]] = {}
            for record in retrieval.cached:
                stored.setdefault(record.sop_class_uid, set()).add(record.transfer_syntax)
            cached = retrieval.cached
            return Part(
                retrieval,
                {r.sop_uid: r.sop_class_uid for r in cached},
                {r.sop_uid: (r.study_uid, r.series_uid) for r in cached},
                stored,
            )
        try:
            expected, where = await self._expected(selection, restriction)
            if not expected:  # nobody could say (or said everything: more than a query answers)
                return await self._drained(retrieval, selection)
        except BaseException:
            with suppress(Exception):
                await retrieval.items.aclose()
            raise
        return Part(retrieval, expected, where)

    async def _expected(
        self, selection: Selection, restriction: Restriction | None
    ) -> tuple[dict[str, str], dict[str, tuple[str, str]]]:
        """SOP Instance UID → SOP Class UID, and → (study, series), of each instance of a
        selection a PACS flight brings,
        from IMAGE level queries of the federation, one per series (PS3.4 C.4.1.2.1: a PACS may
        answer only hierarchical queries, which name the series of an IMAGE level query)."""
        series = [selection.series] if selection.series is not None else await self._series_of(selection, restriction)
        matches = () if selection.sop is None else (Match.uid(SOP_INSTANCE_UID, "instance", selection.sop),)
        found: dict[str, str] = {}
        where: dict[str, tuple[str, str]] = {}
        for uid in series:
            query = QidoQuery(
                level="instance",
                study=selection.study,
                series=uid,
                matches=matches,
                includes=frozenset({SOP_CLASS_UID}),
                restriction=restriction,
            )
            result = await self._search.search(query, base_url="")
            if result.more:
                # The count would fall short and the rest could not be sent: count on arrival.
                log.warning("retrieve of %s: more instances than limits.max_qido_results", selection)
                return {}, {}
            for row in result.rows:
                sop = _value(row, SOP_INSTANCE_UID)
                if sop:
                    found[sop] = _value(row, SOP_CLASS_UID)
                    where[sop] = (selection.study, uid)
        return found, where

    async def _series_of(self, selection: Selection, restriction: Restriction | None) -> list[str]:
        query = QidoQuery(level="series", study=selection.study, restriction=restriction)
        result = await self._search.search(query, base_url="")
        return list(dict.fromkeys(s for s in (_value(row, SERIES_INSTANCE_UID) for row in result.rows) if s))

    @staticmethod
    async def _drained(retrieval: Retrieval, selection: Selection) -> Part:
        """A flight whose instances no query could count: followed to its end first, then
        counted and read from the cache (the flight's spool files go once nobody follows it).
        Not streamed, but complete; an arrival the cache refused is a failed sub-operation."""
        arrivals: list[InstanceRecord | Arrival] = []
        async with aclosing(retrieval.items) as items:
            async for item in items:
                arrivals.append(item)
        log.warning("retrieve: the instances of a PACS flight could not be counted first; sent once cached")
        records: list[InstanceRecord | Arrival] = []
        where = {_identity(item): (selection.study, selection.series or "") for item in arrivals}
        for item in arrivals:
            if isinstance(item, Arrival):
                await item.settled.wait()
                if item.record is None:
                    continue
                item = item.record
            records.append(item)
            where[item.sop_uid] = (item.study_uid, item.series_uid)
        replay = Retrieval(_replay(records), retrieval.syntaxes)
        return Part(replay, {_identity(item): "" for item in arrivals}, where)

    # -- sub-operations (on pynetdicom's thread) ----------------------------------------------

    def sub_operations(
        self,
        plan: Plan,
        *,
        accepted: Callable[[], dict[str, list[str]]],
        receiver_up: Callable[[], bool],
        cancelled: Callable[[], bool],
        sends_encoded: Callable[[], bool],
        tally: Tally,
    ) -> Iterator[tuple[int, Dataset | None]]:
        """``(0xFF00, data set)`` for each instance of ``plan`` (at most ``plan.count``), or
        ``(0xFE00, None)`` once ``cancelled()``. ``accepted()``: the receiver's accepted syntaxes
        by SOP Class; ``receiver_up()``: whether the association to it still stands;
        ``sends_encoded()``: whether it sends an :class:`EncodedDataset` as it is (else each
        data set is decoded first); ``tally`` notes what each yield was."""
        budget = plan.count
        owed = dict.fromkeys(sop for part in plan.parts for sop in part.expected)  # announced, not yet yielded
        try:
            for part in plan.parts:
                with self._read_ahead(part) as ahead:
                    while budget > 0:
                        if cancelled():
                            yield CANCELLED, None
                            return
                        if not receiver_up():
                            break
                        try:
                            got = ahead.next()
                        except Exception as exc:  # the PACS, the store or the portal's deadline
                            # What was announced and not sent becomes failed sub-operations below.
                            reason = exc.reason if isinstance(exc, GatewayError) else repr(exc)
                            log.warning("retrieve broke off: %s", reason)
                            break
                        if got is None:
                            break
                        item, data = got
                        sop = _identity(item)
                        if sop in owed:
                            del owed[sop]
                        elif len(owed) >= budget:
                            log.warning("instance %s arrived beyond the announced sub-operations; not sent", sop)
                            continue
                        budget -= 1
                        if budget > 0:
                            ahead.start()  # the next instance is read while this one is sent
                        if plan.views is None:
                            dataset = self._dataset(item, sop, data, accepted(), encoded=sends_encoded())
                        else:
                            dataset = self._deidentified(item, sop, data, accepted(), plan.views)
                        (tally.sent if "SOPClassUID" in dataset else tally.unsent).append(sop)
                        yield PENDING, dataset
                        del dataset, data
            # Announced but not delivered (the PACS broke off or held fewer, the receiver left):
            # each is a failed sub-operation naming its instance.
            for sop in list(owed)[:budget]:
                if cancelled():
                    yield CANCELLED, None
                    return
                tally.unsent.append(sop)
                yield PENDING, _unsendable(sop if plan.views is None else plan.views.profile.uid(sop))
        finally:
            self.close(plan)

    def prefetch(self, plan: Plan) -> None:
        """Start reading the first instance of ``plan`` now (a C-MOVE: while the
        sub-association to the destination is set up), rather than at the first sub-operation."""
        if plan.parts and not plan.closed:
            first = plan.parts[0]
            if first.ahead is None:
                first.ahead = ReadAhead(first.retrieval.items, self._retrieval, self._portal)
            first.ahead.start()

    def close(self, plan: Plan) -> None:
        """End every stream of ``plan`` (its PACS flights continue for the cache), once: in one
        trip to the event loop, the second call (the handler's, after the sub-operations' own)
        without any."""
        if plan.closed or not plan.parts:
            return
        plan.closed = True
        for part in plan.parts:
            if part.ahead is not None:  # a read started and never waited for must stop first
                part.ahead.stop()
        with suppress(Exception):
            self._portal(_close_all(plan.parts))

    def _read_ahead(self, part: Part) -> ReadAhead:
        if part.ahead is None:
            part.ahead = ReadAhead(part.retrieval.items, self._retrieval, self._portal)
        return part.ahead

    def _dataset(
        self,
        item: InstanceRecord | Arrival,
        sop: str,
        data: bytes | Exception,
        accepted: dict[str, list[str]],
        *,
        encoded: bool,
    ) -> Dataset:
        """The data set of instance ``sop`` (its stored bytes ``data``, or why they could not be
        read) in a syntax the receiver accepted, or the stand-in that fails (see
        :func:`_unsendable`)."""
        try:
            if isinstance(data, Exception):
                raise data
            meta = read_meta(BytesIO(data), len(data))
            sop_class = meta.sop_class_uid or (item.sop_class_uid if isinstance(item, InstanceRecord) else "")
        except Exception as exc:  # the store, the spool file or the data set failed: one sub-operation
            log.warning("instance %s cannot be read for a C-STORE sub-operation: %s", sop, exc)
            return _unsendable(sop)
        syntaxes = accepted.get(sop_class, [])
        if meta.transfer_syntax in syntaxes:
            if not encoded:
                return pydicom.dcmread(BytesIO(data))
            # Sent as stored, without decoding it (gateway.netdicom.encoded_store).
            return EncodedDataset(
                data, meta.dataset_start, sop_class_uid=sop_class, sop_uid=sop, syntax=meta.transfer_syntax
            )
        targets = [ts for ts in syntaxes if ts in DELIVERABLE]
        if not targets:
            log.warning(
                "instance %s: the receiver accepted no context for SOP Class %s it can be sent in", sop, sop_class
            )
            return _unsendable(sop)
        del data
        for target in targets:  # the next one when a syntax cannot hold this instance's pixels
            try:
                converted: bytes = self._portal(collect(self._retrieval.instance_bytes(item, target)))
                if not converted:
                    raise ValueError("nothing to transcode (refused by the cache)")
                transcoded: Dataset = pydicom.dcmread(BytesIO(converted))
            except Exception as exc:
                log.warning("instance %s cannot be sent in %s: %s", sop, target, exc)
                continue
            return transcoded
        return _unsendable(sop)

    def _deidentified(
        self,
        item: InstanceRecord | Arrival,
        sop: str,
        data: bytes | Exception,
        accepted: dict[str, list[str]],
        views: DeidentifiedViews,
    ) -> Dataset:
        """:meth:`_dataset` for a de-identified peer: the instance rewritten by the profile (its
        Pixel Data as it is), or the stand-in that fails under its replacement UID when it is
        withheld (burned in annotation) or cannot be made."""
        stand_in = _unsendable(views.profile.uid(sop))
        if isinstance(item, Arrival):  # from a PACS: its index record says whether it is withheld
            self._portal(item.settled.wait())
        record = item if isinstance(item, InstanceRecord) else item.record
        if record is None or views.withholds(record):
            return stand_in
        plain = self._dataset(item, sop, data, accepted, encoded=False)
        if "SOPClassUID" not in plain:
            return stand_in
        views.profile.dataset(plain)
        return plain


def _unsendable(sop: str) -> Dataset:
    """A data set with only a SOP Instance UID: pynetdicom's C-STORE refuses it (no SOP Class
    UID) before sending anything, and lists the UID as a failed sub-operation."""
    ds = Dataset()
    ds.SOPInstanceUID = sop
    return ds


async def _close_all(parts: list[Part]) -> None:
    for part in parts:
        with suppress(Exception):
            await part.retrieval.items.aclose()


def _identity(item: InstanceRecord | Arrival) -> str:
    return item.sop_uid if isinstance(item, InstanceRecord) else item.received.sop_uid


async def _replay(items: list[InstanceRecord | Arrival]) -> AsyncGenerator[InstanceRecord | Arrival, None]:
    for item in items:
        yield item


def _value(row: dict[str, Any], tag: str) -> str:
    element = row.get(tag)
    values = element.get("Value") if isinstance(element, dict) else None
    return str(values[0]) if values else ""
