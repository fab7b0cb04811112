"""QIDO-RS endpoints (PS3.18 10.6) at every level and nesting."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any, Literal

import anyio
import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from gateway.dicom import uids
from gateway.dicom.media import negotiate_qido
from gateway.dicom.query import parse_qido
from gateway.http.context import base_url, gateway_of
from gateway.http.deidentified import views_of
from gateway.http.middleware.security import restriction_of
from gateway.http.warning_header import add_warnings, warning_value

Level = Literal["study", "series", "instance"]

# Answers of more rows than this are serialized row by row as they are sent, never as one body.
STREAM_ROWS = 100
_CHUNK = 64 << 10


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
        query = dataclasses.replace(query, restriction=restriction_of(request))
        views = views_of(request)
        asked = query
        if views is not None:  # UIDs resolved back; matching on what is de-identified refused
            query = await views.original_query(query)
        # Under {base}/pacs/{name} only that PACS is asked (gateway.services.federation).
        result = await gw.qido.search(query, base_url=base_url(request), pacs=request.path_params.get("pacs"))
        if views is not None:
            rows = await anyio.to_thread.run_sync(views.rows, result.rows, asked)
            result = dataclasses.replace(result, rows=rows)
        response: Response
        if len(result.rows) > STREAM_ROWS:
            # The headers (Warning included) are all decided here, before the body starts.
            response = StreamingResponse(json_array(result.rows), media_type=negotiated.media_type)
        else:
            response = Response(orjson.dumps(result.rows), media_type=negotiated.media_type)
        if result.more:
            # PS3.18 8.3.4.4 / 10.6.3.2: tell the client the list was cut by limit.
            response.headers["warning"] = warning_value(
                "There are additional results that can be requested with offset"
            )
        # A PACS that failed costs only its rows; say which and why (PS3.18 8.3.4.x).
        add_warnings(response, result.extra.get("warnings", ()))
        return response

    search.__name__ = f"search_{level}"
    return search


search_studies = _endpoint("study")
search_series = _endpoint("series")
search_instances = _endpoint("instance")


async def json_array(rows: list[Any]) -> AsyncIterator[bytes]:
    """``rows`` as one JSON array, in chunks of about 64 KiB, each row serialized (and let go)
    only as its turn comes."""
    pending: list[bytes] = [b"["]
    size = 1
    for i in range(len(rows)):
        row, rows[i] = rows[i], None
        encoded = orjson.dumps(row)
        pending.append(encoded if i == 0 else b"," + encoded)
        size += len(encoded) + 1
        if size >= _CHUNK:
            yield b"".join(pending)
            pending, size = [], 0
    pending.append(b"]")
    yield b"".join(pending)
