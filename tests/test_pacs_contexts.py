"""What a C-GET association proposes (gateway.adapters.dimse_contexts): for located SOP Classes a
native context plus one context per compressed syntax each, within PS3.8's 128; else the wide set."""

from __future__ import annotations

from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless, RLELossless
from pynetdicom import StoragePresentationContexts
from pynetdicom.sop_class import CTImageStorage, MRImageStorage

from gateway.adapters.dimse_contexts import (
    COMPRESSED_SYNTAXES,
    GET,
    GET_KIND,
    MAX_CONTEXTS,
    MAX_LOCATED_CLASSES,
    association_contexts,
    get_kind,
)

STORAGE_CLASSES = [str(cx.abstract_syntax) for cx in StoragePresentationContexts]


def test_located_classes_get_a_context_per_syntax() -> None:
    kind = get_kind([MRImageStorage, CTImageStorage, CTImageStorage])
    assert kind == get_kind([CTImageStorage, MRImageStorage])  # one pooled kind per set of classes
    contexts, roles = association_contexts(kind)
    assert str(contexts[0].abstract_syntax) == GET
    for sop_class in (CTImageStorage, MRImageStorage):
        proposed = [list(map(str, c.transfer_syntax)) for c in contexts if c.abstract_syntax == sop_class]
        # The native context lists the uncompressed syntaxes, Explicit VR Little Endian first.
        assert proposed[0][:2] == [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
        # Every compressed syntax alone in its own context: the PACS can send each as stored.
        assert proposed[1:] == [[str(s)] for s in COMPRESSED_SYNTAXES]
    assert {JPEG2000Lossless, JPEGLSLossless, RLELossless} <= set(COMPRESSED_SYNTAXES)
    assert sorted(str(r.sop_class_uid) for r in roles) == sorted([CTImageStorage, MRImageStorage])
    assert all(r.scp_role and not r.scu_role for r in roles)


def test_as_many_classes_as_fit_in_128_contexts() -> None:
    fitting = get_kind(STORAGE_CLASSES[:MAX_LOCATED_CLASSES])
    contexts, _ = association_contexts(fitting)
    assert len(contexts) <= MAX_CONTEXTS
    assert get_kind(STORAGE_CLASSES[: MAX_LOCATED_CLASSES + 1]) == GET_KIND


def test_unknown_classes_get_the_wide_set() -> None:
    assert get_kind([]) == GET_KIND
    contexts, roles = association_contexts(GET_KIND)
    assert len(contexts) <= MAX_CONTEXTS
    assert len(roles) == len(contexts) - 1
