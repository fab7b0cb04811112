"""Rendering one frame for people: the grayscale and colour pipelines, then JPEG or PNG.

The Retrieve Rendered and Thumbnail transactions (PS3.18 8.3.5, 10.4.1.1.3) return consumer
images. What a frame goes through, in the order of PS3.4 N.2 (Figure N.2-1):

* stored values: sign-extended or masked to Bits Stored;
* monochrome: the Modality LUT (Rescale Slope / Intercept, PS3.3 C.11.1), then the VOI LUT
  (PS3.3 C.11.2): the ``window`` the request names, else the first Window Center / Width of
  the instance with its VOI LUT Function (LINEAR, LINEAR_EXACT, SIGMOID; C.11.2.1.2-3), else a
  VOI LUT Sequence, else the frame's own value range; MONOCHROME1 is inverted after the VOI
  (its Presentation LUT is INVERSE); Enhanced multi-frame instances carry rescale and window
  per frame in their functional groups (C.7.6.16.2.9-10), which win;
* PALETTE COLOR: through the Red/Green/Blue Palette Color LUTs (C.7.6.3.1.5-6);
* RGB as is; YBR_FULL converted to RGB (C.7.6.3.1.2); 16-bit colour scaled to 8 bits;
* the ``viewport`` (PS3.18 8.3.5.1.3): an optional source region ``sx,sy,sw,sh``, then scaled
  to fit ``vw`` x ``vh`` keeping the aspect ratio (never enlarged past the viewport).

Pure: numpy and Pillow, no I/O. Attributes come from the instance's DICOM JSON metadata
(:func:`attributes_from_json`); LUT data the metadata has as BulkDataURIs are fetched by the
caller (:func:`bulk_paths`) and passed in.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from gateway.dicom.records import PixelDescription
from gateway.errors import BadRequest, NotAcceptable

IMAGE_JPEG = "image/jpeg"
IMAGE_PNG = "image/png"
RENDERED_MEDIA_TYPES = (IMAGE_JPEG, IMAGE_PNG)
DEFAULT_QUALITY = 90
MAX_VIEWPORT = 8192  # pixels per side: a larger viewport is a request for an absurd image
VOI_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")

# Tags (DICOM JSON keys) the pipeline reads.
_RESCALE_INTERCEPT = "00281052"
_RESCALE_SLOPE = "00281053"
_WINDOW_CENTER = "00281050"
_WINDOW_WIDTH = "00281051"
_VOI_LUT_FUNCTION = "00281056"
_VOI_LUT_SEQUENCE = "00283010"
_LUT_DESCRIPTOR = "00283002"
_LUT_DATA = "00283006"
_PALETTE_DESCRIPTORS = ("00281101", "00281102", "00281103")
_PALETTE_DATA = ("00281201", "00281202", "00281203")
_SEGMENTED_PALETTE = "00281221"
_SHARED_GROUPS = "52009229"
_PER_FRAME_GROUPS = "52009230"
_PIXEL_VALUE_TRANSFORMATION = "00289145"
_FRAME_VOI_LUT = "00289132"


@dataclass(frozen=True)
class Window:
    """A VOI window (PS3.3 C.11.2.1.2): center, width and function."""

    center: float
    width: float
    function: str = "LINEAR"


@dataclass(frozen=True)
class Viewport:
    """``vw,vh`` and an optional source region ``sx,sy,sw,sh`` (PS3.18 8.3.5.1.3)."""

    width: int
    height: int
    region: tuple[int, int, int, int] | None = None


@dataclass(frozen=True)
class RenderOptions:
    media_type: str = IMAGE_JPEG
    quality: int = DEFAULT_QUALITY
    viewport: Viewport | None = None
    window: Window | None = None

    def key(self) -> tuple[Any, ...]:
        """A hashable summary, for caches."""
        return (self.media_type, self.quality, self.viewport, self.window)


@dataclass(frozen=True)
class Lut:
    """A lookup table: ``first`` is the first stored value mapped, ``bits`` the entries' depth."""

    first: int
    bits: int
    data: np.ndarray  # entries, as uint16 (or uint8)


@dataclass(frozen=True)
class RenderAttributes:
    """What the pipeline needs beyond the pixel description, for one frame."""

    slope: float = 1.0
    intercept: float = 0.0
    window: Window | None = None
    voi_lut: Lut | None = None
    palette: tuple[Lut, Lut, Lut] | None = None


# --- request parameters -----------------------------------------------------------------------


def _numbers(text: str, what: str, count: tuple[int, ...]) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise BadRequest(f"{what}={text[:80]!r} must be comma-separated numbers") from None
    if len(values) not in count or not all(math.isfinite(v) for v in values):
        raise BadRequest(f"{what}={text[:80]!r} must have {' or '.join(map(str, count))} finite numbers")
    return values


def parse_window(text: str) -> Window:
    """``window=center,width,function`` (PS3.18 8.3.5.1.4); the function is optional."""
    pieces = text.split(",")
    function = "LINEAR"
    if len(pieces) == 3:
        function = pieces.pop().strip().upper()
        if function not in VOI_FUNCTIONS:
            raise BadRequest(f"window function {function[:20]!r} is not one of {', '.join(VOI_FUNCTIONS)}")
    center, width = _numbers(",".join(pieces), "window", (2,))
    if width <= 0 or (function == "LINEAR" and width < 1):
        raise BadRequest(f"window width {width} is too small (PS3.3 C.11.2.1.2)")
    return Window(center, width, function)


def parse_viewport(text: str) -> Viewport:
    """``viewport=vw,vh`` or ``viewport=vw,vh,sx,sy,sw,sh`` (PS3.18 8.3.5.1.3)."""
    values = _numbers(text, "viewport", (2, 6))
    vw, vh = int(values[0]), int(values[1])
    if not (0 < vw <= MAX_VIEWPORT and 0 < vh <= MAX_VIEWPORT):
        raise BadRequest(f"viewport {vw}x{vh} must be between 1 and {MAX_VIEWPORT} pixels per side")
    if len(values) == 2:
        return Viewport(vw, vh)
    sx, sy, sw, sh = (int(v) for v in values[2:])
    if sx < 0 or sy < 0 or sw <= 0 or sh <= 0:
        raise BadRequest("viewport source region must have a non-negative origin and a positive size")
    return Viewport(vw, vh, (sx, sy, sw, sh))


def parse_quality(text: str) -> int:
    """``quality=1..100`` (PS3.18 8.3.5.1.2)."""
    if not text.isdigit() or not 1 <= int(text) <= 100:
        raise BadRequest(f"quality={text[:20]!r} must be an integer from 1 to 100")
    return int(text)


# --- attributes from DICOM JSON ---------------------------------------------------------------


def _value(element: Any, index: int = 0) -> Any:
    if not isinstance(element, Mapping):
        return None
    values = element.get("Value")
    if isinstance(values, list) and len(values) > index:
        return values[index]
    return None


def _item(element: Any, index: int = 0) -> Mapping[str, Any] | None:
    value = _value(element, index)
    return value if isinstance(value, Mapping) else None


def _lut_entries(element: Any, bits: int, count: int, bulk: Mapping[str, bytes]) -> np.ndarray | None:
    """LUT Data as an array of ``count`` entries, from Value, InlineBinary or BulkDataURI."""
    if not isinstance(element, Mapping):
        return None
    raw: bytes | None = None
    if isinstance(element.get("Value"), list):
        return np.asarray(element["Value"], dtype=np.uint16)[:count]
    if isinstance(element.get("InlineBinary"), str):
        raw = base64.b64decode(element["InlineBinary"])
    elif isinstance(element.get("BulkDataURI"), str):
        raw = bulk.get(bulk_path(element["BulkDataURI"]))
    if raw is None:
        return None
    # PS3.3 C.7.6.3.1.6: entries are 16-bit words; 8-bit tables are sometimes packed two a word.
    if bits == 8 and len(raw) < 2 * count:
        return np.frombuffer(raw, dtype=np.uint8)[:count]
    words = np.frombuffer(raw[: len(raw) // 2 * 2], dtype="<u2")[:count]
    return words


def bulk_path(uri: str) -> str:
    """The tag path of a BulkDataURI the gateway handed out (``.../bulkdata/00281201``)."""
    return uri.rsplit("/bulkdata/", 1)[-1]


def _descriptor(element: Any) -> tuple[int, int, int] | None:
    values = element.get("Value") if isinstance(element, Mapping) else None
    if not isinstance(values, list) or len(values) != 3 or not all(isinstance(v, int) for v in values):
        return None
    entries, first, bits = values
    return entries or 65536, first, bits  # PS3.3 C.11.1.1: 0 entries means 2^16


def _lut(descriptor: Any, data: Any, bulk: Mapping[str, bytes], *, signed: bool) -> Lut | None:
    described = _descriptor(descriptor)
    if described is None:
        return None
    entries, first, bits = described
    if signed and first >= 1 << 15:
        first -= 1 << 16  # the first mapped value is signed when the pixel data is (US or SS)
    values = _lut_entries(data, bits, entries, bulk)
    if values is None or len(values) == 0:
        return None
    return Lut(first, bits, values)


def bulk_paths(metadata: Mapping[str, Any]) -> list[str]:
    """Tag paths of LUT data the metadata holds only as BulkDataURIs (to fetch before rendering)."""
    paths: list[str] = []
    candidates: list[Any] = [metadata.get(tag) for tag in _PALETTE_DATA]
    for item in (metadata.get(_VOI_LUT_SEQUENCE) or {}).get("Value") or []:
        if isinstance(item, Mapping):
            candidates.append(item.get(_LUT_DATA))
    for element in candidates:
        if isinstance(element, Mapping) and isinstance(element.get("BulkDataURI"), str):
            paths.append(bulk_path(element["BulkDataURI"]))
    return paths


def _groups(metadata: Mapping[str, Any], frame: int) -> list[Mapping[str, Any]]:
    """Functional group items for ``frame`` (1-based): per-frame first, then shared."""
    found: list[Mapping[str, Any]] = []
    per_frame = _item(metadata.get(_PER_FRAME_GROUPS), frame - 1)
    shared = _item(metadata.get(_SHARED_GROUPS))
    for group in (per_frame, shared):
        if group is not None:
            found.append(group)
    return found


def _window_from(dataset: Mapping[str, Any]) -> Window | None:
    center, width = _value(dataset.get(_WINDOW_CENTER)), _value(dataset.get(_WINDOW_WIDTH))
    if not isinstance(center, int | float) or not isinstance(width, int | float):
        return None
    function = str(_value(dataset.get(_VOI_LUT_FUNCTION)) or "LINEAR").upper()
    if function not in VOI_FUNCTIONS:
        function = "LINEAR"
    if width <= 0 or (function == "LINEAR" and width < 1):
        return None  # an invalid stored window: the frame's range is used instead
    return Window(float(center), float(width), function)


def attributes_from_json(
    metadata: Mapping[str, Any], pixel: PixelDescription, frame: int = 1, bulk: Mapping[str, bytes] | None = None
) -> RenderAttributes:
    """The rendering attributes of ``frame`` (1-based) from the instance's DICOM JSON."""
    bulk = bulk or {}
    slope = _value(metadata.get(_RESCALE_SLOPE))
    intercept = _value(metadata.get(_RESCALE_INTERCEPT))
    window = _window_from(metadata)
    for group in _groups(metadata, frame):
        transform = _item(group.get(_PIXEL_VALUE_TRANSFORMATION))
        if transform is not None and slope is None:
            slope = _value(transform.get(_RESCALE_SLOPE))
            intercept = _value(transform.get(_RESCALE_INTERCEPT))
        voi = _item(group.get(_FRAME_VOI_LUT))
        if voi is not None and window is None:
            window = _window_from(voi)
    voi_lut = None
    item = _item(metadata.get(_VOI_LUT_SEQUENCE))
    if item is not None:
        voi_lut = _lut(item.get(_LUT_DESCRIPTOR), item.get(_LUT_DATA), bulk, signed=False)
    palette = None
    if pixel.photometric_interpretation == "PALETTE COLOR":
        if _SEGMENTED_PALETTE in metadata:
            raise NotAcceptable("segmented palette color lookup tables are not rendered here")
        luts = [
            _lut(metadata.get(d), metadata.get(t), bulk, signed=pixel.pixel_representation == 1)
            for d, t in zip(_PALETTE_DESCRIPTORS, _PALETTE_DATA, strict=True)
        ]
        red, green, blue = luts
        if red is None or green is None or blue is None:
            raise NotAcceptable("PALETTE COLOR instance without usable palette color lookup tables")
        palette = (red, green, blue)
    return RenderAttributes(
        slope=float(slope) if isinstance(slope, int | float) and slope != 0 else 1.0,
        intercept=float(intercept) if isinstance(intercept, int | float) else 0.0,
        window=window,
        voi_lut=voi_lut,
        palette=palette,
    )


# --- the pipeline -----------------------------------------------------------------------------


def stored_values(native: bytes, pixel: PixelDescription) -> np.ndarray:
    """Native little-endian frame bytes as (rows, cols) or (rows, cols, samples), Bits Stored applied."""
    if pixel.bits_allocated not in (8, 16, 32):
        raise NotAcceptable(f"frames with Bits Allocated {pixel.bits_allocated} are not rendered here")
    signed = pixel.pixel_representation == 1
    dtype = np.dtype(f"<{'i' if signed else 'u'}{pixel.bits_allocated // 8}")
    count = pixel.rows * pixel.columns * pixel.samples_per_pixel
    if len(native) < count * dtype.itemsize:
        raise NotAcceptable("frame holds fewer bytes than its description needs")
    arr = np.frombuffer(native, dtype=dtype, count=count)
    if pixel.samples_per_pixel == 1:
        arr = arr.reshape(pixel.rows, pixel.columns)
    elif pixel.planar_configuration == 1:
        arr = arr.reshape(pixel.samples_per_pixel, pixel.rows, pixel.columns).transpose(1, 2, 0)
    else:
        arr = arr.reshape(pixel.rows, pixel.columns, pixel.samples_per_pixel)
    unused = pixel.bits_allocated - pixel.bits_stored
    if 0 < unused < pixel.bits_allocated:
        # Bits above High Bit may hold anything (overlays, garbage): sign-extend or mask them.
        mask = np.array((1 << pixel.bits_stored) - 1, dtype=dtype)
        arr = (arr << unused) >> unused if signed else arr & mask
    return arr


def apply_window(values: np.ndarray, window: Window) -> np.ndarray:
    """PS3.3 C.11.2.1.2 (LINEAR, LINEAR_EXACT) and C.11.2.1.3.1 (SIGMOID), output 0..255."""
    c, w = window.center, window.width
    x = values.astype(np.float32, copy=False)  # 8-bit output: single precision is plenty
    if window.function == "SIGMOID":
        out = 255.0 / (1.0 + np.exp(-4.0 * (x - c) / w))
    elif window.function == "LINEAR_EXACT":
        out = np.clip((x - c) / w + 0.5, 0.0, 1.0) * 255.0
    else:  # LINEAR: the window [c - 0.5 - (w-1)/2, c - 0.5 + (w-1)/2]
        if w <= 1:
            out = np.where(x <= c - 0.5, 0.0, 255.0)
        else:
            out = np.clip((x - (c - 0.5)) / (w - 1) + 0.5, 0.0, 1.0) * 255.0
    result: np.ndarray = np.rint(out).astype(np.uint8)
    return result


def _apply_lut(values: np.ndarray, lut: Lut) -> np.ndarray:
    index = np.clip(np.rint(values).astype(np.int64) - lut.first, 0, len(lut.data) - 1)
    out: np.ndarray = lut.data[index]
    return out


def _to_8bit(entries: np.ndarray, bits: int) -> np.ndarray:
    top = int(entries.max()) if entries.size else 0
    depth = bits if bits in (8, 16) else max(8, top.bit_length())
    if depth > 8 and top < 256 and bits != 16:
        depth = 8
    scaled = entries.astype(np.float64) * (255.0 / ((1 << depth) - 1))
    return np.rint(np.clip(scaled, 0, 255)).astype(np.uint8)


def _grayscale(
    stored: np.ndarray, pixel: PixelDescription, attrs: RenderAttributes, window: Window | None
) -> np.ndarray:
    modality = stored.astype(np.float32) * np.float32(attrs.slope) + np.float32(attrs.intercept)
    if window is None:
        window = attrs.window
    if window is not None:
        out = apply_window(modality, window)
    elif attrs.voi_lut is not None:
        out = _to_8bit(_apply_lut(modality, attrs.voi_lut), attrs.voi_lut.bits)
    else:
        low, high = float(modality.min()), float(modality.max())
        width = max(high - low, 1.0)
        out = apply_window(modality, Window(low + width / 2, width, "LINEAR_EXACT"))
    if pixel.photometric_interpretation == "MONOCHROME1":
        out = 255 - out  # PS3.3 C.7.6.3.1.2: minimum is white
    return out


def _ybr_full_to_rgb(arr: np.ndarray) -> np.ndarray:
    """PS3.3 C.7.6.3.1.2 YBR_FULL (8-bit) to RGB."""
    y, cb, cr = (arr[..., i].astype(np.float64) for i in range(3))
    r = y + 1.402 * (cr - 128)
    g = y - 0.344136 * (cb - 128) - 0.714136 * (cr - 128)
    b = y + 1.772 * (cb - 128)
    return np.rint(np.clip(np.stack([r, g, b], axis=-1), 0, 255)).astype(np.uint8)


def render_frame(
    native: bytes, pixel: PixelDescription, attrs: RenderAttributes, window: Window | None = None
) -> np.ndarray:
    """One decoded frame as 8-bit (rows, cols) grayscale or (rows, cols, 3) RGB."""
    photometric = pixel.photometric_interpretation
    stored = stored_values(native, pixel)
    if pixel.samples_per_pixel == 1 and photometric in ("MONOCHROME1", "MONOCHROME2"):
        return _grayscale(stored, pixel, attrs, window)
    if photometric == "PALETTE COLOR" and attrs.palette is not None:
        channels = [_to_8bit(_apply_lut(stored.astype(np.int64), lut), lut.bits) for lut in attrs.palette]
        return np.stack(channels, axis=-1)
    if pixel.samples_per_pixel == 3 and photometric in ("RGB", "YBR_FULL"):
        rgb = stored
        if pixel.bits_stored > 8:
            rgb = (stored.astype(np.uint32) >> (pixel.bits_stored - 8)).astype(np.uint8)
        rgb = rgb.astype(np.uint8, copy=False)
        return _ybr_full_to_rgb(rgb) if photometric == "YBR_FULL" else rgb
    raise NotAcceptable(f"Photometric Interpretation {photometric} is not rendered here")


def fit(image: np.ndarray, viewport: Viewport | None) -> np.ndarray:
    """Crop to the viewport's source region, then scale to fit it (aspect ratio kept)."""
    if viewport is None:
        return image
    from PIL import Image

    if viewport.region is not None:
        sx, sy, sw, sh = viewport.region
        image = image[sy : sy + sh, sx : sx + sw]
        if image.size == 0:
            raise BadRequest("viewport source region lies outside the image")
    rows, cols = image.shape[:2]
    scale = min(viewport.width / cols, viewport.height / rows)
    width, height = max(1, round(cols * scale)), max(1, round(rows * scale))
    if (width, height) == (cols, rows):
        return image
    mode = "RGB" if image.ndim == 3 else "L"
    picture = Image.fromarray(np.ascontiguousarray(image), mode)
    # reducing_gap: a cheap box reduction first, Lanczos for the last factor (thumbnails).
    resized = picture.resize((width, height), Image.Resampling.LANCZOS, reducing_gap=2.0)
    return np.asarray(resized)


def encode_image(image: np.ndarray, media_type: str, quality: int = DEFAULT_QUALITY) -> bytes:
    """An 8-bit grayscale or RGB image as JPEG (baseline, ``quality``) or PNG."""
    from PIL import Image

    mode = "RGB" if image.ndim == 3 else "L"
    buf = io.BytesIO()
    picture = Image.fromarray(np.ascontiguousarray(image), mode)
    if media_type == IMAGE_PNG:
        picture.save(buf, "PNG", compress_level=6)
    elif media_type == IMAGE_JPEG:
        picture.save(buf, "JPEG", quality=quality)
    else:
        raise NotAcceptable(f"cannot render as {media_type}")
    return buf.getvalue()


def render(native: bytes, pixel: PixelDescription, attrs: RenderAttributes, options: RenderOptions) -> bytes:
    """The whole pipeline for one frame: pixels, VOI, viewport, encoded as ``options.media_type``."""
    image = render_frame(native, pixel, attrs, options.window)
    return encode_image(fit(image, options.viewport), options.media_type, options.quality)
