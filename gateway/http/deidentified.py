"""The DICOMweb routes' side of de-identified views (gateway.services.deidentified): which
principals get them, and the one selection every WADO route (WADO-RS, rendered, WADO-URI) makes
through, so that de-identified UIDs in a path find the stored instances and withheld instances
(burned in annotation) stay absent."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import aclosing

import anyio
from starlette.requests import Request

from gateway.errors import NotFound
from gateway.http.context import gateway_of
from gateway.http.middleware.security import principal_of, restriction_of
from gateway.ports import InstanceRecord
from gateway.services.deidentified import DeidentifiedViews
from gateway.services.flight import Arrival
from gateway.services.retrieval import Retrieval


def views_of(request: Request) -> DeidentifiedViews | None:
    """The de-identified views when the principal is marked for them, else None (as stored)."""
    principal = principal_of(request)
    if principal is None or principal.deidentify is None:
        return None
    return gateway_of(request).deidentified


async def selected(
    request: Request,
    study: str,
    series: str | None,
    sop: str | None,
    *,
    warnings: list[str] | None = None,
) -> list[InstanceRecord]:
    """``RetrievalService.select`` for the request's principal: its restriction, and for a
    de-identified one its UIDs resolved back and withheld instances left out (absent, 404, as an
    instance outside a restriction is)."""
    views = views_of(request)
    if views is not None:
        study, series, sop = await views.originals(study, series, sop)
    records = await gateway_of(request).retrieval.select(
        study, series, sop, pacs=request.path_params.get("pacs"), restriction=restriction_of(request), warnings=warnings
    )
    if views is not None:
        records = views.visible(records)
        if not records:
            raise NotFound("no instance of this selection can be sent de-identified (burned in annotation)")
    return records


async def deidentified_parts(
    views: DeidentifiedViews,
    retrieval: Retrieval,
    part: Callable[[InstanceRecord], tuple[str, AsyncIterator[bytes]]],
) -> AsyncIterator[tuple[str, AsyncIterator[bytes]]]:
    """The parts of a WADO-RS retrieve for a de-identified principal: each instance of
    ``retrieval`` (``part`` of its record), rewritten (:func:`deidentified_body`), the withheld
    ones (burned in annotation) left out. An instance from a PACS goes out once it was written
    through to the cache, whose record says whether it is withheld, without waiting for the
    instances after it; NotFound when none can be sent."""
    sent = False
    async with aclosing(retrieval.items) as items:  # a client gone stops following the PACS retrieve
        async for item in items:
            if isinstance(item, Arrival):
                await item.settled.wait()
                record = item.record
                if record is None:  # refused by the cache (see the log): not sent, as a C-GET's
                    continue
            else:
                record = item
            if views.withholds(record):
                continue
            content_type, body = part(record)
            sent = True
            yield content_type, deidentified_body(views, body, record)
    if not sent:
        raise NotFound("no instance of this selection can be sent de-identified (burned in annotation)")


# The rewrite of an instance walks its header and copies it once (gateway.dicom.deidentify_part10):
# with a header this small and a whole this size it takes less time than handing the instance to
# a worker thread (a wake-up of the event loop and a GIL hand-off each way), and is done in place.
_IN_PLACE_HEADER_BYTES = 16 << 10
_IN_PLACE_BYTES = 2 << 20


async def deidentified_body(
    views: DeidentifiedViews, body: AsyncIterator[bytes], record: InstanceRecord
) -> AsyncIterator[bytes]:
    """The Part 10 body of ``record`` de-identified: read whole, rewritten in place when that
    is quick (a small header, see above), else in a worker thread."""
    data = b"".join([chunk async for chunk in body])
    if len(data) <= _IN_PLACE_BYTES and _header_bytes(record) <= _IN_PLACE_HEADER_BYTES:
        yield views.part10(data)
    else:
        yield await anyio.to_thread.run_sync(views.part10, data)


def _header_bytes(record: InstanceRecord) -> int:
    """What of the stored instance is not pixel data (the elements a rewrite walks)."""
    return record.size - sum(length for frame in record.frames for _, length in frame)
