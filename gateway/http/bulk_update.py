"""Metadata correction in Microsoft's DICOM service shape (:mod:`gateway.services.bulk_update`):

* ``POST {base}/studies/$bulkUpdate`` with ``{"studyInstanceUids": [...], "changeDataset":
  {DICOM JSON}}`` answers 202 with an operation reference ``{"id", "href"}``;
* ``GET {base}/operations/{id}`` answers the operation (``status`` notStarted, running,
  succeeded or failed, ``percentComplete``, ``results`` with the counts and errors);
* ``GET {base}/studies/{study}/series/{series}/instances/{instance}/original`` answers the
  instance as it was before its first correction (``application/dicom``, the stored bytes),
  while it is kept.

All three need the ``admin`` scope (gateway.http.middleware.security).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from gateway.dicom import uids
from gateway.dicom.correction import MAX_BODY_BYTES, parse_request
from gateway.errors import PayloadTooLarge, UnsupportedMediaType
from gateway.http.context import base_url, gateway_of
from gateway.http.middleware.security import principal_of, restriction_of
from gateway.ports import Operation


async def bulk_update(request: Request) -> Response:
    content_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if content_type not in ("application/json", "application/dicom+json"):
        raise UnsupportedMediaType(f"the body must be application/json, not {content_type[:64]!r}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise PayloadTooLarge(f"a bulk update body is at most {MAX_BODY_BYTES} bytes")
    studies, correction = parse_request(bytes(body))
    operation = await gateway_of(request).bulk_update.submit(
        studies, correction, principal=principal_of(request), restriction=restriction_of(request)
    )
    href = f"{base_url(request)}/operations/{operation.id}"
    # Microsoft's OperationReference; Location for clients that follow it.
    return JSONResponse({"id": operation.id, "href": href}, status_code=202, headers={"Location": href})


async def operation_status(request: Request) -> Response:
    operation = await gateway_of(request).bulk_update.operation(
        request.path_params["operation"], principal=principal_of(request)
    )
    return JSONResponse(operation_json(operation))


def operation_json(operation: Operation) -> dict[str, Any]:
    """Microsoft's OperationStatus."""
    return {
        "operationId": operation.id,
        "type": operation.kind,
        "createdTime": _time(operation.created),
        "lastUpdatedTime": _time(operation.updated),
        "status": operation.status,
        "percentComplete": operation.percent_complete,
        "results": operation.results,
    }


def _time(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def original(request: Request) -> Response:
    study = uids.require_uid(request.path_params["study"], "StudyInstanceUID")
    series = uids.require_uid(request.path_params["series"], "SeriesInstanceUID")
    sop = uids.require_uid(request.path_params["instance"], "SOPInstanceUID")
    service = gateway_of(request).bulk_update
    kept = await service.original(study, series, sop, restriction=restriction_of(request))
    chunks: AsyncIterator[bytes] = service.stream(kept)
    first = await anext(chunks, b"")  # a missing object is a 404 before the status is sent

    async def body() -> AsyncIterator[bytes]:
        yield first
        async for chunk in chunks:
            yield chunk

    headers = {"Content-Length": str(kept.size), "Content-Disposition": f'attachment; filename="{sop}.dcm"'}
    return StreamingResponse(body(), media_type="application/dicom", headers=headers)
