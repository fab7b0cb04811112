"""One audit line and the Prometheus metrics for each operation of the DIMSE front door, and
for each association it rejects: the same trail and the same registry as DICOMweb.

Audit lines have the PS3.15 A.5 fields of the HTTP ones (gateway.security.audit); the
participant is ``dimse:<peer name>`` and a ``dimse`` member replaces ``http`` (operation, peer
AE title, status in hex, comment, duration). Metrics:
``dicomweb_gateway_dimse_scp_operations_total{peer, operation, outcome}``, its latency
histogram, and ``dicomweb_gateway_dimse_scp_rejected_associations_total{reason}``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from gateway import observability
from gateway.dicom.dimse_status import StatusClass, status_class
from gateway.security.audit import AccessRecord, AuditLog
from gateway.security.principal import Principal

log = logging.getLogger(__name__)

Outcome = TypeVar("Outcome")

# The audit event of each operation (gateway.security.audit._EVENTS keys).
_ACTIONS = {
    "C-STORE": "store",
    "C-FIND": "query",
    "C-MOVE": "retrieve",
    "C-GET": "retrieve",
    "N-ACTION": "store",
}


@dataclass(frozen=True)
class Operation:
    """One DIMSE operation as observed: who, what, the final status and what it touched."""

    peer: str  # the peer's name
    ae_title: str
    address: str | None
    operation: str  # "C-STORE", "C-FIND", ...
    status: int
    duration: float
    comment: str = ""
    # (study, series, SOP Instance UID) of each instance stored or sent
    instances: Sequence[tuple[str, str, str]] = field(default_factory=tuple)
    # (study or None, SOP Instance UID or None, status) of each instance that failed
    failed: Sequence[tuple[str | None, str | None, int]] = field(default_factory=tuple)
    query: Sequence[str] = ()  # C-FIND: the key names (never their values: patient data)
    level: str = ""  # C-FIND: the Query/Retrieve Level
    # C-MOVE, C-GET: the sub-operations completed, failed and with a warning (PS3.4 C.4.2.1.4)
    suboperations: tuple[int, int, int] | None = None


def notify(hook: Callable[[Outcome], None] | None, outcome: Outcome, what: str) -> None:
    """Hand a handler's ``outcome`` to its hook (the listener's audit and metrics): a hook that
    fails is logged, never the handler's failure, as the peer's answer does not depend on it."""
    if hook is None:
        return
    try:
        hook(outcome)
    except Exception:
        log.exception("%s outcome hook failed", what)


def outcome_of(status: int) -> str:
    return status_class(status).value


class Observer:
    """Writes :class:`Operation` records to the audit trail and the metrics. Thread-safe."""

    def __init__(self, audit: AuditLog | None) -> None:
        self._audit = audit

    def operation(self, op: Operation) -> None:
        kind = status_class(op.status)
        observability.observe_dimse_scp(op.peer, op.operation, kind.value, op.duration)
        action = _ACTIONS.get(op.operation)
        if action is None or self._audit is None or not self._audit.enabled:
            return  # a C-ECHO touches no patient data: metrics only
        record = AccessRecord(
            action=action,
            method=op.operation,
            path="",
            client=op.address,
            principal=Principal(subject=op.peer, kind="dimse", scopes=frozenset()),
            status=op.status,
            duration=op.duration,
            stored=list(op.instances) if op.operation in ("C-STORE", "N-ACTION") else [],
            sent=list(op.instances) if action == "retrieve" else [],
            failed=list(op.failed),
            query=[(name, "") for name in op.query],
            dimse={
                "operation": op.operation,
                **({"calling_ae_title": op.ae_title} if op.ae_title else {}),
                "status": f"0x{op.status:04X}",
                "comment": op.comment,
                "duration_ms": round(op.duration * 1000, 1),
                **({"level": op.level} if op.level else {}),
                **(
                    {"suboperations": dict(zip(("completed", "failed", "warning"), op.suboperations, strict=True))}
                    if op.suboperations is not None
                    else {}
                ),
            },
            outcome=_indicator(op.status),
        )
        if op.instances and op.operation not in ("C-STORE", "N-ACTION") and len(op.instances) == 1:
            study, series, sop = op.instances[0]
            record.uids = {"study": study, "series": series, "instance": sop}
        try:
            self._audit.write(record)
        except Exception:  # the audit file went away: logged, the operation's answer stands
            log.exception("cannot write the DIMSE audit line")

    def rejected(self, calling_ae: str, address: str, reason: str) -> None:
        observability.dimse_scp_rejected(reason.split(" from ", 1)[0])
        if self._audit is None or not self._audit.enabled:
            return
        record = AccessRecord(
            action="authenticate",
            method="A-ASSOCIATE",
            path="",
            client=address,
            principal=None,
            status=0,
            dimse={"operation": "A-ASSOCIATE", "calling_ae_title": calling_ae, "rejected": reason},
            outcome=4,
            outcome_reason="association_rejected",
        )
        try:
            self._audit.write(record)
        except Exception:
            log.exception("cannot write the DIMSE audit line")


def _indicator(status: int) -> int:
    """PS3.15 A.5.1 EventOutcomeIndicator: 0 success (warnings included), 8 when the gateway
    could not serve (out of resources, processing failure), 4 for every refusal of the request."""
    kind = status_class(status)
    if kind in (StatusClass.SUCCESS, StatusClass.PENDING, StatusClass.WARNING, StatusClass.CANCEL):
        return 0
    return 8 if status >> 8 == 0xA7 or status in (0x0110, 0xC001) else 4
