"""Where each frame of the pixel data lies in the stored file: byte spans, one ranged read a frame.

Native pixel data (PS3.5 8) holds its frames back to back; encapsulated pixel data (PS3.5 A.4)
holds them in fragments, grouped into frames by the Extended Offset Table (PS3.3 C.7.6.3.1.8),
else the Basic Offset Table, else by counting fragments or finding each frame's end marker.

Video transfer syntaxes (PS3.5 A.4: the stream is not divided into frames) and encapsulated data
whose frame boundaries cannot be found have no spans (``()``): a frame is then decoded from the
whole object.
"""

from __future__ import annotations

import itertools
import logging
import struct

from pydicom.uid import UID, MPEGTransferSyntaxes

from gateway.dicom.layout import EXTENDED_LENGTHS, EXTENDED_OFFSETS, PIXEL_DATA, Located, Walker
from gateway.dicom.records import PixelDescription, Span
from gateway.dicom.rejection import FailureReason, malformed, reject

log = logging.getLogger(__name__)

_VIDEO_SYNTAXES = frozenset(str(u) for u in MPEGTransferSyntaxes)


def frame_spans(
    walker: Walker, found: dict[int, Located], pixel_tag: int, pixel: PixelDescription, ts: UID
) -> tuple[tuple[Span, ...], ...]:
    """The spans of each frame of the pixel data ``found[pixel_tag]``, checked against ``ts``."""
    located = found[pixel_tag]
    encapsulated = located.fragments is not None
    if ts.is_encapsulated and pixel_tag == PIXEL_DATA and not encapsulated:
        raise malformed(f"native Pixel Data in the compressed transfer syntax {ts}")
    if encapsulated and not ts.is_encapsulated:
        raise malformed(f"encapsulated Pixel Data in the native transfer syntax {ts}")
    if not encapsulated:
        return _native_frames(located, pixel)
    assert located.fragments is not None
    if not located.fragments:
        raise malformed("encapsulated Pixel Data without a Basic Offset Table item (PS3.5 A.4)")
    if len(located.fragments) == 1:
        raise malformed("encapsulated Pixel Data without fragments (PS3.5 A.4)")
    if str(ts) in _VIDEO_SYNTAXES:
        return ()
    frames = _encapsulated_frames(walker, found, located.fragments, pixel.number_of_frames)
    if frames is None:
        log.warning("frame boundaries of encapsulated pixel data not found; frames served from the whole object")
        return ()
    return frames


def _native_frames(located: Located, pixel: PixelDescription) -> tuple[tuple[Span, ...], ...]:
    samples = pixel.samples_per_pixel
    if pixel.photometric_interpretation == "YBR_FULL_422":
        samples = 2  # PS3.3 C.7.6.3.1.2: Cb and Cr at half the horizontal rate, 2 samples/pixel
    frame_bits = pixel.rows * pixel.columns * samples * pixel.bits_allocated
    n = pixel.number_of_frames
    needed = (n * frame_bits + 7) // 8
    if located.length < needed:
        raise reject(
            FailureReason.DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
            f"Pixel Data holds {located.length} bytes, fewer than the {needed} its description needs",
        )
    base = located.value_pos
    if frame_bits % 8 == 0:
        size = frame_bits // 8
        return tuple(((base + i * size, size),) for i in range(n))
    # PS3.5 8.1.1: with Bits Allocated 1, frames are packed back to back without byte alignment;
    # a frame's span covers every byte holding one of its bits (the first bit of frame i is bit
    # (i * rows * columns * samples) % 8 of the span's first byte, least significant first).
    spans = []
    for i in range(n):
        first, last = i * frame_bits, (i + 1) * frame_bits
        spans.append(((base + first // 8, (last + 7) // 8 - first // 8),))
    return tuple(spans)


def _encapsulated_frames(
    walker: Walker, found: dict[int, Located], fragments: tuple[Span, ...], n_frames: int
) -> tuple[tuple[Span, ...], ...] | None:
    bot, frags = fragments[0], fragments[1:]
    first_item = frags[0][0] - 8
    # Item start (relative to the first fragment's item tag) -> fragment index; the offset
    # tables count from there (PS3.5 A.4 and PS3.3 C.7.6.3.1.8).
    index_of = {value_pos - 8 - first_item: i for i, (value_pos, _) in enumerate(frags)}

    eot = found.get(EXTENDED_OFFSETS)
    eot_lengths = found.get(EXTENDED_LENGTHS)
    if eot is not None and eot_lengths is not None and eot.length == eot_lengths.length == 8 * n_frames:
        offsets = struct.unpack(f"<{n_frames}Q", walker.read(eot.value_pos, eot.length))
        lengths = struct.unpack(f"<{n_frames}Q", walker.read(eot_lengths.value_pos, eot_lengths.length))
        result: list[tuple[Span, ...]] = []
        for offset, length in zip(offsets, lengths, strict=True):
            i = index_of.get(offset)
            if i is None or length > frags[i][1]:
                break
            result.append(((frags[i][0], length),))
        else:
            return tuple(result)

    if bot[1] == 4 * n_frames and n_frames > 0:
        offsets = struct.unpack(f"<{n_frames}L", walker.read(bot[0], bot[1]))
        starts = [index_of.get(o) for o in offsets]
        if starts[0] == 0 and all(s is not None for s in starts):
            bounds = [s for s in starts if s is not None] + [len(frags)]
            if all(a < b for a, b in itertools.pairwise(bounds)):
                return tuple(tuple(frags[a:b]) for a, b in itertools.pairwise(bounds))

    if len(frags) == n_frames:
        return tuple((frag,) for frag in frags)
    if n_frames == 1:
        return (tuple(frags),)
    if len(frags) < n_frames:
        return None
    # No usable offset table: a frame ends with the fragment that ends with the JPEG EOI (or
    # JPEG 2000 EOC) marker FFD9, allowing for the single pad byte of an odd-length codestream
    # (PS3.5 A.4). Only each fragment's last bytes are read.
    frames: list[tuple[Span, ...]] = []
    current: list[Span] = []
    for value_pos, length in frags:
        current.append((value_pos, length))
        tail = walker.read(value_pos + max(length - 3, 0), min(length, 3))
        if tail.endswith(b"\xff\xd9") or tail[-3:-1] == b"\xff\xd9":
            frames.append(tuple(current))
            current = []
    if current or len(frames) != n_frames:
        return None
    return tuple(frames)
