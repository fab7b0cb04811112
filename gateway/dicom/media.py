"""The one media-type / transfer-syntax table, and Accept negotiation (PS3.18 8.7.3-8.7.5, 8.7.8).

Everything the gateway knows about how DICOM data is labelled on the wire lives here:

* the transfer syntaxes with whether they are encapsulated or lossy and the media type of their
  frames (PS3.18 Table 8.7.3-5), and the default transfer syntax of each media type;
* :func:`parse_accept` and :func:`parse_content_type`, tolerant of what real clients send
  (quoted and unquoted parameters, OHIF's ``type=application/octet-stream`` without quotes);
* one ``negotiate_*`` function per kind of resource, each answering a small :class:`Negotiated`
  or raising :class:`~gateway.errors.NotAcceptable` (406) naming what was asked and what is offered.

Pure: no I/O, no HTTP framework types.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import NamedTuple

from gateway.dicom.uids import is_valid_uid
from gateway.errors import BadRequest, NotAcceptable

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

# Compressed media types a frames request may name as the multipart ``type`` (lower case).
_COMPRESSED_MEDIA_TYPES = frozenset(DEFAULT_TRANSFER_SYNTAX) - {APPLICATION_OCTET_STREAM, APPLICATION_DICOM}
# How responses spell the media types (keys lower case).
_SPELLING: Mapping[str, str] = MappingProxyType(
    {ts.media_type.lower(): ts.media_type for ts in TRANSFER_SYNTAXES.values()}
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


def normalize_media_type(media_type: str) -> str:
    """Lower-case ``media_type`` and map legacy aliases (``image/x-jls``) to the current name."""
    lowered = media_type.strip().lower()
    return MEDIA_TYPE_ALIASES.get(lowered, lowered)


def _same_frames(stored: str, target: str) -> bool:
    """True when frames stored in ``stored`` are byte-identical to frames in ``target``.

    Uncompressed little-endian frames are the same bytes whether the dataset around them is
    Implicit VR, Explicit VR, deflated or (encapsulated-uncompressed) fragments.
    """
    if stored == target:
        return True
    a, b = TRANSFER_SYNTAXES.get(stored), TRANSFER_SYNTAXES.get(target)
    return a is not None and b is not None and a.native_little_endian_frames and b.native_little_endian_frames


# --- Header parsing ---------------------------------------------------------------------------

# RFC 9110 5.6.2 tchar
_TCHARS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
# Unquoted parameter values are meant to be tokens, but clients (OHIF among them) send
# ``type=application/octet-stream``: any visible ASCII except quote and backslash is tolerated.
_UNQUOTED_VALUE = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")
# RFC 9110 12.4.2 qvalue, tolerating more than three decimals.
_QVALUE = re.compile(r"0(?:\.[0-9]*)?|1(?:\.0*)?")
_OWS = " \t"
_SHOWN = 200  # characters of a bad header echoed in an error reason


class _Malformed(ValueError):
    pass


def _is_token(value: str) -> bool:
    return bool(value) and all(c in _TCHARS for c in value)


def _split_unquoted(value: str, sep: str) -> list[str]:
    """Split ``value`` on ``sep`` where it is not inside a quoted-string (RFC 9110 5.6.4)."""
    pieces: list[str] = []
    start = 0
    in_quotes = escaped = False
    for i, ch in enumerate(value):
        if in_quotes:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_quotes = False
        elif ch == '"':
            in_quotes = True
        elif ch == sep:
            pieces.append(value[start:i])
            start = i + 1
    pieces.append(value[start:])
    return pieces


def _param_value(raw: str) -> str:
    raw = raw.strip(_OWS)
    if not raw.startswith('"'):
        if not _UNQUOTED_VALUE.fullmatch(raw):
            raise _Malformed(f"bad parameter value {raw!r}")
        return raw
    out: list[str] = []
    escaped = False
    for i, ch in enumerate(raw[1:], start=1):
        if escaped:
            out.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == '"':
            if i != len(raw) - 1:
                raise _Malformed(f"text after quoted-string in {raw!r}")
            return "".join(out)
        else:
            out.append(ch)
    raise _Malformed(f"unterminated quoted-string {raw!r}")


def _parse_media_type(entry: str, *, accept: bool) -> tuple[str, str, list[tuple[str, str]], float]:
    """Parse ``type/subtype *(; name=value)``; for Accept entries also wildcards and ``q``."""
    head, *param_pieces = _split_unquoted(entry, ";")
    head = head.strip(_OWS)
    main, slash, sub = head.partition("/")
    main, sub = main.lower(), sub.lower()
    if not slash or not _is_token(main) or not _is_token(sub):
        raise _Malformed(f"{head!r} is not a media type")
    if (main == "*" and sub != "*") or (not accept and "*" in (main, sub)):
        raise _Malformed(f"misplaced wildcard in {head!r}")
    params: list[tuple[str, str]] = []
    seen: set[str] = set()
    q = 1.0
    for piece in param_pieces:
        if not piece.strip(_OWS):
            continue  # "a/b;" or "a/b; ;c=d": empty parameters are harmless
        name, eq, raw = piece.partition("=")
        name = name.strip(_OWS).lower()
        if not eq or not _is_token(name):
            raise _Malformed(f"bad parameter {piece.strip(_OWS)!r}")
        value = _param_value(raw)
        if accept and name == "q":
            if not _QVALUE.fullmatch(value):
                raise _Malformed(f"bad q value {value!r}")
            q = float(value)
            continue
        if name in seen:
            raise _Malformed(f"parameter {name!r} given twice")
        seen.add(name)
        if name == "type":
            value = normalize_media_type(value)  # a media type: case-insensitive
        params.append((name, value))
    return main, sub, params, q


def _shown(value: str) -> str:
    return repr(value if len(value) <= _SHOWN else value[:_SHOWN] + "...")


@dataclass(frozen=True, slots=True)
class MediaRange:
    """One entry of an Accept header. ``type``/``subtype``/parameter names are lower case."""

    type: str
    subtype: str
    params: tuple[tuple[str, str], ...] = ()
    q: float = 1.0
    position: int = 0

    @property
    def media_type(self) -> str:
        return f"{self.type}/{self.subtype}"

    @property
    def specificity(self) -> int:
        """0 for ``*/*``, 1 for ``type/*``, 2 for ``type/subtype``, 3 with parameters."""
        if self.type == "*":
            return 0
        if self.subtype == "*":
            return 1
        return 3 if self.params else 2

    def param(self, name: str) -> str | None:
        """The value of parameter ``name`` (lower case), or ``None``."""
        for key, value in self.params:
            if key == name:
                return value
        return None

    def matches(self, media_type: str) -> bool:
        """True when this range covers ``media_type`` (parameters not considered)."""
        main, _, sub = media_type.lower().partition("/")
        return self.type == "*" or (self.type == main and self.subtype in ("*", sub))


def parse_accept(header: str | None) -> tuple[MediaRange, ...]:
    """Parse an Accept header (RFC 9110 12.5.1) into media ranges, most preferred first.

    Order: higher ``q`` first, then more specific ranges, then header order. Ranges with
    ``q=0`` are kept (at the end) because they exclude representations. Parameters may follow
    ``q`` (clients do that), and are then still read as media-type parameters. Unparseable
    entries are skipped when another entry parses; a header with no usable entry at all raises
    :class:`BadRequest`. A missing or blank header gives an empty tuple (no preference).
    """
    if header is None:
        return ()
    ranges: list[MediaRange] = []
    junk = False
    for position, entry in enumerate(_split_unquoted(header, ",")):
        if not entry.strip(_OWS):
            continue
        try:
            main, sub, params, q = _parse_media_type(entry, accept=True)
        except _Malformed:
            junk = True
            continue
        ranges.append(MediaRange(main, sub, tuple(params), q, position))
    if junk and not ranges:
        raise BadRequest(f"unparseable Accept header {_shown(header)}")
    ranges.sort(key=lambda r: (-r.q, -r.specificity, r.position))
    return tuple(ranges)


def parse_content_type(value: str | None) -> tuple[str, dict[str, str]]:
    """Parse a request Content-Type into ``(media_type, params)``, strictly.

    The media type and parameter names come back lower case, and the ``type`` parameter (itself
    a media type) too; other values are unquoted but otherwise as sent (a boundary is
    case-sensitive). Raises :class:`BadRequest` for a missing or malformed value.
    """
    if value is None or not value.strip(_OWS):
        raise BadRequest("missing Content-Type")
    pieces = _split_unquoted(value, ",")
    if len(pieces) != 1:
        raise BadRequest(f"Content-Type {_shown(value)} names more than one media type")
    try:
        main, sub, params, _ = _parse_media_type(value, accept=False)
    except _Malformed as exc:
        raise BadRequest(f"malformed Content-Type {_shown(value)}: {exc}") from None
    return f"{main}/{sub}", dict(params)


def part_content_type(media_type: str, transfer_syntax: str | None = None) -> str:
    """The Content-Type of one part, e.g. ``application/dicom; transfer-syntax=1.2.840.10008.1.2.1``.

    The UID is left unquoted, as most servers send it; OHIF reads ``transfer-syntax=`` from this
    header to pick its decoder. A response must name the actual syntax, so ``*`` is refused.
    """
    if transfer_syntax is None:
        return media_type
    if not is_valid_uid(transfer_syntax):
        raise ValueError(f"not a transfer syntax UID: {transfer_syntax!r}")
    return f"{media_type}; transfer-syntax={transfer_syntax}"


# --- Negotiation ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Negotiated:
    """What to send.

    ``media_type`` is the media type of each part when ``multipart`` (the value of the
    ``type`` parameter of ``multipart/related``), else of the whole body. ``transfer_syntax`` is a
    UID, :data:`AS_STORED` (``"*"``: send the bytes as stored, byte-identical), or ``None`` where a
    transfer syntax does not apply (DICOM JSON).
    """

    media_type: str
    transfer_syntax: str | None
    multipart: bool

    @property
    def as_stored(self) -> bool:
        return self.transfer_syntax == AS_STORED

    def part_content_type(self, actual_syntax: str | None = None) -> str:
        """The Content-Type of one part (or of a single-part body) holding data in ``actual_syntax``.

        ``actual_syntax`` is required when :attr:`as_stored` (the response must say which syntax
        each part really is, PS3.18 8.7.3); otherwise it defaults to the negotiated one.
        """
        if self.transfer_syntax is None:
            return self.media_type
        syntax = actual_syntax or self.transfer_syntax
        if syntax == AS_STORED:
            raise ValueError("as-stored response: pass the part's actual transfer syntax")
        return part_content_type(self.media_type, syntax)


class _Offer(NamedTuple):
    result: Negotiated
    # True for the PS3.18 8.7.3 escape: the default syntax is asked for implicitly but the server
    # only has the pixel data in lossy form, so it may send that form instead.
    lossy_fallback: bool = False


def _is_generic(r: MediaRange) -> bool:
    """``*/*``, ``multipart/*`` or ``multipart/related`` with neither type nor transfer-syntax.

    ``type="*/*"`` counts as no type: dicomweb-client sends ``multipart/related; type="*/*"``
    when its caller names no media type.
    """
    if r.type == "*":
        return True
    if r.type != "multipart":
        return False
    return r.subtype == "*" or (
        r.subtype == "related" and r.param("type") in (None, "*/*") and r.param("transfer-syntax") is None
    )


@dataclass(frozen=True, slots=True)
class _Context:
    stored: frozenset[str]  # syntaxes the data is stored in (empty: unknown)
    can: frozenset[str]  # syntaxes the caller can produce, AS_STORED included when it can
    same: Callable[[str, str], bool]  # "data stored in a is already data in b"

    def servable(self, offer: _Offer) -> bool:
        media, syntax = offer.result.media_type.lower(), offer.result.transfer_syntax
        stored = self.stored
        if syntax is None:
            return True
        if syntax != AS_STORED:
            return syntax in self.can or (bool(stored) and all(self.same(s, syntax) for s in stored))
        if AS_STORED not in self.can:
            return False
        if offer.lossy_fallback and not (stored and all(map(is_lossy, stored))):
            return False
        if media in _COMPRESSED_MEDIA_TYPES:  # "as stored" under a compressed type: only if it is that type
            return bool(stored) and all(frame_media_type(s).lower() == media for s in stored)
        return True

    def denoted(self, result: Negotiated) -> frozenset[str | None]:
        """The syntax labels ``result`` may go out with: as stored, that is also each stored syntax."""
        if result.transfer_syntax == AS_STORED:
            return frozenset((AS_STORED, *self.stored))
        return frozenset((result.transfer_syntax,))

    def describe(self, media: str) -> str:
        listed = ", ".join(sorted(self.can | self.stored, key=lambda s: (s != AS_STORED, s)))
        return f'multipart/related; type="{media}" with transfer-syntax {listed}'


def _negotiate(
    accept: str | None,
    interpret: Callable[[MediaRange], Sequence[_Offer]],
    ctx: _Context,
    *,
    what: str,
    offered: str,
) -> Negotiated:
    ranges = parse_accept(accept) or (MediaRange("*", "*"),)  # RFC 9110 12.5.1: no Accept = anything
    refused = [(r, interpret(r)) for r in ranges if r.q == 0]

    def excluded(result: Negotiated, source: MediaRange) -> bool:
        # A q=0 range excludes what it denotes, unless a more specific range asked for it. Refusing
        # a UID also refuses data stored in it sent as stored; refusing "*" refuses only "*".
        mine = ctx.denoted(result)
        return any(
            r0.specificity >= source.specificity
            and (o.result.media_type, o.result.multipart) == (result.media_type, result.multipart)
            and o.result.transfer_syntax in mine
            for r0, offers in refused
            for o in offers
        )

    for r in ranges:
        if r.q == 0:
            break  # sorted: only refusals follow
        for offer in interpret(r):
            if ctx.servable(offer) and not excluded(offer.result, r):
                return offer.result
    raise NotAcceptable(f"cannot serve {what} as Accept {_shown(accept or '')}; available: {offered}")


def negotiate_instances(
    accept: str | None,
    *,
    stored_syntaxes: Collection[str] = (),
    supported: Collection[str] = (AS_STORED,),
) -> Negotiated:
    """Negotiate a WADO-RS study/series/instance retrieve (PS3.18 10.4, Table 8.7.3-2).

    Always multipart/related with ``application/dicom`` parts. ``stored_syntaxes`` are the
    transfer syntaxes the instances are stored in, when known; ``supported`` the syntaxes the
    caller can produce (:data:`AS_STORED` for the stored bytes, plus any UID it can transcode to).
    A UID is also servable without transcoding when every stored instance already has it.

    * ``transfer-syntax=*`` -> as stored; a UID -> that syntax;
    * ``type="application/dicom"`` with no transfer-syntax -> Explicit VR Little Endian, the
      PS3.18 default, or as stored when every stored instance is lossy (PS3.18 8.7.3 lets the
      server send lossy data in its lossy syntax);
    * no Accept, ``*/*``, ``multipart/*`` or ``multipart/related`` with no type -> as stored.

    Raises :class:`NotAcceptable` when nothing acceptable can be served.
    """
    ctx = _Context(frozenset(stored_syntaxes), frozenset(supported), str.__eq__)

    def dicom(syntax: str, fallback: bool = False) -> _Offer:
        return _Offer(Negotiated(APPLICATION_DICOM, syntax, True), fallback)

    def interpret(r: MediaRange) -> list[_Offer]:
        if _is_generic(r):
            # The client takes anything, so send the instances as stored: byte-identical to what
            # was received, no decode/re-encode cost, no loss. Orthanc and dcm4chee do the same
            # for */*; ELE and the other producible syntaxes remain fallbacks.
            others = sorted(s for s in ctx.can - {AS_STORED, EXPLICIT_VR_LITTLE_ENDIAN} if not is_lossy(s))
            return [dicom(AS_STORED), dicom(EXPLICIT_VR_LITTLE_ENDIAN), *map(dicom, others)]
        if r.media_type != MULTIPART_RELATED or r.param("type") not in (None, APPLICATION_DICOM):
            return []  # single-part application/dicom, dicom+xml, octet-stream: not offered
        syntax = r.param("transfer-syntax")
        if syntax is None:
            return [dicom(EXPLICIT_VR_LITTLE_ENDIAN), dicom(AS_STORED, fallback=True)]
        return [dicom(syntax)]

    return _negotiate(accept, interpret, ctx, what="DICOM instances", offered=ctx.describe(APPLICATION_DICOM))


def negotiate_frames(
    accept: str | None,
    *,
    stored_syntaxes: Collection[str] = (),
    supported: Collection[str] = (AS_STORED,),
) -> Negotiated:
    """Negotiate a WADO-RS frames retrieve (PS3.18 10.4, Tables 8.7.3-4 and 8.7.3-5).

    Always multipart/related. ``stored_syntaxes`` / ``supported`` as for
    :func:`negotiate_instances`; frames stored uncompressed little-endian (Implicit, Explicit,
    deflated) count as already being Explicit VR Little Endian, since the pixel bytes are the same.

    * ``type=application/octet-stream`` (OHIF sends it quoted and unquoted): ``transfer-syntax=*``
      -> frames as stored, absent -> Explicit VR Little Endian (uncompressed), a UID -> that UID;
    * ``type=image/jpeg`` (``image/jls``, ``image/jp2``, ...): that compressed encoding. With no
      transfer-syntax: frames stored lossy in that encoding as stored, else the default syntax of
      Table 8.7.3-5, else as stored if they have that media type. A named UID must belong to
      that media type;
    * single-part ``image/jpeg`` (``image/jls``, ...): the same choices for one frame sent as its
      bare bitstream (``multipart`` False: the caller refuses a list of several frames);
    * no Accept, ``*/*`` or ``multipart/related`` with no type -> octet-stream, as stored.

    As-stored frames keep the negotiated media type; the part header names their actual syntax.
    """
    ctx = _Context(frozenset(stored_syntaxes), frozenset(supported), _same_frames)
    octet = APPLICATION_OCTET_STREAM

    def part(media: str, syntax: str, fallback: bool = False, multipart: bool = True) -> _Offer:
        return _Offer(Negotiated(_SPELLING.get(media, media), syntax, multipart), fallback)

    def compressed(media: str, syntax: str | None, multipart: bool) -> list[_Offer]:
        if syntax is None:
            # Lossy frames of this type go out as they are rather than re-encoded in the default
            # syntax (PS3.18 8.7.3 allows it); otherwise the default, else as stored if of this type.
            # The default syntaxes are all lossless: nothing is made lossy unless asked by UID.
            return [
                part(media, AS_STORED, fallback=True, multipart=multipart),
                part(media, DEFAULT_TRANSFER_SYNTAX[media], multipart=multipart),
                part(media, AS_STORED, multipart=multipart),
            ]
        if syntax == AS_STORED or frame_media_type(syntax).lower() == media:
            return [part(media, syntax, multipart=multipart)]
        return []  # e.g. image/jpeg with a JPEG 2000 UID

    def interpret(r: MediaRange) -> list[_Offer]:
        if _is_generic(r):
            # As stored, as for instances; it is also what OHIF asks for (transfer-syntax=*).
            # Other producible syntaxes are fallbacks, lossy ones never (they must be asked for).
            others = sorted(s for s in ctx.can - {AS_STORED, EXPLICIT_VR_LITTLE_ENDIAN} if not is_lossy(s))
            return [part(octet, AS_STORED), part(octet, EXPLICIT_VR_LITTLE_ENDIAN), *(part(octet, s) for s in others)]
        single = normalize_media_type(r.media_type)
        if single in _COMPRESSED_MEDIA_TYPES:
            # One frame as the bare bitstream, not in a multipart body (PS3.18 8.7.3.3.2).
            return compressed(single, r.param("transfer-syntax"), multipart=False)
        if r.media_type != MULTIPART_RELATED:
            return []
        media = r.param("type") or octet
        syntax = r.param("transfer-syntax")
        if media == octet:
            if syntax is None:
                return [part(media, EXPLICIT_VR_LITTLE_ENDIAN), part(media, AS_STORED, fallback=True)]
            return [part(media, syntax)]
        if media not in _COMPRESSED_MEDIA_TYPES:
            return []
        return compressed(media, syntax, multipart=True)

    offered = ctx.describe(octet)
    kinds = sorted({frame_media_type(s) for s in ctx.stored} - {octet})
    if kinds and AS_STORED in ctx.can:
        offered += "; or as stored: " + ", ".join(f'type="{k}"' for k in kinds)
    return _negotiate(accept, interpret, ctx, what="frames", offered=offered)


def negotiate_bulkdata(
    accept: str | None,
    *,
    stored_syntaxes: Collection[str] = (),
    supported: Collection[str] = (AS_STORED, EXPLICIT_VR_LITTLE_ENDIAN),
) -> Negotiated:
    """Negotiate a bulk data retrieve (PS3.18 10.4, Table 8.7.3-4): octet-stream only.

    ``multipart/related; type="application/octet-stream"`` (the default, also for no Accept and
    ``*/*``) or single-part ``application/octet-stream``, with the transfer-syntax rules of
    :func:`negotiate_frames`. Explicit VR Little Endian is supported by default because bulk
    data other than Pixel Data is little-endian bytes in every syntax the gateway stores.
    """
    ctx = _Context(frozenset(stored_syntaxes), frozenset(supported), _same_frames)
    octet = APPLICATION_OCTET_STREAM

    def offers(multipart: bool, syntax: str | None) -> list[_Offer]:
        if syntax is None:
            return [
                _Offer(Negotiated(octet, EXPLICIT_VR_LITTLE_ENDIAN, multipart)),
                _Offer(Negotiated(octet, AS_STORED, multipart), lossy_fallback=True),
            ]
        return [_Offer(Negotiated(octet, syntax, multipart))]

    def interpret(r: MediaRange) -> list[_Offer]:
        if _is_generic(r):
            return [_Offer(Negotiated(octet, AS_STORED, True)), *offers(True, None)]
        if r.media_type == MULTIPART_RELATED and r.param("type") in (None, octet):
            return offers(True, r.param("transfer-syntax"))
        if r.matches(octet):  # application/octet-stream or application/*: single part
            return offers(False, r.param("transfer-syntax"))
        return []

    offered = ctx.describe(octet) + ", or single-part application/octet-stream"
    return _negotiate(accept, interpret, ctx, what="bulk data", offered=offered)


def _negotiate_json(accept: str | None, what: str) -> Negotiated:
    dicom_json = _Offer(Negotiated(APPLICATION_DICOM_JSON, None, False))
    plain_json = _Offer(Negotiated(APPLICATION_JSON, None, False))  # same body, the type the client named

    def interpret(r: MediaRange) -> list[_Offer]:
        if r.media_type == APPLICATION_JSON:
            return [plain_json]
        if r.media_type == APPLICATION_DICOM_JSON:
            return [dicom_json]
        if r.matches(APPLICATION_DICOM_JSON):  # */*, application/*
            return [dicom_json, plain_json]
        return []  # notably multipart/related; type="application/dicom+xml": not offered

    ctx = _Context(frozenset(), frozenset(), str.__eq__)
    offered = f"{APPLICATION_DICOM_JSON} (or {APPLICATION_JSON})"
    return _negotiate(accept, interpret, ctx, what=what, offered=offered)


def negotiate_metadata(accept: str | None) -> Negotiated:
    """Negotiate a WADO-RS metadata retrieve (PS3.18 10.4): DICOM JSON only.

    ``application/dicom+json``, ``application/json``, ``*/*`` and no Accept are served; XML
    (``multipart/related; type="application/dicom+xml"``) is not -> :class:`NotAcceptable`.
    """
    return _negotiate_json(accept, "metadata")


def negotiate_qido(accept: str | None) -> Negotiated:
    """Negotiate a QIDO-RS search response (PS3.18 10.6): DICOM JSON only, as metadata."""
    return _negotiate_json(accept, "search results")


RENDERED_MEDIA_TYPES = (IMAGE_JPEG, IMAGE_PNG)


def negotiate_rendered(accept: str | None, *, multipart: bool = False) -> Negotiated:
    """Negotiate a Retrieve Rendered or Thumbnail response (PS3.18 8.7.4, Table 8.7.4-1).

    ``image/jpeg`` (the default: no Accept, ``*/*``, ``image/*``) or ``image/png``, single
    part. With ``multipart`` (a rendered study or series), ``multipart/related; type=image/...``
    is offered too: one rendered image per instance. Raises :class:`NotAcceptable` otherwise.
    """

    def single(media: str) -> _Offer:
        return _Offer(Negotiated(media, None, False))

    def interpret(r: MediaRange) -> list[_Offer]:
        if r.type == "*" or (r.type == "image" and r.subtype == "*"):
            return [single(IMAGE_JPEG), single(IMAGE_PNG)]
        media = normalize_media_type(r.media_type)
        if media in RENDERED_MEDIA_TYPES:
            return [single(media)]
        if multipart and r.media_type == MULTIPART_RELATED:
            part = r.param("type") or IMAGE_JPEG
            if part in RENDERED_MEDIA_TYPES:
                return [_Offer(Negotiated(part, None, True))]
        return []

    ctx = _Context(frozenset(), frozenset(), str.__eq__)
    offered = " or ".join(RENDERED_MEDIA_TYPES)
    if multipart:
        offered += ", or multipart/related of either"
    return _negotiate(accept, interpret, ctx, what="a rendered image", offered=offered)
