"""What each kind of association to a PACS proposes: SOP Classes, transfer syntaxes, roles.

Associations are pooled by *kind* (:mod:`gateway.adapters.dimse_pool`): ``"query"`` for
Verification, C-FIND and C-MOVE; ``"get"`` for C-GET, which also needs every storage SOP Class
with the SCP role, since the instances come back as C-STORE sub-operations on the same
association (PS3.4 C.4.3, PS3.7 D.3.3.4); ``("store", sop_class, syntax)`` for forwarding one
kind of instance.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import StoragePresentationContexts, build_context, build_role

# PS3.4 Annex B.5 / C.6.2: Study Root Query/Retrieve Information Model SOP Classes.
FIND = UID("1.2.840.10008.5.1.4.1.2.2.1")
MOVE = UID("1.2.840.10008.5.1.4.1.2.2.2")
GET = UID("1.2.840.10008.5.1.4.1.2.2.3")
VERIFICATION = UID("1.2.840.10008.1.1")
NATIVE_SYNTAXES: list[str | UID] = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
]
# Proposed for received instances. Explicit VR Little Endian first: a PACS picks one syntax per
# SOP Class, and picking a lossless one never degrades what it holds (it may transcode to it).
RECEIVE_SYNTAXES: list[str | UID] = [
    *NATIVE_SYNTAXES,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEG2000Lossless,
    RLELossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLSNearLossless,
    JPEG2000,
]
QUERY_KIND = "query"  # Verification, C-FIND, C-MOVE
GET_KIND = "get"  # C-GET plus every storage SOP Class in the SCP role


def association_contexts(kind: Hashable) -> tuple[list[Any], list[Any]]:
    """Presentation contexts and extended negotiation items an association of ``kind`` proposes."""
    if kind == QUERY_KIND:
        return [build_context(VERIFICATION), build_context(FIND), build_context(MOVE)], []
    if kind == GET_KIND:
        # 1 + 120 contexts: within the 128 a requestor may propose (PS3.8 9.3.2.2, odd IDs 1-255).
        storage = [build_context(str(cx.abstract_syntax), RECEIVE_SYNTAXES) for cx in StoragePresentationContexts]
        roles = [build_role(str(cx.abstract_syntax), scp_role=True) for cx in storage]
        return [build_context(GET), *storage], roles
    if isinstance(kind, tuple) and kind[0] == "store":
        _, sop_class, syntax = kind
        syntaxes: list[str | UID] = NATIVE_SYNTAXES if syntax in NATIVE_SYNTAXES else [syntax]
        return [build_context(sop_class, syntaxes)], []
    raise ValueError(f"unknown association kind {kind!r}")
