"""QIDO query → SQLite SQL, and result rows → DICOM JSON, for :mod:`gateway.adapters.sqlite_index`.

Matching keys with an indexed column (:data:`COLUMNS`) are answered from it; any other key is
matched against the stored DICOM JSON of its level with ``json_each`` (the slow path: no index,
the JSON is parsed per candidate row, so it is meant to narrow down queries that also use an
indexed key or a path scope). Values are always bound parameters; the only text put into SQL is
fixed column names and placeholders.

Row order (deterministic, so limit/offset pages are stable):

* studies: newest first — StudyDate, StudyTime descending (studies without a date last), UID;
* series: within a study by SeriesNumber (unnumbered first), UID; across studies, grouped by
  study in study order;
* instances: by SeriesNumber, series UID, InstanceNumber, SOP UID within a study; across studies
  by study UID, series UID, InstanceNumber, SOP UID — the order of an index, so that an
  unscoped ``/instances`` over millions of rows stops after one page instead of sorting them all.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from gateway.dicom.attributes import (
    INSTANCE_AVAILABILITY,
    MODALITIES_IN_STUDY,
    NUMBER_OF_SERIES_RELATED_INSTANCES,
    NUMBER_OF_STUDY_RELATED_INSTANCES,
    NUMBER_OF_STUDY_RELATED_SERIES,
    Level,
    attribute_level,
)
from gateway.dicom.matching import (
    alphabetic,
    dicom_glob,
    fold_name,
    fuzzy_word_pattern,
    name_words,
    name_words_column,
    normalize_temporal,
)
from gateway.dicom.query import Match, QidoQuery, build_row

ColumnKind = Literal["text", "int", "DA", "TM", "PN"]


@dataclass(frozen=True)
class Column:
    """An indexed column holding the (normalized) first value of ``tag``. A PN column is two
    SQL columns: ``{name}_ci`` (case-folded) and ``{name}_words`` (fuzzy word list)."""

    name: str
    tag: str
    kind: ColumnKind


def _columns(*specs: tuple[str, str, ColumnKind]) -> dict[str, Column]:
    return {tag: Column(name, tag, kind) for name, tag, kind in specs}


COLUMNS: dict[Level, dict[str, Column]] = {
    "study": _columns(
        ("study_date", "00080020", "DA"),
        ("study_time", "00080030", "TM"),
        ("accession_number", "00080050", "text"),
        ("study_description", "00081030", "text"),
        ("patient_name", "00100010", "PN"),
        ("patient_id", "00100020", "text"),
        ("issuer_of_patient_id", "00100021", "text"),
        ("patient_birth_date", "00100030", "DA"),
        ("patient_sex", "00100040", "text"),
        ("study_id", "00200010", "text"),
    ),
    "series": _columns(
        ("modality", "00080060", "text"),
        ("series_date", "00080021", "DA"),
        ("series_time", "00080031", "TM"),
        ("series_description", "0008103E", "text"),
        ("body_part_examined", "00180015", "text"),
        ("series_number", "00200011", "int"),
        ("pps_start_date", "00400244", "DA"),
        ("pps_start_time", "00400245", "TM"),
    ),
    "instance": _columns(
        ("sop_class_uid", "00080016", "text"),
        ("instance_number", "00200013", "int"),
    ),
}

# The entity UIDs are key columns of their tables.
_UID_COLUMNS: dict[str, str] = {"0020000D": "st.study_uid", "0020000E": "se.series_uid", "00080018": "i.sop_uid"}
_ALIAS: dict[Level, str] = {"study": "st", "series": "se", "instance": "i"}
_JSON_SOURCE: dict[Level, str] = {
    "study": "st.attrs",
    "series": "se.attrs",
    # metadata is a BLOB of JSON text; SQLite's JSON functions want TEXT.
    "instance": "CAST(i.metadata AS TEXT)",
}


def column_values(level: Level, meta: dict[str, Any]) -> dict[str, object]:
    """SQL column name → value of a level's indexed columns, from an instance's DICOM JSON."""
    values: dict[str, object] = {}
    for column in COLUMNS[level].values():
        first = _first_value(meta, column.tag)
        if column.kind == "PN":
            name = first.get("Alphabetic") if isinstance(first, dict) else None
            text = name if isinstance(name, str) else None
            values[f"{column.name}_ci"] = None if text is None else fold_name(text)
            values[f"{column.name}_words"] = None if text is None else name_words_column(text)
        elif column.kind in ("DA", "TM"):
            values[column.name] = normalize_temporal(column.kind, first)
        elif column.kind == "int":
            values[column.name] = _integer(first)
        else:
            values[column.name] = first if isinstance(first, str) else None
    return values


def register_functions(conn: sqlite3.Connection) -> None:
    """The Python functions the slow (JSON) matching path calls: the same normalization as the
    indexed columns, so both paths match alike."""
    conn.create_function("gw_fold_name", 1, _sql_text(fold_name), deterministic=True)
    conn.create_function("gw_name_words", 1, _sql_text(name_words_column), deterministic=True)
    conn.create_function("gw_temporal", 2, normalize_temporal, deterministic=True)


def search_sql(query: QidoQuery, limit: int) -> tuple[str, list[object]]:
    """The SELECT answering ``query`` (at most ``limit`` rows from ``query.offset``) and its
    parameters. Its rows are what :func:`row_to_json` takes."""
    params: list[object] = []
    where: list[str] = []
    level = query.level
    scope = {"series": "se", "instance": "i"}.get(level)
    if query.study is not None and scope:
        where.append(f"{scope}.study_uid = ?")
        params.append(query.study)
    if query.series is not None:
        where.append("i.series_uid = ?")
        params.append(query.series)
    for match in query.matches:
        condition = _condition(query, match, params)
        if condition is not None:
            where.append(condition)

    modalities = (
        "(SELECT group_concat(DISTINCT m.modality) FROM series AS m WHERE m.study_uid = st.study_uid)"
        if "study" in query.spanned_levels
        else "NULL"
    )
    if level == "study":
        source = "studies AS st"
        order = "st.study_date DESC, st.study_time DESC, st.study_uid"
    else:
        source = "series AS se JOIN studies AS st ON st.study_uid = se.study_uid"
        order = "se.series_number, se.series_uid"
        if query.study is None:
            order = "st.study_date DESC, st.study_time DESC, st.study_uid, " + order
    if level == "instance":
        source = (
            "instances AS i JOIN series AS se ON se.study_uid = i.study_uid AND se.series_uid = i.series_uid"
            " JOIN studies AS st ON st.study_uid = i.study_uid"
        )
        if query.series is not None:
            order = "i.instance_number, i.sop_uid"
        elif query.study is not None:
            order = "se.series_number, i.series_uid, i.instance_number, i.sop_uid"
        else:
            order = "i.study_uid, i.series_uid, i.instance_number, i.sop_uid"
    series_cols = "se.attrs, se.num_instances" if level != "study" else "NULL, NULL"
    metadata = "i.metadata" if level == "instance" else "NULL"
    sql = (
        f"SELECT st.attrs, st.num_series, st.num_instances, {modalities}, {series_cols}, {metadata}"
        f" FROM {source}" + (" WHERE " + " AND ".join(where) if where else "") + f" ORDER BY {order} LIMIT ? OFFSET ?"
    )
    params += [limit, query.offset]
    return sql, params


def row_to_json(query: QidoQuery, row: tuple[Any, ...]) -> dict[str, Any]:
    """One DICOM JSON response row from one :func:`search_sql` result row."""
    study_attrs, n_series, n_instances, modalities, series_attrs, series_instances, metadata = row
    spanned = query.spanned_levels
    attributes: dict[str, Any] = orjson.loads(study_attrs)
    if series_attrs is not None:
        attributes.update(orjson.loads(series_attrs))
    if metadata is not None:
        attributes.update(orjson.loads(metadata))
    elif query.include_all:
        # includefield=all: every attribute of the level and of the levels the query spans.
        always = query.return_keys()[0]
        attributes = {
            tag: e for tag, e in attributes.items() if tag in always or (attribute_level(tag) or query.level) in spanned
        }
    attributes[INSTANCE_AVAILABILITY] = {"vr": "CS", "Value": ["ONLINE"]}  # everything indexed is stored
    if "study" in spanned:
        mods = sorted(set(modalities.split(","))) if modalities else []
        attributes[MODALITIES_IN_STUDY] = {"vr": "CS", "Value": mods} if mods else {"vr": "CS"}
        attributes[NUMBER_OF_STUDY_RELATED_SERIES] = {"vr": "IS", "Value": [n_series]}
        attributes[NUMBER_OF_STUDY_RELATED_INSTANCES] = {"vr": "IS", "Value": [n_instances]}
    if "series" in spanned:
        attributes[NUMBER_OF_SERIES_RELATED_INSTANCES] = {"vr": "IS", "Value": [series_instances]}
    return build_row(query, attributes)


# ---------------------------------------------------------------------------------------------


def _condition(query: QidoQuery, match: Match, params: list[object]) -> str | None:
    if match.kind == "universal":
        return None
    if match.tag == MODALITIES_IN_STUDY:
        # PS3.4 C.6.1.1.5.1: a study matches when any of its series has a matching Modality.
        inner = _value_condition(match, "m.modality", params)
        return f"EXISTS (SELECT 1 FROM series AS m WHERE m.study_uid = st.study_uid AND {inner})"
    if match.tag in _UID_COLUMNS:
        return _value_condition(match, _UID_COLUMNS[match.tag], params)
    column = COLUMNS[match.level].get(match.tag)
    alias = _ALIAS[match.level]
    if column is not None and column.kind == "PN":
        return _name_condition(query, match, f"{alias}.{column.name}_ci", f"{alias}.{column.name}_words", params)
    if column is not None:
        return _value_condition(match, f"{alias}.{column.name}", params)
    # Slow path: any value of the attribute in the level's stored DICOM JSON.
    params.append(f'$."{match.tag}".Value')
    if match.vr == "PN":
        value = "CASE WHEN j.type = 'object' THEN json_extract(j.value, '$.Alphabetic') END"
        inner = _name_condition(query, match, f"gw_fold_name({value})", f"gw_name_words({value})", params)
    else:
        inner = _value_condition(match, "j.value", params, json=True)
    return f"EXISTS (SELECT 1 FROM json_each({_JSON_SOURCE[match.level]}, ?) AS j WHERE {inner})"


def _value_condition(match: Match, expr: str, params: list[object], *, json: bool = False) -> str:
    if match.low is not None or match.high is not None or match.kind == "range":
        if json:
            expr = f"gw_temporal(?, {expr})"
            params.append(match.vr)
        if match.low is not None and match.high is not None:
            params += [match.low, match.high]
            return f"{expr} BETWEEN ? AND ?"
        params.append(match.low if match.low is not None else match.high)
        return f"{expr} >= ?" if match.low is not None else f"{expr} <= ?"
    if match.number is not None:
        params.append(match.number)
        return f"{expr} = ?"
    exact = [v for v in match.values if match.kind != "wildcard" and not _has_wildcard(match, v)]
    patterns = [dicom_glob(v) for v in match.values if v not in exact]
    terms = []
    if exact:
        terms.append(f"{expr} = ?" if len(exact) == 1 else f"{expr} IN ({', '.join('?' * len(exact))})")
        params += exact
    for pattern in patterns:
        terms.append(f"{expr} GLOB ?")
        params.append(pattern)
    return terms[0] if len(terms) == 1 else "(" + " OR ".join(terms) + ")"


def _name_condition(query: QidoQuery, match: Match, ci: str, words: str, params: list[object]) -> str:
    name = alphabetic(match.values[0])
    query_words = name_words(name) if query.fuzzy else []
    if query_words:
        # Fuzzy: every query word starts some word of the name (see gateway.dicom.query).
        params += [fuzzy_word_pattern(w) for w in query_words]
        return "(" + " AND ".join(f"{words} GLOB ?" for _ in query_words) + ")"
    if match.kind == "wildcard":
        params.append(dicom_glob(fold_name(name)))
        return f"{ci} GLOB ?"
    params.append(fold_name(name))
    return f"{ci} = ?"


def _has_wildcard(match: Match, value: str) -> bool:
    # Only CS value lists mix plain values and patterns; UIDs never hold '*' or '?'.
    return match.vr == "CS" and ("*" in value or "?" in value)


def _first_value(meta: dict[str, Any], tag: str) -> Any:
    element = meta.get(tag)
    if not isinstance(element, dict):
        return None
    value = element.get("Value")
    return value[0] if isinstance(value, list) and value else None


def _integer(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            return None
    return None


def _sql_text(fn: Callable[[str], str]) -> Callable[[object], str | None]:
    """Wrap a str → str function for SQLite: NULL and non-text values give NULL, not an error."""

    def wrapped(value: object) -> str | None:
        return fn(value) if isinstance(value, str) else None

    return wrapped
