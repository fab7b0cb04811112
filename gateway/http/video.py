"""Video instances over HTTP (PS3.18 8.7.3.3.2): the MPEG-2, H.264 or HEVC bitstream as stored.

A viewer plays a video instance by pointing a ``<video>`` element at its ``/rendered`` URL (OHIF
with ``singlepart: "video"``) or at the BulkDataURI the metadata hands out for its Pixel Data;
the browser asks with ``Accept: */*`` and seeks with byte ranges. Both answer the stream
single-part as ``video/mp4`` (``video/mpeg`` for MPEG-2) with ranges (gateway.http.byte_ranges);
nothing is transcoded, so any other rendered media type is a 406.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from gateway.dicom.media import negotiate_video
from gateway.dicom.multipart import content_type_for_multipart, multipart_stream, new_boundary
from gateway.http.byte_ranges import ranged_response
from gateway.http.context import accept_of, gateway_of
from gateway.http.started import started
from gateway.ports import InstanceRecord

# The stream is already compressed: no proxy or middleware should try again.
_HEADERS = {"Cache-Control": "private, no-store, no-transform"}


async def video_response(request: Request, record: InstanceRecord, *, bulkdata: bool) -> Response:
    """The video of ``record`` as the request's Accept (or ``accept`` parameter) asks: whole, or
    the one byte range asked for; from a BulkDataURI (``bulkdata``) also as octet-stream or in a
    multipart body (which ignores Range)."""
    negotiated = negotiate_video(accept_of(request), record.transfer_syntax, bulkdata=bulkdata)
    value = await gateway_of(request).retrieval.video_slices(record)
    if not negotiated.multipart:
        return await ranged_response(request, value, negotiated.media_type, _HEADERS, stream=True)
    chunks = await started(value.read(0, value.length))
    boundary = new_boundary()
    media_type = content_type_for_multipart(negotiated.media_type, None, boundary)
    return StreamingResponse(
        multipart_stream([(negotiated.media_type, chunks)], boundary), media_type=media_type, headers=_HEADERS
    )
