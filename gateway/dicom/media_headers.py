"""Media-type headers as real clients send them: Accept and Content-Type (RFC 9110 5.6, 8.3, 12.5.1).

Tolerant where DICOMweb clients deviate (quoted and unquoted parameters, OHIF's
``type=application/octet-stream`` without quotes, parameters after ``q``), strict where a
request body depends on it (a STOW Content-Type). Part Content-Types name the transfer syntax
of the part as PS3.18 8.7.3 asks. Import it through :mod:`gateway.dicom.media`.

Pure: no I/O, no HTTP framework types.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gateway.dicom.media_table import normalize_media_type
from gateway.dicom.uids import is_valid_uid
from gateway.errors import BadRequest

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


def shown(value: str) -> str:
    """``value`` quoted for an error reason, cut short when long."""
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
        raise BadRequest(f"unparseable Accept header {shown(header)}")
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
        raise BadRequest(f"Content-Type {shown(value)} names more than one media type")
    try:
        main, sub, params, _ = _parse_media_type(value, accept=False)
    except _Malformed as exc:
        raise BadRequest(f"malformed Content-Type {shown(value)}: {exc}") from None
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
