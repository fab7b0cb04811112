"""What each kind of association to a PACS proposes: SOP Classes, transfer syntaxes, roles.

Associations are pooled by *kind* (:mod:`gateway.adapters.dimse_pool`):

* ``"query"`` for Verification, C-FIND and C-MOVE; ``"query-fuzzy"`` the same, asking for fuzzy
  semantic matching of person names by SOP Class Extended Negotiation (PS3.4 C.5.1.1.1, byte 3
  of the C-FIND item), for QIDO's ``fuzzymatching=true``.
* ``("get", classes)`` for a C-GET whose SOP Classes were located first: the instances come
  back as C-STORE sub-operations on the same association (PS3.4 C.4.3, SCP role per class,
  PS3.7 D.3.3.4), and the PACS sends each over one accepted presentation context whose syntax
  it then must produce. One context per (class, syntax) lets it send every original as stored
  (a JPEG 2000 or JPEG-LS image byte for byte), next to one native context (PS3.8 9.3.2.2: the
  acceptor picks one syntax per context). At 10 contexts per class this covers up to 12
  classes within the 128 contexts an association may propose (odd IDs 1-255).
* ``"get"`` when the classes are unknown or too many: one context per storage SOP Class that
  pynetdicom knows (120), each listing every syntax; the PACS picks one per class and
  transcodes what is stored otherwise (or fails the sub-operation).
* ``("store", sop_class, syntax)`` for forwarding one kind of instance.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
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
from pynetdicom.pdu_primitives import SOPClassExtendedNegotiation

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
# Each in a context of its own for located classes: what a PACS holds compressed can come as is.
COMPRESSED_SYNTAXES: list[str | UID] = [s for s in RECEIVE_SYNTAXES if s not in NATIVE_SYNTAXES]
MAX_CONTEXTS = 128  # PS3.8 9.3.2.2: presentation context IDs are the odd numbers 1-255
CONTEXTS_PER_CLASS = 1 + len(COMPRESSED_SYNTAXES)
MAX_LOCATED_CLASSES = (MAX_CONTEXTS - 1) // CONTEXTS_PER_CLASS  # the C-GET context takes one
QUERY_KIND = "query"  # Verification, C-FIND, C-MOVE
FUZZY_QUERY_KIND = "query-fuzzy"  # the same, proposing fuzzy semantic matching of person names
GET_KIND = "get"  # C-GET plus every storage SOP Class in the SCP role
# PS3.4 C.5.1.1.1 (Table C.5-1): C-FIND extended negotiation, bytes 1-3: relational queries,
# combined date-time matching, fuzzy semantic matching of person names.
FUZZY_FIND_REQUEST = b"\x00\x00\x01"


def get_kind(sop_classes: Iterable[str]) -> Hashable:
    """The association kind of a C-GET of instances of ``sop_classes`` (empty: unknown)."""
    classes = tuple(sorted(set(sop_classes)))
    if not classes or len(classes) > MAX_LOCATED_CLASSES:
        return GET_KIND
    return (GET_KIND, classes)


def fuzzy_accepted(sop_class_extended: dict[Any, bytes]) -> bool:
    """Whether the acceptor's C-FIND extended negotiation reply grants fuzzy matching (byte 3)."""
    for uid, info in sop_class_extended.items():
        if str(uid) == FIND and info is not None and len(info) >= 3:
            return info[2] == 1
    return False


def association_contexts(kind: Hashable) -> tuple[list[Any], list[Any]]:
    """Presentation contexts and extended negotiation items an association of ``kind`` proposes."""
    if kind in (QUERY_KIND, FUZZY_QUERY_KIND):
        contexts = [build_context(VERIFICATION), build_context(FIND), build_context(MOVE)]
        if kind == QUERY_KIND:
            return contexts, []
        item = SOPClassExtendedNegotiation()
        item.sop_class_uid = FIND
        item.service_class_application_information = FUZZY_FIND_REQUEST
        return contexts, [item]
    if isinstance(kind, tuple) and kind[0] == GET_KIND:
        contexts, roles = [build_context(GET)], []
        for sop_class in kind[1]:
            contexts.append(build_context(sop_class, NATIVE_SYNTAXES))
            contexts += [build_context(sop_class, [syntax]) for syntax in COMPRESSED_SYNTAXES]
            roles.append(build_role(sop_class, scp_role=True))
        return contexts, roles
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
