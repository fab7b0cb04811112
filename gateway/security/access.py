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

The :class:`Restriction` and its parser are pure values of the DICOM floor
(``gateway.dicom.restriction``), which the query model, the index, the services and the settings
(``[[dimse_clients]]`` restrictions) use; this module is where the security package finds them.
"""

from __future__ import annotations

# Re-exported: the value object and its parser live on the pure floor (gateway.dicom.restriction),
# where the settings ([[dimse_clients]] restrictions) can reach them too.
from gateway.dicom.restriction import MAX_ENTRIES as MAX_ENTRIES
from gateway.dicom.restriction import PATIENT_ID_TAG as PATIENT_ID_TAG
from gateway.dicom.restriction import STUDY_UID_TAG as STUDY_UID_TAG
from gateway.dicom.restriction import Restriction as Restriction
from gateway.dicom.restriction import RestrictionError as RestrictionError
from gateway.dicom.restriction import parse_restriction as parse_restriction
