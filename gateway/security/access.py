"""Study-level restrictions: a token limited to listed PatientIDs and/or StudyInstanceUIDs.

Claim format (the claim's name is ``auth.oidc.restriction_claim``; API keys carry the same
object in the key file)::

    {"PatientID": ["P-1234", "P-5678"], "StudyInstanceUID": ["1.2.840.1.2.3"]}

A study is visible when its StudyInstanceUID is listed *or* its PatientID (as indexed for the
study) is listed; everything else behaves as if it did not exist (QIDO omits it, WADO answers
404). A token without the claim is unrestricted; a claim that is present but malformed
rejects the token (fail closed). An empty object, or empty lists, grant no study at all.

PatientID alone is unique only within its issuer (IssuerOfPatientID); deployments that mix
issuers should restrict by StudyInstanceUID.

This module parses the claim; the :class:`Restriction` it yields is a pure value of the DICOM
floor (``gateway.dicom.restriction``), which the query model, the index and the services use.
"""

from __future__ import annotations

from collections.abc import Mapping

# Re-exported: the value object's home is the pure floor (gateway.dicom.restriction).
from gateway.dicom.restriction import PATIENT_ID_TAG as PATIENT_ID_TAG
from gateway.dicom.restriction import STUDY_UID_TAG as STUDY_UID_TAG
from gateway.dicom.restriction import Restriction as Restriction

MAX_ENTRIES = 1000  # each entry is one bound SQL parameter; claims are not a bulk list


class RestrictionError(ValueError):
    """The restriction claim is malformed (the token must then be rejected)."""


def parse_restriction(claim: object) -> Restriction:
    """The claim value (see the module docstring) as a :class:`Restriction`."""
    if not isinstance(claim, Mapping):
        raise RestrictionError("restriction claim must be an object")
    unknown = set(claim) - {"PatientID", "StudyInstanceUID"}
    if unknown:
        raise RestrictionError(f"restriction claim has unknown member {sorted(unknown)[0]!r}")
    return Restriction(
        patient_ids=_strings(claim.get("PatientID", []), "PatientID"),
        study_uids=_strings(claim.get("StudyInstanceUID", []), "StudyInstanceUID"),
    )


def _strings(value: object, name: str) -> frozenset[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and 0 < len(v) <= 64 for v in value):
        raise RestrictionError(f"restriction claim member {name} must be a list of strings (1-64 characters)")
    if len(value) > MAX_ENTRIES:
        raise RestrictionError(f"restriction claim member {name} lists more than {MAX_ENTRIES} values")
    return frozenset(value)
