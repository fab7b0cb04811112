"""Reading the change feed (Microsoft's DICOM service model, issue #16): entries as the index
wrote them, each instance's metadata with absolute BulkDataURIs (the metadata path of WADO-RS),
a restricted principal's studies only (the rule of :mod:`gateway.services.visibility`, applied
by the index in the same condition as QIDO's)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

import orjson

from gateway.errors import BadRequest
from gateway.ports import ChangeEntry, ChangeQuery, Index
from gateway.security.access import Restriction
from gateway.services.instance_reader import absolute_bulk_uris

# Microsoft's v2 defaults and maximum for ``limit``: a larger page is refused, not cut.
DEFAULT_LIMIT = 10
MAX_LIMIT = 200


class ChangeFeed:
    def __init__(self, index: Index) -> None:
        self._index = index

    async def read(self, query: ChangeQuery, *, base_url: str) -> list[ChangeEntry]:
        """Entries of ``query`` in sequence order; BadRequest for a limit beyond :data:`MAX_LIMIT`."""
        if not 1 <= query.limit <= MAX_LIMIT:
            raise BadRequest(f"limit must be between 1 and {MAX_LIMIT}")
        if query.offset < 0:
            raise BadRequest("offset must not be negative")
        if query.start is not None and query.end is not None and query.end <= query.start:
            raise BadRequest("endTime must be later than startTime")
        return [_absolute(entry, base_url) for entry in await self._index.changes(query)]

    async def latest(
        self, restriction: Restriction | None, *, include_metadata: bool, base_url: str
    ) -> ChangeEntry | None:
        entry = await self._index.latest_change(restriction, include_metadata=include_metadata)
        return None if entry is None else _absolute(entry, base_url)


def _absolute(entry: ChangeEntry, base_url: str) -> ChangeEntry:
    if entry.metadata is None:
        return entry
    return dataclasses.replace(entry, metadata=absolute_bulk_uris(entry.metadata, base_url))


def feed_entry_json(entry: ChangeEntry) -> dict[str, Any]:
    """One entry as Microsoft spells it, plus ``Origin`` (and a rejection's ``Reason``)."""
    body: dict[str, Any] = {
        "Sequence": entry.sequence,
        "StudyInstanceUid": entry.study_uid,
        "SeriesInstanceUid": entry.series_uid,
        "SopInstanceUid": entry.sop_uid,
        "Action": entry.action.value,
        "Timestamp": feed_time(entry.timestamp),
        "State": entry.state.value,
        "Metadata": None if entry.metadata is None else orjson.loads(entry.metadata),
        "Origin": entry.origin,
    }
    if entry.reason is not None:
        body["Reason"] = entry.reason
    return body


def feed_time(seconds: float) -> str:
    """An entry's Timestamp as the feed spells it: ISO 8601 in UTC, microseconds, ``Z``."""
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
