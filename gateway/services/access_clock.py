"""When each series was last read, for ``max_idle_seconds`` retention rules
(:mod:`gateway.services.retention`), kept cheap: a read notes its series in the index at most
once per ``resolution`` seconds per series and process (an in-memory note of the last write),
so a viewer paging through a study costs one small UPDATE per series per interval, not one per
request. The resolution is a minute, or less when a rule's idle time is short (a quarter of
it), so that a series read within its idle time is never taken for idle.

Bookkeeping must never fail a read: an index that cannot take the note is logged and the read
goes on (the series looks idle a little earlier than it is, at worst by one resolution).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from gateway.errors import GatewayError
from gateway.ports import Index, InstanceRecord

log = logging.getLogger(__name__)

MAX_NOTED = 100_000  # series remembered per process before the stale notes are dropped


class AccessClock:
    def __init__(self, index: Index, *, resolution: float) -> None:
        self._index = index
        self.resolution = resolution
        self._noted: dict[tuple[str, str], float] = {}

    async def note(self, records: Iterable[InstanceRecord], now: float | None = None) -> int:
        """Record that the series of ``records`` were read (at ``now``, default: now); the
        count of series written to the index."""
        now = time.time() if now is None else now
        due = {
            key
            for key in {(r.study_uid, r.series_uid) for r in records}
            if now - self._noted.get(key, float("-inf")) >= self.resolution
        }
        if not due:
            return 0
        if len(self._noted) > MAX_NOTED:
            self._noted = {k: t for k, t in self._noted.items() if now - t < self.resolution}
        try:
            await self._index.record_access(sorted(due), now)
        except GatewayError as exc:
            log.warning("could not record the access to %d series: %s", len(due), exc.reason)
            return 0
        for key in due:
            self._noted[key] = now
        return len(due)
