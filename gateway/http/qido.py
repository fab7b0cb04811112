"""QIDO-RS endpoints (PS3.18 10.6) at every level and nesting."""

from __future__ import annotations

from typing import Literal

import orjson
from starlette.requests import Request
from starlette.responses import Response

from gateway.dicom import uids
from gateway.dicom.media import negotiate_qido
from gateway.dicom.query import parse_qido
from gateway.http.context import base_url, gateway_of
from gateway.services import qido

Level = Literal["study", "series", "instance"]


def _endpoint(level: Level):  # type: ignore[no-untyped-def]
    async def search(request: Request) -> Response:
        gw = gateway_of(request)
        negotiated = negotiate_qido(request.headers.get("accept"))
        study = request.path_params.get("study")
        series = request.path_params.get("series")
        if study is not None:
            uids.require_uid(study, "StudyInstanceUID")
        if series is not None:
            uids.require_uid(series, "SeriesInstanceUID")
        query = parse_qido(
            level,
            list(request.query_params.multi_items()),
            study=study,
            series=series,
        )
        result = await qido.search(gw.index, query, base_url=base_url(request))
        response = Response(orjson.dumps(result.rows), media_type=negotiated.media_type)
        if result.more:
            # PS3.18 8.3.4.4 / 10.6.3.2: tell the client the list was cut by limit.
            response.headers["warning"] = (
                '299 dicomweb-gateway "There are additional results that can be requested with offset"'
            )
        return response

    search.__name__ = f"search_{level}"
    return search


search_studies = _endpoint("study")
search_series = _endpoint("series")
search_instances = _endpoint("instance")
