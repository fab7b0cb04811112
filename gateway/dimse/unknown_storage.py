"""Storage SOP classes the listener does not know: private ones (a vendor's, such as Siemens CSA
Non-Image Storage 1.3.12.2.1107.5.9.1) and public ones newer than pynetdicom's table.

A PACS or modality pushes such instances beside its images, and an archive that refuses them
breaks its routing (PS3.4 B.4.1: the SCP decides which classes it supports; Orthanc's
``UnknownSopClassAccepted`` and dcm4chee's configurable storage classes accept them). The
gateway does: it stores any instance as sent and serves it over WADO-RS as stored, so the SOP
class only has to be one of the Storage Service Class. A proposed abstract syntax the listener
does not support is accepted as storage when it is a valid UID that is

* private: outside the DICOM root 1.2.840.10008 (PS3.5 9.1: organisations' own UIDs), or
* under the storage arc 1.2.840.10008.5.1.4.1.1 (where PS3.6 registers Storage SOP Classes),

with the listener's storage transfer syntaxes and roles (so C-GET can send such instances
back). Any other public UID (worklist, MPPS, print...) stays "abstract syntax not supported".
Peers get these contexts as they get the known storage ones; a C-STORE without the ``write``
scope is still refused per instance (0x0124).

pynetdicom routes a DIMSE request by its SOP class to a service class and sends unknown ones to
none, so each such class is also entered, for that association, as SOP Class Common Extended
Negotiation (PS3.7 D.3.3.6, which a requester may propose for exactly this and which has no
response item) naming the Storage Service Class 1.2.840.10008.4.2.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from pynetdicom.pdu_primitives import SOPClassCommonExtendedNegotiation
from pynetdicom.presentation import build_context

from gateway.dicom import uids

__all__ = ["STORAGE_SERVICE_CLASS", "UnknownStorage", "accepted_as_storage"]

STORAGE_SERVICE_CLASS = "1.2.840.10008.4.2"  # PS3.4 B.1
_DICOM_ROOT = "1.2.840.10008."
_STORAGE_ARC = "1.2.840.10008.5.1.4.1.1."
_CLASSES = "_gateway_unknown_storage"  # on the association: the classes accepted this way


def accepted_as_storage(uid: str, known: Collection[str]) -> bool:
    """Whether a proposed abstract syntax the listener lacks is accepted as storage."""
    if uid in known or not uids.is_valid_uid(uid):
        return False
    return not uid.startswith(_DICOM_ROOT) or uid.startswith(_STORAGE_ARC)


class UnknownStorage:
    """Offers a context for each unknown storage class an association proposes (call
    :meth:`offer` from the ``EVT_REQUESTED`` handler, once its own contexts are set), and is the
    listener's ``EVT_SOP_COMMON`` handler mapping those classes to the Storage Service Class."""

    def __init__(self, known: Collection[str], transfer_syntaxes: Sequence[str]) -> None:
        self._known = frozenset(known)
        self._syntaxes = list(transfer_syntaxes)

    def offer(self, assoc: Any) -> None:
        proposed = assoc.requestor.primitive.presentation_context_definition_list or []
        classes = sorted({str(cx.abstract_syntax) for cx in proposed})
        classes = [uid for uid in classes if accepted_as_storage(uid, self._known)]
        if not classes:
            return
        contexts = list(assoc.acceptor.supported_contexts)
        for uid in classes:
            context = build_context(uid, self._syntaxes)
            # As for the known storage classes: C-GET's requester takes the SCP role (PS3.7 D.3.3.4).
            context.scu_role = True
            context.scp_role = True
            contexts.append(context)
        assoc.acceptor.supported_contexts = contexts
        setattr(assoc, _CLASSES, classes)

    def __call__(self, event: Any) -> dict[str, SOPClassCommonExtendedNegotiation]:
        """``EVT_SOP_COMMON``: the classes offered above belong to the Storage Service Class;
        whatever else a requester proposed is declined, as pynetdicom's default does."""
        accepted: dict[str, SOPClassCommonExtendedNegotiation] = {}
        for uid in getattr(event.assoc, _CLASSES, ()):
            item = SOPClassCommonExtendedNegotiation()
            item.sop_class_uid = uid
            item.service_class_uid = STORAGE_SERVICE_CLASS
            accepted[uid] = item
        return accepted
