"""High-Throughput JPEG 2000 (ISO/IEC 15444-15) frames: encoding, and reading a codestream's
main header (blocking; run in threads).

The encoder is OpenJPH as bundled by ``imagecodecs`` (OpenJPEG, and so pylibjpeg-openjpeg,
decodes HTJ2K but has no HT block encoder). Three transfer syntaxes (PS3.5 A.4.11 and 10.18):

* 1.2.840.10008.1.2.4.201 HTJ2K Lossless: reversible 5/3 wavelet, any progression order;
* 1.2.840.10008.1.2.4.202 HTJ2K with RPCL Options (Lossless): as .201, and (PS3.5 10.18) the
  codestream is in RPCL progression order, has a TLM marker segment, and enough wavelet
  decompositions for the lowest resolution to be at most 64 pixels a side, so a viewer can find
  where each resolution ends and draw a thumbnail or a coarse image from the first bytes of a
  frame (tile-parts are cut at each resolution for the same reason);
* 1.2.840.10008.1.2.4.203 HTJ2K: irreversible 9/7 wavelet, lossy; only made when a client names
  it (gateway.dicom.negotiation never picks a lossy syntax on its own).

Colour frames are encoded without a multi-component transform, so the codestream decodes to
the samples it was given and Photometric Interpretation stays as it was (RGB), as the JPEG 2000
Lossless encoder does here. 32-bit samples are refused: OpenJPEG cannot decode what OpenJPH
makes of them.
"""

from __future__ import annotations

import functools
import struct

import numpy as np

from gateway.dicom.media import HTJ2K, HTJ2K_LOSSLESS, HTJ2K_LOSSLESS_RPCL

HTJ2K_SYNTAXES = frozenset({HTJ2K_LOSSLESS, HTJ2K_LOSSLESS_RPCL, HTJ2K})
LOSSLESS_HTJ2K = frozenset({HTJ2K_LOSSLESS, HTJ2K_LOSSLESS_RPCL})
# ISO/IEC 15444-1 A.6.1 Table A.16: the progression order byte of SGcod.
PROGRESSION_RPCL = 2
# Quantization step of the lossy syntax relative to the range of Bits Stored (OpenJPH's qstep is
# relative to the range of the samples' type, so it is scaled down for e.g. 12 bits in 16): fine
# enough for diagnostic-looking images, coarse enough to be several times smaller than lossless.
LOSSY_QSTEP = 0.003

# OpenJPH's default number of wavelet decompositions, and the largest side of the lowest
# resolution PS3.5 10.18 allows for .202 (a thumbnail-sized image).
DECOMPOSITIONS = 5
BASE_RESOLUTION_MAX = 64

# Marker codes (ISO/IEC 15444-1 Table A.2).
SOC, SOT, SOD, EOC = 0xFF4F, 0xFF90, 0xFF93, 0xFFD9
COD, TLM = 0xFF52, 0xFF55


@functools.cache
def available() -> bool:
    """Whether the HTJ2K encoder is installed and built with OpenJPH."""
    try:
        import imagecodecs
    except ImportError:
        return False
    try:
        return bool(imagecodecs.HTJ2K.available)
    except (AttributeError, ImportError):  # imagecodecs.DelayedImportError is an ImportError
        return False


def can_encode(samples_per_pixel: int, bits_allocated: int) -> bool:
    """Whether frames of this shape can be encoded: 1 or 3 samples of 8 or 16 bits."""
    return samples_per_pixel in (1, 3) and bits_allocated in (8, 16) and available()


def encode(arr: np.ndarray, target: str, *, bits_stored: int | None = None) -> bytes:
    """One frame, (rows, columns[, 3]) with samples interleaved and values within
    ``bits_stored`` (default: the whole sample type), as a ``target`` codestream. Raises
    ValueError for a codestream that does not meet the syntax's rules (a changed encoder
    default), so nothing is sent under a false label."""
    import imagecodecs

    if target not in HTJ2K_SYNTAXES:
        raise ValueError(f"{target} is not an HTJ2K transfer syntax")
    lossless = target in LOSSLESS_HTJ2K
    level = None
    if not lossless:
        unused = arr.dtype.itemsize * 8 - (bits_stored or arr.dtype.itemsize * 8)
        level = LOSSY_QSTEP / (1 << max(0, unused))
    rpcl = target == HTJ2K_LOSSLESS_RPCL
    codestream = bytes(
        imagecodecs.htj2k_encode(
            np.ascontiguousarray(arr),
            level,
            rgb=False,
            reversible=lossless,
            resolutions=decompositions(arr.shape[0], arr.shape[1]),  # imagecodecs' name for them
            # PS3.5 10.18: .202 needs TLM markers; tile-parts cut at each resolution let a
            # viewer fetch the first resolutions alone.
            tlm=rpcl or None,
            tilepart=imagecodecs.HTJ2K.TILEPART.RESOLUTIONS if rpcl else None,
        )
    )
    if rpcl:
        header = main_header(codestream)
        if TLM not in header or progression_order(codestream) != PROGRESSION_RPCL:
            raise ValueError("the encoder did not make an RPCL codestream with TLM markers (PS3.5 10.18)")
    return codestream


def decompositions(rows: int, columns: int) -> int:
    """Wavelet decompositions for a frame: the encoder's default, or more when the lowest
    resolution would otherwise be over 64 pixels a side (PS3.5 10.18, required for .202)."""
    count = DECOMPOSITIONS
    while -(-max(rows, columns) // (1 << count)) > BASE_RESOLUTION_MAX:
        count += 1
    return count


def main_header(codestream: bytes) -> dict[int, bytes]:
    """The marker segments of a codestream's main header (SOC up to the first SOT), by marker
    code; a repeated marker keeps its first segment. ValueError for what is no codestream."""
    if codestream[:2] != struct.pack(">H", SOC):
        raise ValueError("not a JPEG 2000 codestream: no SOC marker")
    segments: dict[int, bytes] = {}
    at = 2
    while at + 4 <= len(codestream):
        marker, length = struct.unpack_from(">HH", codestream, at)
        if marker in (SOT, SOD, EOC):
            return segments
        if marker >> 8 != 0xFF or length < 2:
            raise ValueError(f"malformed marker segment at byte {at}")
        segments.setdefault(marker, codestream[at + 4 : at + 2 + length])
        at += 2 + length
    raise ValueError("codestream ends inside its main header")


def progression_order(codestream: bytes) -> int:
    """The progression order of the COD marker segment (Scod, then SGcod's first byte)."""
    cod = main_header(codestream).get(COD)
    if cod is None or len(cod) < 2:
        raise ValueError("codestream has no COD marker segment")
    return cod[1]
