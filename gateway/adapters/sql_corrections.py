"""Metadata corrections in SQL, shared by the SQLite and PostgreSQL indexes
(:class:`gateway.ports.Corrections`, :mod:`gateway.services.bulk_update`).

Schema version 7:

* ``instances.version`` — which object holds the instance: "" the one stored under its UIDs,
  else the name of a corrected version (:func:`gateway.dicom.uids.instance_key`).
* ``kept_versions`` — versions a correction replaced, kept retrievable for
  ``bulk_update_keep_original_seconds`` and then deleted (object first, then the row).
* ``operations`` — long-running requests (``$bulkUpdate``) with their status and results, so
  that ``GET {base}/operations/{id}`` answers from any replica and after a restart.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.ports import KeptVersion, Operation


def migration(uid: str, text: str, integer: str, real: str) -> tuple[str, ...]:
    """The statements of schema version 7 (the database's column types)."""
    return (
        f"ALTER TABLE instances ADD COLUMN version {text} NOT NULL DEFAULT ''",
        f"""CREATE TABLE kept_versions (
            sop_uid {uid} NOT NULL, version {text} NOT NULL, study_uid {uid} NOT NULL, series_uid {uid} NOT NULL,
            sha256 {text} NOT NULL, size {integer} NOT NULL, transfer_syntax {text} NOT NULL,
            replaced_at {real} NOT NULL, PRIMARY KEY (sop_uid, version))""",
        "CREATE INDEX kept_versions_by_time ON kept_versions (replaced_at)",
        f"""CREATE TABLE operations (
            id {text} PRIMARY KEY NOT NULL, kind {text} NOT NULL, status {text} NOT NULL,
            created {real} NOT NULL, updated {real} NOT NULL, percent_complete {integer} NOT NULL,
            request {text} NOT NULL, results {text} NOT NULL, holder {text} NOT NULL, principal {text})""",
        "CREATE INDEX operations_by_holder ON operations (holder, status)",
    )


# Columns of the instances row a correction leaves alone: its identity, where it came from,
# when it was stored (retention counts from then) and whether an upload shares it.
UNCHANGED_COLUMNS = frozenset({"sop_uid", "study_uid", "series_uid", "origin", "stored_at"})


def current_sql(p: str) -> str:
    """The version and digest of an instance's row; parameters: sop, study, series."""
    return (
        "SELECT version, sha256, size, transfer_syntax FROM instances"
        f" WHERE sop_uid = {p} AND study_uid = {p} AND series_uid = {p}"
    )


def update_sql(p: str, table: str, values: dict[str, object], key: tuple[str, ...]) -> tuple[str, list[object]]:
    """UPDATE of ``table``'s row named by the ``key`` columns of ``values`` to the other values.
    Column names come from our own tables, never from a request."""
    assignments = [name for name in values if name not in key and name not in UNCHANGED_COLUMNS]
    sql = (
        f"UPDATE {table} SET {', '.join(f'{name} = {p}' for name in assignments)}"
        f" WHERE {' AND '.join(f'{name} = {p}' for name in key)}"
    )
    return sql, [values[name] for name in assignments] + [values[name] for name in key]


def keep_sql(p: str) -> str:
    """INSERT of a replaced version; parameters: :func:`keep_params`."""
    return (
        "INSERT INTO kept_versions (sop_uid, version, study_uid, series_uid, sha256, size, transfer_syntax,"
        f" replaced_at) VALUES ({', '.join([p] * 8)}) ON CONFLICT (sop_uid, version) DO NOTHING"
    )


def keep_params(kept: KeptVersion) -> tuple[object, ...]:
    return (
        kept.sop_uid,
        kept.version,
        kept.study_uid,
        kept.series_uid,
        kept.sha256,
        kept.size,
        kept.transfer_syntax,
        kept.replaced_at,
    )


_KEPT = "study_uid, series_uid, sop_uid, version, sha256, size, transfer_syntax, replaced_at"


def kept_sql(p: str) -> str:
    """The kept versions of one SOP Instance UID, oldest first; rows for :func:`kept_from_row`."""
    return f"SELECT {_KEPT} FROM kept_versions WHERE sop_uid = {p} ORDER BY replaced_at, version"


def expired_sql(p: str) -> str:
    """Parameters: replaced before, limit."""
    return f"SELECT {_KEPT} FROM kept_versions WHERE replaced_at < {p} ORDER BY replaced_at, sop_uid LIMIT {p}"


def forget_sql(p: str) -> str:
    return f"DELETE FROM kept_versions WHERE sop_uid = {p} AND version = {p}"


# An instance leaving the index takes its kept versions along (their objects go with its own).
FORGET_ALL_SQL = "DELETE FROM kept_versions WHERE sop_uid = {p}"


def kept_from_row(row: tuple[Any, ...]) -> KeptVersion:
    study, series, sop, version, sha256, size, syntax, replaced_at = row
    return KeptVersion(study, series, sop, version, sha256, int(size), syntax, float(replaced_at))


_OPERATION = "id, kind, status, created, updated, percent_complete, request, results, holder, principal"


def save_operation_sql(p: str) -> str:
    """Insert or replace an operation; parameters: :func:`operation_params`. Only its holder
    replaces it: a replica whose operation another one took over (its heartbeat had stopped)
    cannot report it running again."""
    updated = ", ".join(f"{name} = excluded.{name}" for name in ("status", "updated", "percent_complete", "results"))
    return (
        f"INSERT INTO operations ({_OPERATION}) VALUES ({', '.join([p] * 10)}) ON CONFLICT (id) DO UPDATE SET {updated}"
        " WHERE operations.holder = excluded.holder"
    )


def operation_params(op: Operation) -> tuple[object, ...]:
    return (
        op.id,
        op.kind,
        op.status,
        op.created,
        op.updated,
        op.percent_complete,
        orjson.dumps(op.request).decode(),
        orjson.dumps(op.results).decode(),
        op.holder,
        op.principal,
    )


def operation_sql(p: str) -> str:
    return f"SELECT {_OPERATION} FROM operations WHERE id = {p}"


_UNFINISHED = "'notStarted', 'running'"


def running_sql(p: str) -> str:
    return f"SELECT {_OPERATION} FROM operations WHERE holder = {p} AND status IN ({_UNFINISHED})"


def held_sql(p: str, *, lock: str = "") -> str:
    """Parameters: operation id, holder; a row while the holder holds it unfinished. ``lock``:
    PostgreSQL's ``FOR UPDATE``, so that a take-over waits for the commit holding it."""
    return f"SELECT 1 FROM operations WHERE id = {p} AND holder = {p} AND status IN ({_UNFINISHED}) {lock}"


def heartbeat_sql(p: str) -> str:
    """Parameters: now, operation id, holder; one row changed while the holder still runs it."""
    return f"UPDATE operations SET updated = {p} WHERE id = {p} AND holder = {p} AND status IN ({_UNFINISHED})"


def take_over_sql(p: str) -> str:
    """Parameters: new holder, now, updated before, new holder; the operations taken over."""
    return (
        f"UPDATE operations SET holder = {p}, updated = {p}"
        f" WHERE status IN ({_UNFINISHED}) AND updated < {p} AND holder <> {p} RETURNING {_OPERATION}"
    )


def unfinished_sql() -> str:
    """Every operation not finished, of any holder."""
    return f"SELECT {_OPERATION} FROM operations WHERE status IN ({_UNFINISHED})"


def operation_from_row(row: tuple[Any, ...]) -> Operation:
    op_id, kind, status, created, updated, percent, request, results, holder, principal = row
    return Operation(
        id=op_id,
        kind=kind,
        status=status,
        created=float(created),
        updated=float(updated),
        percent_complete=int(percent),
        request=orjson.loads(request),
        results=orjson.loads(results),
        holder=holder,
        principal=principal,
    )
