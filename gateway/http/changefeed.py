"""``GET {base}/changefeed`` and ``{base}/changefeed/latest``: the change feed in Microsoft's
DICOM service spelling (v2), so its clients work unchanged.

Parameters (names case-insensitive, as Microsoft's): ``startTime`` and ``endTime`` (ISO 8601;
UTC when no offset is given; entries with ``startTime <= Timestamp < endTime``), ``offset``
(entries to skip, Microsoft's v2 meaning), ``limit`` (1-200, default 10), ``includeMetadata``
(``true``/``false``, default true). Anything malformed is a 400 naming the parameter.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from gateway.errors import BadRequest
from gateway.http.context import base_url, gateway_of
from gateway.http.deidentified import views_of
from gateway.http.middleware.security import restriction_of
from gateway.ports import ChangeEntry, ChangeQuery
from gateway.services.changefeed import DEFAULT_LIMIT, feed_entry_json
from gateway.services.deidentified import DeidentifiedViews

_JSON = "application/json"
_PARAMETERS = ("starttime", "endtime", "offset", "limit", "includemetadata")


async def changefeed(request: Request) -> Response:
    params = _parameters(request)
    query = ChangeQuery(
        limit=_integer(params, "limit", DEFAULT_LIMIT),
        offset=_integer(params, "offset", 0),
        start=_time(params, "starttime"),
        end=_time(params, "endtime"),
        restriction=restriction_of(request),
        include_metadata=_boolean(params, "includemetadata"),
    )
    entries = await gateway_of(request).changes.read(query, base_url=base_url(request))
    views = views_of(request)
    return Response(orjson.dumps([entry_json(e, views) for e in entries]), media_type=_JSON)


async def latest(request: Request) -> Response:
    params = _parameters(request)
    entry = await gateway_of(request).changes.latest(
        restriction_of(request), include_metadata=_boolean(params, "includemetadata"), base_url=base_url(request)
    )
    if entry is None:  # an empty feed: no entry to answer with (Microsoft's server answers 204 too)
        return Response(status_code=204)
    return Response(orjson.dumps(entry_json(entry, views_of(request))), media_type=_JSON)


def entry_json(entry: ChangeEntry, views: DeidentifiedViews | None = None) -> dict[str, Any]:
    """One entry as the feed spells it (:func:`gateway.services.changefeed.feed_entry_json`);
    with ``views``, de-identified: replacement UIDs, the metadata through the profile (none for
    a withheld instance)."""
    body = feed_entry_json(entry)
    return body if views is None else _deidentified(body, views)


def _deidentified(body: dict[str, Any], views: DeidentifiedViews) -> dict[str, Any]:
    for key in ("StudyInstanceUid", "SeriesInstanceUid", "SopInstanceUid"):
        body[key] = views.profile.uid(body[key])
    metadata = body["Metadata"]
    if metadata is not None:
        body["Metadata"] = None if views.profile.withholds(metadata) else views.profile.json_dataset(metadata)
    return body


def _parameters(request: Request) -> dict[str, str]:
    found: dict[str, str] = {}
    for name, value in request.query_params.multi_items():
        key = name.lower()
        if key in _PARAMETERS:
            if key in found:
                raise BadRequest(f"{name} is given more than once")
            found[key] = value
    return found


def _integer(params: dict[str, str], name: str, default: int) -> int:
    text = params.get(name)
    if text is None:
        return default
    if not text.isascii() or not text.isdigit() or len(text) > 18:
        raise BadRequest(f"{_SPELLING[name]} must be a non-negative integer")
    return int(text)


def _boolean(params: dict[str, str], name: str) -> bool:
    text = params.get(name, "true").lower()
    if text not in ("true", "false"):
        raise BadRequest(f"{_SPELLING[name]} must be true or false")
    return text == "true"


def _time(params: dict[str, str], name: str) -> float | None:
    text = params.get(name)
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text.replace(" ", "+"))  # a "+" left unencoded in the query
    except ValueError:
        raise BadRequest(f"{_SPELLING[name]} must be an ISO 8601 date and time, e.g. 2026-01-31T12:00:00Z") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


_SPELLING = {
    "starttime": "startTime",
    "endtime": "endTime",
    "offset": "offset",
    "limit": "limit",
    "includemetadata": "includeMetadata",
}
