"""The one media-type / transfer-syntax table (PS3.18 8.7.3, Tables 8.7.3-2, -4 and -5).

The media types DICOMweb labels data with, the transfer syntaxes with whether they are
encapsulated or lossy and the media type of their frames, the default transfer syntax of each
media type, and the lookups over them. Everything else that needs to know how DICOM data is
labelled on the wire asks here. Import it through :mod:`gateway.dicom.media`.

Pure: no I/O, no HTTP framework types.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

# --- Media types ------------------------------------------------------------------------------

APPLICATION_DICOM = "application/dicom"
APPLICATION_DICOM_JSON = "application/dicom+json"
APPLICATION_DICOM_XML = "application/dicom+xml"
APPLICATION_JSON = "application/json"
APPLICATION_OCTET_STREAM = "application/octet-stream"
MULTIPART_RELATED = "multipart/related"
IMAGE_JPEG = "image/jpeg"
IMAGE_PNG = "image/png"
IMAGE_GIF = "image/gif"
IMAGE_JLS = "image/jls"
IMAGE_JP2 = "image/jp2"
IMAGE_JPX = "image/jpx"
IMAGE_JPHC = "image/jphc"
IMAGE_JXL = "image/jxl"
IMAGE_DICOM_RLE = "image/dicom-rle"
VIDEO_MPEG = "video/mpeg"
VIDEO_MP4 = "video/mp4"
VIDEO_H265 = "video/H265"  # spelled so in PS3.18; media types compare case-insensitively

# Names older editions of PS3.18 (and Orthanc, cornerstone) used for the same encodings.
MEDIA_TYPE_ALIASES: Mapping[str, str] = MappingProxyType(
    {
        "image/x-jls": IMAGE_JLS,
        "image/x-dicom-rle": IMAGE_DICOM_RLE,
    }
)

# --- Transfer syntaxes ------------------------------------------------------------------------

AS_STORED = "*"
"""The ``transfer-syntax=*`` value: send the data in the transfer syntax it is stored in."""

IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
ENCAPSULATED_UNCOMPRESSED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.98"
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"
JPEG_BASELINE_8BIT = "1.2.840.10008.1.2.4.50"
JPEG_EXTENDED_12BIT = "1.2.840.10008.1.2.4.51"
JPEG_LOSSLESS = "1.2.840.10008.1.2.4.57"
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"
JPEG_LS_NEAR_LOSSLESS = "1.2.840.10008.1.2.4.81"
JPEG_2000_LOSSLESS = "1.2.840.10008.1.2.4.90"
JPEG_2000 = "1.2.840.10008.1.2.4.91"
JPEG_2000_MC_LOSSLESS = "1.2.840.10008.1.2.4.92"
JPEG_2000_MC = "1.2.840.10008.1.2.4.93"
MPEG2_MPML = "1.2.840.10008.1.2.4.100"
MPEG2_MPHL = "1.2.840.10008.1.2.4.101"
MPEG4_HP41 = "1.2.840.10008.1.2.4.102"
MPEG4_HP41_BD = "1.2.840.10008.1.2.4.103"
MPEG4_HP42_2D = "1.2.840.10008.1.2.4.104"
MPEG4_HP42_3D = "1.2.840.10008.1.2.4.105"
MPEG4_HP42_STEREO = "1.2.840.10008.1.2.4.106"
HEVC_MP51 = "1.2.840.10008.1.2.4.107"
HEVC_M10P51 = "1.2.840.10008.1.2.4.108"
JPEG_XL_LOSSLESS = "1.2.840.10008.1.2.4.110"
JPEG_XL_JPEG_RECOMPRESSION = "1.2.840.10008.1.2.4.111"
JPEG_XL = "1.2.840.10008.1.2.4.112"
HTJ2K_LOSSLESS = "1.2.840.10008.1.2.4.201"
HTJ2K_LOSSLESS_RPCL = "1.2.840.10008.1.2.4.202"
HTJ2K = "1.2.840.10008.1.2.4.203"
RLE_LOSSLESS = "1.2.840.10008.1.2.5"


@dataclass(frozen=True, slots=True)
class TransferSyntax:
    """One row of the table.

    ``media_type`` is the media type of one frame (or of the video stream) in this syntax, as
    PS3.18 Table 8.7.3-5 pairs them; uncompressed syntaxes have ``application/octet-stream``.
    ``lossy`` means the syntax *permits* lossy compression (e.g. JPEG 2000 .91 may be either).
    """

    uid: str
    name: str
    media_type: str
    encapsulated: bool
    lossy: bool
    big_endian: bool = False

    @property
    def native_little_endian_frames(self) -> bool:
        """Frames are raw little-endian pixels: byte-identical to Explicit VR Little Endian frames."""
        return self.media_type == APPLICATION_OCTET_STREAM and not self.big_endian


def _ts(uid: str, name: str, media_type: str, *, encapsulated: bool = True, lossy: bool = False) -> TransferSyntax:
    return TransferSyntax(uid, name, media_type, encapsulated, lossy)


TRANSFER_SYNTAXES: Mapping[str, TransferSyntax] = MappingProxyType(
    {
        ts.uid: ts
        for ts in (
            _ts(IMPLICIT_VR_LITTLE_ENDIAN, "Implicit VR Little Endian", APPLICATION_OCTET_STREAM, encapsulated=False),
            _ts(EXPLICIT_VR_LITTLE_ENDIAN, "Explicit VR Little Endian", APPLICATION_OCTET_STREAM, encapsulated=False),
            _ts(
                ENCAPSULATED_UNCOMPRESSED_EXPLICIT_VR_LITTLE_ENDIAN,
                "Encapsulated Uncompressed Explicit VR Little Endian",
                APPLICATION_OCTET_STREAM,
            ),
            _ts(
                DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
                "Deflated Explicit VR Little Endian",
                APPLICATION_OCTET_STREAM,
                encapsulated=False,
            ),
            TransferSyntax(
                EXPLICIT_VR_BIG_ENDIAN,
                "Explicit VR Big Endian",
                APPLICATION_OCTET_STREAM,
                encapsulated=False,
                lossy=False,
                big_endian=True,
            ),
            _ts(JPEG_BASELINE_8BIT, "JPEG Baseline (Process 1)", IMAGE_JPEG, lossy=True),
            _ts(JPEG_EXTENDED_12BIT, "JPEG Extended (Process 2 & 4)", IMAGE_JPEG, lossy=True),
            _ts(JPEG_LOSSLESS, "JPEG Lossless, Non-Hierarchical (Process 14)", IMAGE_JPEG),
            _ts(JPEG_LOSSLESS_SV1, "JPEG Lossless, Non-Hierarchical, First-Order Prediction", IMAGE_JPEG),
            _ts(JPEG_LS_LOSSLESS, "JPEG-LS Lossless", IMAGE_JLS),
            _ts(JPEG_LS_NEAR_LOSSLESS, "JPEG-LS Lossy (Near-Lossless)", IMAGE_JLS, lossy=True),
            _ts(JPEG_2000_LOSSLESS, "JPEG 2000 (Lossless Only)", IMAGE_JP2),
            _ts(JPEG_2000, "JPEG 2000", IMAGE_JP2, lossy=True),
            _ts(JPEG_2000_MC_LOSSLESS, "JPEG 2000 Part 2 Multi-component (Lossless Only)", IMAGE_JPX),
            _ts(JPEG_2000_MC, "JPEG 2000 Part 2 Multi-component", IMAGE_JPX, lossy=True),
            _ts(MPEG2_MPML, "MPEG2 Main Profile / Main Level", VIDEO_MPEG, lossy=True),
            _ts(MPEG2_MPHL, "MPEG2 Main Profile / High Level", VIDEO_MPEG, lossy=True),
            _ts(MPEG4_HP41, "MPEG-4 AVC/H.264 High Profile / Level 4.1", VIDEO_MP4, lossy=True),
            _ts(MPEG4_HP41_BD, "MPEG-4 AVC/H.264 BD-compatible High Profile / Level 4.1", VIDEO_MP4, lossy=True),
            _ts(MPEG4_HP42_2D, "MPEG-4 AVC/H.264 High Profile / Level 4.2 For 2D Video", VIDEO_MP4, lossy=True),
            _ts(MPEG4_HP42_3D, "MPEG-4 AVC/H.264 High Profile / Level 4.2 For 3D Video", VIDEO_MP4, lossy=True),
            _ts(MPEG4_HP42_STEREO, "MPEG-4 AVC/H.264 Stereo High Profile / Level 4.2", VIDEO_MP4, lossy=True),
            _ts(HEVC_MP51, "HEVC/H.265 Main Profile / Level 5.1", VIDEO_H265, lossy=True),
            _ts(HEVC_M10P51, "HEVC/H.265 Main 10 Profile / Level 5.1", VIDEO_H265, lossy=True),
            _ts(JPEG_XL_LOSSLESS, "JPEG XL Lossless", IMAGE_JXL),
            # Reproduces a (lossy) JPEG bit-exactly, so the pixels are as lossy as that JPEG was.
            _ts(JPEG_XL_JPEG_RECOMPRESSION, "JPEG XL JPEG Recompression", IMAGE_JXL, lossy=True),
            _ts(JPEG_XL, "JPEG XL", IMAGE_JXL, lossy=True),
            _ts(HTJ2K_LOSSLESS, "High-Throughput JPEG 2000 (Lossless Only)", IMAGE_JPHC),
            _ts(HTJ2K_LOSSLESS_RPCL, "High-Throughput JPEG 2000 with RPCL Options (Lossless Only)", IMAGE_JPHC),
            _ts(HTJ2K, "High-Throughput JPEG 2000", IMAGE_JPHC, lossy=True),
            _ts(RLE_LOSSLESS, "RLE Lossless", IMAGE_DICOM_RLE),
        )
    }
)

# PS3.18 Table 8.7.3-4 (uncompressed) and Table 8.7.3-5 (compressed): the transfer syntax a
# media type means when the request names none (the "D" rows). Keys are lower case.
DEFAULT_TRANSFER_SYNTAX: Mapping[str, str] = MappingProxyType(
    {
        APPLICATION_OCTET_STREAM: EXPLICIT_VR_LITTLE_ENDIAN,
        APPLICATION_DICOM: EXPLICIT_VR_LITTLE_ENDIAN,  # PS3.18 Table 8.7.3-2
        IMAGE_JPEG: JPEG_LOSSLESS_SV1,
        IMAGE_DICOM_RLE: RLE_LOSSLESS,
        IMAGE_JLS: JPEG_LS_LOSSLESS,
        IMAGE_JP2: JPEG_2000_LOSSLESS,
        IMAGE_JPX: JPEG_2000_MC_LOSSLESS,
        IMAGE_JPHC: HTJ2K_LOSSLESS,
        IMAGE_JXL: JPEG_XL_LOSSLESS,
        VIDEO_MPEG: MPEG2_MPML,
        VIDEO_MP4: MPEG4_HP41,
        VIDEO_H265.lower(): HEVC_MP51,
    }
)


def transfer_syntax(uid: str) -> TransferSyntax | None:
    """The table row for ``uid``, or ``None`` for a syntax this table does not know."""
    return TRANSFER_SYNTAXES.get(uid)


def is_encapsulated(uid: str) -> bool:
    """True when Pixel Data is encapsulated (fragments). Unknown syntaxes count as encapsulated:
    every syntax defined after the first four (and every private one) is."""
    ts = TRANSFER_SYNTAXES.get(uid)
    return True if ts is None else ts.encapsulated


def is_lossy(uid: str) -> bool:
    """True when the syntax permits lossy compression. Unknown syntaxes count as lossy (we cannot
    show they are not)."""
    ts = TRANSFER_SYNTAXES.get(uid)
    return True if ts is None else ts.lossy


def frame_media_type(uid: str) -> str:
    """The media type of one frame in ``uid`` (PS3.18 Table 8.7.3-5); octet-stream when unknown."""
    ts = TRANSFER_SYNTAXES.get(uid)
    return APPLICATION_OCTET_STREAM if ts is None else ts.media_type


def is_video(uid: str) -> bool:
    """True for the MPEG-2, H.264 and HEVC syntaxes, whose Pixel Data is one video stream in
    fragments, not divided into frames (PS3.5 8.2.5, 8.2.8, 8.2.12)."""
    return frame_media_type(uid) in (VIDEO_MPEG, VIDEO_MP4, VIDEO_H265)


def normalize_media_type(media_type: str) -> str:
    """Lower-case ``media_type`` and map legacy aliases (``image/x-jls``) to the current name."""
    lowered = media_type.strip().lower()
    return MEDIA_TYPE_ALIASES.get(lowered, lowered)


def same_frames(stored: str, target: str) -> bool:
    """True when frames stored in ``stored`` are byte-identical to frames in ``target``.

    Uncompressed little-endian frames are the same bytes whether the dataset around them is
    Implicit VR, Explicit VR, deflated or (encapsulated-uncompressed) fragments.
    """
    if stored == target:
        return True
    a, b = TRANSFER_SYNTAXES.get(stored), TRANSFER_SYNTAXES.get(target)
    return a is not None and b is not None and a.native_little_endian_frames and b.native_little_endian_frames
