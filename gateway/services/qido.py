"""QIDO-RS (PS3.18 10.6): answer a parsed query from the index.

With PACS nodes configured, :mod:`gateway.services.federation` also asks each of them (C-FIND)
and merges the answers by UID, using :func:`with_urls` for every row.
"""

from __future__ import annotations

from typing import Any

from gateway.dicom.attributes import RETRIEVE_URL, SERIES_INSTANCE_UID, SOP_INSTANCE_UID, STUDY_INSTANCE_UID
from gateway.dicom.query import QidoQuery
from gateway.ports import DicomJson, Index, SearchResult


async def search(index: Index, query: QidoQuery, *, base_url: str) -> SearchResult:
    """The index's matches for ``query``, each with its RetrieveURL (PS3.18 Table 10.6.3-3)
    under ``base_url`` (the public DICOMweb root, e.g. ``https://host/dicomweb``) and with
    relative BulkDataURIs (``includefield=all`` at instance level) made absolute."""
    base = base_url.rstrip("/")
    result = await index.search(query)
    rows = [with_urls(row, query, base) for row in result.rows]
    return SearchResult(rows=rows, more=result.more, extra=result.extra)


def with_urls(row: DicomJson, query: QidoQuery, base: str) -> DicomJson:
    """``row`` with its RetrieveURL under ``base`` and absolute BulkDataURIs."""
    url = f"{base}/studies/{_uid(row, STUDY_INSTANCE_UID)}"
    if query.level != "study":
        url += f"/series/{_uid(row, SERIES_INSTANCE_UID)}"
    if query.level == "instance":
        url += f"/instances/{_uid(row, SOP_INSTANCE_UID)}"
    out = {tag: _absolute(element, base) for tag, element in row.items()}
    out[RETRIEVE_URL] = {"vr": "UR", "Value": [url]}
    return dict(sorted(out.items()))


def _uid(row: DicomJson, tag: str) -> str:
    value = row.get(tag, {}).get("Value") or [""]
    return str(value[0])


def _absolute(element: Any, base: str) -> Any:
    """The element with relative BulkDataURIs (as the index stores them) under ``base``."""
    if not isinstance(element, dict):
        return element
    uri = element.get("BulkDataURI")
    if isinstance(uri, str) and "://" not in uri:
        return {**element, "BulkDataURI": f"{base}/{uri.lstrip('/')}"}
    if element.get("vr") == "SQ" and isinstance(element.get("Value"), list):
        items = [{t: _absolute(e, base) for t, e in item.items()} for item in element["Value"]]
        return {**element, "Value": items}
    return element
