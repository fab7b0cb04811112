"""Changing the transfer syntax of stored instances and frames (blocking; run in threads).

PS3.18 8.7.3.5: when a client names no transfer syntax, ``application/dicom`` means Explicit VR
Little Endian and ``application/octet-stream`` frames mean uncompressed little-endian pixels.
Decoding uses pydicom's pixel decoders with the pylibjpeg plugins (JPEG, JPEG-LS, JPEG 2000, RLE).

Encoding (:data:`ENCODABLE`): RLE Lossless (pylibjpeg-rle, else pydicom's own encoder),
JPEG-LS Lossless (pyjpegls), JPEG 2000 Lossless (pylibjpeg-openjpeg), all through pydicom's
encoder interface; High-Throughput JPEG 2000 (all three syntaxes) through
:mod:`gateway.dicom.htj2k`; and JPEG Baseline for 8-bit data through Pillow (pydicom has no JPEG
or HTJ2K encoder). JPEG Baseline and HTJ2K (.203) are the lossy targets: callers offer them
only when a client names them (gateway.dicom.media never picks a lossy syntax on its own), and
an instance re-encoded in one says so in Lossy Image Compression (PS3.3 C.7.6.1.1.5).
"""

from __future__ import annotations

import contextlib
import io
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataelem import DataElement
from pydicom.encaps import encapsulate
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.encoders.base import get_encoder
from pydicom.pixels.utils import pack_bits, pixel_array
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from gateway.dicom import htj2k, original_syntax
from gateway.dicom.media import (
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    JPEG_2000_LOSSLESS,
    JPEG_BASELINE_8BIT,
    JPEG_LS_LOSSLESS,
    RLE_LOSSLESS,
    is_encapsulated,
)
from gateway.dicom.records import PixelDescription
from gateway.errors import NotAcceptable

# Syntaxes whose frames are plain little-endian pixel bytes, identical on the wire.
NATIVE_LITTLE_ENDIAN = frozenset({ImplicitVRLittleEndian, ExplicitVRLittleEndian, "1.2.840.10008.1.2.1.99"})
# Bytes per value of the VRs whose values are byte strings of words (PS3.5 7.3): these are what
# a change of byte order must swap by hand (pydicom converts every other VR when it writes).
_WORD_VRS = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}


def instance_to_uncompressed(source: Path | bytes, target: str) -> bytes:
    """The Part 10 instance re-encoded as ``target`` (Explicit or Implicit VR Little Endian)."""
    if target not in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        raise NotAcceptable(f"transcoding to transfer syntax {target} is not supported")
    fp = io.BytesIO(source) if isinstance(source, bytes) else source
    ds = pydicom.dcmread(fp)
    try:
        if ds.file_meta.TransferSyntaxUID == EXPLICIT_VR_BIG_ENDIAN:
            _to_little_endian(ds)
        elif ds.file_meta.TransferSyntaxUID.is_compressed:
            # decompress() swaps PixelData and fixes PhotometricInterpretation (e.g. YBR -> RGB);
            # it must keep the SOP Instance UID (pydicom 3 makes a new one unless told not to).
            ds.decompress(as_rgb=True, generate_instance_uid=False)
    except Exception as exc:  # pydicom raises a variety of codec errors
        raise NotAcceptable(
            f"stored transfer syntax {ds.file_meta.TransferSyntaxUID} cannot be decoded here: {exc}"
        ) from exc
    ds.file_meta.TransferSyntaxUID = UID(target)
    original_syntax.forget(ds.file_meta)  # it described the stored object, not this one
    return _encoded(ds, implicit_vr=target == ImplicitVRLittleEndian)


def _encoded(ds: pydicom.Dataset, *, implicit_vr: bool) -> bytes:
    """``ds`` as Part 10 bytes, little endian. dcmwrite, not save_as: save_as refuses a data set
    read as big endian, whose word values :func:`_to_little_endian` has swapped already."""
    out = io.BytesIO()
    pydicom.dcmwrite(out, ds, enforce_file_format=True, implicit_vr=implicit_vr, little_endian=True)
    return out.getvalue()


def _to_little_endian(ds: pydicom.Dataset) -> None:
    """Make a data set read as Explicit VR Big Endian (retired, PS3.5 A.3) writable as little
    endian: pydicom re-encodes numbers, strings and tags itself, but leaves the byte strings of
    OW / OF / OL / OD / OV values as they are. Pixel Data is decoded by pydicom with the
    original syntax (it knows 8-bit data sent as OW, and cells of 16 or 32 bits) and written
    back in little-endian cells; every other word value is swapped per word."""
    if "PixelData" in ds:
        pixel = description_of(ds)
        # raw: the stored values, no colour conversion; samples come back interleaved.
        arr = np.asarray(pixel_array(ds, raw=True))
        if pixel.bits_allocated == 1:
            ds.PixelData = pack_bits(arr)
        else:
            if pixel.samples_per_pixel > 1 and pixel.planar_configuration == 1:
                arr = np.moveaxis(arr, -1, -3)  # back to colour-by-plane, as stored
            ds.PixelData = np.ascontiguousarray(arr.astype(arr.dtype.newbyteorder("<"))).tobytes()
        ds["PixelData"].VR = "OW" if pixel.bits_allocated > 8 else "OB"

    def swap(dataset: pydicom.Dataset, elem: DataElement) -> None:
        size = _WORD_VRS.get(elem.VR)
        if size and elem.tag != 0x7FE00010 and isinstance(elem.value, bytes) and len(elem.value) % size == 0:
            elem.value = np.frombuffer(elem.value, dtype=f">u{size}").astype(f"<u{size}").tobytes()

    ds.walk(swap)


def _one_frame(pixel: PixelDescription, *, planar_configuration: int) -> dict[str, Any]:
    """The description of one frame that pydicom's pixel decoders and encoders take."""
    return {
        "rows": pixel.rows,
        "columns": pixel.columns,
        "samples_per_pixel": pixel.samples_per_pixel,
        "bits_allocated": pixel.bits_allocated,
        "bits_stored": pixel.bits_stored,
        "pixel_representation": pixel.pixel_representation,
        "photometric_interpretation": pixel.photometric_interpretation,
        "planar_configuration": planar_configuration,
        "number_of_frames": 1,
    }


def decode_frame(encoded: bytes, transfer_syntax: str, pixel: PixelDescription) -> bytes:
    """One compressed frame decoded to native little-endian pixel bytes."""
    if transfer_syntax in NATIVE_LITTLE_ENDIAN:
        return encoded
    if transfer_syntax == EXPLICIT_VR_BIG_ENDIAN:
        return _swapped_frame(encoded, pixel)
    try:
        decoder = get_decoder(UID(transfer_syntax))
        options = {**_one_frame(pixel, planar_configuration=pixel.planar_configuration), "as_rgb": True}
        # The decoder takes encapsulated Pixel Data (PS3.5 A.4): wrap the one frame as such.
        arr, _meta = decoder.as_array(encapsulate([encoded]), **options)
    except Exception as exc:
        raise NotAcceptable(f"frame in transfer syntax {transfer_syntax} cannot be decoded here: {exc}") from exc
    little = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
    return bytes(np.ascontiguousarray(little).tobytes())


def _swapped_frame(frame: bytes, pixel: PixelDescription) -> bytes:
    """A native big-endian frame in little-endian pixel cells (PS3.5 A.3). Cells of 8 bits or
    fewer have no byte order (Pixel Data of 8-bit data is OB as pydicom and modalities write it;
    the rare 8-bit OW is converted whole-instance by :func:`_to_little_endian`)."""
    if pixel.bits_allocated not in (16, 32, 64):
        return frame
    size = pixel.bits_allocated // 8
    usable = len(frame) - len(frame) % size
    return np.frombuffer(frame[:usable], dtype=f">u{size}").astype(f"<u{size}").tobytes() + frame[usable:]


# --- encoding ---------------------------------------------------------------------------------

LOSSLESS_ENCODABLE = frozenset({RLE_LOSSLESS, JPEG_LS_LOSSLESS, JPEG_2000_LOSSLESS}) | htj2k.LOSSLESS_HTJ2K
"""Compressed syntaxes frames and instances can be re-encoded in without loss."""
ENCODABLE = LOSSLESS_ENCODABLE | htj2k.HTJ2K_SYNTAXES | {JPEG_BASELINE_8BIT}
"""Every compressed syntax the gateway can produce (lossy: JPEG Baseline, 8-bit data only, and
HTJ2K .203)."""
DEFAULT_JPEG_QUALITY = 90
# pylibjpeg-openjpeg encodes with 6 wavelet resolutions, which needs 2^5 pixels on each side.
J2K_MIN_SIDE = 32
_COLOUR = ("RGB", "YBR_FULL")  # what decoded colour frames are in (see decoded_description)


def can_decode(transfer_syntax: str) -> bool:
    """Whether frames stored in ``transfer_syntax`` can be decoded to native pixels here."""
    if transfer_syntax in NATIVE_LITTLE_ENDIAN or transfer_syntax == EXPLICIT_VR_BIG_ENDIAN:
        return True
    try:
        return bool(get_decoder(UID(transfer_syntax)).is_available)
    except (NotImplementedError, ValueError):
        return False


def decoded_description(pixel: PixelDescription, transfer_syntax: str) -> PixelDescription:
    """What :func:`decode_frame` returns frames of ``pixel`` in: compressed colour comes back as
    interleaved RGB (pydicom converts YBR, JPEG 2000 undoes its colour transform)."""
    if transfer_syntax in NATIVE_LITTLE_ENDIAN or not is_encapsulated(transfer_syntax):
        return pixel
    photometric = pixel.photometric_interpretation
    if pixel.samples_per_pixel == 3 and photometric.startswith("YBR"):
        photometric = "RGB"
    return replace(pixel, photometric_interpretation=photometric, planar_configuration=0)


def can_encode(target: str, pixel: PixelDescription | None) -> bool:
    """Whether decoded frames described by ``pixel`` can be encoded in ``target`` here."""
    if target in NATIVE_LITTLE_ENDIAN:
        return True
    if target not in ENCODABLE:
        return False
    if pixel is None:
        return True  # no pixel data: the syntax only changes the label (see transcode_instance)
    if pixel.samples_per_pixel not in (1, 3) or pixel.bits_allocated not in (8, 16, 32):
        return False
    if pixel.bits_allocated == 32:
        # PS3.5 G.2: RLE takes 32-bit samples (4 segments each), encoded by pylibjpeg-rle (pydicom's
        # own RLE encoder stops at 16 bits); the JPEG family does not. Monochrome only here.
        return target == RLE_LOSSLESS and pixel.samples_per_pixel == 1 and _has_rle32()
    photometric = pixel.photometric_interpretation
    if pixel.samples_per_pixel == 3 and photometric not in _COLOUR:
        return False  # e.g. YBR_FULL_422 native data: not what the encoders take
    if target == JPEG_BASELINE_8BIT:
        return (
            pixel.bits_allocated == 8
            and pixel.bits_stored == 8
            and pixel.pixel_representation == 0
            and photometric in ("MONOCHROME1", "MONOCHROME2", "RGB")
        )
    if target == RLE_LOSSLESS:
        return True
    if target in htj2k.HTJ2K_SYNTAXES:
        return htj2k.can_encode(pixel.samples_per_pixel, pixel.bits_allocated)
    if target == JPEG_2000_LOSSLESS and min(pixel.rows, pixel.columns) < J2K_MIN_SIDE:
        return False
    try:
        return bool(get_encoder(UID(target)).is_available)
    except (NotImplementedError, ValueError):
        return False


def encodable_syntaxes(pixel: PixelDescription | None, stored: str) -> frozenset[str]:
    """The compressed syntaxes frames of an instance stored in ``stored`` can be sent in."""
    if pixel is not None and not can_decode(stored):
        return frozenset()
    decoded = None if pixel is None else decoded_description(pixel, stored)
    return frozenset(ts for ts in ENCODABLE if can_encode(ts, decoded))


def frame_array(native: bytes, pixel: PixelDescription) -> np.ndarray:
    """Native little-endian frame bytes as (rows, columns[, samples]), samples interleaved."""
    kinds = {(8, 0): "u1", (8, 1): "i1", (16, 0): "<u2", (16, 1): "<i2", (32, 0): "<u4", (32, 1): "<i4"}
    dtype = np.dtype(kinds[(pixel.bits_allocated, pixel.pixel_representation)])
    count = pixel.rows * pixel.columns * pixel.samples_per_pixel
    arr = np.frombuffer(native, dtype=dtype, count=count)
    unused = pixel.bits_allocated - pixel.bits_stored
    if 0 < unused < pixel.bits_allocated:
        # Bits above High Bit are not pixel data (PS3.5 8.1.1): the encoders refuse values that
        # use them, and decoders never return them. Sign-extend or mask them away.
        arr = (arr << unused) >> unused if pixel.pixel_representation else arr & ((1 << pixel.bits_stored) - 1)
    if pixel.samples_per_pixel == 1:
        return arr.reshape(pixel.rows, pixel.columns)
    if pixel.planar_configuration == 1:
        return arr.reshape(3, pixel.rows, pixel.columns).transpose(1, 2, 0)
    return arr.reshape(pixel.rows, pixel.columns, 3)


def _jpeg_baseline(arr: np.ndarray, quality: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    if arr.ndim == 3:
        # 4:2:2 chroma subsampling: PhotometricInterpretation YBR_FULL_422 (PS3.5 8.2.1).
        Image.fromarray(np.ascontiguousarray(arr), "RGB").save(buf, "JPEG", quality=quality, subsampling=1)
    else:
        Image.fromarray(np.ascontiguousarray(arr), "L").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def encode_frame(native: bytes, pixel: PixelDescription, target: str, *, quality: int = DEFAULT_JPEG_QUALITY) -> bytes:
    """One decoded frame (native little-endian bytes described by ``pixel``, e.g. from
    :func:`decode_frame` with :func:`decoded_description`) encoded as ``target``'s bitstream."""
    if target in NATIVE_LITTLE_ENDIAN:
        return native
    if not can_encode(target, pixel):
        raise NotAcceptable(f"frames of this instance cannot be encoded in transfer syntax {target}")
    arr = frame_array(native, pixel)
    if target == JPEG_BASELINE_8BIT:
        return _jpeg_baseline(arr, quality)
    if target == RLE_LOSSLESS and pixel.bits_allocated == 32:
        return _rle32(arr)
    if target in htj2k.HTJ2K_SYNTAXES:
        return _htj2k_frame(arr, pixel, target)
    options = _one_frame(pixel, planar_configuration=0)  # frame_array interleaves the samples
    if target == JPEG_2000_LOSSLESS and pixel.samples_per_pixel == 3:
        # No reversible colour transform: the codestream decodes to the RGB it was given.
        options["use_mct"] = False
    try:
        encoder = get_encoder(UID(target))
        with _one_encoder_at_a_time(target):
            return bytes(encoder.encode(arr, encoding_plugin=_plugin(target), **options))
    except Exception as exc:  # codec errors (e.g. values outside Bits Stored)
        raise NotAcceptable(_encoder_refusal(target, pixel, exc)) from exc


def _htj2k_frame(arr: np.ndarray, pixel: PixelDescription, target: str) -> bytes:
    try:
        return htj2k.encode(arr, target, bits_stored=pixel.bits_stored)
    except Exception as exc:  # OpenJPH's errors (imagecodecs.Htj2kError), or a codestream refused
        raise NotAcceptable(_encoder_refusal(target, pixel, exc)) from exc


def _encoder_refusal(target: str, pixel: PixelDescription, exc: Exception) -> str:
    """A 406 reason in DICOM terms for a codec that refused a frame, not the library's text."""
    size = f"{pixel.columns}x{pixel.rows}"
    if target == JPEG_LS_LOSSLESS and "too small" in str(exc):
        # pyjpegls gives CharLS an output buffer of twice the frame's size: the codestream's
        # headers alone do not fit that for tiny frames (a 3x3 image), nor for small noisy ones.
        return (
            f"this {size} frame cannot be encoded in JPEG-LS Lossless ({target}) here: the encoder's output buffer"
            " is too small for its codestream, which happens with very small frames; ask for Explicit VR Little"
            f" Endian ({EXPLICIT_VR_LITTLE_ENDIAN}) or RLE Lossless ({RLE_LOSSLESS})"
        )
    cause = str(exc).strip().splitlines()[-1].strip() if str(exc).strip() else type(exc).__name__
    return f"this {size} frame cannot be encoded in transfer syntax {target}: {cause[:200]}"


def _has_rle32() -> bool:
    try:
        import rle.utils  # noqa: F401  (pylibjpeg-rle)
    except ImportError:
        return False
    return True


def _rle32(arr: np.ndarray) -> bytes:
    """One monochrome 32-bit frame as an RLE Lossless bitstream: a header and four byte-plane
    segments, most significant first (PS3.5 G.2, G.5)."""
    from rle.utils import encode_pixel_data

    rows, columns = arr.shape
    data = np.ascontiguousarray(arr.astype(arr.dtype.newbyteorder("<"))).tobytes()
    encoded: bytes = encode_pixel_data(
        data, rows=rows, columns=columns, samples_per_pixel=1, bits_allocated=32, byteorder="<"
    )
    return encoded


# pylibjpeg-openjpeg's encoder (2.6) crashes the process when two threads encode at once (seen
# with two STOW parts compressed to JPEG 2000 on ingest: the process died mid-encode, after the
# encoder's progress messages): its encodes run one at a time.
_OPENJPEG_ENCODE = threading.Lock()


def _one_encoder_at_a_time(target: str) -> contextlib.AbstractContextManager[object]:
    return _OPENJPEG_ENCODE if target == JPEG_2000_LOSSLESS else contextlib.nullcontext()


def _plugin(target: str) -> str:
    if target == RLE_LOSSLESS:
        # pylibjpeg-rle is ~30x faster than pydicom's pure-Python RLE encoder.
        return "pylibjpeg" if "pylibjpeg" in get_encoder(UID(RLE_LOSSLESS)).available_plugins else "pydicom"
    return ""


def transcode_instance(
    source: Path | bytes, target: str, *, quality: int = DEFAULT_JPEG_QUALITY, record_original: bool = False
) -> bytes:
    """The Part 10 instance in transfer syntax ``target`` (uncompressed or one of :data:`ENCODABLE`).

    Every frame is decoded and re-encoded; the data set is unchanged except where the new
    encoding requires it (Photometric Interpretation, Lossy Image Compression for the lossy
    targets). An instance without Pixel Data only changes its label (its data set is Explicit
    VR Little Endian in every compressed syntax). ``record_original``: note the source's syntax
    in the File Meta Information (gateway.dicom.original_syntax; storage compression does).
    """
    if target in (EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN):
        return instance_to_uncompressed(source, target)
    if target not in ENCODABLE:
        raise NotAcceptable(f"transcoding to transfer syntax {target} is not supported")
    fp = io.BytesIO(source) if isinstance(source, bytes) else source
    ds = pydicom.dcmread(fp)
    stored = str(ds.file_meta.TransferSyntaxUID)
    if stored == target:
        return source if isinstance(source, bytes) else Path(source).read_bytes()
    try:
        if ds.file_meta.TransferSyntaxUID == EXPLICIT_VR_BIG_ENDIAN:
            _to_little_endian(ds)
        if "PixelData" in ds:
            if ds.file_meta.TransferSyntaxUID.is_compressed:
                ds.decompress(as_rgb=True, generate_instance_uid=False)
            if target == JPEG_BASELINE_8BIT:
                _compress_jpeg_baseline(ds, quality)
            elif target in htj2k.HTJ2K_SYNTAXES:
                _compress_htj2k(ds, target)
            else:
                _compress(ds, target)
    except NotAcceptable:
        raise
    except Exception as exc:  # pydicom raises a variety of codec errors
        raise NotAcceptable(f"instance cannot be transcoded from {stored} to {target}: {exc}") from exc
    ds.file_meta.TransferSyntaxUID = UID(target)
    if record_original:
        original_syntax.record(ds.file_meta, stored)
    else:
        original_syntax.forget(ds.file_meta)
    return _encoded(ds, implicit_vr=False)


def description_of(ds: pydicom.Dataset) -> PixelDescription:
    return PixelDescription(
        rows=int(ds.Rows),
        columns=int(ds.Columns),
        samples_per_pixel=int(ds.get("SamplesPerPixel", 1)),
        bits_allocated=int(ds.BitsAllocated),
        bits_stored=int(ds.get("BitsStored", ds.BitsAllocated)),
        pixel_representation=int(ds.get("PixelRepresentation", 0)),
        photometric_interpretation=str(ds.get("PhotometricInterpretation", "MONOCHROME2")),
        planar_configuration=int(ds.get("PlanarConfiguration", 0) or 0),
        number_of_frames=int(ds.get("NumberOfFrames", 1) or 1),
    )


def _compress(ds: pydicom.Dataset, target: str) -> None:
    pixel = description_of(ds)
    if not can_encode(target, pixel):
        raise NotAcceptable(f"the pixel data cannot be encoded in transfer syntax {target}")
    options: dict[str, Any] = {}
    if target == JPEG_2000_LOSSLESS and pixel.samples_per_pixel == 3:
        options["use_mct"] = False  # keeps Photometric Interpretation RGB
    size = pixel.rows * pixel.columns * pixel.samples_per_pixel * pixel.bits_allocated // 8
    data: bytes = ds.PixelData
    frames = [frame_array(data[i * size : (i + 1) * size], pixel) for i in range(pixel.number_of_frames)]
    if target == RLE_LOSSLESS and pixel.bits_allocated == 32:
        ds.PixelData = encapsulate([_rle32(frame) for frame in frames])
        ds["PixelData"].VR = "OB"
        return
    arr = frames[0] if pixel.number_of_frames == 1 else np.stack(frames)
    with _one_encoder_at_a_time(target):
        ds.compress(target, arr, encoding_plugin=_plugin(target), generate_instance_uid=False, **options)


def _compress_jpeg_baseline(ds: pydicom.Dataset, quality: int) -> None:
    pixel = description_of(ds)
    if not can_encode(JPEG_BASELINE_8BIT, pixel):
        raise NotAcceptable("JPEG Baseline needs 8-bit unsigned monochrome or RGB pixel data")
    size = pixel.rows * pixel.columns * pixel.samples_per_pixel
    data: bytes = ds.PixelData
    frames = [
        _jpeg_baseline(frame_array(data[i * size : (i + 1) * size], pixel), quality)
        for i in range(pixel.number_of_frames)
    ]
    ds.PixelData = encapsulate(frames)
    ds["PixelData"].VR = "OB"
    if pixel.samples_per_pixel == 3:
        ds.PhotometricInterpretation = "YBR_FULL_422"
        ds.PlanarConfiguration = 0
    _mark_lossy(ds, len(data), frames, "ISO_10918_1")


def _compress_htj2k(ds: pydicom.Dataset, target: str) -> None:
    """Pixel Data (native, as decompressed) re-encoded frame by frame as HTJ2K, encapsulated with
    a Basic Offset Table (PS3.5 A.4) so a reader finds each frame without scanning fragments."""
    pixel = description_of(ds)
    if not can_encode(target, pixel):
        raise NotAcceptable(f"the pixel data cannot be encoded in transfer syntax {target}")
    size = pixel.rows * pixel.columns * pixel.samples_per_pixel * pixel.bits_allocated // 8
    data: bytes = ds.PixelData
    frames = [
        _htj2k_frame(frame_array(data[i * size : (i + 1) * size], pixel), pixel, target)
        for i in range(pixel.number_of_frames)
    ]
    ds.PixelData = encapsulate(frames, has_bot=True)
    ds["PixelData"].VR = "OB"
    if pixel.samples_per_pixel == 3:
        ds.PlanarConfiguration = 0  # frame_array interleaved the samples; no colour transform
    if target not in htj2k.LOSSLESS_HTJ2K:
        _mark_lossy(ds, len(data), frames, "ISO_15444_15")


def _mark_lossy(ds: pydicom.Dataset, native_bytes: int, frames: list[bytes], method: str) -> None:
    """PS3.3 C.7.6.1.1.5: the image has now been lossy compressed, how much, and with what."""
    ratio = native_bytes / max(1, sum(len(f) for f in frames))
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionRatio = [*_as_list(ds.get("LossyImageCompressionRatio")), f"{ratio:.2f}"[:16]]
    ds.LossyImageCompressionMethod = [*_as_list(ds.get("LossyImageCompressionMethod")), method]


def _as_list(value: Any) -> list[Any]:
    if value is None or value == "":
        return []
    if isinstance(value, str | int | float):
        return [value]
    return list(value)
