"""Expiry of instances cached from a PACS (setting ``pacs_cache_max_age``, seconds; 0 = never).

A background sweep, every ``max_age / 2`` seconds (at most a minute apart), removes instances
whose index row says they came from a PACS (origin ``pacs:<name>``) and were cached more than
``max_age`` ago. Instances stored by STOW are never touched, nor a cached instance that an
upload was meanwhile told is stored (the index's ``shared`` mark, KeepIf.SHARED): only copies
the PACS still holds are dropped, and a later request fetches them again.

Order, for each instance: first the retrieved marks of its study and series (so no request
takes a thinned-out series for whole), then the index row; the objects one sweep later. The row
is the commit point (:meth:`gateway.ports.Index.begin_removal`): once it is gone the instance is
not served to new requests. A request that found it just before may still be streaming it, so
its objects stay for one more interval (at least :attr:`CacheExpiry.interval`) and are then
deleted under a removal of their own that keeps them if the instance was indexed again meanwhile
(``KeepIf.INDEXED``: retrieved anew, or uploaded). Objects left by a process that stopped in
between, or that cannot be deleted, are orphans that ``reindex --repair`` sweeps.

Retrievals: a study with a retrieve in flight is skipped until the next sweep, and a retrieve
of a study being swept waits until its sweep is over
(:meth:`~gateway.services.pacs_flights.PacsFlights.holding`), so a
write-through never races the removal of the same instance.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict

import anyio
from anyio.abc import TaskGroup

from gateway.dicom import uids
from gateway.errors import GatewayError
from gateway.ports import BlobStore, BridgeState, Index, KeepIf, RemovalCause
from gateway.services.pacs_flights import PacsFlights

log = logging.getLogger(__name__)

BATCH = 500  # instances looked up per index query
MAX_INTERVAL = 60.0
EXPIRED = RemovalCause("expiry")  # what the change-feed entry of an expired copy says


class CacheExpiry:
    """Removes instances cached from a PACS more than ``max_age`` seconds ago (see module)."""

    def __init__(
        self,
        index: Index,
        store: BlobStore,
        state: BridgeState | None,
        flights: PacsFlights,
        *,
        max_age: float,
    ) -> None:
        self._index = index
        self._store = store
        self._state = state
        self._flights = flights
        self._max_age = max_age
        self.interval = min(max(max_age / 2, 0.5), MAX_INTERVAL)
        # Instances whose rows are gone, with when: their objects go once in-flight reads are over.
        self._unindexed: list[tuple[float, str, str, str]] = []

    def start(self, tasks: TaskGroup) -> None:
        tasks.start_soon(self._run)

    async def _run(self) -> None:
        while True:
            await anyio.sleep(self.interval)
            try:
                await self.delete_unindexed()
                removed = await self.sweep(time.time())
            except GatewayError as exc:  # the index or store is away: try again next time
                log.warning("cache expiry: %s", exc.reason)
                continue
            if removed:
                log.info(
                    "cache expiry: removed %d instance(s) cached from a PACS over %g s ago (objects next sweep)",
                    removed,
                    self._max_age,
                )

    async def sweep(self, now: float) -> int:
        """Remove what expired by ``now`` (seconds since the epoch); the count removed."""
        removed = 0
        while True:
            expired = await self._index.expired_cached(now - self._max_age, BATCH)
            by_series: dict[tuple[str, str], list[str]] = defaultdict(list)
            for study, series, sop in expired:
                by_series[study, series].append(sop)
            skipped = 0
            for (study, series), sops in by_series.items():
                async with self._flights.holding(study) as held:
                    if not held:  # a retrieve of this study is in flight: next sweep
                        skipped += len(sops)
                        continue
                    if self._state is not None:
                        await self._state.forget_retrieved(study, series)
                    for sop in sops:
                        removed += await self._remove(study, series, sop)
            if len(expired) < BATCH or skipped == len(expired):
                return removed

    async def _remove(self, study: str, series: str, sop: str) -> int:
        token = await self._index.begin_removal(study, series, sop, keep_if=KeepIf.SHARED, cause=EXPIRED)
        if token is None:  # an upload was told it is stored meanwhile: it stays
            return 0
        await self._index.end_removal(sop, token)
        self._unindexed.append((time.monotonic(), study, series, sop))
        return 1

    async def delete_unindexed(self, now: float | None = None) -> int:
        """Delete the objects of instances removed from the index at least one interval before
        ``now`` (monotonic seconds; default: now); the count deleted."""
        now = time.monotonic() if now is None else now
        # Appended in time order: the due ones are a prefix.
        count = next(
            (i for i, entry in enumerate(self._unindexed) if now - entry[0] < self.interval), len(self._unindexed)
        )
        due, self._unindexed = self._unindexed[:count], self._unindexed[count:]
        deleted = 0
        for done, (_, study, series, sop) in enumerate(due):
            try:
                token = await self._index.begin_removal(study, series, sop, keep_if=KeepIf.INDEXED)
            except BaseException:
                self._unindexed[:0] = due[done:]  # the index is away: next sweep
                raise
            if token is None:  # indexed again since (retrieved anew, or uploaded): its objects now
                continue
            for key in (uids.instance_key(study, series, sop), uids.metadata_key(study, series, sop)):
                try:
                    await self._store.delete(key)
                except GatewayError as exc:  # an orphan now: reindex --repair removes it
                    log.warning("cache expiry: could not remove %s: %s", key, exc.reason)
            await self._index.end_removal(sop, token)
            deleted += 1
        return deleted
