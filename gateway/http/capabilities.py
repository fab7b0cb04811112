"""The Capabilities transaction (PS3.18 8.9, 10.8): ``OPTIONS {base}`` and ``OPTIONS`` on any
resource under it answer with a WADL document (``application/vnd.sun.wadl+xml``) describing
what this gateway serves there: methods, query parameters, and the media types (with transfer
syntaxes) of requests and responses.

A plain OPTIONS is this transaction. A CORS preflight (OPTIONS with ``Origin`` and
``Access-Control-Request-Method``) never gets here when CORS is configured: the CORS middleware,
outside the routes, answers it (gateway.http.middleware.cors). The document is built from the application's
own route table, so it cannot describe a route that is not served, or miss one. It names path
templates only (``studies/{study}``), never the UIDs of the request.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Mount, Route, compile_path
from starlette.types import Scope

from gateway.dicom import transcode
from gateway.dicom.media import (
    APPLICATION_DICOM,
    APPLICATION_DICOM_JSON,
    APPLICATION_JSON,
    APPLICATION_OCTET_STREAM,
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMAGE_DICOM_RLE,
    IMAGE_JLS,
    IMAGE_JP2,
    IMAGE_JPEG,
    IMAGE_PNG,
    IMPLICIT_VR_LITTLE_ENDIAN,
    MULTIPART_RELATED,
    MediaRange,
    parse_accept,
)
from gateway.dicom.ziparchive import APPLICATION_ZIP
from gateway.errors import NotAcceptable, NotFound
from gateway.http import bulk_update, changefeed, delete, protection, qido, rendered, stow, wado, wado_uri
from gateway.http.context import base_url, gateway_of

WADL = "application/vnd.sun.wadl+xml"
_WADL_TYPES = (WADL, "application/xml", "text/xml")
_PARAM = re.compile(r"\{(\w+)(?::\w+)?\}")


class OptionsRoute(Route):
    """A route that matches OPTIONS only: other methods on its path are not "405 Method Not
    Allowed" but fall through to the other routes (or 404), as if it were not there."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope.get("method") != "OPTIONS":
            return Match.NONE, {}
        return super().matches(scope)


@dataclass(frozen=True)
class Method:
    """What one endpoint does, for the WADL."""

    id: str
    doc: str
    query: tuple[str, ...] = ()
    request: tuple[str, ...] = ()
    response: tuple[str, ...] = ()
    status: int = 200


TEXT_PLAIN = "text/plain"


def _multipart(part: str, syntaxes: Sequence[str] = ()) -> list[str]:
    base = f'{MULTIPART_RELATED}; type="{part}"'
    return [base, *(f"{base}; transfer-syntax={ts}" for ts in syntaxes)]


_INSTANCE_SYNTAXES = ("*", EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN, *sorted(transcode.ENCODABLE))
_FRAME_TYPES = [
    *_multipart(APPLICATION_OCTET_STREAM, ("*", EXPLICIT_VR_LITTLE_ENDIAN)),
    *(
        media
        for kind in (IMAGE_JLS, IMAGE_JP2, IMAGE_DICOM_RLE, IMAGE_JPEG)
        for media in (kind, *_multipart(kind, ("*",)))
    ),
]
_RENDER_QUERY = ("accept", "window", "viewport", "quality", "annotation")
_SEARCH_QUERY = ("{attributeID}", "includefield", "fuzzymatching", "limit", "offset")
_IMAGES = (IMAGE_JPEG, IMAGE_PNG)

_JSON = (APPLICATION_DICOM_JSON, APPLICATION_JSON)
_QIDO = "QIDO-RS (PS3.18 10.6)"
_WADO_URI_QUERY = (
    "requestType", "studyUID", "seriesUID", "objectUID", "contentType", "transferSyntax", "windowCenter",
    "windowWidth", "rows", "columns", "region", "frameNumber", "imageQuality", "annotation", "charset",
)  # fmt: skip


def _search(kind: str) -> Callable[[str], Method]:
    return lambda _: Method(f"SearchFor{kind}", _QIDO, _SEARCH_QUERY, (), _JSON)


DESCRIPTIONS: dict[Callable[..., Any], Callable[[str], Method]] = {
    qido.search_studies: _search("Studies"),
    qido.search_series: _search("Series"),
    qido.search_instances: _search("Instances"),
    stow.store_instances: lambda _: Method(
        "StoreInstances",
        "STOW-RS (PS3.18 10.5); ZIP archives too",
        (),
        (*_multipart(APPLICATION_DICOM), APPLICATION_ZIP),
        (APPLICATION_DICOM_JSON,),
    ),
    wado.retrieve: lambda p: Method(
        "Retrieve" + _level(p),
        "WADO-RS instances (PS3.18 10.4)",
        response=tuple(_multipart(APPLICATION_DICOM, _INSTANCE_SYNTAXES)),
    ),
    wado.metadata: lambda p: Method(
        "Retrieve" + _level(p) + "Metadata", "WADO-RS metadata (PS3.18 10.4)", response=_JSON
    ),
    wado.frames: lambda _: Method("RetrieveFrames", "WADO-RS frames (PS3.18 10.4)", response=tuple(_FRAME_TYPES)),
    wado.bulkdata: lambda _: Method(
        "RetrieveBulkdata",
        "WADO-RS bulk data (PS3.18 10.4)",
        response=(APPLICATION_OCTET_STREAM, *_multipart(APPLICATION_OCTET_STREAM)),
    ),
    rendered.rendered: lambda p: Method(
        "RetrieveRendered" + _level(p),
        "Rendered (PS3.18 10.4.1.1.3)",
        _RENDER_QUERY,
        response=(*_IMAGES, *(m for i in _IMAGES for m in _multipart(i))),
    ),
    rendered.thumbnail: lambda p: Method(
        "RetrieveThumbnail" + _level(p), "Thumbnail (PS3.18 10.4.1.1.3)", _RENDER_QUERY, response=_IMAGES
    ),
    wado_uri.retrieve: lambda _: Method(
        "RetrieveWadoUri", "WADO-URI (PS3.18 9)", _WADO_URI_QUERY, response=(APPLICATION_DICOM, *_IMAGES)
    ),
    delete.delete: lambda p: Method("Delete" + _level(p), "Delete (Microsoft's DICOM service, admin)", status=204),
    delete.reject: lambda p: Method(
        "Reject" + _level(p), "Reject with a PS3.16 CID 7011 code, which deletes (admin scope)", status=204
    ),
    protection.get_protected: lambda _: Method(
        "ReadStudyProtection", "Whether retention sweeps spare the study (1 or 0)", response=(TEXT_PLAIN,)
    ),
    protection.put_protected: lambda _: Method(
        "ProtectStudy",
        "Protect the study from retention sweeps: body 1 or 0 (admin scope)",
        request=(TEXT_PLAIN,),
        status=204,
    ),
    bulk_update.bulk_update: lambda _: Method(
        "BulkUpdateStudies",
        "Correct Patient and Study attributes of whole studies (Microsoft's $bulkUpdate, admin scope)",
        request=(APPLICATION_JSON,),
        response=(APPLICATION_JSON,),
        status=202,
    ),
    bulk_update.operation_status: lambda _: Method(
        "ReadOperation", "Status of a bulk update (Microsoft's operations, admin scope)", response=(APPLICATION_JSON,)
    ),
    bulk_update.original: lambda _: Method(
        "RetrieveOriginalVersion",
        "The instance as stored before its first correction (admin scope)",
        response=(APPLICATION_DICOM,),
    ),
    changefeed.changefeed: lambda _: Method(
        "ReadChangeFeed",
        "Change feed (Microsoft's DICOM service, v2)",
        ("startTime", "endTime", "offset", "limit", "includeMetadata"),
        response=(APPLICATION_JSON,),
    ),
    changefeed.latest: lambda _: Method(
        "ReadLatestChange", "Latest change-feed entry", ("includeMetadata",), response=(APPLICATION_JSON,)
    ),
}


def _level(template: str) -> str:
    if "/frames/" in template:
        return "Frames"
    if "{instance}" in template:
        return "Instance"
    if "{series}" in template:
        return "Series"
    return "Study"


@dataclass(frozen=True)
class Resource:
    template: str  # full path template, e.g. /dicomweb/studies/{study}
    methods: tuple[tuple[str, Method], ...]


def _walk(routes: Sequence[BaseRoute], prefix: str = "") -> Iterator[tuple[str, str, Callable[..., Any]]]:
    for route in routes:
        if isinstance(route, Mount):
            yield from _walk(list(route.routes), prefix + route.path)
        elif isinstance(route, Route) and not isinstance(route, OptionsRoute):
            for method in sorted((route.methods or set()) - {"HEAD"}):
                yield prefix + route.path, method, route.endpoint


def resources(routes: Sequence[BaseRoute]) -> list[Resource]:
    """Every resource the app serves with what each method does there, in route order."""
    table: dict[str, list[tuple[str, Method]]] = {}
    for template, method, endpoint in _walk(routes):
        describe = DESCRIPTIONS.get(endpoint)
        if describe is not None:
            table.setdefault(template, []).append((method, describe(template)))
    return [Resource(t, tuple(m)) for t, m in table.items()]


def _wadl(base: str, found: Sequence[Resource], base_path: str) -> str:
    lines = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        '<application xmlns="http://wadl.dev.java.net/2009/02">',
        '  <doc title="dicomweb-gateway">DICOMweb Studies Service (PS3.18): QIDO-RS, WADO-RS, STOW-RS,'
        " rendered and thumbnail resources, WADO-URI. Transfer syntaxes produced besides the stored one: "
        + escape(", ".join(_INSTANCE_SYNTAXES[1:]))
        + ".</doc>",
        f"  <resources base={quoteattr(base.rstrip('/') + '/')}>",
    ]
    for resource in found:
        relative = resource.template[len(base_path) :].lstrip("/")
        relative = _PARAM.sub(r"{\1}", relative)
        lines.append(f"    <resource path={quoteattr(relative)}>")
        for name in dict.fromkeys(_PARAM.findall(resource.template)):
            lines.append(f'      <param name="{name}" style="template" required="true"/>')
        for method, info in resource.methods:
            lines.append(f'      <method name="{method}" id="{info.id}">')
            lines.append(f"        <doc>{escape(info.doc)}</doc>")
            if info.query or info.request:
                lines.append("        <request>")
                lines += [f'          <param name={quoteattr(q)} style="query"/>' for q in info.query]
                lines += [f"          <representation mediaType={quoteattr(m)}/>" for m in info.request]
                lines.append("        </request>")
            lines.append(f'        <response status="{info.status}">')
            lines += [f"          <representation mediaType={quoteattr(m)}/>" for m in info.response]
            lines.append("        </response>")
            lines.append("      </method>")
        lines.append('      <method name="OPTIONS" id="RetrieveCapabilities">')
        lines.append(f'        <response status="200"><representation mediaType="{WADL}"/></response>')
        lines.append("      </method>")
        lines.append("    </resource>")
    lines += ["  </resources>", "</application>", ""]
    return "\n".join(lines)


def _negotiate(accept: str | None) -> str:
    ranges: Sequence[MediaRange] = parse_accept(accept) or (MediaRange("*", "*"),)
    for r in ranges:
        if r.q == 0:
            continue
        for media in _WADL_TYPES:
            if r.matches(media):
                return WADL if media == WADL or r.type == "*" else media
    raise NotAcceptable(f"capabilities are described as {WADL} only")


async def describe(request: Request) -> Response:
    """``OPTIONS {base}`` (everything) or ``OPTIONS {base}/...`` (that resource)."""
    gw = gateway_of(request)
    media = _negotiate(request.headers.get("accept"))
    base_path = gw.settings.base_path
    every = resources(request.app.routes)
    path = request.url.path.rstrip("/") or "/"
    if path in (base_path, "/") or (not base_path and path == ""):
        found = every
    else:
        found = [r for r in every if compile_path(r.template)[0].match(path)]
        if not found:
            raise NotFound(f"no resource {path[:200]!r} here")
        pacs = request.path_params.get("path", "").split("/")
        if len(pacs) > 1 and pacs[0] == "pacs":
            gw.qido.node(pacs[1])  # an unknown PACS name is a 404, as for its other resources
    allow = sorted({m for r in found for m, _ in r.methods} | {"OPTIONS"})
    body = _wadl(base_url(request), found, base_path)
    return Response(body, media_type=media, headers={"Allow": ", ".join(allow)})
