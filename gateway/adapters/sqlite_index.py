"""The embedded metadata index: SQLite, implementing :class:`gateway.ports.Index`.

Schema (``PRAGMA user_version`` = :data:`SCHEMA_VERSION`, created or migrated on first use):

* ``studies`` — one row per study: indexed columns for the common study keys (patient name as a
  case-folded column and a fuzzy word-list column, dates and times normalized to comparable
  text), counters ``num_series`` / ``num_instances``, and ``attrs``: the study-level attributes
  (:data:`gateway.dicom.attributes.STUDY_TAGS`) of the first instance indexed, as DICOM JSON.
* ``series`` — keyed by (study, series) UID: indexed series keys, ``num_instances``, ``attrs``
  (:data:`gateway.dicom.attributes.SERIES_TAGS`).
* ``instances`` — keyed by SOP Instance UID: what :class:`gateway.ports.InstanceRecord` holds
  (frames and pixel description as JSON, metadata as a BLOB of DICOM JSON).

Concurrency: one writer connection, its transactions serialized (a capacity limiter of one in
the event loop, a lock in the threads) and started with ``BEGIN IMMEDIATE`` so that writers in
other processes (``reindex``) queue on ``busy_timeout`` instead of failing half-way; readers use
a small pool of read-only connections, which WAL lets run beside the writer. ``synchronous=FULL``
because an acknowledged STOW must survive a power cut, not just a crash. All sqlite3 calls run
in worker threads; sqlite3 errors become :class:`gateway.errors.IndexError_` (503).
"""

from __future__ import annotations

import dataclasses
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.to_thread
import orjson

from gateway.adapters.sqlite_search import COLUMNS, column_values, register_functions, row_to_json, search_sql
from gateway.dicom.attributes import SERIES_INSTANCE_UID, SERIES_TAGS, STUDY_INSTANCE_UID, STUDY_TAGS, Level
from gateway.dicom.query import QidoQuery
from gateway.errors import IndexError_
from gateway.ports import AddOutcome, InstanceRecord, PixelDescription, SearchResult

T = TypeVar("T")

SCHEMA_VERSION = 1
DEFAULT_MAX_RESULTS = 1000


def _column_ddl(level: Level) -> str:
    names: list[str] = []
    for column in COLUMNS[level].values():
        kind = "INTEGER" if column.kind == "int" else "TEXT"
        names += (
            [f"{column.name}_ci TEXT", f"{column.name}_words TEXT"]
            if column.kind == "PN"
            else [f"{column.name} {kind}"]
        )
    return ", ".join(names)


# Each version's statements, applied in order to bring a database from the previous version.
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        f"""CREATE TABLE studies (
            study_uid TEXT PRIMARY KEY NOT NULL, {_column_ddl("study")},
            num_series INTEGER NOT NULL DEFAULT 0, num_instances INTEGER NOT NULL DEFAULT 0,
            attrs TEXT NOT NULL)""",
        f"""CREATE TABLE series (
            study_uid TEXT NOT NULL REFERENCES studies (study_uid) ON DELETE CASCADE,
            series_uid TEXT NOT NULL, {_column_ddl("series")},
            num_instances INTEGER NOT NULL DEFAULT 0, attrs TEXT NOT NULL,
            PRIMARY KEY (study_uid, series_uid))""",
        f"""CREATE TABLE instances (
            sop_uid TEXT PRIMARY KEY NOT NULL, study_uid TEXT NOT NULL, series_uid TEXT NOT NULL,
            {_column_ddl("instance")}, transfer_syntax TEXT NOT NULL, size INTEGER NOT NULL,
            sha256 TEXT NOT NULL, origin TEXT NOT NULL, stored_at REAL NOT NULL,
            frames TEXT NOT NULL, pixel TEXT, metadata BLOB NOT NULL,
            FOREIGN KEY (study_uid, series_uid) REFERENCES series (study_uid, series_uid) ON DELETE CASCADE)""",
        # The study list's default order, so "newest 100 studies" reads 100 index entries.
        "CREATE INDEX studies_by_date ON studies (study_date DESC, study_time DESC, study_uid)",
        "CREATE INDEX studies_by_patient_id ON studies (patient_id)",
        "CREATE INDEX studies_by_patient_name ON studies (patient_name_ci)",
        "CREATE INDEX studies_by_accession ON studies (accession_number)",
        "CREATE INDEX series_by_number ON series (study_uid, series_number, series_uid)",
        "CREATE INDEX series_by_uid ON series (series_uid)",
        "CREATE INDEX series_by_modality ON series (modality, study_uid)",
        # Also the order of unscoped /instances, and the foreign key's child index.
        "CREATE INDEX instances_by_series ON instances (study_uid, series_uid, instance_number, sop_uid)",
        "CREATE INDEX instances_by_series_uid ON instances (series_uid, instance_number)",
        "CREATE INDEX instances_by_class ON instances (sop_class_uid)",
    ),
}

_RECORD_COLUMNS = (
    "i.study_uid, i.series_uid, i.sop_uid, i.sop_class_uid, i.transfer_syntax, i.size, i.sha256,"
    " i.origin, i.metadata, i.frames, i.pixel, i.stored_at"
)


class SqliteIndex:
    """SQLite index at ``path`` (created with its parent directory when missing).

    ``max_results`` caps every search page (a client ``limit`` above it is lowered and the
    result flagged ``more``, PS3.18 8.3.4.4); ``readers`` bounds concurrent reading threads."""

    def __init__(
        self,
        path: Path,
        *,
        max_results: int = DEFAULT_MAX_RESULTS,
        readers: int = 4,
        busy_timeout: float = 30.0,
    ) -> None:
        self._path = path
        self._max_results = max_results
        self._readers = readers
        self._busy_timeout = busy_timeout
        self._read_limiter: anyio.CapacityLimiter | None = None
        self._write_limiter: anyio.CapacityLimiter | None = None
        self._writer: sqlite3.Connection | None = None
        self._writer_lock = threading.Lock()
        self._idle: list[sqlite3.Connection] = []
        self._pool_lock = threading.Lock()
        self._closed = False

    # -- Index protocol ------------------------------------------------------------------------

    async def add(self, record: InstanceRecord) -> AddOutcome:
        def work() -> AddOutcome:
            row = _Row.from_record(record)  # parse and derive outside the write lock
            return self._transaction(row.insert)

        return await self._write(work)

    async def get(self, study: str | None, series: str | None, sop: str) -> InstanceRecord | None:
        sql = f"SELECT {_RECORD_COLUMNS} FROM instances AS i WHERE i.sop_uid = ?"
        params: list[object] = [sop]
        if study is not None:
            sql += " AND i.study_uid = ?"
            params.append(study)
        if series is not None:
            sql += " AND i.series_uid = ?"
            params.append(series)
        rows = await self._read(lambda conn: conn.execute(sql, params).fetchall())
        return _record(rows[0]) if rows else None

    async def instances(self, study: str, series: str | None = None) -> list[InstanceRecord]:
        sql = (
            f"SELECT {_RECORD_COLUMNS} FROM instances AS i"
            " JOIN series AS se ON se.study_uid = i.study_uid AND se.series_uid = i.series_uid"
            " WHERE i.study_uid = ?"
        )
        params: list[object] = [study]
        if series is not None:
            sql += " AND i.series_uid = ?"
            params.append(series)
        sql += " ORDER BY se.series_number, i.series_uid, i.instance_number, i.sop_uid"
        rows = await self._read(lambda conn: conn.execute(sql, params).fetchall())
        return [_record(row) for row in rows]

    async def search(self, query: QidoQuery) -> SearchResult:
        """Answer a QIDO query; at most ``min(query.limit, max_results)`` rows, ``more`` when
        further matches exist (one extra row is fetched to know)."""
        limit = self._max_results if query.limit is None else min(query.limit, self._max_results)
        sql, params = search_sql(query, limit + 1)

        def work(conn: sqlite3.Connection) -> SearchResult:
            rows = conn.execute(sql, params).fetchall()
            return SearchResult(rows=[row_to_json(query, row) for row in rows[:limit]], more=len(rows) > limit)

        return await self._read(work)

    async def delete(self, study: str, series: str, sop: str) -> None:
        await self._write(lambda: self._transaction(lambda conn: _delete(conn, study, series, sop)))

    async def clear(self) -> None:
        def clear(conn: sqlite3.Connection) -> None:
            for table in ("instances", "series", "studies"):
                conn.execute(f"DELETE FROM {table}")

        await self._write(lambda: self._transaction(clear))

    async def ping(self) -> None:
        await self._read(lambda conn: conn.execute("PRAGMA user_version").fetchone())

    async def aclose(self) -> None:
        await anyio.to_thread.run_sync(self._close)

    # -- connections ---------------------------------------------------------------------------

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._read_limiter is None:
            self._read_limiter = anyio.CapacityLimiter(self._readers)
        return await anyio.to_thread.run_sync(self._reading, fn, limiter=self._read_limiter)

    async def _write(self, fn: Callable[[], T]) -> T:
        # One writing thread at a time: waiting writers wait here without holding a thread.
        if self._write_limiter is None:
            self._write_limiter = anyio.CapacityLimiter(1)
        return await anyio.to_thread.run_sync(fn, limiter=self._write_limiter)

    def _reading(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        with self._pool_lock:
            conn = self._idle.pop() if self._idle else None
        try:
            if conn is None:
                self._writer_connection_locked()  # the schema must exist before the first read
                conn = self._connect(readonly=True)
            return fn(conn)
        except sqlite3.Error as exc:
            raise IndexError_(f"index read failed: {exc}") from exc
        finally:
            if conn is not None:
                with self._pool_lock:
                    if self._closed:
                        conn.close()
                    else:
                        self._idle.append(conn)

    def _transaction(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        with self._writer_lock:
            try:
                conn = self._writer_connection()
                conn.execute("BEGIN IMMEDIATE")
                try:
                    result = fn(conn)
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            except (sqlite3.Error, OSError) as exc:
                raise IndexError_(f"index write failed: {exc}") from exc
            return result

    def _writer_connection_locked(self) -> sqlite3.Connection:
        with self._writer_lock:
            try:
                return self._writer_connection()
            except (sqlite3.Error, OSError) as exc:
                raise IndexError_(f"cannot open the index at {self._path}: {exc}") from exc

    def _writer_connection(self) -> sqlite3.Connection:
        """The writer, opened (and the schema migrated) on first use. Hold ``_writer_lock``."""
        if self._closed:
            raise IndexError_("the index is closed")
        if self._writer is None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            conn = self._connect(readonly=False)
            try:
                _migrate(conn)
            except BaseException:
                conn.close()
                raise
            self._writer = conn
        return self._writer

    def _connect(self, *, readonly: bool) -> sqlite3.Connection:
        if self._closed:
            raise IndexError_("the index is closed")
        conn = sqlite3.connect(self._path, timeout=self._busy_timeout, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
        conn.execute("PRAGMA foreign_keys = ON")
        if readonly:
            conn.execute("PRAGMA query_only = ON")
        else:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
        register_functions(conn)
        return conn

    def _close(self) -> None:
        with self._writer_lock, self._pool_lock:
            self._closed = True
            for conn in self._idle:
                conn.close()
            self._idle.clear()
            if self._writer is not None:
                self._writer.close()
                self._writer = None


def _migrate(conn: sqlite3.Connection) -> None:
    conn.execute("BEGIN IMMEDIATE")  # read the version inside the lock: another process may migrate too
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise IndexError_(f"the index schema version {version} is newer than this gateway ({SCHEMA_VERSION})")
        for step in range(version + 1, SCHEMA_VERSION + 1):
            for statement in _MIGRATIONS[step]:
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


@dataclasses.dataclass(frozen=True)
class _Row:
    """An InstanceRecord with everything the three tables need, derived from its metadata."""

    record: InstanceRecord
    study: dict[str, object]
    series: dict[str, object]
    instance: dict[str, object]

    @classmethod
    def from_record(cls, record: InstanceRecord) -> _Row:
        meta = orjson.loads(record.metadata)
        if not isinstance(meta, dict):
            raise ValueError("InstanceRecord.metadata must be one DICOM JSON object")
        study_attrs = {t: e for t, e in meta.items() if t in STUDY_TAGS}
        study_attrs[STUDY_INSTANCE_UID] = {"vr": "UI", "Value": [record.study_uid]}
        series_attrs = {t: e for t, e in meta.items() if t in SERIES_TAGS}
        series_attrs[SERIES_INSTANCE_UID] = {"vr": "UI", "Value": [record.series_uid]}
        pixel = None if record.pixel is None else orjson.dumps(dataclasses.asdict(record.pixel)).decode()
        return cls(
            record=record,
            study={"study_uid": record.study_uid, **column_values("study", meta), "attrs": _text(study_attrs)},
            series={
                "study_uid": record.study_uid,
                "series_uid": record.series_uid,
                **column_values("series", meta),
                "attrs": _text(series_attrs),
            },
            instance={
                "sop_uid": record.sop_uid,
                "study_uid": record.study_uid,
                "series_uid": record.series_uid,
                **column_values("instance", meta),
                # The record's own SOP Class UID wins over the metadata's copy.
                "sop_class_uid": record.sop_class_uid,
                "transfer_syntax": record.transfer_syntax,
                "size": record.size,
                "sha256": record.sha256,
                "origin": record.origin,
                "stored_at": record.stored_at,
                "frames": orjson.dumps(record.frames).decode(),
                "pixel": pixel,
                "metadata": record.metadata,
            },
        )

    def insert(self, conn: sqlite3.Connection) -> AddOutcome:
        rec = self.record
        found = conn.execute("SELECT sha256 FROM instances WHERE sop_uid = ?", (rec.sop_uid,)).fetchone()
        if found is not None:
            return AddOutcome.IDENTICAL if found[0] == rec.sha256 else AddOutcome.CONFLICT
        conn.execute(_insert_sql("studies", self.study, "study_uid"), tuple(self.study.values()))
        added = conn.execute(_insert_sql("series", self.series, "study_uid, series_uid"), tuple(self.series.values()))
        conn.execute(_insert_sql("instances", self.instance, None), tuple(self.instance.values()))
        conn.execute(
            "UPDATE series SET num_instances = num_instances + 1 WHERE study_uid = ? AND series_uid = ?",
            (rec.study_uid, rec.series_uid),
        )
        conn.execute(
            "UPDATE studies SET num_instances = num_instances + 1, num_series = num_series + ? WHERE study_uid = ?",
            (added.rowcount, rec.study_uid),
        )
        return AddOutcome.INSERTED


def _insert_sql(table: str, values: dict[str, object], conflict: str | None) -> str:
    # Column names come from our own tables (COLUMNS), never from the request.
    sql = f"INSERT INTO {table} ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})"
    return sql if conflict is None else f"{sql} ON CONFLICT ({conflict}) DO NOTHING"


def _delete(conn: sqlite3.Connection, study: str, series: str, sop: str) -> None:
    cur = conn.execute(
        "DELETE FROM instances WHERE sop_uid = ? AND study_uid = ? AND series_uid = ?", (sop, study, series)
    )
    if cur.rowcount == 0:
        return
    (left,) = conn.execute(
        "UPDATE series SET num_instances = num_instances - 1 WHERE study_uid = ? AND series_uid = ?"
        " RETURNING num_instances",
        (study, series),
    ).fetchall()[0]
    if left == 0:
        conn.execute("DELETE FROM series WHERE study_uid = ? AND series_uid = ?", (study, series))
    (series_left,) = conn.execute(
        "UPDATE studies SET num_instances = num_instances - 1, num_series = num_series - ?"
        " WHERE study_uid = ? RETURNING num_series",
        (int(left == 0), study),
    ).fetchall()[0]
    if series_left == 0:
        conn.execute("DELETE FROM studies WHERE study_uid = ?", (study,))


def _record(row: tuple[Any, ...]) -> InstanceRecord:
    study, series, sop, sop_class, syntax, size, sha256, origin, metadata, frames, pixel, stored_at = row
    return InstanceRecord(
        study_uid=study,
        series_uid=series,
        sop_uid=sop,
        sop_class_uid=sop_class,
        transfer_syntax=syntax,
        size=size,
        sha256=sha256,
        origin=origin,
        metadata=bytes(metadata),
        frames=tuple(tuple((int(o), int(n)) for o, n in frame) for frame in orjson.loads(frames)),
        pixel=None if pixel is None else PixelDescription(**orjson.loads(pixel)),
        stored_at=stored_at,
    )


def _text(attrs: dict[str, Any]) -> str:
    return orjson.dumps(attrs).decode()
