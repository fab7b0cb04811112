"""WADO-URI (PS3.18 9): ``GET {base}/wado?requestType=WADO&studyUID=..&seriesUID=..&objectUID=..``.

For older and mobile viewers that fetch one object by URL. Parameters (PS3.18 9.1.2):

* ``requestType=WADO``, ``studyUID``, ``seriesUID``, ``objectUID``: required;
* ``contentType``: a comma-separated list of media types in order of preference (parameters
  such as ``;q=0.5`` or ``;level=1`` are ignored); the first this gateway produces wins:
  ``application/dicom``, ``image/jpeg``, ``image/png``. Absent: ``image/jpeg`` for an object
  with pixel data, else ``application/dicom``;
* ``application/dicom``: ``transferSyntax`` (default Explicit VR Little Endian), transcoded like
  WADO-RS (a lossy syntax only when named);
* images: ``windowCenter`` and ``windowWidth`` (together), ``rows`` / ``columns`` (the size to
  scale to, keeping the aspect ratio; either alone scales to it), ``region=x1,y1,x2,y2``
  (fractions of the image, 0 to 1), ``frameNumber`` (default 1), ``imageQuality`` (1-100);
* ``anonymize=yes`` is honoured for a principal marked for de-identified views (its answers
  are de-identified anyway, gateway.http.deidentified) and refused for others; ``annotation`` and ``charset``
  are accepted and have no effect.

The object is authorised and located exactly like a WADO-RS instance.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from gateway.dicom import render, transcode, uids
from gateway.dicom.media import (
    APPLICATION_DICOM,
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMAGE_JPEG,
    IMAGE_PNG,
    IMPLICIT_VR_LITTLE_ENDIAN,
    Negotiated,
    normalize_media_type,
)
from gateway.dicom.render import RenderOptions, Viewport, Window
from gateway.errors import BadRequest, NotAcceptable, NotFound
from gateway.http.context import gateway_of
from gateway.http.deidentified import deidentified_body, selected, views_of
from gateway.http.started import started
from gateway.ports import InstanceRecord

PRODUCED = (APPLICATION_DICOM, IMAGE_JPEG, IMAGE_PNG)


def _required(request: Request, name: str) -> str:
    value = request.query_params.get(name)
    if not value:
        raise BadRequest(f"WADO-URI needs the {name} parameter (PS3.18 9.1.2.1)")
    return value


def _int(request: Request, name: str, low: int, high: int) -> int | None:
    raw = request.query_params.get(name)
    if raw is None:
        return None
    if not raw.isdigit() or not low <= int(raw[:10]) <= high:
        raise BadRequest(f"{name}={raw[:20]!r} must be an integer from {low} to {high}")
    return int(raw)


def _content_type(request: Request, record: InstanceRecord) -> str:
    wanted = request.query_params.get("contentType")
    if not wanted:
        return IMAGE_JPEG if record.pixel is not None else APPLICATION_DICOM
    asked = [normalize_media_type(item.split(";", 1)[0]) for item in wanted.split(",") if item.strip()]
    for media in asked:
        if media in PRODUCED and (media == APPLICATION_DICOM or record.pixel is not None):
            return media
        if media in ("*/*", "image/*") and record.pixel is not None:
            return IMAGE_JPEG
    raise NotAcceptable(f"contentType {wanted[:100]!r} cannot be served; available: {', '.join(PRODUCED)}")


def _window(request: Request) -> Window | None:
    center, width = request.query_params.get("windowCenter"), request.query_params.get("windowWidth")
    if center is None and width is None:
        return None
    if center is None or width is None:
        raise BadRequest("windowCenter and windowWidth go together (PS3.18 9.1.2.2)")
    return render.parse_window(f"{center},{width}")


def _viewport(request: Request, record: InstanceRecord) -> Viewport | None:
    rows = _int(request, "rows", 1, render.MAX_VIEWPORT)
    columns = _int(request, "columns", 1, render.MAX_VIEWPORT)
    region_text = request.query_params.get("region")
    region = None
    pixel = record.pixel
    if region_text and pixel is not None:
        try:
            x1, y1, x2, y2 = (float(v) for v in region_text.split(","))
        except ValueError:
            raise BadRequest(f"region={region_text[:60]!r} must be four numbers x1,y1,x2,y2") from None
        if not (0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1):
            raise BadRequest("region must satisfy 0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1")
        sx, sy = int(x1 * pixel.columns), int(y1 * pixel.rows)
        sw = max(1, round((x2 - x1) * pixel.columns))
        sh = max(1, round((y2 - y1) * pixel.rows))
        region = (sx, sy, sw, sh)
    if rows is None and columns is None:
        if region is None:
            return None
        return Viewport(region[2], region[3], region)
    return Viewport(columns or render.MAX_VIEWPORT, rows or render.MAX_VIEWPORT, region)


async def retrieve(request: Request) -> Response:
    """The object, as ``application/dicom`` or a rendered image."""
    gw = gateway_of(request)
    if request.query_params.get("requestType") != "WADO":
        raise BadRequest("WADO-URI needs requestType=WADO (PS3.18 9.1.2.1)")
    study, series, sop = (_required(request, n) for n in ("studyUID", "seriesUID", "objectUID"))
    # The answer to a de-identified principal is de-identified, so its anonymize=yes is honoured;
    # for others the gateway does not de-identify on request.
    if request.query_params.get("anonymize", "").lower() == "yes" and views_of(request) is None:
        raise NotAcceptable("anonymize=yes is not supported: this gateway does not de-identify objects")
    records = await selected(request, study, series, sop)
    record = records[0]
    media = _content_type(request, record)
    if media == APPLICATION_DICOM:
        return await _dicom(request, record)
    frame = _int(request, "frameNumber", 1, 1_000_000_000) or 1
    frames = record.pixel.number_of_frames if record.pixel else 0
    if frame > frames:
        raise NotFound(f"frame {frame} does not exist: object {record.sop_uid} has {frames} frame(s)")
    quality = _int(request, "imageQuality", 1, 100) or render.DEFAULT_QUALITY
    options = RenderOptions(media, quality, _viewport(request, record), _window(request))
    body = await gw.retrieval.render(record, frame, options)
    return Response(body, media_type=media, headers={"Cache-Control": "private, no-store"})


async def _dicom(request: Request, record: InstanceRecord) -> Response:
    gw = gateway_of(request)
    syntax = request.query_params.get("transferSyntax") or EXPLICIT_VR_LITTLE_ENDIAN
    uids.require_uid(syntax, "transferSyntax")
    producible = (record.pixel is None or transcode.can_decode(record.transfer_syntax)) and syntax in (
        EXPLICIT_VR_LITTLE_ENDIAN,
        IMPLICIT_VR_LITTLE_ENDIAN,
    )
    if syntax != record.transfer_syntax and not (
        producible or syntax in transcode.encodable_syntaxes(record.pixel, record.transfer_syntax)
    ):
        raise NotAcceptable(f"object {record.sop_uid} cannot be sent in transfer syntax {syntax}")
    content_type, body = gw.retrieval.part(record, Negotiated(APPLICATION_DICOM, syntax, False))
    views = views_of(request)
    if views is not None:
        body = deidentified_body(views, body, record)
    # The first bytes are read before the status is sent: a store that is down answers 503.
    headers = {"Cache-Control": "private, no-store, no-transform"}
    return StreamingResponse(await started(body), media_type=content_type, headers=headers)
