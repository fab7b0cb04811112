"""``DELETE {base}/studies/{study}[/series/{series}[/instances/{instance}]]`` (Microsoft's DICOM
service paths and answer: 204) and the rejection OHIF sends (``supportsReject``):
``POST .../reject/{code}^{scheme}`` at the same three levels, which deletes at once through the
same path (:mod:`gateway.services.removal`) and answers 204 as well.

Both need the ``admin`` scope (gateway.http.middleware.security); nothing visible matched is a
404. Instances that were cached copies from a PACS leave the cache only: a Warning says so.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from gateway.dicom import uids
from gateway.errors import BadRequest
from gateway.http.context import gateway_of
from gateway.http.middleware.security import principal_of, restriction_of
from gateway.http.warning_header import add_warnings
from gateway.ports import RemovalCause
from gateway.services.removal import Removed

# PS3.16 CID 7011 "Rejected Objects Reason": the Key Object Selection titles of IHE IOCM.
REJECTION_CODES = {
    "113001^DCM": "Rejected for Quality Reasons",
    "113037^DCM": "Rejected for Patient Safety Reasons",
    "113038^DCM": "Incorrect Modality Worklist Entry",
    "113039^DCM": "Data Retention Policy Expired",
}


async def delete(request: Request) -> Response:
    return await _remove(request, RemovalCause("delete", principal=_who(request)))


async def reject(request: Request) -> Response:
    code = request.path_params["code"]
    if code not in REJECTION_CODES:
        known = ", ".join(REJECTION_CODES)
        raise BadRequest(f"unknown rejection code {code[:64]!r}; known codes (PS3.16 CID 7011): {known}")
    request.scope.setdefault("state", {})["rejection_code"] = code  # for the audit trail
    return await _remove(request, RemovalCause("reject", principal=_who(request), reason=code))


async def _remove(request: Request, cause: RemovalCause) -> Response:
    study = request.path_params["study"]
    series = request.path_params.get("series")
    sop = request.path_params.get("instance")
    uids.require_uid(study, "StudyInstanceUID")
    if series is not None:
        uids.require_uid(series, "SeriesInstanceUID")
    if sop is not None:
        uids.require_uid(sop, "SOPInstanceUID")
    removed = await gateway_of(request).removal.remove(
        study, series, sop, restriction=restriction_of(request), cause=cause
    )
    request.scope.setdefault("state", {})["removed_instances"] = removed.instances  # for the audit trail
    return add_warnings(Response(status_code=204), _warnings(removed))


def _warnings(removed: Removed) -> list[str]:
    return [
        f"instances cached from PACS {name} were removed from the gateway's cache only; the PACS still holds them"
        for name in removed.pacs
    ]


def _who(request: Request) -> str | None:
    principal = principal_of(request)
    return None if principal is None else principal.audit_id
