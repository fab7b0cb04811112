"""Video test instances: a short clip made by ``ffmpeg`` (Debian's package; scripts/test.sh
installs it) wrapped with pydicom as a Video Photographic Image (PS3.3 A.32.7), its bitstream
encapsulated in several fragments with an empty Basic Offset Table (PS3.5 8.2.5 for MPEG-2,
8.2.8 for MPEG-4 AVC/H.264, 8.2.12 for HEVC/H.265: the stream is not split into frames)."""

from __future__ import annotations

import functools
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pydicom.encaps import encapsulate

from tests import factory

VIDEO_PHOTOGRAPHIC_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.77.1.4.1"
MPEG2_MPML = "1.2.840.10008.1.2.4.100"
MPEG2_MPHL = "1.2.840.10008.1.2.4.101"
MPEG4_HP41 = "1.2.840.10008.1.2.4.102"
MPEG4_HP42_2D = "1.2.840.10008.1.2.4.104"
HEVC_MP51 = "1.2.840.10008.1.2.4.107"
HEVC_M10P51 = "1.2.840.10008.1.2.4.108"
ROWS, COLUMNS, FRAMES, FPS = 120, 160, 50, 25


@dataclass(frozen=True)
class Codec:
    arguments: tuple[str, ...]
    suffix: str


# The ffmpeg encoder for each family: H.264 and HEVC in an MP4 container (moov first, so a
# browser can start playing from the first bytes), MPEG-2 as an MPEG program stream.
_H264 = Codec(("-c:v", "libx264", "-profile:v", "high", "-pix_fmt", "yuv420p", "-movflags", "+faststart"), "mp4")
_HEVC = Codec(("-c:v", "libx265", "-x265-params", "log-level=error", "-tag:v", "hvc1", *_H264.arguments[4:]), "mp4")
_MPEG2 = Codec(("-c:v", "mpeg2video", "-f", "mpeg"), "mpg")
CODECS = {
    MPEG2_MPML: _MPEG2,
    MPEG2_MPHL: _MPEG2,
    MPEG4_HP41: _H264,
    MPEG4_HP42_2D: _H264,
    HEVC_MP51: _HEVC,
    HEVC_M10P51: _HEVC,
}


def have_ffmpeg() -> bool:
    return shutil.which("ffmpeg") is not None


@functools.cache
def clip(transfer_syntax: str) -> bytes:
    """A two-second 160×120 test pattern encoded as ``transfer_syntax``'s family wants it."""
    codec = CODECS[transfer_syntax]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / f"clip.{codec.suffix}"
        source = ("-f", "lavfi", "-i", f"testsrc=size={COLUMNS}x{ROWS}:rate={FPS}", "-t", str(FRAMES / FPS))
        subprocess.run(["ffmpeg", "-v", "error", "-y", *source, *codec.arguments, str(out)], check=True, timeout=120)
        return out.read_bytes()


def video_instance(transfer_syntax: str, *, seed: int = 0, fragments: int = 3, **identity: object) -> bytes:
    """A Video Photographic Image whose Pixel Data is :func:`clip` in ``fragments`` fragments."""
    identity.setdefault("modality", "XC")
    identity.setdefault("series_description", "VIDEO")
    ds = factory.base_dataset(sop_class=VIDEO_PHOTOGRAPHIC_IMAGE_STORAGE, seed=seed, **identity)
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "YBR_PARTIAL_420"
    ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = ROWS, COLUMNS
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.NumberOfFrames = FRAMES
    ds.FrameTime = 1000 / FPS
    ds.CineRate = FPS
    ds.FrameIncrementPointer = 0x00181063  # Frame Time
    ds.LossyImageCompression = "01"
    ds.PixelData = encapsulate([clip(transfer_syntax)], fragments_per_frame=fragments)
    ds["PixelData"].VR = "OB"
    return factory.to_part10_bytes(ds, transfer_syntax)
