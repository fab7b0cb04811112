"""HTTP byte ranges (RFC 9110 14) on single-part frame and bulk data responses.

A viewer that decodes progressively (Cornerstone3D's byte-range stage on HTJ2K RPCL frames)
asks for the first kilobytes of a frame, draws a coarse image, then asks for the rest; a
browser seeking in a video does the same on the bulk data. Only the single-range forms are
honoured: ``bytes=a-b``, ``bytes=a-`` and ``bytes=-n``. The server may always ignore a Range
header (RFC 9110 14.2), and does so for a list of several ranges, for a malformed header, for a
unit other than bytes, beside ``If-Range`` (the gateway sends no validators, so none can match)
and on multipart responses: each is answered 200 with the whole representation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from gateway.errors import RangeNotSatisfiable
from gateway.http.started import started
from gateway.services.byte_slices import ByteSlices, read_all

# At most 18 digits: int() of a long digit string is slow, and no stored value is that long.
_SPEC = re.compile(r"\s*(\d{1,18})?\s*-\s*(\d{1,18})?\s*")


@dataclass(frozen=True)
class RangeSpec:
    """One ``first-last`` (either may be absent, not both) as the client wrote it."""

    first: int | None
    last: int | None

    def resolve(self, length: int) -> tuple[int, int]:
        """The ``(start, stop)`` (stop exclusive) this spec selects of a ``length``-byte value.

        A last position past the end is clamped to the end (RFC 9110 14.1.2); a first position
        at or past the end, or a suffix of zero bytes, selects nothing: 416."""
        if self.first is None:
            assert self.last is not None
            if self.last == 0 or length == 0:
                raise RangeNotSatisfiable(f"bytes=-{self.last} selects nothing of a {length}-byte value", length)
            return max(0, length - self.last), length
        if self.first >= length:
            raise RangeNotSatisfiable(f"range starts at byte {self.first}, past the {length}-byte value", length)
        stop = length if self.last is None else min(self.last + 1, length)
        return self.first, stop


def requested_range(request: Request) -> RangeSpec | None:
    """The one byte range ``request`` asks for, or None when the whole value is to be sent."""
    header = request.headers.get("range")
    if header is None or "if-range" in request.headers:
        return None
    unit, _, specs = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in specs:
        return None
    match = _SPEC.fullmatch(specs)
    if match is None:
        return None
    first = None if match[1] is None else int(match[1])
    last = None if match[2] is None else int(match[2])
    if first is None and last is None:
        return None
    if first is not None and last is not None and last < first:
        return None  # an invalid range-spec (RFC 9110 14.1.1): the header is ignored
    return RangeSpec(first, last)


def content_range(start: int, stop: int, length: int) -> str:
    return f"bytes {start}-{stop - 1}/{length}"


async def ranged_response(
    request: Request, value: ByteSlices, media_type: str, headers: dict[str, str], *, stream: bool
) -> Response:
    """``value`` whole (200) or the one range the request asks for (206, or 416 before anything
    is read). ``stream``: sent in chunks as read (bulk data), else read first (a frame), so a
    store that fails on the first read answers 503 either way (gateway.http.started)."""
    spec = requested_range(request)
    length = value.length
    start, stop = (0, length) if spec is None else spec.resolve(length)
    headers = {**headers, "Accept-Ranges": "bytes"}
    status = 200
    if spec is not None:
        status = 206
        headers["Content-Range"] = content_range(start, stop, length)
    if not stream:
        body = await read_all(value, start, stop)
        return Response(body, status_code=status, media_type=media_type, headers=headers)
    chunks = await started(value.read(start, stop))
    headers["Content-Length"] = str(stop - start)
    return StreamingResponse(chunks, status_code=status, media_type=media_type, headers=headers)
