"""QIDO-RS across the gateway's index and every configured PACS (PS3.18 10.6, PS3.4 C.4.1).

Which sources a search asks (the *selector*):

* ``{base}/studies`` (and every other QIDO path under the base): the local index and every
  PACS, all in parallel;
* ``{base}/pacs/{name}/studies`` ...: that PACS alone. The prefix is a complete DICOMweb root
  of its own, so a viewer can be pointed at one PACS without any non-standard parameter, and
  the RetrieveURLs it gets back stay under that prefix.

Merging. Rows are matched by the unique key of the query level (Study, Series or SOP Instance
UID), never by position. The first source that has a row gives its attributes (the index
first, then the PACS in configuration order); the others only add attributes it lacks, except
that counts (NumberOfStudyRelated...) take the largest value and ModalitiesInStudy the union,
because a study cached in part is smaller in the index than in its PACS. RetrieveAETitle lists
every PACS that answered with the row; RetrieveURL is the gateway's own URL (it fetches from
the PACS on demand). Attributes no source sent stay absent.

Paging. C-FIND has neither offset nor order, so the first N matches of a PACS are not the
first N of any order the gateway could apply: to page deterministically, every PACS is asked
for all its matches up to ``limits.max_qido_results`` (then stopped with C-CANCEL) and the index
for ``offset + limit`` rows. The merged rows are sorted — studies newest first (StudyDate,
StudyTime descending, then UID, as the index orders them), series and instances by their
parents' UIDs, number and UID — and ``offset``/``limit`` are applied to that list, so
consecutive pages neither overlap nor skip as long as each PACS has at most
``max_qido_results`` matches. ``more`` (the Warning of PS3.18 8.3.4.4) is set when a source
had more or the merged list continues.

Failure of a PACS (refused, timed out, failure status) costs only its rows: the response
carries the other sources' rows and a Warning naming the PACS. A search of one node alone
(``{base}/pacs/{name}/...``) has no other source: its failure is the answer (502 / 504).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import anyio

from gateway.dicom.attributes import (
    MODALITIES_IN_STUDY,
    NUMBER_OF_SERIES_RELATED_INSTANCES,
    NUMBER_OF_STUDY_RELATED_INSTANCES,
    NUMBER_OF_STUDY_RELATED_SERIES,
    SERIES_INSTANCE_UID,
    SOP_INSTANCE_UID,
    STUDY_INSTANCE_UID,
    tag_of,
)
from gateway.dicom.cfind import RETRIEVE_AE_TITLE, row_uid
from gateway.dicom.query import QidoQuery
from gateway.errors import NotFound, UpstreamError, UpstreamTimeout
from gateway.ports import DicomJson, FindResult, Index, SearchResult, Upstream
from gateway.security.access import Restriction
from gateway.services import qido
from gateway.services.visibility import Visibility

log = logging.getLogger(__name__)

COUNT_TAGS = frozenset(
    {NUMBER_OF_STUDY_RELATED_SERIES, NUMBER_OF_STUDY_RELATED_INSTANCES, NUMBER_OF_SERIES_RELATED_INSTANCES}
)
STUDY_DATE = tag_of("StudyDate")
STUDY_TIME = tag_of("StudyTime")
SERIES_NUMBER = tag_of("SeriesNumber")
INSTANCE_NUMBER = tag_of("InstanceNumber")


class QidoFederation:
    """QIDO over the index and the PACS nodes ``upstreams`` (name → adapter, config order)."""

    def __init__(self, index: Index, upstreams: Mapping[str, Upstream], *, max_results: int) -> None:
        self._index = index
        self._upstreams = dict(upstreams)
        self._max_results = max_results

    def node(self, name: str) -> Upstream:
        """The PACS a ``{base}/pacs/{name}`` path selects; NotFound for an unknown name."""
        upstream = self._upstreams.get(name)
        if upstream is None:
            raise NotFound(f"no PACS named {name!r} is configured")
        return upstream

    async def search(self, query: QidoQuery, *, base_url: str, pacs: str | None = None) -> SearchResult:
        """Answer ``query`` from the selected sources; ``extra["warnings"]`` lists PACS failures."""
        base = base_url.rstrip("/")
        if pacs is None and not self._upstreams:
            return await qido.search(self._index, query, base_url=base)  # no PACS: the plain path
        limit = min(query.limit if query.limit is not None else self._max_results, self._max_results)
        window = query.offset + limit
        widened = dataclasses.replace(query, limit=window, offset=0)
        if pacs is not None:
            base = f"{base}/pacs/{pacs}"
            names = [self.node(pacs).name]
        else:
            names = list(self._upstreams)

        local: SearchResult | None = None
        found: dict[str, FindResult] = {}
        warnings: list[str] = []
        failures: list[UpstreamError | UpstreamTimeout] = []

        async def ask_index() -> None:
            nonlocal local
            local = await self._index.search(widened)

        async def ask(name: str) -> None:
            upstream = self._upstreams[name]
            try:
                result = await upstream.find(widened, self._max_results)
                if query.restriction is not None:
                    result = await self._restricted(upstream, result, query.restriction)
            except (UpstreamError, UpstreamTimeout) as exc:
                log.warning("QIDO: %s", exc.reason)
                warnings.append(exc.reason)
                failures.append(exc)
                return
            found[name] = result
            warnings.extend(result.warnings)

        async with anyio.create_task_group() as tg:
            if pacs is None:
                tg.start_soon(ask_index)
            for name in names:
                tg.start_soon(ask, name)

        if pacs is not None and failures:
            # A per-node search has no other source whose rows a Warning could qualify: an empty
            # 200 would claim the PACS holds nothing. Its failure is the answer (502 / 504).
            raise failures[0]
        sources: list[tuple[str | None, list[DicomJson]]] = []
        more = False
        if local is not None:
            sources.append((None, local.rows))
            more = local.more
        for name in names:  # configuration order, whatever order they answered in
            if name in found:
                sources.append((self._upstreams[name].ae_title, found[name].rows))
                more = more or found[name].more
        merged = merge_rows(query, sources)
        page = merged[query.offset : query.offset + limit]
        more = more or len(merged) > query.offset + limit
        rows = [qido.with_urls(row, query, base) for row in page]
        return SearchResult(rows=rows, more=more, extra={"warnings": warnings})

    async def _restricted(self, upstream: Upstream, result: FindResult, restriction: Restriction) -> FindResult:
        """Only the rows of studies ``restriction`` allows; a row whose study cannot be decided
        (no PatientID in it, study not listed) is checked with one study-level C-FIND."""
        verdicts: dict[str, bool] = {}
        kept: list[DicomJson] = []
        for row in result.rows:
            study = row_uid(row, "study")
            if study is None:
                continue
            verdict = Visibility.row_decided(row, restriction)
            if verdict is None:
                if study not in verdicts:
                    verdicts[study] = await Visibility.pacs_study_visible(upstream, study, restriction)
                verdict = verdicts[study]
            if verdict:
                kept.append(row)
        return dataclasses.replace(result, rows=kept)


# ---------------------------------------------------------------------------------------------


def merge_rows(query: QidoQuery, sources: Sequence[tuple[str | None, list[DicomJson]]]) -> list[DicomJson]:
    """Merge rows by UID (see the module docstring). ``sources`` are (PACS AE title or None for
    the index, rows), in priority order. Rows without the level's UID are dropped."""
    merged: dict[str, DicomJson] = {}
    for ae_title, rows in sources:
        for row in rows:
            uid = row_uid(row, query.level)
            if uid is None:
                log.warning("QIDO: dropped a row without its %s-level UID from %s", query.level, ae_title or "index")
                continue
            current = merged.get(uid)
            merged[uid] = dict(row) if current is None else _combine(current, row)
            if ae_title is not None:
                _add_retrieve_ae(merged[uid], ae_title)
    return sorted(merged.values(), key=_sort_key(query))


def _combine(first: DicomJson, other: DicomJson) -> DicomJson:
    out = dict(first)
    for tag, element in other.items():
        mine = out.get(tag)
        if tag in COUNT_TAGS:
            out[tag] = _larger(mine, element)
        elif tag == MODALITIES_IN_STUDY:
            values = sorted(set(_values(mine)) | set(_values(element)))
            out[tag] = {"vr": "CS", "Value": values} if values else {"vr": "CS"}
        elif tag == RETRIEVE_AE_TITLE:
            continue  # added per source by _add_retrieve_ae
        elif mine is None or ("Value" not in mine and "Value" in element):
            out[tag] = element
    return out


def _add_retrieve_ae(row: DicomJson, ae_title: str) -> None:
    # The PACS may name another AE for retrieval; both are places the row can be fetched from.
    titles = [t.strip() for t in _values(row.get(RETRIEVE_AE_TITLE)) if isinstance(t, str) and t.strip()]
    if ae_title.strip() not in titles:
        titles.append(ae_title.strip())
    row[RETRIEVE_AE_TITLE] = {"vr": "AE", "Value": titles}


def _values(element: Any) -> list[Any]:
    if not isinstance(element, dict):
        return []
    values = element.get("Value")
    return list(values) if isinstance(values, list) else []


def _larger(a: Any, b: Any) -> Any:
    def number(element: Any) -> float:
        values = _values(element)
        return float(values[0]) if values and isinstance(values[0], int | float) else -1.0

    return a if number(a) >= number(b) else b


def _text(row: DicomJson, tag: str) -> str:
    values = _values(row.get(tag))
    return str(values[0]) if values and values[0] is not None else ""


def _number(row: DicomJson, tag: str) -> float:
    values = _values(row.get(tag))
    # Unnumbered first, as the index orders them.
    return float(values[0]) if values and isinstance(values[0], int | float) else float("-inf")


def _sort_key(query: QidoQuery) -> Any:
    if query.level == "study":

        def study_key(row: DicomJson) -> tuple[Any, ...]:
            date, time_ = _text(row, STUDY_DATE), _text(row, STUDY_TIME)
            # Newest first; studies without a date last. Inverting the characters turns the
            # descending date/time order into an ascending sort key.
            return (date == "", _descending(date), _descending(time_), _text(row, STUDY_INSTANCE_UID))

        return study_key
    if query.level == "series":
        return lambda row: (
            _text(row, STUDY_INSTANCE_UID),
            _number(row, SERIES_NUMBER),
            _text(row, SERIES_INSTANCE_UID),
        )
    return lambda row: (
        _text(row, STUDY_INSTANCE_UID),
        _text(row, SERIES_INSTANCE_UID),
        _number(row, INSTANCE_NUMBER),
        _text(row, SOP_INSTANCE_UID),
    )


def _descending(text: str) -> str:
    return "".join(chr(0x10FFFF - ord(c)) for c in text) + "\U0010ffff"
