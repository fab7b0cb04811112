"""The audit middleware: one :class:`AccessRecord` per DICOMweb request, written when the
response is finished (or failed). Probes and CORS preflights are not patient-data access and
are not recorded. See :mod:`gateway.security.audit` for the line format."""

from __future__ import annotations

import time
from collections.abc import Sequence
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.http.middleware.security import OPEN_PATHS, is_bulk_update, is_protection, is_rejection
from gateway.http.middleware.traffic import counted
from gateway.security.audit import AccessRecord, AuditLog

_LEVELS = {"studies": "study", "series": "series", "instances": "instance"}
# WADO-URI (PS3.18 9.1.2.1) names the object in query parameters, not in the path.
_WADO_URI_PARAMETERS = {"studyUID": "study", "seriesUID": "series", "objectUID": "instance"}


def classify(
    method: str, relative: str, status: int, query: Sequence[tuple[str, str]] = ()
) -> tuple[str, dict[str, str]]:
    """(action, UIDs) of a request below the DICOMweb base: the UIDs of its path, or of its
    query for WADO-URI (``/wado``, also under ``/pacs/{name}``)."""
    segments = [s for s in relative.split("/") if s]
    uids: dict[str, str] = {}
    for name, value in zip(segments[::2], segments[1::2], strict=False):
        if name in _LEVELS and not value.startswith("$"):  # not studies/$bulkUpdate
            uids[_LEVELS[name]] = value[:64]
    if segments and segments[-1] == "wado":
        for name, value in query:
            if name in _WADO_URI_PARAMETERS and value:
                uids.setdefault(_WADO_URI_PARAMETERS[name], value[:64])
    if status == 401:
        return "authenticate", uids
    if method == "POST" and is_rejection(relative):
        return "delete", uids
    if (method == "PUT" and is_protection(relative)) or (method == "POST" and is_bulk_update(relative)):
        return "update", uids
    if method in ("POST", "PUT"):
        return "store", uids
    if method == "DELETE":
        return "delete", uids
    search = bool(segments) and len(segments) % 2 == 1 and segments[-1] in _LEVELS
    return ("query" if search else "retrieve"), uids


class AuditMiddleware:
    def __init__(self, app: ASGIApp, *, audit: AuditLog, base_path: str) -> None:
        self.app = app
        self.audit = audit
        self.base_path = base_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if (
            scope["type"] != "http"
            or not self.audit.enabled
            or not path.startswith(self.base_path + "/")
            or path == self.base_path + "/"  # the landing answer (gateway.http.landing): no patient data
            or scope["method"] == "OPTIONS"
            or path in OPEN_PATHS
        ):
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        state = scope.setdefault("state", {})
        # Counted by the observability middleware outside, when there is one (gateway.http.middleware.traffic).
        traffic, receive, send = counted(scope, receive, send)
        try:
            await self.app(scope, receive, send)
        finally:
            status = traffic.status
            query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)[:100]
            action, uids = classify(scope["method"], path[len(self.base_path) :], status, query)
            client = scope.get("client")
            record = AccessRecord(
                action=action,
                method=scope["method"],
                path=path[:512],
                client=client[0] if client else None,
                principal=state.get("principal"),
                status=status,
                bytes_sent=traffic.sent,
                bytes_received=traffic.received,
                duration=time.monotonic() - started,
                uids=uids,
                query=query,
                stored=list(state.get("stored_instances", ())),
                failed=list(state.get("failed_instances", ())),
                removed=list(state.get("removed_instances", ())),
                rejection=state.get("rejection_code"),
                outcome_reason=state.get("auth_failure") if status == 401 else None,
            )
            self.audit.write(record)
