"""WADO-RS endpoints (PS3.18 10.4): instances, metadata, frames, bulk data."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from gateway.dicom import uids
from gateway.dicom.media import (
    APPLICATION_OCTET_STREAM,
    negotiate_bulkdata,
    negotiate_frames,
    negotiate_instances,
    negotiate_metadata,
)
from gateway.dicom.multipart import content_type_for_multipart, multipart_stream, new_boundary
from gateway.http.context import base_url, gateway_of
from gateway.ports import InstanceRecord
from gateway.services.wado import FRAME_SYNTAXES, INSTANCE_SYNTAXES, parse_frame_list

# Pixel data must not be gzip-compressed by middleware or proxies on our behalf: it costs far
# more CPU than it saves on already-compressed or noisy image data.
_NO_TRANSFORM = {"Cache-Control": "private, no-transform"}


def _uids(request: Request) -> tuple[str, str | None, str | None]:
    p = request.path_params
    return p["study"], p.get("series"), p.get("instance")


async def retrieve(request: Request) -> Response:
    """``GET .../studies/{s}[/series/{se}[/instances/{i}]]``: multipart/related DICOM instances."""
    gw = gateway_of(request)
    records = await gw.wado.select(*_uids(request))
    negotiated = negotiate_instances(
        request.headers.get("accept"),
        stored_syntaxes={r.transfer_syntax for r in records},
        supported=INSTANCE_SYNTAXES,
    )
    boundary = new_boundary()

    def parts() -> Iterator[tuple[str, AsyncIterator[bytes]]]:
        for record in records:
            yield gw.wado.instance_part(record, negotiated)

    media_type = content_type_for_multipart(negotiated.media_type, negotiated.transfer_syntax, boundary)
    return StreamingResponse(multipart_stream(parts(), boundary), media_type=media_type, headers=_NO_TRANSFORM)


async def metadata(request: Request) -> Response:
    """``GET .../metadata`` at study, series or instance level, answered from the index."""
    gw = gateway_of(request)
    negotiated = negotiate_metadata(request.headers.get("accept"))
    records = await gw.wado.select(*_uids(request))
    return Response(gw.wado.metadata_body(records, base_url(request)), media_type=negotiated.media_type)


async def _one_instance(request: Request) -> InstanceRecord:
    gw = gateway_of(request)
    study, series, sop = _uids(request)
    return (await gw.wado.select(study, series, sop))[0]


async def frames(request: Request) -> Response:
    """``GET .../instances/{i}/frames/{list}`` (PS3.18 10.4.1.1.4)."""
    gw = gateway_of(request)
    numbers = parse_frame_list(request.path_params["frames"])
    record = await _one_instance(request)
    negotiated = negotiate_frames(
        request.headers.get("accept"), stored_syntaxes={record.transfer_syntax}, supported=FRAME_SYNTAXES
    )
    bodies = await gw.wado.frames(record, numbers, negotiated)
    part_type = gw.wado.frame_content_type(record, negotiated)
    boundary = new_boundary()
    media_type = content_type_for_multipart(negotiated.media_type, None, boundary)
    location = f"{base_url(request)}/studies/{record.study_uid}/series/{record.series_uid}/instances/{record.sop_uid}"
    parts = [
        (part_type, body, {"Content-Location": f"{location}/frames/{n}"})
        for n, body in zip(numbers, bodies, strict=True)
    ]
    return StreamingResponse(multipart_stream(parts, boundary), media_type=media_type, headers=_NO_TRANSFORM)


async def bulkdata(request: Request) -> Response:
    """``GET .../instances/{i}/bulkdata/{path}``: the URIs handed out in metadata."""
    gw = gateway_of(request)
    path = request.path_params["path"]
    record = await _one_instance(request)
    negotiated = negotiate_bulkdata(request.headers.get("accept"))
    value = await gw.wado.bulkdata(record, path)
    if not negotiated.multipart:
        return Response(value, media_type=APPLICATION_OCTET_STREAM, headers=_NO_TRANSFORM)
    boundary = new_boundary()
    media_type = content_type_for_multipart(APPLICATION_OCTET_STREAM, None, boundary)
    return StreamingResponse(
        multipart_stream([(APPLICATION_OCTET_STREAM, value)], boundary), media_type=media_type, headers=_NO_TRANSFORM
    )


def validate_uid_params(request: Request) -> None:
    for name, what in (("study", "StudyInstanceUID"), ("series", "SeriesInstanceUID"), ("instance", "SOPInstanceUID")):
        if name in request.path_params:
            uids.require_uid(request.path_params[name], what)
