"""``PUT {base}/studies/{study}/protected`` (body ``1`` protects the study from retention
sweeps, ``0`` lifts that: Orthanc's convention, ``admin`` scope) and ``GET`` of the same path
(``1`` or ``0``). See :mod:`gateway.services.protection`."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from gateway.dicom import uids
from gateway.errors import BadRequest
from gateway.http.context import gateway_of
from gateway.http.middleware.security import restriction_of

MAX_BODY = 16  # "1" or "0", perhaps with a line end


async def put_protected(request: Request) -> Response:
    study = request.path_params["study"]
    uids.require_uid(study, "StudyInstanceUID")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise BadRequest("the body must be 1 (protect the study) or 0 (lift the protection)")
    value = body.strip()
    if value not in (b"1", b"0"):
        raise BadRequest("the body must be 1 (protect the study) or 0 (lift the protection)")
    await gateway_of(request).protection.set(study, value == b"1", restriction=restriction_of(request))
    return Response(status_code=204)


async def get_protected(request: Request) -> Response:
    study = request.path_params["study"]
    uids.require_uid(study, "StudyInstanceUID")
    protected = await gateway_of(request).protection.get(study, restriction=restriction_of(request))
    return PlainTextResponse("1" if protected else "0")
