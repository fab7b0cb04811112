"""QIDO query → SQLite SQL, for :mod:`gateway.adapters.sqlite_index`.

The shape of every search is shared with PostgreSQL (:mod:`gateway.adapters.sql_search`, which
also documents the row order); this is SQLite's :class:`~gateway.adapters.sql_search.Dialect`:
wildcards are ``GLOB`` patterns (case-sensitive, and able to use an index for a prefix), and the
slow path matches keys without an indexed column against the level's stored DICOM JSON with
``json_each``, normalizing values with the same Python functions as the indexed columns
(:func:`register_functions`), so both paths match alike.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from gateway.adapters.sql_search import (
    COLUMNS,
    Column,
    Dialect,
    column_values,
    name_condition,
    row_to_json,
    value_condition,
)
from gateway.adapters.sql_search import search_sql as _search_sql
from gateway.dicom.attributes import Level
from gateway.dicom.matching import dicom_glob, fold_name, fuzzy_word_pattern, name_words_column, normalize_temporal
from gateway.dicom.query import Match, QidoQuery

__all__ = ["COLUMNS", "Column", "SqliteDialect", "column_values", "register_functions", "row_to_json", "search_sql"]

_JSON_SOURCE: dict[Level, str] = {
    "study": "st.attrs",
    "series": "se.attrs",
    # metadata is a BLOB of JSON text; SQLite's JSON functions want TEXT.
    "instance": "CAST(i.metadata AS TEXT)",
}


class SqliteDialect(Dialect):
    param = "?"

    def pattern(self, expr: str, dicom_pattern: str, params: list[object]) -> str:
        params.append(dicom_glob(dicom_pattern))
        return f"{expr} GLOB ?"

    def fuzzy_word(self, expr: str, word: str, params: list[object]) -> str:
        params.append(fuzzy_word_pattern(word))
        return f"{expr} GLOB ?"

    def modalities(self) -> str:
        return "(SELECT group_concat(DISTINCT m.modality) FROM series AS m WHERE m.study_uid = st.study_uid)"

    def json_condition(self, query: QidoQuery, match: Match, params: list[object]) -> str:
        params.append(f'$."{match.tag}".Value')
        if match.vr == "PN":
            value = "CASE WHEN j.type = 'object' THEN json_extract(j.value, '$.Alphabetic') END"
            inner = name_condition(self, query, match, f"gw_fold_name({value})", f"gw_name_words({value})", params)
        else:
            inner = value_condition(self, match, "j.value", params, temporal="gw_temporal({p}, {})")
        return f"EXISTS (SELECT 1 FROM json_each({_JSON_SOURCE[match.level]}, ?) AS j WHERE {inner})"


DIALECT = SqliteDialect()


def search_sql(query: QidoQuery, limit: int) -> tuple[str, list[object]]:
    """The SELECT answering ``query`` (at most ``limit`` rows from ``query.offset``) and its
    parameters. Its rows are what :func:`row_to_json` takes."""
    return _search_sql(DIALECT, query, limit)


def register_functions(conn: sqlite3.Connection) -> None:
    """The Python functions the slow (JSON) matching path calls: the same normalization as the
    indexed columns, so both paths match alike."""
    conn.create_function("gw_fold_name", 1, _sql_text(fold_name), deterministic=True)
    conn.create_function("gw_name_words", 1, _sql_text(name_words_column), deterministic=True)
    conn.create_function("gw_temporal", 2, normalize_temporal, deterministic=True)


def _sql_text(fn: Callable[[str], str]) -> Callable[[object], str | None]:
    """Wrap a str → str function for SQLite: NULL and non-text values give NULL, not an error."""

    def wrapped(value: object) -> str | None:
        return fn(value) if isinstance(value, str) else None

    return wrapped
