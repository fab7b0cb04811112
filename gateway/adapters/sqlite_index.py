"""The embedded metadata index: SQLite, implementing :class:`gateway.ports.Index`.

Schema (``PRAGMA user_version`` = :data:`SCHEMA_VERSION`, created or migrated on first use):

* ``studies`` — one row per study: indexed columns for the common study keys (patient name as a
  case-folded column and a fuzzy word-list column, dates and times normalized to comparable
  text), counters ``num_series`` / ``num_instances``, and ``attrs``: the study-level attributes
  (:data:`gateway.dicom.attributes.STUDY_TAGS`) of the first instance indexed, as DICOM JSON.
* ``series`` — keyed by (study, series) UID: indexed series keys, ``num_instances``, ``attrs``
  (:data:`gateway.dicom.attributes.SERIES_TAGS`).
* ``instances`` — keyed by SOP Instance UID: what :class:`gateway.ports.InstanceRecord` holds
  (frames and pixel description as JSON, metadata as a BLOB of DICOM JSON), and ``shared``: set
  once a second upload of the same bytes was told the instance is stored.
* ``removals`` — SOP Instance UIDs whose objects are being deleted right now
  (:meth:`gateway.ports.Index.begin_removal`); an ``add`` of one answers REMOVING.
* ``changefeed`` — one entry per instance row added or removed, written in that transaction
  (:mod:`gateway.adapters.sql_changes`); one writer at a time, so sequence order is commit order.
* ``webhook_cursors`` — each webhook's position in the feed and its delivery lease
  (:mod:`gateway.adapters.sql_webhooks`).
* ``kept_versions``, ``operations`` and ``instances.version`` — metadata corrections
  (:mod:`gateway.adapters.sql_corrections`).
* ``pending_commitments`` — storage commitment requests not yet reported, with their lease
  (:mod:`gateway.adapters.sql_commitments`).

Concurrency: one writer connection, its transactions serialized (a capacity limiter of one in
the event loop, a lock in the threads) and started with ``BEGIN IMMEDIATE`` so that writers in
other processes (``reindex``) queue on ``busy_timeout`` instead of failing half-way; readers use
a small pool of read-only connections, which WAL lets run beside the writer. ``synchronous=FULL``
because an acknowledged STOW must survive a power cut, not just a crash. All sqlite3 calls run
in worker threads; sqlite3 errors become :class:`gateway.errors.IndexError_` (503).
"""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.to_thread
import orjson

from gateway import observability
from gateway.adapters import sql_changes, sql_commitments, sql_corrections, sql_retention, sql_webhooks
from gateway.adapters.sql_rows import (
    IndexRow,
    decode_metadata,
    find_indexed,
    instance_sql,
    instance_values,
    instances_sql,
    iter_instance_keys,
    patient_identity,
    record_from_row,
    series_values,
    study_values,
)
from gateway.adapters.sqlite_memory import sqlite_memory_used
from gateway.adapters.sqlite_search import COLUMNS, register_functions, row_to_json, search_sql
from gateway.dicom.attributes import Level
from gateway.dicom.query import QidoQuery
from gateway.errors import IndexError_, OperationTakenOver
from gateway.ports import (
    REMOVAL_LAPSE,
    UNDONE,
    AddOutcome,
    ChangeAction,
    ChangeEntry,
    ChangeQuery,
    InstanceKey,
    InstanceRecord,
    KeepIf,
    KeptVersion,
    Operation,
    PendingCommitment,
    RemovalCause,
    Replacement,
    RetentionCandidate,
    RetentionMatch,
    SearchResult,
    WebhookCursor,
)
from gateway.security.access import Restriction

T = TypeVar("T")

SCHEMA_VERSION = 8
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
    2: (
        "ALTER TABLE instances ADD COLUMN shared INTEGER NOT NULL DEFAULT 0",
        "CREATE TABLE removals (sop_uid TEXT PRIMARY KEY NOT NULL, token TEXT NOT NULL, since REAL NOT NULL)",
    ),
    # The cache expiry sweep walked this small index, oldest first, instead of scanning every
    # instance row (version 6 drops it: the retention sweep, which the cache expiry is a rule
    # of now, walks instances_by_stored_at).
    3: ("CREATE INDEX instances_expiry ON instances (stored_at) WHERE origin LIKE 'pacs:%' AND shared = 0",),
    # AUTOINCREMENT: a sequence is never reused, even once the newest entries were deleted.
    4: (
        "CREATE TABLE changefeed (sequence INTEGER PRIMARY KEY AUTOINCREMENT, "
        + sql_changes.COLUMNS_DDL.format(real="REAL", text="TEXT")
        + ")",
        *sql_changes.INDEXES,
        sql_changes.BACKFILL,
    ),
    5: (sql_webhooks.TABLE_DDL.format(text="TEXT", integer="INTEGER", real="REAL"),),
    6: sql_retention.migration("TEXT NOT NULL", "REAL"),
    7: sql_corrections.migration("TEXT", "TEXT", "INTEGER", "REAL"),
    8: sql_commitments.migration("TEXT", "INTEGER", "REAL"),
}

# The WHERE terms of the partial index instances_expiry (sql_retention.candidates_sql).
CACHED_COPIES = "origin LIKE 'pacs:%' AND shared = 0"


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
        observability.index_memory(lambda: float(sqlite_memory_used() or 0))

    # -- Index protocol ------------------------------------------------------------------------

    async def add(self, record: InstanceRecord) -> AddOutcome:
        def work() -> AddOutcome:
            row = _Row.from_record(record)  # parse and derive outside the write lock
            return self._transaction(row.insert)

        return await self._write(work)

    async def get(self, study: str | None, series: str | None, sop: str) -> InstanceRecord | None:
        sql, params = instance_sql("?", study, series, sop)
        rows = await self._read(lambda conn: conn.execute(sql, params).fetchall())
        return _record(rows[0]) if rows else None

    async def instances(self, study: str, series: str | None = None) -> list[InstanceRecord]:
        sql, params = instances_sql("?", study, series)
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

    async def begin_removal(
        self, study: str, series: str, sop: str, *, keep_if: KeepIf, cause: RemovalCause = UNDONE
    ) -> str | None:
        # BEGIN IMMEDIATE serializes this with every add, in this process and any other.
        def begin(conn: sqlite3.Connection) -> str | None:
            found = conn.execute(
                "SELECT shared FROM instances WHERE sop_uid = ? AND study_uid = ? AND series_uid = ?",
                (sop, study, series),
            ).fetchone()
            if found is not None:
                if keep_if is KeepIf.INDEXED or (keep_if is KeepIf.SHARED and found[0]):
                    return None
                (patient_id,) = conn.execute(sql_changes.STUDY_PATIENT_SQL.format(p="?"), (study,)).fetchone()
                _delete(conn, study, series, sop)
                params = sql_changes.insert_params(
                    time.time(), ChangeAction.DELETE, (study, series, sop), cause.origin, patient_id, cause
                )
                conn.execute(sql_changes.insert_sql("?"), params)
            token = uuid.uuid4().hex
            conn.execute(
                "INSERT INTO removals (sop_uid, token, since) VALUES (?, ?, ?)"
                " ON CONFLICT (sop_uid) DO UPDATE SET token = excluded.token, since = excluded.since",
                (sop, token, time.time()),
            )
            return token

        return await self._write(lambda: self._transaction(begin))

    async def end_removal(self, sop: str, token: str) -> None:
        await self._write(
            lambda: self._transaction(
                lambda conn: conn.execute("DELETE FROM removals WHERE sop_uid = ? AND token = ?", (sop, token))
            )
        )

    async def retention_candidates(
        self, match: RetentionMatch, stored_before: float, limit: int
    ) -> list[RetentionCandidate]:
        sql, params = sql_retention.candidates_sql("?", match, stored_before, limit, cached_copies=CACHED_COPIES)
        rows = await self._read_rows(sql, params)
        return [
            RetentionCandidate(str(a), str(b), str(c), str(o), float(t), None if u is None else float(u))
            for a, b, c, o, t, u in rows
        ]

    async def record_access(self, series: Collection[tuple[str, str]], now: float) -> None:
        params = [(now, study, series_uid, now) for study, series_uid in series]
        sql = sql_retention.record_access_sql("?")
        await self._write(lambda: self._transaction(lambda conn: conn.executemany(sql, params)))

    async def set_protected(self, study: str, protected: bool) -> None:
        sql, params = (
            (sql_retention.protect_sql("?"), (study, time.time()))
            if protected
            else (sql_retention.unprotect_sql("?"), (study,))
        )
        await self._write(lambda: self._transaction(lambda conn: conn.execute(sql, params)))

    async def is_protected(self, study: str) -> bool:
        return bool(await self._read_rows(sql_retention.is_protected_sql("?"), [study]))

    async def take_lease(self, name: str, holder: str, seconds: float) -> bool:
        now = time.time()
        params = (name, holder, now + seconds, now, holder)
        rows = await self._write(
            lambda: self._transaction(lambda conn: conn.execute(sql_retention.take_lease_sql("?"), params).fetchall())
        )
        return bool(rows)

    async def release_lease(self, name: str, holder: str) -> None:
        sql = sql_retention.release_lease_sql("?")
        await self._write(lambda: self._transaction(lambda conn: conn.execute(sql, (name, holder))))

    async def clear(self) -> None:
        def clear(conn: sqlite3.Connection) -> None:
            conn.execute(sql_changes.clear_sql("?"), (time.time(),))
            for table in ("instances", "series", "studies", "removals"):
                conn.execute(f"DELETE FROM {table}")

        await self._write(lambda: self._transaction(clear))

    async def changes(self, query: ChangeQuery) -> list[ChangeEntry]:
        sql, params = sql_changes.changes_sql("?", query)
        rows = await self._read(lambda conn: conn.execute(sql, params).fetchall())
        return [sql_changes.entry_from_row(row) for row in rows]

    async def latest_change(
        self, restriction: Restriction | None = None, *, include_metadata: bool = False
    ) -> ChangeEntry | None:
        sql, params = sql_changes.latest_sql("?", restriction, include_metadata)
        rows = await self._read(lambda conn: conn.execute(sql, params).fetchall())
        return sql_changes.entry_from_row(rows[0]) if rows else None

    async def ping(self) -> None:
        await self._read(lambda conn: conn.execute("PRAGMA user_version").fetchone())

    async def aclose(self) -> None:
        await anyio.to_thread.run_sync(self._close)

    def instance_keys(self, *, page_size: int = 1000) -> AsyncIterator[InstanceKey]:
        return iter_instance_keys(self._read_rows, "?", page_size)

    async def indexed(self, keys: Collection[InstanceKey]) -> set[InstanceKey]:
        return await find_indexed(self._read_rows, "?", keys)

    async def _read_rows(self, sql: str, params: list[object]) -> list[tuple[Any, ...]]:
        return await self._read(lambda conn: conn.execute(sql, params).fetchall())

    # -- WebhookCursors ------------------------------------------------------------------------

    async def add_webhook(self, name: str) -> None:
        await self._write(lambda: self._transaction(lambda conn: conn.execute(sql_webhooks.add_sql("?"), (name,))))

    # Leases and cursors are not worth an fsync each (one per delivered entry, beside the STOWs'):
    # a power cut that undoes a cursor's last moves only makes their entries be sent again,
    # which at-least-once delivery allows. A crash of the process loses nothing (WAL).

    async def claim_webhook(self, name: str, holder: str, until: float) -> int | None:
        def claim(conn: sqlite3.Connection) -> int | None:
            row = conn.execute(sql_webhooks.claim_sql("?"), (holder, until, name, holder, time.time())).fetchone()
            return None if row is None else int(row[0])

        return await self._write(lambda: self._transaction(claim, synced=False))

    async def advance_webhook(self, name: str, holder: str, sequence: int, until: float) -> bool:
        params = sql_webhooks.advance_params(sequence, until, name, holder)

        def advance(conn: sqlite3.Connection) -> bool:
            return bool(conn.execute(sql_webhooks.advance_sql("?"), params).rowcount == 1)

        return await self._write(lambda: self._transaction(advance, synced=False))

    async def release_webhook(self, name: str, holder: str) -> None:
        await self._write(
            lambda: self._transaction(lambda conn: conn.execute(sql_webhooks.release_sql("?"), (name, holder)))
        )

    async def webhook_cursors(self) -> list[WebhookCursor]:
        rows = await self._read(lambda conn: conn.execute(sql_webhooks.CURSORS_SQL).fetchall())
        return [sql_webhooks.cursor_from_row(row) for row in rows]

    # -- PendingCommitments --------------------------------------------------------------------

    async def add_commitment(self, pending: PendingCommitment, holder: str, until: float) -> None:
        # Synced: the N-ACTION is answered once this returns, and its report must survive anything.
        params = sql_commitments.add_params(pending, holder, until)
        await self._write(lambda: self._transaction(lambda c: c.execute(sql_commitments.add_sql("?"), params)))

    async def claim_commitments(self, holder: str, until: float, *, mine: bool, limit: int) -> list[PendingCommitment]:
        params = sql_commitments.claim_params(holder, until, time.time(), mine=mine, limit=limit)

        def claim(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
            return conn.execute(sql_commitments.claim_sql("?"), params).fetchall()

        return sql_commitments.oldest_first(await self._write(lambda: self._transaction(claim, synced=False)))

    async def renew_commitment(self, key: str, holder: str, until: float) -> bool:
        def renew(conn: sqlite3.Connection) -> bool:
            return bool(conn.execute(sql_commitments.renew_sql("?"), (until, key, holder)).rowcount == 1)

        return await self._write(lambda: self._transaction(renew, synced=False))

    async def remove_commitment(self, key: str) -> None:
        # Not synced: a power cut undoing it only makes the report go twice, which a peer must take
        # anyway (PS3.4 J.3.3: the SCP may send the same result again).
        sql = sql_commitments.remove_sql("?")
        await self._write(lambda: self._transaction(lambda c: c.execute(sql, (key,)), synced=False))

    async def release_commitments(self, holder: str) -> None:
        sql = sql_commitments.release_sql("?")
        await self._write(lambda: self._transaction(lambda c: c.execute(sql, (holder,)), synced=False))

    async def pending_commitments(self) -> list[PendingCommitment]:
        return [sql_commitments.from_row(row) for row in await self._read_rows(sql_commitments.LIST_SQL, [])]

    # -- Corrections ---------------------------------------------------------------------------

    async def replace_instances(
        self, study: str, replacements: list[Replacement], cause: RemovalCause, *, holder: str | None = None
    ) -> list[str]:
        def work() -> list[str]:
            rows = [(r, _Row.from_record(r.record)) for r in replacements]  # derived outside the write lock
            return self._transaction(lambda conn: _replace(conn, study, rows, cause, holder))

        return await self._write(work)

    async def kept_versions(self, sop: str) -> list[KeptVersion]:
        rows = await self._read_rows(sql_corrections.kept_sql("?"), [sop])
        return [sql_corrections.kept_from_row(row) for row in rows]

    async def expired_versions(self, replaced_before: float, limit: int) -> list[KeptVersion]:
        rows = await self._read_rows(sql_corrections.expired_sql("?"), [replaced_before, limit])
        return [sql_corrections.kept_from_row(row) for row in rows]

    async def forget_version(self, sop: str, version: str) -> None:
        sql = sql_corrections.forget_sql("?")
        await self._write(lambda: self._transaction(lambda conn: conn.execute(sql, (sop, version))))

    async def save_operation(self, operation: Operation) -> None:
        sql, params = sql_corrections.save_operation_sql("?"), sql_corrections.operation_params(operation)
        await self._write(lambda: self._transaction(lambda conn: conn.execute(sql, params)))

    async def operation(self, operation_id: str) -> Operation | None:
        rows = await self._read_rows(sql_corrections.operation_sql("?"), [operation_id])
        return sql_corrections.operation_from_row(rows[0]) if rows else None

    async def running_operations(self, holder: str) -> list[Operation]:
        rows = await self._read_rows(sql_corrections.running_sql("?"), [holder])
        return [sql_corrections.operation_from_row(row) for row in rows]

    async def unfinished_operations(self) -> list[Operation]:
        rows = await self._read_rows(sql_corrections.unfinished_sql(), [])
        return [sql_corrections.operation_from_row(row) for row in rows]

    async def heartbeat_operation(self, operation_id: str, holder: str, now: float) -> bool:
        sql, params = sql_corrections.heartbeat_sql("?"), (now, operation_id, holder)
        return bool(await self._write(lambda: self._transaction(lambda conn: conn.execute(sql, params).rowcount == 1)))

    async def take_over_stale_operations(self, holder: str, updated_before: float, now: float) -> list[Operation]:
        sql, params = sql_corrections.take_over_sql("?"), (holder, now, updated_before, holder)
        rows = await self._write(lambda: self._transaction(lambda conn: conn.execute(sql, params).fetchall()))
        return [sql_corrections.operation_from_row(row) for row in rows]

    # -- beyond the protocol -------------------------------------------------------------------

    async def migrate(self) -> int:
        """Bring the schema to :data:`SCHEMA_VERSION` (done on first use anyway); returns it."""
        await self._write(self._writer_connection_locked)
        return SCHEMA_VERSION

    async def load(self, records: Iterable[InstanceRecord]) -> int:
        """Bulk-insert new instances in one transaction (benchmarks, migrations from another
        archive). Every study of ``records`` must be absent from the index; the study and
        series counters are computed here. Returns the number of instances."""

        def load(conn: sqlite3.Connection) -> int:
            studies: dict[str, list[Any]] = {}
            series: dict[tuple[str, str], list[Any]] = {}
            rows = iter(records)
            first = next(rows, None)
            if first is None:
                return 0
            conn.execute("PRAGMA defer_foreign_keys = ON")  # children are inserted before parents

            created: list[tuple[tuple[str, str, str], str]] = []

            def instances() -> Iterator[tuple[object, ...]]:
                for record in _chain(first, rows):
                    created.append(((record.study_uid, record.series_uid, record.sop_uid), record.origin))
                    # Study and series rows once each, not once per instance: this is the hot loop.
                    meta = decode_metadata(record)
                    key = (record.study_uid, record.series_uid)
                    if key not in series:
                        series[key] = [series_values(record, meta), 0]
                        if record.study_uid not in studies:
                            studies[record.study_uid] = [study_values(record, meta), 0, 0]
                        studies[record.study_uid][1] += 1
                    series[key][1] += 1
                    studies[record.study_uid][2] += 1
                    yield tuple(instance_values(record, meta).values())

            columns = list(instance_values(first, decode_metadata(first)))
            cur = conn.executemany(_insert_sql("instances", dict.fromkeys(columns), None), instances())
            count = cur.rowcount
            some_series = next(iter(series.values()))[0]
            conn.executemany(
                _insert_sql("series", {**some_series, "num_instances": 0}, None),
                ((*values.values(), n) for values, n in series.values()),
            )
            some_study = next(iter(studies.values()))[0]
            conn.executemany(
                _insert_sql("studies", {**some_study, "num_series": 0, "num_instances": 0}, None),
                ((*values.values(), n_series, n_instances) for values, n_series, n_instances in studies.values()),
            )
            # Every way in has its change-feed entry, a bulk load too (its studies are all new).
            now = time.time()
            marks = ", ".join("?" * len(sql_changes.BULK_COLUMNS))
            conn.executemany(
                f"INSERT INTO changefeed ({', '.join(sql_changes.BULK_COLUMNS)}) VALUES ({marks})",
                (sql_changes.bulk_row(now, k, origin, studies[k[0]][0].get("patient_id")) for k, origin in created),
            )
            return count

        return await self._write(lambda: self._transaction(load))

    async def analyze(self) -> None:
        """Refresh the query planner's statistics (after a bulk load)."""
        await self._write(lambda: self._transaction(lambda conn: conn.execute("ANALYZE")))

    async def explain(self, query: QidoQuery) -> str:
        """SQLite's plan for a QIDO query (tests and benchmarks show that indexes are used)."""
        limit = self._max_results if query.limit is None else min(query.limit, self._max_results)
        sql, params = search_sql(query, limit + 1)
        rows = await self._read(lambda conn: conn.execute("EXPLAIN QUERY PLAN " + sql, params).fetchall())
        return "\n".join(str(row[3]) for row in rows)

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

    def _transaction(self, fn: Callable[[sqlite3.Connection], T], *, synced: bool = True) -> T:
        """``fn`` in one write transaction. ``synced=False``: its commit is not flushed to disk
        at once (WAL, ``synchronous=NORMAL``): it survives a crash of the process, and a power
        cut may undo it, never a synced commit before it (the next synced commit flushes it)."""
        with self._writer_lock:
            try:
                conn = self._writer_connection()
                if not synced:
                    conn.execute("PRAGMA synchronous = NORMAL")
                try:
                    conn.execute("BEGIN IMMEDIATE")
                    try:
                        result = fn(conn)
                        conn.execute("COMMIT")
                    except BaseException:
                        if conn.in_transaction:
                            conn.execute("ROLLBACK")
                        raise
                finally:
                    if not synced:
                        conn.execute("PRAGMA synchronous = FULL")
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
            _ensure_wal(conn)
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


def _ensure_wal(conn: sqlite3.Connection) -> None:
    """Switch the database to WAL once; it stays WAL for every later connection.

    Changing the journal mode needs an exclusive lock and answers SQLITE_BUSY at once instead
    of waiting for busy_timeout, so another process opening the index at the same moment (a
    second replica, ``reindex``) would fail: ask first, and retry the switch briefly.
    """
    for attempt in range(100):
        try:
            if str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower() == "wal":
                return
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            time.sleep(min(0.01 * (attempt + 1), 0.2))
    raise IndexError_("the index is locked by another process (could not switch it to WAL)")


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


class _Row(IndexRow):
    """An :class:`IndexRow` that knows how to insert itself into SQLite."""

    def insert(self, conn: sqlite3.Connection) -> AddOutcome:
        rec = self.record
        removal = conn.execute("SELECT since FROM removals WHERE sop_uid = ?", (rec.sop_uid,)).fetchone()
        if removal is not None:
            if time.time() - removal[0] > REMOVAL_LAPSE:
                # Its remover died: the removal lapses, but the objects may be half deleted, so
                # the caller still writes them again before its next add.
                conn.execute("DELETE FROM removals WHERE sop_uid = ?", (rec.sop_uid,))
            return AddOutcome.REMOVING
        found = conn.execute("SELECT sha256 FROM instances WHERE sop_uid = ?", (rec.sop_uid,)).fetchone()
        if found is not None:
            if found[0] != rec.sha256:
                return AddOutcome.CONFLICT
            # Another upload is now told this instance is stored: the first one's undo must keep it.
            conn.execute("UPDATE instances SET shared = 1 WHERE sop_uid = ? AND shared = 0", (rec.sop_uid,))
            return AddOutcome.IDENTICAL
        # BEGIN IMMEDIATE holds the write lock: no other add can create the study meanwhile.
        study = conn.execute("SELECT attrs, patient_id FROM studies WHERE study_uid = ?", (rec.study_uid,)).fetchone()
        if study is not None and patient_identity(orjson.loads(study[0])) != self.patient:
            return AddOutcome.PATIENT_MISMATCH
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
        key = (rec.study_uid, rec.series_uid, rec.sop_uid)
        patient_id = self.study.get("patient_id") if study is None else study[1]
        params = sql_changes.insert_params(time.time(), ChangeAction.CREATE, key, rec.origin, patient_id)
        conn.execute(sql_changes.insert_sql("?"), params)
        return AddOutcome.INSERTED


def _replace(
    conn: sqlite3.Connection, study: str, rows: list[tuple[Replacement, _Row]], cause: RemovalCause, holder: str | None
) -> list[str]:
    """The transaction of :meth:`SqliteIndex.replace_instances`."""
    if holder is not None and rows:  # one writer at a time: no take-over can come in between
        operation = rows[0][1].record.version
        if conn.execute(sql_corrections.held_sql("?"), (operation, holder)).fetchone() is None:
            raise OperationTakenOver(f"operation {operation} is no longer held by this replica")
    now = time.time()
    switched: list[_Row] = []
    for replacement, row in rows:
        rec = row.record
        current = conn.execute(sql_corrections.current_sql("?"), (rec.sop_uid, study, rec.series_uid)).fetchone()
        if current is None or (current[0], current[1]) != (replacement.old_version, replacement.old_sha256):
            continue  # deleted, stored anew or corrected meanwhile: not the version this correction read
        if conn.execute("SELECT 1 FROM removals WHERE sop_uid = ?", (rec.sop_uid,)).fetchone() is not None:
            continue
        version, sha256, size, syntax = current
        kept = KeptVersion(study, rec.series_uid, rec.sop_uid, version, sha256, size, syntax, now)
        conn.execute(sql_corrections.keep_sql("?"), sql_corrections.keep_params(kept))
        conn.execute(*sql_corrections.update_sql("?", "instances", row.instance, ("sop_uid",)))
        switched.append(row)
    if not switched:
        return []
    conn.execute(*sql_corrections.update_sql("?", "studies", switched[0].study, ("study_uid",)))
    (patient_id,) = conn.execute(sql_changes.STUDY_PATIENT_SQL.format(p="?"), (study,)).fetchone()
    for row in switched:
        key = (study, row.record.series_uid, row.record.sop_uid)
        params = sql_changes.insert_params(now, ChangeAction.UPDATE, key, cause.origin, patient_id, cause)
        conn.execute(sql_changes.insert_sql("?"), params)
    return [row.record.sop_uid for row in switched]


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
    conn.execute(sql_corrections.FORGET_ALL_SQL.format(p="?"), (sop,))
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


_record = record_from_row


def _chain(first: InstanceRecord, rest: Iterator[InstanceRecord]) -> Iterator[InstanceRecord]:
    yield first
    yield from rest
