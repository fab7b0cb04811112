"""WADO-RS endpoints (PS3.18 10.4): instances, metadata, frames, bulk data."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from gateway.dicom import uids
from gateway.dicom.media import (
    APPLICATION_OCTET_STREAM,
    is_video,
    negotiate_bulkdata,
    negotiate_frames,
    negotiate_instances,
    negotiate_metadata,
)
from gateway.dicom.multipart import content_type_for_multipart, multipart_stream, new_boundary
from gateway.errors import NotAcceptable, NotFound
from gateway.http.byte_ranges import ranged_response
from gateway.http.context import accept_of, base_url, gateway_of
from gateway.http.deidentified import deidentified_parts, selected, views_of
from gateway.http.middleware.security import restriction_of
from gateway.http.retrieve_warnings import add_retrieve_warnings
from gateway.http.started import started, started_parts
from gateway.http.video import video_response
from gateway.ports import InstanceRecord
from gateway.services.deidentified import DeidentifiedViews
from gateway.services.instance_reader import INSTANCE_SYNTAXES, PIXEL_DATA_PATH, parse_frame_list
from gateway.services.part_read_ahead import read_ahead

# Pixel data must not be gzip-compressed by middleware or proxies on our behalf: it costs far
# more CPU than it saves on already-compressed or noisy image data.
_NO_TRANSFORM = {"Cache-Control": "private, no-store, no-transform"}


def _pacs(request: Request) -> str | None:
    """The PACS a ``{base}/pacs/{name}/...`` path selects (None: the store, then any PACS)."""
    name: str | None = request.path_params.get("pacs")
    return name


def _uids(request: Request) -> tuple[str, str | None, str | None]:
    p = request.path_params
    return p["study"], p.get("series"), p.get("instance")


async def retrieve(request: Request) -> Response:
    """``GET .../studies/{s}[/series/{se}[/instances/{i}]]``: multipart/related DICOM instances."""
    gw = gateway_of(request)
    views = views_of(request)
    if views is not None:
        return await _retrieve_deidentified(request, views)
    # From the store, or streamed from a PACS as each instance arrives (and cached on the way).
    retrieval = await gw.retrieval.stream(*_uids(request), pacs=_pacs(request), restriction=restriction_of(request))
    negotiated = negotiate_instances(
        accept_of(request),
        stored_syntaxes=retrieval.syntaxes,
        supported=INSTANCE_SYNTAXES,
    )
    await gw.retrieval.check_transcodable(*_uids(request), negotiated)
    boundary = new_boundary()
    # Stored instances sent as stored: the length is known, and a body with a Content-Length is
    # written as it is (uvicorn copies every chunk of a chunked one to frame it) and lets a
    # client show progress.
    length = gw.retrieval.content_length(retrieval, negotiated, boundary)
    part = gw.retrieval.part if length is None else gw.retrieval.sized_part

    async def parts() -> AsyncIterator[tuple[str, AsyncIterator[bytes]]]:
        async with aclosing(retrieval.items) as items:  # a client gone stops following the PACS retrieve
            async for item in items:
                yield part(item, negotiated)

    media_type = content_type_for_multipart(negotiated.media_type, negotiated.transfer_syntax, boundary)
    # The first bytes are read before the status is sent: a store that is down answers 503.
    # Instances from the store are read one ahead of the one being sent (not a PACS retrieve's:
    # waiting for the next arrival would hold back the one that is here).
    source = parts() if retrieval.cached is None else read_ahead(parts())
    body = multipart_stream(await started_parts(source), boundary)
    headers = _NO_TRANSFORM if length is None else {**_NO_TRANSFORM, "Content-Length": str(length)}
    return StreamingResponse(body, media_type=media_type, headers=headers)


async def _retrieve_deidentified(request: Request, views: DeidentifiedViews) -> Response:
    """:func:`retrieve` for a de-identified principal: each instance rewritten whole
    (gateway.http.deidentified.deidentified_parts), and from a PACS sent as it arrives, as a
    plain answer is, not once the whole retrieve is over."""
    gw = gateway_of(request)
    originals = await views.originals(*_uids(request))
    retrieval = await gw.retrieval.stream(*originals, pacs=_pacs(request), restriction=restriction_of(request))
    try:
        negotiated = negotiate_instances(
            accept_of(request),
            stored_syntaxes=retrieval.syntaxes,
            supported=INSTANCE_SYNTAXES,
        )
        await gw.retrieval.check_transcodable(*originals, negotiated)
    except BaseException:
        await retrieval.items.aclose()  # a client refused: the PACS retrieve is not followed
        raise
    boundary = new_boundary()
    media_type = content_type_for_multipart(negotiated.media_type, negotiated.transfer_syntax, boundary)
    # The first part is made before the status is sent: a selection whose every instance is
    # withheld (burned in annotation) is a 404, as it is for metadata.
    parts = deidentified_parts(views, retrieval, lambda record: gw.retrieval.part(record, negotiated))
    body = multipart_stream(await started_parts(parts), boundary)
    return StreamingResponse(body, media_type=media_type, headers=_NO_TRANSFORM)


async def metadata(request: Request) -> Response:
    """``GET .../metadata`` at study, series or instance level, answered from the index."""
    gw = gateway_of(request)
    negotiated = negotiate_metadata(accept_of(request))
    notes: list[str] = []  # a PACS retrieve that sent only part of the entity says so
    records = await selected(request, *_uids(request), warnings=notes)
    views = views_of(request)
    if views is None:
        body = gw.retrieval.metadata_body(records, base_url(request))
    else:
        instances = gw.retrieval.instance_metadata(records, base_url(request))
        body = await views.metadata_answer(instances)
    response = Response(body, media_type=negotiated.media_type)
    return add_retrieve_warnings(response, notes)


async def _one_instance(request: Request, notes: list[str] | None = None) -> InstanceRecord:
    records = await selected(request, *_uids(request), warnings=notes)
    return records[0]


async def frames(request: Request) -> Response:
    """``GET .../instances/{i}/frames/{list}`` (PS3.18 10.4.1.1.4)."""
    gw = gateway_of(request)
    numbers = parse_frame_list(request.path_params["frames"])
    notes: list[str] = []
    record = await _one_instance(request, notes)
    negotiated = negotiate_frames(
        accept_of(request),
        stored_syntaxes={record.transfer_syntax},
        supported=gw.retrieval.frame_syntaxes(record),
    )
    part_type = gw.retrieval.frame_content_type(record, negotiated)
    if not negotiated.multipart:  # one frame as its bare bitstream (image/jls, image/jp2, ...)
        if len(numbers) != 1:
            raise NotAcceptable(
                f"a single-part {negotiated.media_type} response holds one frame; ask for multipart/related"
            )
        # Byte ranges of it too: the byte-range stage of progressive decoders (gateway.http.byte_ranges).
        value = await gw.retrieval.frame_slices(record, numbers[0], negotiated)
        response = await ranged_response(request, value, part_type, _NO_TRANSFORM, stream=False)
        return add_retrieve_warnings(response, notes)
    # The first frame is read before the status is sent (a store that fails answers 503); the
    # others as the response goes out. A Range header is ignored: a multipart body is sent whole.
    bodies = await started(await gw.retrieval.frames(record, numbers, negotiated))
    boundary = new_boundary()
    media_type = content_type_for_multipart(negotiated.media_type, None, boundary)
    # The UIDs of the path, not of the record: a de-identified principal's are replacements.
    study, series, sop = _uids(request)
    location = f"{base_url(request)}/studies/{study}/series/{series}/instances/{sop}"

    async def parts() -> AsyncIterator[tuple[str, bytes, dict[str, str]]]:
        numbered = iter(numbers)
        try:
            async for body in bodies:
                yield part_type, body, {"Content-Location": f"{location}/frames/{next(numbered)}"}
        finally:
            await bodies.aclose()

    response = StreamingResponse(multipart_stream(parts(), boundary), media_type=media_type, headers=_NO_TRANSFORM)
    return add_retrieve_warnings(response, notes)


async def bulkdata(request: Request) -> Response:
    """``GET .../instances/{i}/bulkdata/{path}``: the URIs handed out in metadata."""
    gw = gateway_of(request)
    path = request.path_params["path"]
    views = views_of(request)
    if views is not None and not views.sends_bulkdata(path):
        raise NotFound(f"bulk data {path} is not part of the de-identified instance")
    record = await _one_instance(request)
    if path.upper() == PIXEL_DATA_PATH and is_video(record.transfer_syntax):
        # The video stream, as a <video> element pointed at this BulkDataURI plays it.
        return await video_response(request, record, bulkdata=True)
    negotiated = negotiate_bulkdata(accept_of(request))
    # A path the metadata never handed out is refused before anything is read; the value is
    # streamed in ranged reads, its first chunk read before the status is sent (503 if the store fails).
    if not negotiated.multipart:  # whole, or the byte range asked for (a browser seeking in a video)
        whole = await gw.retrieval.bulkdata_slices(record, path)
        return await ranged_response(request, whole, APPLICATION_OCTET_STREAM, _NO_TRANSFORM, stream=True)
    value = await started(await gw.retrieval.bulkdata(record, path))
    boundary = new_boundary()
    media_type = content_type_for_multipart(APPLICATION_OCTET_STREAM, None, boundary)
    return StreamingResponse(
        multipart_stream([(APPLICATION_OCTET_STREAM, value)], boundary), media_type=media_type, headers=_NO_TRANSFORM
    )


def validate_uid_params(request: Request) -> None:
    for name, what in (("study", "StudyInstanceUID"), ("series", "SeriesInstanceUID"), ("instance", "SOPInstanceUID")):
        if name in request.path_params:
            uids.require_uid(request.path_params[name], what)
