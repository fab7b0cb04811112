"""The File Meta Information of a received data set, encoded directly
(gateway.dicom.received_meta), is byte for byte what pydicom writes for the same values: the
spooled file becomes the stored object, so its bytes decide whether an identical re-send finds
an identical copy (one live copy, whichever version of the gateway stored the first)."""

from __future__ import annotations

from io import BytesIO

import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID
from pynetdicom.dsutils import create_file_meta

from gateway.dicom.part10 import read_meta
from gateway.dicom.received_meta import IMPLEMENTATION_VERSION, PREAMBLE, ReceivedMeta, file_meta, write_meta

CASES = [
    # SOP Class (CT, even length; Enhanced MR, odd), a short and a 64-character SOP Instance UID,
    # Explicit VR Little Endian (odd length), JPEG 2000 (even), Deflated (odd).
    ("1.2.840.10008.5.1.4.1.1.2", "1.2.3", "1.2.840.10008.1.2.1"),
    ("1.2.840.10008.5.1.4.1.1.4.1", "1.2.826.0.1.3680043.8.498." + "1" * 38, "1.2.840.10008.1.2.4.90"),
    ("1.2.840.10008.5.1.4.1.1.7", "2.25.12345678901234567890", "1.2.840.10008.1.2.1.99"),
]


def pydicom_meta(sop_class: str, sop: str, syntax: str) -> bytes:
    """What the gateway wrote with pydicom before (gateway.dicom.received, spool_received)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop)
    meta.TransferSyntaxUID = UID(syntax)
    meta.ImplementationClassUID = PYNETDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION
    out = BytesIO()
    out.write(PREAMBLE)
    write_file_meta_info(out, meta, enforce_standard=True)  # type: ignore[arg-type]
    return out.getvalue()


@pytest.mark.parametrize(("sop_class", "sop", "syntax"), CASES)
def test_the_meta_is_the_one_pydicom_writes(sop_class: str, sop: str, syntax: str) -> None:
    encoded = file_meta(sop_class, sop, syntax)
    assert encoded == pydicom_meta(sop_class, sop, syntax)
    read = read_meta(BytesIO(encoded), len(encoded))  # how the gateway reads it back
    assert (read.sop_class_uid, read.sop_instance_uid, read.transfer_syntax) == (sop_class, sop, syntax)
    assert read.dataset_start == len(encoded)


@pytest.mark.parametrize(("sop_class", "sop", "syntax"), CASES)
def test_pynetdicoms_receiving_code_writes_the_same_meta(sop_class: str, sop: str, syntax: str) -> None:
    """As pynetdicom's receiving code calls the two (it writes the preamble itself first)."""
    ours, theirs = BytesIO(), BytesIO()
    kwargs = {"sop_class_uid": UID(sop_class), "sop_instance_uid": UID(sop), "transfer_syntax": UID(syntax)}
    write_meta(ours, ReceivedMeta.create(**kwargs))
    write_meta(
        theirs,
        create_file_meta(
            **kwargs, implementation_uid=PYNETDICOM_IMPLEMENTATION_UID, implementation_version=IMPLEMENTATION_VERSION
        ),
    )
    assert PREAMBLE + ours.getvalue() == PREAMBLE + theirs.getvalue() == file_meta(sop_class, sop, syntax)
