"""Deleting stored instances on request: DELETE at study, series and instance level, and
rejections (Microsoft's DICOM service paths; OHIF's ``supportsReject``), issue #16.

Order (retention sweeps use it too, :mod:`gateway.services.retention`): first every index row of
the selection goes (:meth:`gateway.ports.Index.begin_removal`, each with its change-feed
``delete`` entry naming the cause), so no new request finds any of them; then, ``grace``
seconds later, their objects, each under a removal of its own that keeps them if the instance
was stored again meanwhile. A retrieve that found the instances before their rows went finishes
within the grace; one that comes after answers 404. Objects left by a process stopped within
the grace are orphans that ``reindex --repair`` removes.

Who may: the ``admin`` scope (the HTTP security middleware), and a study-restricted principal
only inside its restriction; outside it the answer is the 404 of an absent study (the rule of
:mod:`gateway.services.visibility`), so a delete learns nothing about what it may not see.

Instances cached from a PACS (origin ``pacs:<name>``) leave the cache only; the PACS keeps
them, and the answer says so. The "retrieved whole" marks of their series go too, so the next
retrieve asks the PACS again instead of answering from a thinned-out cache. While a retrieve of
the study from a PACS is in flight in this process, its write-through would put back what is
being deleted: the delete is refused (503, Retry-After) until it ends, and retrieves of the
study wait while a delete runs (:meth:`gateway.services.pacs_flights.PacsFlights.holding`, as
the cache expiry does).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import anyio
from anyio.abc import TaskGroup

from gateway.errors import GatewayError, NotFound, ServiceUnavailable
from gateway.ports import BridgeState, Index, InstanceKey, InstanceRecord, KeepIf, RemovalCause
from gateway.security.access import Restriction
from gateway.services.instance_writer import InstanceWriter
from gateway.services.pacs_flights import PacsFlights
from gateway.services.visibility import Visibility

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Removed:
    """What a removal took out of the index; ``pacs``: names of the PACS nodes that some of
    them were cached from (they still hold them)."""

    instances: list[InstanceKey] = field(default_factory=list)
    pacs: list[str] = field(default_factory=list)


class RemovalService:
    def __init__(
        self,
        index: Index,
        writer: InstanceWriter,
        visibility: Visibility,
        bridge_state: BridgeState | None,
        flights: PacsFlights,
        *,
        grace: float,
    ) -> None:
        self._index = index
        self._writer = writer
        self._visibility = visibility
        self._state = bridge_state
        self._flights = flights
        self._grace = grace
        self._tasks: TaskGroup | None = None

    def start(self, tasks: TaskGroup) -> None:
        """Delete objects after their grace in ``tasks`` (the application's lifespan task group);
        without it (a command) they are deleted before :meth:`remove` returns."""
        self._tasks = tasks

    async def remove(
        self,
        study: str,
        series: str | None,
        sop: str | None,
        *,
        restriction: Restriction | None,
        cause: RemovalCause,
    ) -> Removed:
        """Take the study, series or instance out of the index (see the module docstring);
        NotFound when nothing visible to ``restriction`` matches."""
        await self._select(study, series, sop, restriction)  # absent or hidden: 404 before anything else
        async with self._flights.holding(study) as held:
            if not held:
                raise ServiceUnavailable(f"study {study} is being retrieved from a PACS; retry once that ends")
            records = await self._select(study, series, sop, restriction)
            # Once begun, every row of the selection goes and its objects are scheduled, even if
            # the client hangs up meanwhile: no half-deleted study, no object left unscheduled.
            with anyio.CancelScope(shield=True):
                removed = await self._remove(
                    [((r.study_uid, r.series_uid, r.sop_uid), r.origin) for r in records], cause
                )
        return removed

    async def remove_swept(
        self,
        study: str,
        instances: list[tuple[InstanceKey, str]],
        *,
        cause: RemovalCause,
        grace: float | None = None,
    ) -> Removed | None:
        """For a retention sweep (:mod:`gateway.services.retention`): take ``instances`` of
        ``study`` ((key, origin) pairs) out of the index as a DELETE does, except a cached copy
        an upload was meanwhile told is stored (:attr:`KeepIf.SHARED`). None, and nothing
        removed, while a retrieve of the study from a PACS is in flight or once the study is
        protected (:meth:`gateway.ports.Index.set_protected`): the next sweep looks again.
        ``grace``: seconds before the objects go, instead of the delete grace."""
        removed: Removed | None = None
        async with self._flights.holding(study) as held:
            if held and not await self._index.is_protected(study):
                with anyio.CancelScope(shield=True):
                    removed = await self._remove(instances, cause, KeepIf.SHARED, grace)
        return removed

    async def _remove(
        self,
        instances: list[tuple[InstanceKey, str]],
        cause: RemovalCause,
        keep_if: KeepIf = KeepIf.NEVER,
        grace: float | None = None,
    ) -> Removed:
        grace = self._grace if grace is None else grace
        removed = Removed()
        pacs: set[str] = set()
        for key, origin in instances:
            token = await self._index.begin_removal(*key, keep_if=keep_if, cause=cause)
            if token is None:  # KeepIf.SHARED: an upload was told it is stored; it stays
                continue
            await self._index.end_removal(key[2], token)
            removed.instances.append(key)
            if origin.startswith("pacs:"):
                pacs.add(origin.removeprefix("pacs:"))
        if pacs and self._state is not None:
            for series_key in sorted({(study, series) for study, series, _ in removed.instances}):
                await self._state.forget_retrieved(*series_key)
        removed.pacs.extend(sorted(pacs))
        if self._tasks is not None and grace > 0:
            self._tasks.start_soon(self._discard_later, list(removed.instances), grace)
        else:
            await self._discard(removed.instances)
        return removed

    async def _select(
        self, study: str, series: str | None, sop: str | None, restriction: Restriction | None
    ) -> list[InstanceRecord]:
        if sop is not None:
            found = await self._index.get(study, series, sop)
            records = [] if found is None else [found]
        else:
            records = await self._index.instances(study, series)
        if not records or not await self._visibility.study_visible(study, restriction):
            # One answer for absent and hidden alike (no existence oracle).
            level = "instance" if sop is not None else "series" if series is not None else "study"
            raise NotFound(f"no such {level} is stored")
        return records

    async def _discard_later(self, keys: list[InstanceKey], grace: float) -> None:
        await anyio.sleep(grace)
        await self._discard(keys)

    async def _discard(self, keys: list[InstanceKey]) -> None:
        for study, series, sop in keys:
            try:
                await self._writer.discard_objects(study, series, sop)
            except GatewayError as exc:  # the index is away: orphans now, for reindex --repair
                log.warning("could not delete the objects of removed instance %s: %s", sop, exc.reason)
