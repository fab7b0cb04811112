"""The change feed in SQL, shared by the SQLite and PostgreSQL indexes.

Table ``changefeed``: one row per instance that entered (``create``), left (``delete``) or was
corrected in (``update``, gateway.services.bulk_update) the ``instances`` table, inserted by the
same transaction as that row, so the feed never misses a
committed change nor names one that was rolled back. ``sequence`` is the database's own counter
(SQLite ``AUTOINCREMENT``, never reused even after deletes; a PostgreSQL identity column). Each
row also keeps ``patient_id``, the PatientID its study was stored under, read from the
``studies`` row in that transaction: a restricted principal's entries are chosen by the same
condition as its QIDO rows (:func:`gateway.adapters.sql_search.restriction_condition`), and a
deleted study's entries stay visible to its patient's readers after its row is gone.

``state`` is not stored: it is decided when the feed is read, from the latest entry of the same
SOP Instance UID (:class:`gateway.ports.ChangeState`), so an entry is never rewritten.
"""

from __future__ import annotations

from typing import Any

from gateway.adapters.sql_search import restriction_condition
from gateway.ports import ChangeAction, ChangeEntry, ChangeQuery, ChangeState, RemovalCause
from gateway.security.access import Restriction

# Columns after ``sequence`` (the same in both databases).
COLUMNS_DDL = (
    "timestamp {real} NOT NULL, action {text} NOT NULL, study_uid {text} NOT NULL, series_uid {text} NOT NULL,"
    " sop_uid {text} NOT NULL, origin {text} NOT NULL, patient_id {text}, principal {text}, reason {text}"
)
INDEXES = (
    # The state of an entry: the latest entry of its SOP Instance UID.
    "CREATE INDEX changefeed_by_sop ON changefeed (sop_uid, sequence)",
    "CREATE INDEX changefeed_by_time ON changefeed (timestamp, sequence)",
)
_INSERTED = "timestamp, action, study_uid, series_uid, sop_uid, origin, patient_id, principal, reason"
# The migration that creates the feed gives every instance already indexed its create entry
# (time: when it was stored), so the feed from its start accounts for everything the index holds.
BACKFILL = (
    "INSERT INTO changefeed (timestamp, action, study_uid, series_uid, sop_uid, origin, patient_id)"
    " SELECT i.stored_at, 'create', i.study_uid, i.series_uid, i.sop_uid, i.origin, st.patient_id"
    " FROM instances AS i JOIN studies AS st ON st.study_uid = i.study_uid ORDER BY i.stored_at, i.sop_uid"
)


def insert_sql(p: str) -> str:
    """INSERT of one entry; parameters :func:`insert_params`."""
    return f"INSERT INTO changefeed ({_INSERTED}) VALUES ({', '.join([p] * 9)})"


def insert_params(
    now: float,
    action: ChangeAction,
    key: tuple[str, str, str],
    origin: str,
    patient_id: object,
    cause: RemovalCause | None = None,
) -> tuple[object, ...]:
    """``patient_id``: the ``studies`` row's, read in the same transaction."""
    study, series, sop = key
    principal = cause.principal if cause is not None else None
    reason = cause.reason if cause is not None else None
    return (now, action.value, study, series, sop, origin, patient_id, principal, reason)


STUDY_PATIENT_SQL = "SELECT patient_id FROM studies WHERE study_uid = {p}"


def clear_sql(p: str) -> str:
    """One ``delete`` entry (origin ``reindex``) for every indexed instance; parameter: the time."""
    return (
        f"INSERT INTO changefeed ({_INSERTED})"
        f" SELECT {p}, 'delete', i.study_uid, i.series_uid, i.sop_uid, 'reindex', st.patient_id, NULL, NULL"
        " FROM instances AS i JOIN studies AS st ON st.study_uid = i.study_uid ORDER BY i.sop_uid"
    )


def bulk_row(now: float, key: tuple[str, str, str], origin: str, patient_id: object) -> tuple[object, ...]:
    """A ``create`` entry of a bulk load (whose studies are all new): :data:`BULK_COLUMNS`."""
    study, series, sop = key
    return (now, ChangeAction.CREATE.value, study, series, sop, origin, patient_id)


BULK_COLUMNS = ("timestamp", "action", "study_uid", "series_uid", "sop_uid", "origin", "patient_id")


def changes_sql(p: str, query: ChangeQuery) -> tuple[str, list[object]]:
    """The SELECT of :meth:`gateway.ports.Index.changes`; rows for :func:`entry_from_row`."""
    params: list[object] = []
    joined = _metadata_join(p, query.include_metadata, query.restriction, params)
    where: list[str] = []
    if query.start is not None:
        where.append(f"c.timestamp >= {p}")
        params.append(query.start)
    if query.end is not None:
        where.append(f"c.timestamp < {p}")
        params.append(query.end)
    if query.after is not None:
        where.append(f"c.sequence > {p}")
        params.append(query.after)
    _restrict(p, query.restriction, where, params)
    sql = _select(query.include_metadata, joined, where) + f" ORDER BY c.sequence LIMIT {p} OFFSET {p}"
    return sql, [*params, query.limit, query.offset]


def latest_sql(p: str, restriction: Restriction | None, include_metadata: bool) -> tuple[str, list[object]]:
    params: list[object] = []
    joined = _metadata_join(p, include_metadata, restriction, params)
    where: list[str] = []
    _restrict(p, restriction, where, params)
    return _select(include_metadata, joined, where) + " ORDER BY c.sequence DESC LIMIT 1", params


def _restrict(p: str, restriction: Restriction | None, where: list[str], params: list[object]) -> None:
    if restriction is not None:
        where.append(restriction_condition(p, restriction, params, study="c.study_uid", patient="c.patient_id"))


def _metadata_join(p: str, include_metadata: bool, restriction: Restriction | None, params: list[object]) -> str:
    """The join that gives entries their instance's current metadata (``params`` extended first:
    the join comes before the WHERE clause)."""
    if not include_metadata:
        return ""
    # The instance's current metadata exists only while its row does (same study and series).
    joined = (
        " LEFT JOIN instances AS i ON i.sop_uid = c.sop_uid AND i.study_uid = c.study_uid"
        " AND i.series_uid = c.series_uid"
    )
    if restriction is not None:
        # An entry is visible by the patient its study had then; its metadata only while the study
        # still belongs to a patient the principal may see (a correction may have moved it).
        now = restriction_condition(p, restriction, params, study="now.study_uid", patient="now.patient_id")
        joined += f" AND i.study_uid IN (SELECT now.study_uid FROM studies AS now WHERE {now})"
    return joined


def _select(include_metadata: bool, joined: str, where: list[str]) -> str:
    metadata = "i.metadata" if include_metadata else "NULL"
    return (
        "SELECT c.sequence, c.timestamp, c.action, c.study_uid, c.series_uid, c.sop_uid, c.origin, c.principal,"
        f" c.reason, last.sequence, last.action, {metadata} FROM changefeed AS c"
        " JOIN changefeed AS last ON last.sequence ="
        " (SELECT max(m.sequence) FROM changefeed AS m WHERE m.sop_uid = c.sop_uid)"
        + joined
        + (" WHERE " + " AND ".join(where) if where else "")
    )


def entry_from_row(row: tuple[Any, ...]) -> ChangeEntry:
    sequence, timestamp, action, study, series, sop, origin, principal, reason, last, last_action, metadata = row
    if last_action == ChangeAction.DELETE.value:
        state = ChangeState.DELETED
    elif last == sequence:
        state = ChangeState.CURRENT
    else:
        state = ChangeState.REPLACED
    return ChangeEntry(
        sequence=int(sequence),
        timestamp=float(timestamp),
        action=ChangeAction(action),
        study_uid=study,
        series_uid=series,
        sop_uid=sop,
        origin=origin,
        state=state,
        principal=principal,
        reason=reason,
        metadata=None if metadata is None else bytes(metadata),
    )
