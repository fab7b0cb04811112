"""A data set received by C-STORE (PS3.4 B.2), written as a Part 10 file without decoding it.

Used for every C-STORE the gateway receives: C-GET and C-MOVE sub-operations from a PACS, and
pushes of DIMSE clients to the front door.
"""

from __future__ import annotations

import uuid
from io import BytesIO
from pathlib import Path
from typing import Any

from pydicom.dataset import FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID

from gateway.dicom.records import ReceivedInstance

IMPLEMENTATION_VERSION = "DICOMWEB_GW"


def spool_received(event: Any, spool_dir: Path) -> ReceivedInstance:
    """Write a pynetdicom ``EVT_C_STORE`` event's data set as a Part 10 file (PS3.10 7.1), as sent.

    The File Meta Information is written here, deterministically (no Source AE title, no time):
    the same data set from any peer becomes the same bytes, so storing it twice is idempotent
    (an identical re-send finds an identical object).
    """
    request = event.request
    syntax = UID(str(event.context.transfer_syntax))
    sop_uid = str(request.AffectedSOPInstanceUID)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(str(request.AffectedSOPClassUID))
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = syntax
    meta.ImplementationClassUID = PYNETDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION
    header = BytesIO()
    header.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(header, meta, enforce_standard=True)  # type: ignore[arg-type]
    data: BytesIO = request.DataSet
    spool_dir.mkdir(parents=True, exist_ok=True)
    path = spool_dir / f"recv-{uuid.uuid4().hex}.dcm"
    with path.open("wb") as f:
        f.write(header.getbuffer())
        f.write(data.getbuffer())
    return ReceivedInstance(path=path, sop_uid=sop_uid, transfer_syntax=str(syntax))
