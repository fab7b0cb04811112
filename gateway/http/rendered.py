"""Retrieve Rendered and Thumbnail endpoints (PS3.18 10.4.1.1.3, 8.3.5): ``.../rendered`` and
``.../thumbnail`` at study, series, instance and frames level.

Query parameters (PS3.18 8.3.5.1): ``accept`` (a media type, wins over the Accept header,
PS3.18 8.3.3.1), ``window=center,width[,function]``, ``viewport=vw,vh[,sx,sy,sw,sh]``,
``quality=1..100``; ``annotation`` and ``charset`` are accepted and have no effect (nothing is
burned in). The selection is authorised exactly like every WADO-RS route (the principal's
study restriction; a PACS-only study is retrieved into the cache first).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from gateway.dicom import render
from gateway.dicom.media import is_video, negotiate_rendered
from gateway.dicom.multipart import content_type_for_multipart, multipart_stream, new_boundary
from gateway.dicom.render import RenderOptions
from gateway.errors import NotAcceptable
from gateway.http.context import accept_of, base_url, gateway_of
from gateway.http.deidentified import selected
from gateway.http.retrieve_warnings import add_retrieve_warnings
from gateway.http.video import video_response
from gateway.ports import InstanceRecord
from gateway.services.instance_reader import parse_frame_list
from gateway.services.rendered import representative

# Rendered images are derived from immutable instances: a browser may reuse them for a while.
_CACHING = {"Cache-Control": "private, no-store"}  # patient data (gateway.http.middleware.response_headers)


def render_options(request: Request, media_type: str) -> RenderOptions:
    """The rendering options of the request's query (PS3.18 8.3.5.1)."""
    q = request.query_params
    window = q.get("window")
    viewport = q.get("viewport")
    quality = q.get("quality")
    return RenderOptions(
        media_type=media_type,
        quality=render.parse_quality(quality) if quality else render.DEFAULT_QUALITY,
        viewport=render.parse_viewport(viewport) if viewport else None,
        window=render.parse_window(window) if window else None,
    )


async def _select(request: Request, notes: list[str]) -> list[InstanceRecord]:
    p = request.path_params
    # A PACS retrieve that sent only part of the entity says so in ``notes``.
    return await selected(request, p["study"], p.get("series"), p.get("instance"), warnings=notes)


async def rendered(request: Request) -> Response:
    """``GET .../rendered`` at any level."""
    gw = gateway_of(request)
    frames = request.path_params.get("frames")
    numbers = parse_frame_list(frames) if frames is not None else None
    instance_level = "instance" in request.path_params
    notes: list[str] = []
    if instance_level and numbers is None:
        records = await _select(request, notes)
        if is_video(records[0].transfer_syntax):  # played as stored, not rendered (gateway.http.video)
            return add_retrieve_warnings(await video_response(request, records[0], bulkdata=False), notes)
    several = not instance_level or (numbers is not None and len(numbers) > 1)
    negotiated = negotiate_rendered(accept_of(request), multipart=several)
    options = render_options(request, negotiated.media_type)
    if not (instance_level and numbers is None):
        records = await _select(request, notes)
    targets: list[tuple[InstanceRecord, int]]
    if numbers is not None:
        targets = [(records[0], n) for n in numbers]
    elif instance_level:
        targets = [(records[0], 1)]
    elif negotiated.multipart:
        targets = [(r, 1) for r in records if r.pixel is not None]
    else:
        targets = [representative(records)]
    if not negotiated.multipart:
        if len(targets) != 1:
            raise NotAcceptable(f"several frames need multipart/related; type={negotiated.media_type}")
        record, number = targets[0]
        body = await gw.retrieval.render(record, number, options)
        return add_retrieve_warnings(Response(body, media_type=negotiated.media_type, headers=_CACHING), notes)
    if not targets:
        raise NotAcceptable("nothing to render: no instance here has pixel data")
    # Errors surface before the response starts: render the first image up front.
    first = await gw.retrieval.render(*targets[0], options)
    base = base_url(request)

    async def parts() -> AsyncIterator[tuple[str, bytes, dict[str, str]]]:
        for i, (record, number) in enumerate(targets):
            body = first if i == 0 else await gw.retrieval.render(record, number, options)
            where = f"{base}/studies/{record.study_uid}/series/{record.series_uid}/instances/{record.sop_uid}"
            yield negotiated.media_type, body, {"Content-Location": f"{where}/frames/{number}/rendered"}

    boundary = new_boundary()
    media_type = content_type_for_multipart(negotiated.media_type, None, boundary)
    response = StreamingResponse(multipart_stream(parts(), boundary), media_type=media_type, headers=_CACHING)
    return add_retrieve_warnings(response, notes)


async def thumbnail(request: Request) -> Response:
    """``GET .../thumbnail`` at any level: one small image (PS3.18 10.4.1.1.3)."""
    gw = gateway_of(request)
    frames = request.path_params.get("frames")
    numbers = parse_frame_list(frames) if frames is not None else None
    negotiated = negotiate_rendered(accept_of(request))
    options = render_options(request, negotiated.media_type)
    notes: list[str] = []
    records = await _select(request, notes)
    if numbers is not None:
        if options.viewport is None:
            options = RenderOptions(options.media_type, options.quality, render.Viewport(128, 128), options.window)
        body = await gw.retrieval.render(records[0], numbers[0], options)
    else:
        body = await gw.retrieval.thumbnail(records, options)
    return add_retrieve_warnings(Response(body, media_type=negotiated.media_type, headers=_CACHING), notes)
