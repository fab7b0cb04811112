"""Accept negotiation (PS3.18 8.7.3-8.7.5, 8.7.8): what to send for each kind of resource.

One ``negotiate_*`` function per kind of resource (instances, frames, bulk data, metadata and
search results, rendered images), each answering a small :class:`Negotiated` or raising
:class:`~gateway.errors.NotAcceptable` (406) naming what was asked and what is offered. Ranges
are tried most preferred first; ``q=0`` ranges exclude what they denote (RFC 9110 12.5.1).
Import it through :mod:`gateway.dicom.media`.

Pure: no I/O, no HTTP framework types.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import NamedTuple

from gateway.dicom.media_headers import MediaRange, parse_accept, part_content_type, shown
from gateway.dicom.media_table import (
    APPLICATION_DICOM,
    APPLICATION_DICOM_JSON,
    APPLICATION_JSON,
    APPLICATION_OCTET_STREAM,
    AS_STORED,
    DEFAULT_TRANSFER_SYNTAX,
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMAGE_JPEG,
    IMAGE_PNG,
    MULTIPART_RELATED,
    TRANSFER_SYNTAXES,
    VIDEO_MP4,
    VIDEO_MPEG,
    frame_media_type,
    is_lossy,
    normalize_media_type,
    same_frames,
)
from gateway.errors import NotAcceptable

# Compressed media types a frames request may name as the multipart ``type`` (lower case).
_COMPRESSED_MEDIA_TYPES = frozenset(DEFAULT_TRANSFER_SYNTAX) - {APPLICATION_OCTET_STREAM, APPLICATION_DICOM}
# How responses spell the media types (keys lower case).
_SPELLING: Mapping[str, str] = MappingProxyType(
    {ts.media_type.lower(): ts.media_type for ts in TRANSFER_SYNTAXES.values()}
)


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
    raise NotAcceptable(f"cannot serve {what} as Accept {shown(accept or '')}; available: {offered}")


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
    ctx = _Context(frozenset(stored_syntaxes), frozenset(supported), same_frames)
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
    ctx = _Context(frozenset(stored_syntaxes), frozenset(supported), same_frames)
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


def video_media_type(transfer_syntax: str) -> str:
    """What a video bitstream in ``transfer_syntax`` is served as: ``video/mpeg`` for MPEG-2, else
    ``video/mp4`` (H.264 and HEVC streams as modalities and ffmpeg write them: in an MP4 file,
    which browsers play; PS3.18 Table 8.7.3-5 also names HEVC ``video/H265``, accepted too)."""
    return VIDEO_MPEG if frame_media_type(transfer_syntax) == VIDEO_MPEG else VIDEO_MP4


def negotiate_video(accept: str | None, transfer_syntax: str, *, bulkdata: bool = False) -> Negotiated:
    """Negotiate the video of an instance in a video ``transfer_syntax`` (PS3.18 8.7.3.3.2,
    Table 8.7.3-5): its encapsulated bitstream as stored, single part, never transcoded.

    No Accept, ``*/*``, ``video/*`` or the stream's own media type (:func:`video_media_type`, or
    the syntax's PS3.18 media type) → that media type, which is how a ``<video>`` element asks.
    From a BulkDataURI (``bulkdata``), ``application/octet-stream`` is the same bytes labelled so,
    and ``multipart/related`` of either type the stream in one part.
    """
    own = video_media_type(transfer_syntax)
    names = {own.lower(), frame_media_type(transfer_syntax).lower()}
    octet = APPLICATION_OCTET_STREAM

    def interpret(r: MediaRange) -> list[_Offer]:
        if r.type == "*" or (r.type == "video" and r.subtype == "*"):
            return [_Offer(Negotiated(own, transfer_syntax, False))]
        if r.media_type in names:
            return [_Offer(Negotiated(_SPELLING.get(r.media_type, r.media_type), transfer_syntax, False))]
        if bulkdata and r.media_type == octet:
            return [_Offer(Negotiated(octet, transfer_syntax, False))]
        part = r.param("type")
        if bulkdata and r.media_type == MULTIPART_RELATED and (part is None or part in names or part == octet):
            return [_Offer(Negotiated(_SPELLING.get(part or own, part or own), transfer_syntax, True))]
        return []

    ctx = _Context(frozenset({transfer_syntax}), frozenset({transfer_syntax}), str.__eq__)
    offered = own + (", application/octet-stream or multipart/related of either" if bulkdata else "")
    return _negotiate(accept, interpret, ctx, what=f"video in transfer syntax {transfer_syntax}", offered=offered)
