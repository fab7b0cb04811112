"""A Part 10 instance de-identified by :class:`~gateway.dicom.deidentify.Deidentifier`: the
data set rewritten, the File Meta Information following its new SOP Instance UID (PS3.10 7.1),
the transfer syntax and the Pixel Data bytes as they were (the profile does not touch pixels)."""

from __future__ import annotations

import io

import pydicom

from gateway.dicom.deidentify import Deidentifier


def deidentified_part10(data: bytes, deidentifier: Deidentifier) -> bytes:
    """``data`` (a whole Part 10 file) de-identified, as a Part 10 file in the same syntax."""
    ds = pydicom.dcmread(io.BytesIO(data), force=True)
    deidentifier.dataset(ds)
    meta = ds.file_meta
    if "SOPInstanceUID" in ds:
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    # Who wrote this file now: the gateway's rewrite, not the original's implementation.
    meta.pop(0x00020016, None)  # Source Application Entity Title names the sending site
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()
