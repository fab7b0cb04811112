"""The Store Instances Response (PS3.18 10.5.3.2, Table 10.5.3-2): what a STOW request stored and
what it refused, as a DICOM JSON data set, plus one human-readable note per refusal.

Built here from the request's :class:`~gateway.services.stow.StowOutcome`, so that the route only
encodes and sends it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.ports import DicomJson
from gateway.services.outcomes import FailedInstance, StoredInstance
from gateway.services.stow import StowOutcome

RETRIEVE_URL = "00081190"
FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_SEQUENCE = "00081199"
REFERENCED_SOP_CLASS_UID = "00081150"
REFERENCED_SOP_INSTANCE_UID = "00081155"
FAILURE_REASON = "00081197"

# Notes beyond this many are dropped: a request of thousands of failing parts must not grow a
# response head without bound.
MAX_NOTES = 50


@dataclass(frozen=True)
class StoreInstancesResponse:
    dataset: DicomJson
    status: int  # 200 all stored, 202 some refused, 409 / 400 / 503 none stored (PS3.18 10.5.3)
    # The data set carries only the numeric FailureReason; the detail of each refusal is a note
    # for a Warning header (PS3.18 8.3.4.x allows Warning on any response).
    notes: tuple[str, ...]


def store_instances_response(outcome: StowOutcome, base_url: str, study: str | None) -> StoreInstancesResponse:
    """The response to a STOW request to ``{base_url}/studies[/{study}]``."""
    dataset: DicomJson = {}
    studies = {s.study_uid for s in outcome.stored}
    retrieve_study = study or (next(iter(studies)) if len(studies) == 1 else None)
    if retrieve_study:
        dataset[RETRIEVE_URL] = {"vr": "UR", "Value": [f"{base_url}/studies/{retrieve_study}"]}
    if outcome.failed:
        dataset[FAILED_SOP_SEQUENCE] = {"vr": "SQ", "Value": [_failed_item(f) for f in outcome.failed]}
    if outcome.stored:
        dataset[REFERENCED_SOP_SEQUENCE] = {"vr": "SQ", "Value": [_stored_item(s, base_url) for s in outcome.stored]}
    notes = tuple(f"{f.sop_instance_uid or 'part'}: {f.detail}" for f in outcome.failed[:MAX_NOTES])
    return StoreInstancesResponse(dataset, outcome.http_status, notes)


def _stored_item(stored: StoredInstance, base_url: str) -> dict[str, Any]:
    instance_url = (
        f"{base_url}/studies/{stored.study_uid}/series/{stored.series_uid}/instances/{stored.sop_instance_uid}"
    )
    return {
        REFERENCED_SOP_CLASS_UID: {"vr": "UI", "Value": [stored.sop_class_uid]},
        REFERENCED_SOP_INSTANCE_UID: {"vr": "UI", "Value": [stored.sop_instance_uid]},
        RETRIEVE_URL: {"vr": "UR", "Value": [instance_url]},
    }


def _failed_item(failed: FailedInstance) -> dict[str, Any]:
    # Type 1C attributes of a part that could not be read at all are present and empty.
    sop_class, sop_instance = failed.sop_class_uid, failed.sop_instance_uid
    return {
        REFERENCED_SOP_CLASS_UID: {"vr": "UI", "Value": [sop_class]} if sop_class else {"vr": "UI"},
        REFERENCED_SOP_INSTANCE_UID: {"vr": "UI", "Value": [sop_instance]} if sop_instance else {"vr": "UI"},
        FAILURE_REASON: {"vr": "US", "Value": [failed.failure_reason]},
    }
