"""QIDO query → SQL and result rows → DICOM JSON, shared by the SQLite and PostgreSQL indexes.

Both indexes have the same three tables (``studies``, ``series``, ``instances``) with the same
indexed columns (:data:`COLUMNS`), so the shape of every search is the same; a :class:`Dialect`
supplies what differs: the parameter placeholder, wildcard matching (SQLite ``GLOB``,
PostgreSQL ``LIKE`` on ``C``-collated columns, both case-sensitive as PS3.4 C.2.2.2.4 wants),
the aggregate that lists a study's modalities, where NULLs sort, and the slow path that matches
keys without an indexed column against the stored DICOM JSON.

Matching keys with an indexed column are answered from it; any other key is matched against the
stored DICOM JSON of its level (the slow path: no index, meant to narrow down queries that also
use an indexed key or a path scope). Values are always bound parameters; the only text put into
SQL is fixed column names and placeholders.

Row order (deterministic, so limit/offset pages are stable, and the same in both databases):

* studies: newest first — StudyDate, StudyTime descending (studies without a date last), UID;
* series: within a study by SeriesNumber (unnumbered first), UID; across studies, grouped by
  study in study order;
* instances: by SeriesNumber, series UID, InstanceNumber, SOP UID within a study; across studies
  by study UID, series UID, InstanceNumber, SOP UID — the order of an index, so that an
  unscoped ``/instances`` over millions of rows stops after one page instead of sorting them all.
"""

from __future__ import annotations

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
from gateway.dicom.matching import alphabetic, fold_name, name_words, name_words_column, normalize_temporal
from gateway.dicom.query import Match, QidoQuery, build_row
from gateway.security.access import Restriction

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
UID_COLUMNS: dict[str, str] = {"0020000D": "st.study_uid", "0020000E": "se.series_uid", "00080018": "i.sop_uid"}
ALIAS: dict[Level, str] = {"study": "st", "series": "se", "instance": "i"}


def sql_columns(level: Level) -> list[tuple[str, ColumnKind]]:
    """The SQL columns (name, kind) holding a level's indexed attributes, in table order."""
    names: list[tuple[str, ColumnKind]] = []
    for column in COLUMNS[level].values():
        if column.kind == "PN":
            names += [(f"{column.name}_ci", "text"), (f"{column.name}_words", "text")]
        else:
            names.append((column.name, column.kind))
    return names


def column_values(level: Level, meta: dict[str, Any]) -> dict[str, object]:
    """SQL column name → value of a level's indexed columns, from an instance's DICOM JSON."""
    values: dict[str, object] = {}
    for column in COLUMNS[level].values():
        first = first_value(meta, column.tag)
        if column.kind == "PN":
            name = first.get("Alphabetic") if isinstance(first, dict) else None
            text = name if isinstance(name, str) else None
            values[f"{column.name}_ci"] = None if text is None else fold_name(text)
            values[f"{column.name}_words"] = None if text is None else name_words_column(text)
        elif column.kind in ("DA", "TM"):
            values[column.name] = normalize_temporal(column.kind, first)
        elif column.kind == "int":
            values[column.name] = integer(first)
        else:
            values[column.name] = first if isinstance(first, str) else None
    return values


class Dialect:
    """What differs between SQL databases in a QIDO search; the defaults are SQLite's."""

    #: The bound-parameter placeholder.
    param = "?"

    def pattern(self, expr: str, dicom_pattern: str, params: list[object]) -> str:
        """``expr`` matches a DICOM wildcard value ('*' any run, '?' one character; the rest
        literal, case-sensitive)."""
        raise NotImplementedError

    def fuzzy_word(self, expr: str, word: str, params: list[object]) -> str:
        """``expr``, a :func:`gateway.dicom.matching.name_words_column` value, has a word that
        starts with ``word`` (which may hold DICOM wildcards)."""
        raise NotImplementedError

    def modalities(self) -> str:
        """Scalar subquery: the distinct modalities of study ``st``, comma-separated."""
        raise NotImplementedError

    def asc(self, expr: str) -> str:
        """Ascending order with NULLs first."""
        return expr

    def desc(self, expr: str) -> str:
        """Descending order with NULLs last."""
        return f"{expr} DESC"

    def json_condition(self, query: QidoQuery, match: Match, params: list[object]) -> str:
        """The slow path: any value of ``match.tag`` in the level's stored DICOM JSON matches."""
        raise NotImplementedError


def search_sql(dialect: Dialect, query: QidoQuery, limit: int) -> tuple[str, list[object]]:
    """The SELECT answering ``query`` (at most ``limit`` rows from ``query.offset``) and its
    parameters. Its rows are what :func:`row_to_json` takes."""
    d, p = dialect, dialect.param
    params: list[object] = []
    where: list[str] = []
    level = query.level
    scope = {"series": "se", "instance": "i"}.get(level)
    if query.study is not None and scope:
        where.append(f"{scope}.study_uid = {p}")
        params.append(query.study)
    if query.series is not None:
        where.append(f"i.series_uid = {p}")
        params.append(query.series)
    for match in query.matches:
        condition = _condition(d, query, match, params)
        if condition is not None:
            where.append(condition)
    if query.restriction is not None:
        where.append(restriction_condition(p, query.restriction, params))

    modalities = d.modalities() if "study" in query.spanned_levels else "NULL"
    study_order = f"{d.desc('st.study_date')}, {d.desc('st.study_time')}, st.study_uid"
    if level == "study":
        source = "studies AS st"
        order = study_order
    else:
        source = "series AS se JOIN studies AS st ON st.study_uid = se.study_uid"
        order = f"{d.asc('se.series_number')}, se.series_uid"
        if query.study is None:
            order = study_order + ", " + order
    if level == "instance":
        source = (
            "instances AS i JOIN series AS se ON se.study_uid = i.study_uid AND se.series_uid = i.series_uid"
            " JOIN studies AS st ON st.study_uid = i.study_uid"
        )
        number = d.asc("i.instance_number")
        if query.series is not None:
            order = f"{number}, i.sop_uid"
        elif query.study is not None:
            order = f"{d.asc('se.series_number')}, i.series_uid, {number}, i.sop_uid"
        else:
            order = f"i.study_uid, i.series_uid, {number}, i.sop_uid"
    series_cols = "se.attrs, se.num_instances" if level != "study" else "NULL, NULL"
    metadata = "i.metadata" if level == "instance" else "NULL"
    sql = (
        f"SELECT st.attrs, st.num_series, st.num_instances, {modalities}, {series_cols}, {metadata}"
        f" FROM {source}"
        + (" WHERE " + " AND ".join(where) if where else "")
        + f" ORDER BY {order} LIMIT {p} OFFSET {p}"
    )
    params += [limit, query.offset]
    return sql, params


def restriction_condition(
    p: str,
    restriction: Restriction,
    params: list[object],
    *,
    study: str = "st.study_uid",
    patient: str = "st.patient_id",
) -> str:
    """Only studies the principal may see (gateway.security.access, gateway.services.visibility):
    a listed StudyInstanceUID or PatientID (the ``study`` and ``patient`` columns). Applied in the
    WHERE clause, so limit/offset count visible rows only."""
    terms = []
    for column, values in ((study, restriction.study_uids), (patient, restriction.patient_ids)):
        if values:
            terms.append(f"{column} IN ({', '.join([p] * len(values))})")
            params.extend(sorted(values))
    return "(" + " OR ".join(terms) + ")" if terms else "1 = 0"


def row_to_json(query: QidoQuery, row: tuple[Any, ...]) -> dict[str, Any]:
    """One DICOM JSON response row from one :func:`search_sql` result row. The JSON columns may
    come back as text, bytes or (PostgreSQL jsonb) already decoded."""
    study_attrs, n_series, n_instances, modalities, series_attrs, series_instances, metadata = row
    spanned = query.spanned_levels
    attributes: dict[str, Any] = dict(_json(study_attrs))
    if series_attrs is not None:
        attributes.update(_json(series_attrs))
    if metadata is not None:
        attributes.update(_json(metadata))
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


def _json(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    decoded: dict[str, Any] = orjson.loads(value)
    return decoded


def _condition(d: Dialect, query: QidoQuery, match: Match, params: list[object]) -> str | None:
    if match.kind == "universal":
        return None
    if match.tag == MODALITIES_IN_STUDY:
        # PS3.4 C.6.1.1.5.1: a study matches when any of its series has a matching Modality.
        inner = value_condition(d, match, "m.modality", params)
        return f"EXISTS (SELECT 1 FROM series AS m WHERE m.study_uid = st.study_uid AND {inner})"
    if match.tag in UID_COLUMNS:
        return value_condition(d, match, UID_COLUMNS[match.tag], params)
    column = COLUMNS[match.level].get(match.tag)
    alias = ALIAS[match.level]
    if column is not None and column.kind == "PN":
        return name_condition(d, query, match, f"{alias}.{column.name}_ci", f"{alias}.{column.name}_words", params)
    if column is not None:
        return value_condition(d, match, f"{alias}.{column.name}", params)
    return d.json_condition(query, match, params)


def value_condition(d: Dialect, match: Match, expr: str, params: list[object], *, temporal: str | None = None) -> str:
    """``expr`` matches a non-PN key. ``temporal``, when given, wraps ``expr`` for range and
    date/time comparisons (an SQL function normalizing raw JSON values); ``{}`` marks where
    the expression goes and ``{p}`` a parameter holding the VR."""
    p = d.param
    if match.low is not None or match.high is not None or match.kind == "range":
        if temporal is not None:
            expr = temporal.format(expr, p=p)
            params.append(match.vr)
        if match.low is not None and match.high is not None:
            params += [match.low, match.high]
            return f"{expr} BETWEEN {p} AND {p}"
        params.append(match.low if match.low is not None else match.high)
        return f"{expr} >= {p}" if match.low is not None else f"{expr} <= {p}"
    if match.number is not None:
        params.append(match.number)
        return f"{expr} = {p}"
    exact = [v for v in match.values if match.kind != "wildcard" and not _has_wildcard(match, v)]
    patterns = [v for v in match.values if v not in exact]
    terms = []
    if exact:
        terms.append(f"{expr} = {p}" if len(exact) == 1 else f"{expr} IN ({', '.join([p] * len(exact))})")
        params += exact
    for pattern in patterns:
        terms.append(d.pattern(expr, pattern, params))
    return terms[0] if len(terms) == 1 else "(" + " OR ".join(terms) + ")"


def name_condition(d: Dialect, query: QidoQuery, match: Match, ci: str, words: str, params: list[object]) -> str:
    """``ci`` (a :func:`fold_name` value) or, with fuzzy matching, ``words`` (a
    :func:`name_words_column` value) matches a PN key."""
    name = alphabetic(match.values[0])
    query_words = fuzzy_words(query, match)
    if query_words:
        # Fuzzy: every query word starts some word of the name (see gateway.dicom.query).
        return "(" + " AND ".join(d.fuzzy_word(words, w, params) for w in query_words) + ")"
    if match.kind == "wildcard":
        return d.pattern(ci, fold_name(name), params)
    params.append(fold_name(name))
    return f"{ci} = {d.param}"


def fuzzy_words(query: QidoQuery, match: Match) -> list[str]:
    """The words a PN key is matched by, word by word; empty when it is matched as a whole."""
    return name_words(alphabetic(match.values[0])) if query.fuzzy else []


def _has_wildcard(match: Match, value: str) -> bool:
    # Only CS value lists mix plain values and patterns; UIDs never hold '*' or '?'.
    return match.vr == "CS" and ("*" in value or "?" in value)


def first_value(meta: dict[str, Any], tag: str) -> Any:
    """The first value of ``tag`` in a DICOM JSON object, None when absent or empty."""
    element = meta.get(tag)
    if not isinstance(element, dict):
        return None
    value = element.get("Value")
    return value[0] if isinstance(value, list) and value else None


def integer(value: object) -> int | None:
    """An IS/US/... JSON value as a 64-bit integer column value; None when it is not one."""
    if isinstance(value, bool):
        return None
    number: int | None = None
    if isinstance(value, int):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str):
        try:
            number = int(value.strip())
        except ValueError:
            return None
    # Both databases keep 64-bit integers; a larger value is not an instance or series number.
    return number if number is not None and -(1 << 63) <= number < (1 << 63) else None
