"""The audit trail: one JSON line per access to patient data, after DICOM PS3.15 A.5.

Each line carries the fields of a PS3.15 A.5.1 audit message (EventIdentification,
ActiveParticipant, AuditSourceIdentification, ParticipantObjectIdentification) in JSON form,
plus what a gateway operator needs next to them (HTTP method, path, status, bytes, duration):

* who: the principal (token ``sub`` or ``apikey:<name>``; ``anonymous`` when auth is off,
  ``unauthenticated`` when credentials were missing or rejected) and the client address;
* what: the event (Query 110112, DICOM Instances Transferred 110104 for retrieve and store,
  User Authentication 110114 for rejected credentials), the study/series/instance UIDs of the
  path, and the QIDO parameter *names* - their values are patient data (names, IDs, dates) and
  are kept only with ``audit.include_query_values``;
* outcome: EventOutcomeIndicator 0 success, 4 minor failure (4xx), 8 serious failure (5xx);
  for refused credentials (401) EventOutcomeDescription is a machine-readable reason
  (``expired``, ``bad_signature``, ``unknown_kid``, ``alg_not_allowed``, ``malformed``,
  ``unknown_key``, ``revoked_key``, ...); a STOW names the instances it stored and those it did
  not (``ParticipantObjectDescription`` "not stored", with their FailureReason); a DELETE or a
  rejection (event 110103, action D) names each instance it took out of the index
  (``ParticipantObjectDescription`` "deleted", or "rejected" with the rejection code); a
  metadata correction (action U, one line per study) names each instance it corrected
  ("corrected", with the keywords of the attributes changed).

Lines go to stdout or are appended to a file; nothing in them is a stack trace.
"""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import orjson

from gateway.security.principal import Principal

# PS3.16 CID 400-405 / PS3.15 A.5.3 event IDs and type codes used here.
_EVENTS: dict[str, tuple[dict[str, str], str]] = {
    "query": ({"code": "110112", "codeSystemName": "DCM", "displayName": "Query"}, "E"),
    "retrieve": ({"code": "110104", "codeSystemName": "DCM", "displayName": "DICOM Instances Transferred"}, "R"),
    "store": ({"code": "110104", "codeSystemName": "DCM", "displayName": "DICOM Instances Transferred"}, "C"),
    "delete": ({"code": "110103", "codeSystemName": "DCM", "displayName": "DICOM Instances Accessed"}, "D"),
    # A study's state changed without its instances changing (PUT .../protected): Update.
    "update": ({"code": "110103", "codeSystemName": "DCM", "displayName": "DICOM Instances Accessed"}, "U"),
    "authenticate": ({"code": "110114", "codeSystemName": "DCM", "displayName": "User Authentication"}, "E"),
}
_ID_TYPES = {
    "study": {"code": "110180", "codeSystemName": "DCM", "displayName": "Study Instance UID"},
    "series": {"code": "112002", "codeSystemName": "DCM", "displayName": "Series Instance UID"},
    "instance": {"code": "110183", "codeSystemName": "DCM", "displayName": "SOP Instance UID"},
}


@dataclass
class AccessRecord:
    """What the audit middleware collected about one request."""

    action: str  # a key of _EVENTS
    method: str
    path: str
    client: str | None
    principal: Principal | None = None
    status: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    duration: float = 0.0
    uids: dict[str, str] = field(default_factory=dict)  # "study"/"series"/"instance" -> UID
    query: list[tuple[str, str]] = field(default_factory=list)
    stored: list[tuple[str, str, str]] = field(default_factory=list)  # STOW: (study, series, sop)
    # A DIMSE retrieve (C-MOVE, C-GET): the instances sent, (study, series, sop).
    sent: list[tuple[str, str, str]] = field(default_factory=list)
    # STOW: instances not stored, (study or None, sop, FailureReason); parts with no readable
    # SOP Instance UID are counted only.
    failed: list[tuple[str | None, str | None, int]] = field(default_factory=list)
    # DELETE or rejection: the instances removed (study, series, sop), and a rejection's code.
    removed: list[tuple[str, str, str]] = field(default_factory=list)
    rejection: str | None = None
    # A metadata correction ($bulkUpdate): the instances corrected and the attributes changed.
    corrected: list[tuple[str, str, str]] = field(default_factory=list)
    correction: list[str] = field(default_factory=list)
    outcome_reason: str | None = None  # why credentials were refused (401), machine-readable
    # A DIMSE operation (gateway.dimse.observe): its fields replace the "http" ones, and
    # ``outcome`` (0, 4, 8) the one derived from an HTTP status.
    dimse: dict[str, Any] | None = None
    outcome: int | None = None


def outcome_indicator(status: int) -> int:
    return 0 if status < 400 else 4 if status < 500 else 8


def to_event(record: AccessRecord, *, include_query_values: bool, source_id: str) -> dict[str, Any]:
    event_id, action_code = _EVENTS[record.action]
    who = record.principal.audit_id if record.principal else "unauthenticated"
    event: dict[str, Any] = {
        "EventIdentification": {
            "EventID": event_id,
            "EventActionCode": action_code,
            "EventDateTime": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "EventOutcomeIndicator": record.outcome if record.outcome is not None else outcome_indicator(record.status),
        },
        "ActiveParticipant": [
            {
                "UserID": who,
                "UserIsRequestor": True,
                "NetworkAccessPointID": record.client,
                "NetworkAccessPointTypeCode": "2",  # an IP address (PS3.15 A.5.1)
            }
        ],
        "AuditSourceIdentification": {"AuditSourceID": source_id},
        "ParticipantObjectIdentification": _objects(record, include_query_values),
    }
    if record.dimse is not None:
        event["dimse"] = record.dimse
    else:
        event["http"] = {
            "method": record.method,
            "path": record.path,
            "status": record.status,
            "bytes_sent": record.bytes_sent,
            "bytes_received": record.bytes_received,
            "duration_ms": round(record.duration * 1000, 1),
        }
    if record.outcome_reason:
        # PS3.15 A.5.1 EventOutcomeDescription; here a short code (expired, bad_signature, ...).
        event["EventIdentification"]["EventOutcomeDescription"] = record.outcome_reason
    return event


def _objects(record: AccessRecord, include_values: bool) -> list[dict[str, Any]]:
    objects: list[dict[str, Any]] = []
    for level in ("study", "series", "instance"):
        if level in record.uids:
            objects.append(
                {
                    "ParticipantObjectTypeCode": 2,  # system object
                    "ParticipantObjectIDTypeCode": _ID_TYPES[level],
                    "ParticipantObjectID": record.uids[level],
                }
            )
    for study, series, sop in record.stored:
        objects.append(
            {
                "ParticipantObjectTypeCode": 2,
                "ParticipantObjectIDTypeCode": _ID_TYPES["instance"],
                "ParticipantObjectID": sop,
                "ParticipantObjectDetail": {"StudyInstanceUID": study, "SeriesInstanceUID": series},
            }
        )
    for study, series, sop in record.sent:
        objects.append(
            {
                "ParticipantObjectTypeCode": 2,
                "ParticipantObjectIDTypeCode": _ID_TYPES["instance"],
                "ParticipantObjectID": sop,
                "ParticipantObjectDescription": "sent",
                "ParticipantObjectDetail": {"StudyInstanceUID": study, "SeriesInstanceUID": series},
            }
        )
    for study, series, sop in record.removed:
        detail = {"StudyInstanceUID": study, "SeriesInstanceUID": series}
        if record.rejection is not None:
            detail["RejectionCode"] = record.rejection  # PS3.16 CID 7011
        objects.append(
            {
                "ParticipantObjectTypeCode": 2,
                "ParticipantObjectIDTypeCode": _ID_TYPES["instance"],
                "ParticipantObjectID": sop,
                "ParticipantObjectDescription": "deleted" if record.rejection is None else "rejected",
                "ParticipantObjectDetail": detail,
            }
        )
    for study, series, sop in record.corrected:
        objects.append(
            {
                "ParticipantObjectTypeCode": 2,
                "ParticipantObjectIDTypeCode": _ID_TYPES["instance"],
                "ParticipantObjectID": sop,
                "ParticipantObjectDescription": "corrected",
                "ParticipantObjectDetail": {
                    "StudyInstanceUID": study,
                    "SeriesInstanceUID": series,
                    "ChangedAttributes": record.correction,
                },
            }
        )
    for failed_study, failed_sop, reason in record.failed:
        if failed_sop is None:
            continue
        detail = {"StudyInstanceUID": failed_study} if failed_study else {}
        objects.append(
            {
                "ParticipantObjectTypeCode": 2,
                "ParticipantObjectIDTypeCode": _ID_TYPES["instance"],
                "ParticipantObjectID": failed_sop,
                # Not stored: the STOW FailureReason (PS3.18 10.5.3, PS3.4 B.2.3) says why; not
                # sent: the C-STORE sub-operation's status (PS3.4 C.4.2.1.4.2).
                "ParticipantObjectDescription": "not sent" if record.action == "retrieve" else "not stored",
                "ParticipantObjectDetail": {**detail, "FailureReason": f"{reason:04X}"},
            }
        )
    unnamed = sum(1 for _, sop, _ in record.failed if sop is None)
    if unnamed:
        objects.append(
            {
                "ParticipantObjectTypeCode": 2,
                "ParticipantObjectIDTypeCode": _ID_TYPES["instance"],
                "ParticipantObjectID": "",
                "ParticipantObjectDescription": f"not stored: {unnamed} part(s) without a readable SOP Instance UID",
                "ParticipantObjectDetail": {
                    "FailureReason": sorted({f"{r:04X}" for _, sop, r in record.failed if sop is None})
                },
            }
        )
    if record.action == "query":
        query: dict[str, Any] = {}
        for name, value in record.query:
            query.setdefault(name, []).append(value if include_values else "")
        objects.append(
            {
                "ParticipantObjectTypeCode": 2,
                "ParticipantObjectTypeCodeRole": 3,  # report
                "ParticipantObjectIDTypeCode": {
                    "code": "110181",
                    "codeSystemName": "DCM",
                    "displayName": "SOP Class UID",
                },
                "ParticipantObjectID": "1.2.840.10008.5.1.4.1.2.2.1",  # Study Root Query/Retrieve - FIND
                "ParticipantObjectQuery": query if include_values else sorted(query),
            }
        )
    return objects


class AuditLog:
    """Writes events as JSON lines to stdout, a file (appended), or nowhere ("off")."""

    def __init__(self, destination: str, *, include_query_values: bool = False, source_id: str = "dicomweb-gateway"):
        self.destination = destination
        self.enabled = destination != "off"
        self._include_values = include_query_values
        self._source_id = source_id
        self._file: IO[bytes] | None = None
        self._lock = threading.Lock()  # the DIMSE listener writes from its association threads

    def open(self) -> None:
        if self.destination not in ("stdout", "-", "off") and self._file is None:
            self._file = Path(self.destination).expanduser().open("ab")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def write(self, record: AccessRecord) -> None:
        if not self.enabled:
            return
        event = to_event(record, include_query_values=self._include_values, source_id=self._source_id)
        line = orjson.dumps(event) + b"\n"
        with self._lock:
            if self._file is not None:
                self._file.write(line)
                self._file.flush()
            else:
                sys.stdout.buffer.write(line)
                sys.stdout.buffer.flush()
