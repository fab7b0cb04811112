"""QIDO query → PostgreSQL SQL, for :mod:`gateway.adapters.postgres_index`.

The shape of every search is shared with SQLite (:mod:`gateway.adapters.sql_search`, which
also documents the row order); this is PostgreSQL's :class:`~gateway.adapters.sql_search.Dialect`:

* wildcards are ``LIKE`` patterns (:func:`gateway.dicom.matching.dicom_like`) on columns with
  the ``C`` collation: byte-wise and case-sensitive like SQLite's ``GLOB``, ordered like SQLite's
  ``BINARY``, and a plain B-tree index serves a prefix pattern (``PatientName=smi*``);
* NULLs sort where SQLite puts them (first ascending, last descending), spelled out;
* the slow path for keys without an indexed column reads the level's stored DICOM JSON
  (``jsonb``) for plain values; person names, dates and times are compared with the normalized
  forms that :func:`norm_values` stored beside the JSON at insert time (``norm``), computed by
  the same Python functions as the indexed columns, so both paths and both databases match alike
  (PostgreSQL's own case and accent folding differ from Python's in corner cases).
"""

from __future__ import annotations

import functools
from typing import Any

from gateway.adapters.sql_search import (
    ALIAS,
    COLUMNS,
    Dialect,
    fuzzy_words,
    name_condition,
    value_condition,
)
from gateway.adapters.sql_search import search_sql as _search_sql
from gateway.dicom.attributes import Level, attribute_level, vr_of
from gateway.dicom.matching import dicom_like, fold_name, fuzzy_word_like, name_words_column, normalize_temporal
from gateway.dicom.query import TEMPORAL_VRS, Match, QidoQuery

__all__ = ["PostgresDialect", "norm_values", "search_sql"]

_JSON_SOURCE: dict[Level, str] = {
    "study": "st.attrs",
    "series": "se.attrs",
    # The instance metadata is kept byte for byte (bytea); the slow path parses it per candidate,
    # without the NUL escapes jsonb refuses (some files pad strings with NULs).
    "instance": "replace(convert_from(i.metadata, 'UTF8'), '\\u0000', '')::jsonb",
}


class PostgresDialect(Dialect):
    param = "%s"

    def pattern(self, expr: str, dicom_pattern: str, params: list[object]) -> str:
        params.append(dicom_like(dicom_pattern))
        return f"{expr} LIKE %s"

    def fuzzy_word(self, expr: str, word: str, params: list[object]) -> str:
        params.append(fuzzy_word_like(word))
        return f"{expr} LIKE %s"

    def modalities(self) -> str:
        return "(SELECT string_agg(DISTINCT m.modality, ',') FROM series AS m WHERE m.study_uid = st.study_uid)"

    def asc(self, expr: str) -> str:
        return f"{expr} NULLS FIRST"

    def desc(self, expr: str) -> str:
        return f"{expr} DESC NULLS LAST"

    def json_condition(self, query: QidoQuery, match: Match, params: list[object]) -> str:
        alias = ALIAS[match.level]
        if match.vr == "PN":
            params.append(match.tag + (":words" if fuzzy_words(query, match) else ":ci"))
            inner = name_condition(self, query, match, "n.v", "n.v", params)
            return f"EXISTS (SELECT 1 FROM jsonb_array_elements_text({alias}.norm -> %s) AS n(v) WHERE {inner})"
        if match.low is not None or match.high is not None or match.kind == "range":
            params.append(match.tag)
            inner = value_condition(self, match, "n.v", params)
            return f"EXISTS (SELECT 1 FROM jsonb_array_elements_text({alias}.norm -> %s) AS n(v) WHERE {inner})"
        # Plain values, typed as SQLite's json_each gives them: numbers match numbers, text text.
        params.append(match.tag)
        if match.number is not None:
            value = "(CASE WHEN jsonb_typeof(j.v) = 'number' THEN j.v::numeric END)"
        else:
            value = "(CASE WHEN jsonb_typeof(j.v) = 'string' THEN j.v #>> '{}' END)"
        inner = value_condition(self, match, value, params)
        # lax mode: a missing Value is no row, never an error.
        values = f"jsonb_path_query({_JSON_SOURCE[match.level]} -> %s, 'lax $.Value[*]')"
        return f"EXISTS (SELECT 1 FROM {values} AS j(v) WHERE {inner})"


DIALECT = PostgresDialect()


def search_sql(query: QidoQuery, limit: int) -> tuple[str, list[object]]:
    """The SELECT answering ``query`` (at most ``limit`` rows from ``query.offset``) and its
    parameters; rows are what :func:`gateway.adapters.sql_search.row_to_json` takes."""
    return _search_sql(DIALECT, query, limit)


def norm_values(level: Level, attrs: dict[str, Any]) -> dict[str, list[str]]:
    """The ``norm`` column of a level: for each attribute of ``level`` without an indexed
    column, the normalized forms of its values that matching compares — ``"{tag}:ci"`` and
    ``"{tag}:words"`` for person names, ``"{tag}"`` for DA / TM / DT. ``attrs`` may hold the
    attributes of other levels too (an instance's whole metadata): they are left out."""
    norm: dict[str, list[str]] = {}
    for tag, element in attrs.items():
        vr = _norm_vr(level, tag)
        if vr is None or not isinstance(element, dict):
            continue
        values = element.get("Value")
        if not isinstance(values, list):
            continue
        if vr == "PN":
            names = [v.get("Alphabetic") for v in values if isinstance(v, dict)]
            texts = [n for n in names if isinstance(n, str)]
            if texts:
                norm[f"{tag}:ci"] = [fold_name(t) for t in texts]
                norm[f"{tag}:words"] = [name_words_column(t) for t in texts]
        else:
            stamps = [s for s in (normalize_temporal(vr, v) for v in values) if s is not None]
            if stamps:
                norm[tag] = stamps
    return norm


@functools.lru_cache(maxsize=4096)
def _norm_vr(level: Level, tag: str) -> str | None:
    """The VR of ``tag`` when :func:`norm_values` keeps it at ``level``, else None."""
    if tag in COLUMNS[level] or attribute_level(tag) != level:
        return None
    vr = vr_of(tag)
    return vr if vr == "PN" or vr in TEMPORAL_VRS else None
