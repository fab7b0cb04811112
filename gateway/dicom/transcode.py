"""Changing the transfer syntax of stored instances and frames (blocking; run in threads).

PS3.18 8.7.3.5: when a client names no transfer syntax, ``application/dicom`` means Explicit VR
Little Endian and ``application/octet-stream`` frames mean uncompressed little-endian pixels.
Decoding uses pydicom's pixel decoders with the pylibjpeg plugins (JPEG, JPEG-LS, JPEG 2000, RLE).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.encaps import encapsulate
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from gateway.errors import NotAcceptable
from gateway.ports import PixelDescription

# Syntaxes whose frames are plain little-endian pixel bytes, identical on the wire.
NATIVE_LITTLE_ENDIAN = frozenset({ImplicitVRLittleEndian, ExplicitVRLittleEndian, "1.2.840.10008.1.2.1.99"})


def instance_to_uncompressed(source: Path | bytes, target: str) -> bytes:
    """The Part 10 instance re-encoded as ``target`` (Explicit or Implicit VR Little Endian)."""
    if target not in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        raise NotAcceptable(f"transcoding to transfer syntax {target} is not supported")
    fp = io.BytesIO(source) if isinstance(source, bytes) else source
    ds = pydicom.dcmread(fp)
    try:
        if ds.file_meta.TransferSyntaxUID.is_compressed:
            # decompress() swaps PixelData and fixes PhotometricInterpretation (e.g. YBR -> RGB).
            ds.decompress(as_rgb=True)
    except Exception as exc:  # pydicom raises a variety of codec errors
        raise NotAcceptable(
            f"stored transfer syntax {ds.file_meta.TransferSyntaxUID} cannot be decoded here: {exc}"
        ) from exc
    ds.file_meta.TransferSyntaxUID = UID(target)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True, implicit_vr=target == ImplicitVRLittleEndian, little_endian=True)
    return out.getvalue()


def decode_frame(encoded: bytes, transfer_syntax: str, pixel: PixelDescription) -> bytes:
    """One compressed frame decoded to native little-endian pixel bytes."""
    if transfer_syntax in NATIVE_LITTLE_ENDIAN:
        return encoded
    try:
        decoder = get_decoder(UID(transfer_syntax))
        options: dict[str, Any] = {
            "rows": pixel.rows,
            "columns": pixel.columns,
            "samples_per_pixel": pixel.samples_per_pixel,
            "bits_allocated": pixel.bits_allocated,
            "bits_stored": pixel.bits_stored,
            "pixel_representation": pixel.pixel_representation,
            "photometric_interpretation": pixel.photometric_interpretation,
            "planar_configuration": pixel.planar_configuration,
            "number_of_frames": 1,
            "as_rgb": True,
        }
        # The decoder takes encapsulated Pixel Data (PS3.5 A.4): wrap the one frame as such.
        arr, _meta = decoder.as_array(encapsulate([encoded]), **options)
    except Exception as exc:
        raise NotAcceptable(f"frame in transfer syntax {transfer_syntax} cannot be decoded here: {exc}") from exc
    little = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
    return bytes(np.ascontiguousarray(little).tobytes())
