"""The shared metadata index: PostgreSQL (psycopg 3), implementing :class:`gateway.ports.Index`.

For deployments with several gateway replicas: every replica opens the same database, so a STOW
through one is visible to QIDO/WADO through another as soon as it is acknowledged.

URL: ``postgresql://user:password@host:port/dbname?schema=NAME&pool_max=10`` (also
``postgres://``). ``schema`` (optional) puts the tables in that schema, created when missing;
``pool_min`` / ``pool_max`` size the connection pool; ``operation_timeout`` (seconds, default
8, 0 for none) bounds each statement on the server and, a second later, each use of a connection
on the client (a frozen server); every other parameter is libpq's (``sslmode``,
``connect_timeout``, ...).

Schema: the same three tables as SQLite (see :mod:`gateway.adapters.sqlite_index`): text columns
use the ``C`` collation (byte order, as SQLite, and B-tree indexes serve prefix ``LIKE``);
``attrs`` are ``jsonb``; ``norm`` holds normalized person names, dates and times for keys
without a column (:func:`gateway.adapters.postgres_search.norm_values`). The version lives in
``gateway_schema_version``; migrations run on first use (or ``dicomweb-gateway migrate``) inside
a transaction holding an advisory lock, so replicas starting together migrate once.

Concurrency: each ``add`` is one transaction, holding a transaction-scoped advisory lock on its SOP
Instance UID (so it serializes with :meth:`PostgresIndex.begin_removal` of the same instance on any
replica), of ``INSERT ... ON CONFLICT DO NOTHING`` statements in parent-to-child order; the unique
indexes make concurrent adds of one SOP Instance UID, from any number of replicas, leave exactly
one row (the loser sees the winner's row once it commits and answers IDENTICAL or CONFLICT).
Deadlocks and serialization failures are retried. psycopg errors
become :class:`gateway.errors.IndexError_` (503).

Change feed (:mod:`gateway.adapters.sql_changes`): an identity column numbers the entries, but
it hands out numbers when a row is inserted, not when it commits, so a follower reading "after
sequence n" could pass over an entry n-1 still committing. Every transaction writing an entry
therefore takes one transaction-scoped advisory lock just before it (its last statement): entries
commit in sequence order, on every replica, at the cost of serializing the commits of writes.

Outages: while the server is stopped or unreachable every call fails at once with that 503
(Retry-After); connections whose backends died are dropped at checkout; after the server returns,
the first call within a second reconnects, without a gateway restart. Reads are run once more
when their connection dies under them while the server answers; an ``add`` is too (it is
idempotent). See :mod:`gateway.adapters.postgres_pool`.
"""

from __future__ import annotations

import contextlib
import functools
import re
import time
import uuid
import zlib
from collections.abc import AsyncIterator, Collection, Iterable
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import anyio
import anyio.to_thread
import orjson
import psycopg
import psycopg.errors
from psycopg.adapt import Buffer, Loader
from psycopg.sql import SQL, Literal

from gateway.adapters import sql_changes, sql_commitments, sql_corrections, sql_retention, sql_webhooks
from gateway.adapters.postgres_pool import ConnectionLost, IndexConnections, one_line
from gateway.adapters.postgres_search import norm_values, search_sql
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
from gateway.adapters.sql_search import row_to_json, sql_columns
from gateway.dicom.attributes import Level
from gateway.dicom.query import QidoQuery
from gateway.errors import IndexError_, IndexOutcomeUnknown, OperationTakenOver
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

SCHEMA_VERSION = 8
# Advisory lock space of per-instance locks (the second key is a CRC of the SOP Instance UID:
# a collision only makes two instances wait for each other).
_INSTANCE_LOCKS = 0x44574749
# The one advisory lock that orders change-feed commits (see the module docstring).
_FEED_LOCK = (0x44574749, -1)
DEFAULT_MAX_RESULTS = 1000
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
# A statement running longer is cancelled by the server (503): within the 10 s in which a client
# is told "unavailable" when the index is. ``operation_timeout`` in the URL changes it (0: none).
DEFAULT_OPERATION_TIMEOUT = 8.0
# The client's own deadline is this much later, for a server that does not answer at all.
_DEADLINE_GRACE = 1.0
_OUR_PARAMETERS = ("schema", "pool_min", "pool_max", "operation_timeout")
_RETRIES = 5
# Transient conflicts between concurrent transactions: the whole add is simply run again.
_RETRYABLE = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure, psycopg.errors.ForeignKeyViolation)


_TEXT = 'text COLLATE "C"'
_UID = f"{_TEXT} NOT NULL"


def _column_ddl(level: Level) -> str:
    return ", ".join(f"{name} {'bigint' if kind == 'int' else _TEXT}" for name, kind in sql_columns(level))


# Each version's statements, applied in order to bring a schema from the previous version.
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        f"""CREATE TABLE studies (
            study_uid {_UID} PRIMARY KEY, {_column_ddl("study")},
            num_series integer NOT NULL DEFAULT 0, num_instances integer NOT NULL DEFAULT 0,
            attrs jsonb NOT NULL, norm jsonb NOT NULL DEFAULT '{{}}')""",
        f"""CREATE TABLE series (
            study_uid {_UID} REFERENCES studies (study_uid) ON DELETE CASCADE DEFERRABLE,
            series_uid {_UID}, {_column_ddl("series")},
            num_instances integer NOT NULL DEFAULT 0, attrs jsonb NOT NULL, norm jsonb NOT NULL DEFAULT '{{}}',
            PRIMARY KEY (study_uid, series_uid))""",
        f"""CREATE TABLE instances (
            sop_uid {_UID} PRIMARY KEY, study_uid {_UID}, series_uid {_UID},
            {_column_ddl("instance")}, transfer_syntax text NOT NULL, size bigint NOT NULL,
            sha256 text NOT NULL, origin text NOT NULL, stored_at double precision NOT NULL,
            frames text NOT NULL, pixel text, metadata bytea NOT NULL, norm jsonb NOT NULL DEFAULT '{{}}',
            FOREIGN KEY (study_uid, series_uid) REFERENCES series (study_uid, series_uid)
                ON DELETE CASCADE DEFERRABLE)""",
        # The study list's default order, so "newest 100 studies" reads 100 index entries.
        "CREATE INDEX studies_by_date ON studies (study_date DESC NULLS LAST, study_time DESC NULLS LAST, study_uid)",
        "CREATE INDEX studies_by_patient_id ON studies (patient_id)",
        "CREATE INDEX studies_by_patient_name ON studies (patient_name_ci)",
        "CREATE INDEX studies_by_accession ON studies (accession_number)",
        "CREATE INDEX series_by_number ON series (study_uid, series_number NULLS FIRST, series_uid)",
        "CREATE INDEX series_by_uid ON series (series_uid)",
        "CREATE INDEX series_by_modality ON series (modality, study_uid)",
        # Also the order of unscoped /instances, and the foreign key's child index.
        "CREATE INDEX instances_by_series ON instances (study_uid, series_uid, instance_number NULLS FIRST, sop_uid)",
        "CREATE INDEX instances_by_series_uid ON instances (series_uid, instance_number)",
        "CREATE INDEX instances_by_class ON instances (sop_class_uid)",
    ),
    2: (
        "ALTER TABLE instances ADD COLUMN shared boolean NOT NULL DEFAULT false",
        f"CREATE TABLE removals (sop_uid {_UID} PRIMARY KEY, token text NOT NULL, since double precision NOT NULL)",
    ),
    # The cache expiry sweep walks this partial index (see the SQLite adapter).
    3: ("CREATE INDEX instances_expiry ON instances (stored_at) WHERE origin LIKE 'pacs:%' AND NOT shared",),
    4: (
        "CREATE TABLE changefeed (sequence bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
        + sql_changes.COLUMNS_DDL.format(real="double precision", text=_TEXT)
        + ")",
        *sql_changes.INDEXES,
        sql_changes.BACKFILL,
    ),
    5: (sql_webhooks.TABLE_DDL.format(text=_TEXT, integer="bigint", real="double precision"),),
    6: sql_retention.migration(_UID, "double precision"),
    7: sql_corrections.migration(_TEXT, _TEXT, "bigint", "double precision"),
    8: sql_commitments.migration(_TEXT, "integer", "double precision"),
}

# The WHERE terms of the partial index instances_expiry (sql_retention.candidates_sql).
CACHED_COPIES = "origin LIKE 'pacs:%%' AND NOT shared"


class _RawJson(Loader):
    """Leave json/jsonb results as bytes: :func:`row_to_json` decodes them with orjson, in a
    worker thread, instead of psycopg's json module on the event loop."""

    def load(self, data: Buffer) -> bytes:
        return bytes(data)


class _Exists(Exception):
    """The SOP Instance UID was indexed concurrently: roll back and report what is there."""


class _PatientMismatch(Exception):
    """The study is indexed under another patient: roll back (AddOutcome.PATIENT_MISMATCH)."""


class PostgresIndex:
    """PostgreSQL index at ``url`` (see the module docstring). Connections open on first use.

    ``max_results`` caps every search page (a client ``limit`` above it is lowered and the
    result flagged ``more``, PS3.18 8.3.4.4)."""

    def __init__(self, url: str, *, max_results: int = DEFAULT_MAX_RESULTS, timeout: float = 10.0) -> None:
        parsed = parse_url(url)
        self._conninfo, self._schema = parsed.conninfo, parsed.schema
        self._where = _redacted(url)
        self._max_results = max_results
        self._timeout = timeout
        # Each use of a connection: a little longer than the server's own statement timeout.
        self._deadline = None if parsed.operation_timeout is None else parsed.operation_timeout + _DEADLINE_GRACE
        kwargs: dict[str, Any] = {"autocommit": True, "prepare_threshold": None}
        if self._schema is not None:
            kwargs["options"] = f"-c search_path={self._schema}"
        # Outages (server stopped, crashed, backends terminated) are handled there: fast 503s,
        # recovery without a restart (see gateway.adapters.postgres_pool).
        self._connections = IndexConnections(
            self._conninfo,
            where=self._where,
            kwargs=kwargs,
            min_size=parsed.pool_min,
            max_size=parsed.pool_max,
            timeout=timeout,
            configure=functools.partial(_configure, statement_timeout=parsed.operation_timeout),
        )
        self._lock: anyio.Lock | None = None
        self._migrated = False

    # -- Index protocol ------------------------------------------------------------------------

    async def add(self, record: InstanceRecord) -> AddOutcome:
        row = await anyio.to_thread.run_sync(_PgRow.from_record, record)
        unknown: IndexOutcomeUnknown | None = None
        for attempt in range(_RETRIES):
            try:
                async with self._connection() as conn:
                    try:
                        return await row.insert(conn)
                    except _RETRYABLE:
                        if attempt == _RETRIES - 1:
                            raise
            except (ConnectionLost, IndexOutcomeUnknown) as exc:
                # Its backend was terminated while the server answers: running the add again is
                # safe (it finds its own row if the commit had landed: IDENTICAL), and it is how
                # a commit of unknown outcome becomes known.
                if isinstance(exc, IndexOutcomeUnknown):
                    unknown = exc
                if attempt == _RETRIES - 1:
                    raise
            except IndexError_ as exc:
                if unknown is not None:
                    raise unknown from exc  # the database could not be asked: still unknown
                raise
        raise AssertionError("unreachable")

    async def get(self, study: str | None, series: str | None, sop: str) -> InstanceRecord | None:
        sql, params = instance_sql("%s", study, series, sop)
        rows = await self._fetch(sql, params)
        return record_from_row(rows[0]) if rows else None

    async def instances(self, study: str, series: str | None = None) -> list[InstanceRecord]:
        sql, params = instances_sql("%s", study, series)
        rows = await self._fetch(sql, params)
        return await anyio.to_thread.run_sync(lambda: [record_from_row(row) for row in rows])

    async def search(self, query: QidoQuery) -> SearchResult:
        """Answer a QIDO query; at most ``min(query.limit, max_results)`` rows, ``more`` when
        further matches exist (one extra row is fetched to know)."""
        limit = self._max_results if query.limit is None else min(query.limit, self._max_results)
        sql, params = search_sql(query, limit + 1)
        rows = await self._fetch(sql, params)

        def convert() -> SearchResult:
            return SearchResult(rows=[row_to_json(query, row) for row in rows[:limit]], more=len(rows) > limit)

        return await anyio.to_thread.run_sync(convert)

    async def begin_removal(
        self, study: str, series: str, sop: str, *, keep_if: KeepIf, cause: RemovalCause = UNDONE
    ) -> str | None:
        for attempt in range(_RETRIES):
            async with self._connection() as conn:
                try:
                    async with conn.transaction():
                        await _lock_instance(conn, sop)
                        cur = await conn.execute(
                            "SELECT shared FROM instances WHERE sop_uid = %s AND study_uid = %s AND series_uid = %s",
                            (sop, study, series),
                        )
                        found = await cur.fetchone()
                        if found is not None:
                            if keep_if is KeepIf.INDEXED or (keep_if is KeepIf.SHARED and found[0]):
                                return None
                            cur = await conn.execute(sql_changes.STUDY_PATIENT_SQL.format(p="%s"), (study,))
                            patient = await cur.fetchone()
                            await _delete(conn, study, series, sop)
                            key = (study, series, sop)
                            await _write_change(conn, ChangeAction.DELETE, key, cause.origin, patient, cause)
                        token = uuid.uuid4().hex
                        await conn.execute(
                            "INSERT INTO removals (sop_uid, token, since) VALUES (%s, %s, %s) ON CONFLICT (sop_uid)"
                            " DO UPDATE SET token = excluded.token, since = excluded.since",
                            (sop, token, time.time()),
                        )
                        return token
                except _RETRYABLE:
                    if attempt == _RETRIES - 1:
                        raise
        raise AssertionError("unreachable")

    async def end_removal(self, sop: str, token: str) -> None:
        async with self._connection() as conn:
            await conn.execute("DELETE FROM removals WHERE sop_uid = %s AND token = %s", (sop, token))

    async def retention_candidates(
        self, match: RetentionMatch, stored_before: float, limit: int
    ) -> list[RetentionCandidate]:
        sql, params = sql_retention.candidates_sql("%s", match, stored_before, limit, cached_copies=CACHED_COPIES)
        rows = await self._fetch(sql, params)
        return [
            RetentionCandidate(str(a), str(b), str(c), str(o), float(t), None if u is None else float(u))
            for a, b, c, o, t, u in rows
        ]

    async def record_access(self, series: Collection[tuple[str, str]], now: float) -> None:
        async with self._connection() as conn, conn.cursor() as cur:
            params = [(now, study, series_uid, now) for study, series_uid in series]
            await cur.executemany(sql_retention.record_access_sql("%s"), params)

    async def set_protected(self, study: str, protected: bool) -> None:
        async with self._connection() as conn:
            if protected:
                await conn.execute(sql_retention.protect_sql("%s"), (study, time.time()))
            else:
                await conn.execute(sql_retention.unprotect_sql("%s"), (study,))

    async def is_protected(self, study: str) -> bool:
        return bool(await self._fetch(sql_retention.is_protected_sql("%s"), [study]))

    async def take_lease(self, name: str, holder: str, seconds: float) -> bool:
        now = time.time()
        async with self._connection() as conn:
            cur = await conn.execute(sql_retention.take_lease_sql("%s"), (name, holder, now + seconds, now, holder))
            return bool(await cur.fetchall())

    async def release_lease(self, name: str, holder: str) -> None:
        async with self._connection() as conn:
            await conn.execute(sql_retention.release_lease_sql("%s"), (name, holder))

    async def clear(self) -> None:
        async with self._connection(bulk=True) as conn, conn.transaction():
            await _no_statement_timeout(conn)
            # The tables first, the feed lock last, as every writer takes them (no deadlock).
            await conn.execute("LOCK TABLE instances, series, studies, removals IN ACCESS EXCLUSIVE MODE")
            await _lock_feed(conn)
            await conn.execute(sql_changes.clear_sql("%s"), (time.time(),))
            await conn.execute("TRUNCATE instances, series, studies, removals")

    async def changes(self, query: ChangeQuery) -> list[ChangeEntry]:
        sql, params = sql_changes.changes_sql("%s", query)
        rows = await self._fetch(sql, params)
        return [sql_changes.entry_from_row(row) for row in rows]

    async def latest_change(
        self, restriction: Restriction | None = None, *, include_metadata: bool = False
    ) -> ChangeEntry | None:
        sql, params = sql_changes.latest_sql("%s", restriction, include_metadata)
        rows = await self._fetch(sql, params)
        return sql_changes.entry_from_row(rows[0]) if rows else None

    async def ping(self) -> None:
        # Readiness probes time out after a few seconds: answer "unavailable" before they do.
        async with self._connection(wait=min(self._timeout, 3.0), deadline=3.0) as conn:
            await conn.execute("SELECT 1")

    async def aclose(self) -> None:
        await self._connections.aclose()

    def instance_keys(self, *, page_size: int = 1000) -> AsyncIterator[InstanceKey]:
        return iter_instance_keys(self._fetch, "%s", page_size)

    async def indexed(self, keys: Collection[InstanceKey]) -> set[InstanceKey]:
        return await find_indexed(self._fetch, "%s", keys)

    # -- WebhookCursors ------------------------------------------------------------------------

    async def add_webhook(self, name: str) -> None:
        async with self._connection() as conn:
            await conn.execute(sql_webhooks.add_sql("%s"), (name,))

    async def claim_webhook(self, name: str, holder: str, until: float) -> int | None:
        async with self._connection() as conn:
            cur = await conn.execute(sql_webhooks.claim_sql("%s"), (holder, until, name, holder, time.time()))
            row = await cur.fetchone()
        return None if row is None else int(row[0])

    async def advance_webhook(self, name: str, holder: str, sequence: int, until: float) -> bool:
        async with self._connection() as conn:
            params = sql_webhooks.advance_params(sequence, until, name, holder)
            cur = await conn.execute(sql_webhooks.advance_sql("%s"), params)
            return cur.rowcount == 1

    async def release_webhook(self, name: str, holder: str) -> None:
        async with self._connection() as conn:
            await conn.execute(sql_webhooks.release_sql("%s"), (name, holder))

    async def webhook_cursors(self) -> list[WebhookCursor]:
        rows = await self._fetch(sql_webhooks.CURSORS_SQL, [])
        return [sql_webhooks.cursor_from_row(row) for row in rows]

    # -- PendingCommitments --------------------------------------------------------------------

    async def add_commitment(self, pending: PendingCommitment, holder: str, until: float) -> None:
        async with self._connection() as conn:
            await conn.execute(sql_commitments.add_sql("%s"), sql_commitments.add_params(pending, holder, until))

    async def claim_commitments(self, holder: str, until: float, *, mine: bool, limit: int) -> list[PendingCommitment]:
        params = sql_commitments.claim_params(holder, until, time.time(), mine=mine, limit=limit)
        async with self._connection() as conn:
            cur = await conn.execute(sql_commitments.claim_sql("%s"), params)
            rows = await cur.fetchall()
        return sql_commitments.oldest_first(rows)

    async def renew_commitment(self, key: str, holder: str, until: float) -> bool:
        async with self._connection() as conn:
            cur = await conn.execute(sql_commitments.renew_sql("%s"), (until, key, holder))
            return cur.rowcount == 1

    async def remove_commitment(self, key: str) -> None:
        async with self._connection() as conn:
            await conn.execute(sql_commitments.remove_sql("%s"), (key,))

    async def release_commitments(self, holder: str) -> None:
        async with self._connection() as conn:
            await conn.execute(sql_commitments.release_sql("%s"), (holder,))

    async def pending_commitments(self) -> list[PendingCommitment]:
        return [sql_commitments.from_row(row) for row in await self._fetch(sql_commitments.LIST_SQL, [])]

    # -- beyond the protocol -------------------------------------------------------------------

    async def migrate(self) -> int:
        """Bring the schema to :data:`SCHEMA_VERSION` (done on first use anyway); returns it."""
        async with self._connection():
            pass
        return SCHEMA_VERSION

    async def load(self, records: Iterable[InstanceRecord]) -> int:
        """Bulk-insert new instances with ``COPY`` in one transaction (benchmarks, migrations
        from another archive). Every study of ``records`` must be absent from the index; the
        study and series counters are computed here. Returns the number of instances."""
        studies: dict[str, list[Any]] = {}
        series: dict[tuple[str, str], list[Any]] = {}
        created: list[tuple[tuple[str, str, str], str]] = []
        count = 0
        async with self._connection(bulk=True) as conn, conn.transaction():
            await _no_statement_timeout(conn)
            await conn.execute("SET CONSTRAINTS ALL DEFERRED")  # children are copied before parents
            async with conn.cursor() as cur:
                columns = _PgRow.instance_columns()
                async with cur.copy(_copy_sql("instances", columns)) as copy:
                    for record in records:
                        # Study and series rows once each, not once per instance: the hot loop.
                        meta = decode_metadata(record)
                        instance = _pg_instance(record, meta)
                        if count == 0 and list(instance) != columns:
                            raise AssertionError(f"instance columns {list(instance)} != {columns}")
                        await copy.write_row(tuple(instance.values()))
                        created.append(((record.study_uid, record.series_uid, record.sop_uid), record.origin))
                        count += 1
                        key = (record.study_uid, record.series_uid)
                        if key not in series:
                            series[key] = [_pg_series(record, meta), 0]
                            if record.study_uid not in studies:
                                studies[record.study_uid] = [_pg_study(record, meta), 0, 0]
                            studies[record.study_uid][1] += 1
                        series[key][1] += 1
                        studies[record.study_uid][2] += 1
                if series:
                    first_series = next(iter(series.values()))[0]
                    cols = [*first_series, "num_instances"]
                    async with cur.copy(_copy_sql("series", cols)) as copy:
                        for values, n in series.values():
                            await copy.write_row((*values.values(), n))
                    first_study = next(iter(studies.values()))[0]
                    cols = [*first_study, "num_series", "num_instances"]
                    async with cur.copy(_copy_sql("studies", cols)) as copy:
                        for values, n_series, n_instances in studies.values():
                            await copy.write_row((*values.values(), n_series, n_instances))
                    # Every way in has its change-feed entry, a bulk load too (its studies are all new).
                    await _lock_feed(conn)
                    now = time.time()
                    async with cur.copy(_copy_sql("changefeed", sql_changes.BULK_COLUMNS)) as copy:
                        for instance_key, origin in created:
                            patient_id = studies[instance_key[0]][0].get("patient_id")
                            await copy.write_row(sql_changes.bulk_row(now, instance_key, origin, patient_id))
        return count

    async def analyze(self) -> None:
        """Refresh the planner's statistics (after a bulk load)."""
        async with self._connection(bulk=True) as conn, conn.transaction():
            await _no_statement_timeout(conn)
            await conn.execute("ANALYZE studies, series, instances")

    async def explain(self, query: QidoQuery) -> str:
        """PostgreSQL's plan for a QIDO query (tests and benchmarks show that indexes are used)."""
        limit = self._max_results if query.limit is None else min(query.limit, self._max_results)
        sql, params = search_sql(query, limit + 1)
        rows = await self._fetch("EXPLAIN " + sql, params)
        return "\n".join(str(r[0]) for r in rows)

    # -- Corrections ---------------------------------------------------------------------------

    async def replace_instances(
        self, study: str, replacements: list[Replacement], cause: RemovalCause, *, holder: str | None = None
    ) -> list[str]:
        rows = await anyio.to_thread.run_sync(lambda: [(r, _PgRow.from_record(r.record)) for r in replacements])
        # Row locks in one order (by SOP Instance UID), then the feed lock: the order every writer keeps.
        rows.sort(key=lambda pair: pair[1].record.sop_uid)
        for attempt in range(_RETRIES):
            async with self._connection() as conn:
                try:
                    async with conn.transaction():
                        return await _replace(conn, study, rows, cause, holder)
                except _RETRYABLE:
                    if attempt == _RETRIES - 1:
                        raise
        raise AssertionError("unreachable")

    async def kept_versions(self, sop: str) -> list[KeptVersion]:
        rows = await self._fetch(sql_corrections.kept_sql("%s"), [sop])
        return [sql_corrections.kept_from_row(row) for row in rows]

    async def expired_versions(self, replaced_before: float, limit: int) -> list[KeptVersion]:
        rows = await self._fetch(sql_corrections.expired_sql("%s"), [replaced_before, limit])
        return [sql_corrections.kept_from_row(row) for row in rows]

    async def forget_version(self, sop: str, version: str) -> None:
        async with self._connection() as conn:
            await conn.execute(sql_corrections.forget_sql("%s"), (sop, version))

    async def save_operation(self, operation: Operation) -> None:
        async with self._connection() as conn:
            await conn.execute(sql_corrections.save_operation_sql("%s"), sql_corrections.operation_params(operation))

    async def operation(self, operation_id: str) -> Operation | None:
        rows = await self._fetch(sql_corrections.operation_sql("%s"), [operation_id])
        return sql_corrections.operation_from_row(rows[0]) if rows else None

    async def running_operations(self, holder: str) -> list[Operation]:
        rows = await self._fetch(sql_corrections.running_sql("%s"), [holder])
        return [sql_corrections.operation_from_row(row) for row in rows]

    async def unfinished_operations(self) -> list[Operation]:
        rows = await self._fetch(sql_corrections.unfinished_sql(), [])
        return [sql_corrections.operation_from_row(row) for row in rows]

    async def heartbeat_operation(self, operation_id: str, holder: str, now: float) -> bool:
        async with self._connection() as conn:
            cur = await conn.execute(sql_corrections.heartbeat_sql("%s"), (now, operation_id, holder))
            return cur.rowcount == 1

    async def take_over_stale_operations(self, holder: str, updated_before: float, now: float) -> list[Operation]:
        params = (holder, now, updated_before, holder)
        async with self._connection() as conn:
            cur = await conn.execute(sql_corrections.take_over_sql("%s"), params)
            rows = await cur.fetchall()
        return [sql_corrections.operation_from_row(row) for row in rows]

    # -- connections ---------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _connection(
        self, *, wait: float | None = None, bulk: bool = False, deadline: float | None = None
    ) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A pooled connection (autocommit). psycopg errors leaving the block become IndexError_
        (callers that retry transient ones catch them inside the block); the schema is migrated
        on first use. The block has the URL's operation deadline, or ``deadline``; ``bulk``
        work has none (it lifts the statement timeout in its transaction)."""
        if not self._migrated:
            await self._migrate_once()
        limit = None if bulk else deadline or self._deadline
        async with self._connections.connection(wait or self._timeout, deadline=limit) as conn:
            yield conn

    async def _fetch(self, sql: str, params: list[object]) -> list[tuple[Any, ...]]:
        # A read runs once more when its connection died under it while the server answers (a
        # backend terminated by a failover or pg_terminate_backend): nothing was changed, and
        # the client gets its answer instead of a 503.
        for attempt in range(2):
            try:
                async with self._connection() as conn:
                    cur = await conn.execute(sql, params)
                    return await cur.fetchall()
            except ConnectionLost:
                if attempt == 1:
                    raise
        raise AssertionError("unreachable")

    async def _migrate_once(self) -> None:
        if self._lock is None:
            self._lock = anyio.Lock()
        async with self._lock:
            if self._migrated:
                return
            # No deadline: a migration may wait for another replica's.
            async with self._connections.connection(self._timeout) as conn:
                await _migrate(conn, self._schema)
            self._migrated = True


class IndexUrl(NamedTuple):
    """What an index URL says: the libpq URL and the gateway's own parameters."""

    conninfo: str
    schema: str | None
    pool_min: int
    pool_max: int
    operation_timeout: float | None  # seconds; None: unbounded


def parse_url(url: str) -> IndexUrl:
    """The parts of an index URL; ValueError when bad."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ValueError(f"not a PostgreSQL URL: {_redacted(url)}")
    ours: dict[str, str] = {}
    libpq: list[tuple[str, str]] = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        (ours.__setitem__(key, value) if key in _OUR_PARAMETERS else libpq.append((key, value)))
    schema = ours.get("schema") or None
    if schema is not None and not _SCHEMA_NAME.fullmatch(schema):
        raise ValueError(f"index URL schema {schema!r} must be a lower-case SQL identifier")
    try:
        pool_min = int(ours.get("pool_min", "1"))
        pool_max = int(ours.get("pool_max", "10"))
    except ValueError:
        raise ValueError("index URL pool_min / pool_max must be integers") from None
    if not 0 <= pool_min <= pool_max or pool_max < 1:
        raise ValueError("index URL needs 0 <= pool_min <= pool_max and pool_max >= 1")
    try:
        timeout = float(ours.get("operation_timeout", str(DEFAULT_OPERATION_TIMEOUT)))
    except ValueError:
        raise ValueError("index URL operation_timeout must be a number of seconds") from None
    if not 0 <= timeout < 86400:
        raise ValueError("index URL operation_timeout must be between 0 (none) and 86400 seconds")
    conninfo = urlunsplit(("postgresql", parts.netloc, parts.path, urlencode(libpq), ""))
    return IndexUrl(conninfo, schema, pool_min, pool_max, timeout or None)


async def _configure(conn: psycopg.AsyncConnection[Any], *, statement_timeout: float | None) -> None:
    for name in ("json", "jsonb"):
        conn.adapters.register_loader(name, _RawJson)
    # The server cancels a statement running too long, and the connection stays usable; the
    # client's deadline (a little later) is for a server that cannot even do that.
    milliseconds = 0 if statement_timeout is None else round(statement_timeout * 1000)
    await conn.execute(SQL("SET statement_timeout = {}").format(Literal(milliseconds)))


async def _no_statement_timeout(conn: psycopg.AsyncConnection[Any]) -> None:
    """For bulk work inside a transaction: lift the statement timeout until it ends."""
    await conn.execute("SET LOCAL statement_timeout = 0")


async def _migrate(conn: psycopg.AsyncConnection[Any], schema: str | None) -> None:
    async with conn.transaction():
        await _no_statement_timeout(conn)  # waiting for another replica's migration is fine
        # Replicas starting together: one migrates, the others wait here and then find it done.
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (zlib.crc32(f"dicomweb-gateway:{schema}".encode()),))
        if schema is not None:
            await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        await conn.execute("CREATE TABLE IF NOT EXISTS gateway_schema_version (version integer NOT NULL)")
        cur = await conn.execute("SELECT max(version) FROM gateway_schema_version")
        found = await cur.fetchone()
        version = int(found[0]) if found and found[0] is not None else 0
        if version > SCHEMA_VERSION:
            raise IndexError_(f"the index schema version {version} is newer than this gateway ({SCHEMA_VERSION})")
        for step in range(version + 1, SCHEMA_VERSION + 1):
            for statement in _MIGRATIONS[step]:
                await conn.execute(statement)
        if version != SCHEMA_VERSION:
            await conn.execute("DELETE FROM gateway_schema_version")
            await conn.execute("INSERT INTO gateway_schema_version (version) VALUES (%s)", (SCHEMA_VERSION,))


def _pg_study(record: InstanceRecord, meta: dict[str, Any]) -> dict[str, object]:
    return _text_safe({**study_values(record, meta), "norm": _norm("study", meta)})


def _pg_series(record: InstanceRecord, meta: dict[str, Any]) -> dict[str, object]:
    return _text_safe({**series_values(record, meta), "norm": _norm("series", meta)})


def _pg_instance(record: InstanceRecord, meta: dict[str, Any]) -> dict[str, object]:
    return _text_safe({**instance_values(record, meta), "norm": _norm("instance", meta)})


def _text_safe(values: dict[str, object]) -> dict[str, object]:
    """PostgreSQL text and jsonb cannot hold NUL characters, which some files pad strings with
    (SQLite takes them): drop them from column values and JSON text. The instance's metadata is
    bytea and keeps its exact bytes."""
    for key, value in values.items():
        if isinstance(value, str) and ("\x00" in value or "\\u0000" in value):
            values[key] = value.replace("\x00", "").replace("\\u0000", "")
    return values


class _PgRow(IndexRow):
    """An :class:`IndexRow` with PostgreSQL's extra ``norm`` columns, and its insert."""

    @property
    def pg_study(self) -> dict[str, object]:
        return _pg_study(self.record, self.meta)

    @property
    def pg_series(self) -> dict[str, object]:
        return _pg_series(self.record, self.meta)

    @property
    def pg_instance(self) -> dict[str, object]:
        return _pg_instance(self.record, self.meta)

    @staticmethod
    def instance_columns() -> list[str]:
        return [
            "sop_uid",
            "study_uid",
            "series_uid",
            *(name for name, _ in sql_columns("instance")),
            "transfer_syntax",
            "size",
            "sha256",
            "origin",
            "stored_at",
            "frames",
            "pixel",
            "metadata",
            "version",
            "norm",
        ]

    async def insert(self, conn: psycopg.AsyncConnection[Any]) -> AddOutcome:
        rec = self.record
        committing = False  # set once only the COMMIT is left: a failure then has an unknown outcome
        try:
            async with conn.transaction():
                await _lock_instance(conn, rec.sop_uid)
                cur = await conn.execute("SELECT since FROM removals WHERE sop_uid = %s", (rec.sop_uid,))
                removal = await cur.fetchone()
                if removal is not None:
                    if time.time() - removal[0] > REMOVAL_LAPSE:
                        # Its remover died: the removal lapses, but the objects may be half
                        # deleted, so the caller still writes them again before its next add.
                        await conn.execute("DELETE FROM removals WHERE sop_uid = %s", (rec.sop_uid,))
                    return AddOutcome.REMOVING
                found = await _sha256_of(conn, rec.sop_uid)
                if found is not None:
                    if found != rec.sha256:
                        return AddOutcome.CONFLICT
                    # Another upload is now told this instance is stored: the first one's undo
                    # must keep it.
                    await conn.execute(
                        "UPDATE instances SET shared = true WHERE sop_uid = %s AND NOT shared", (rec.sop_uid,)
                    )
                    return AddOutcome.IDENTICAL
                study, series, instance = self.pg_study, self.pg_series, self.pg_instance
                await conn.execute(_insert_sql("studies", study, "study_uid"), tuple(study.values()))
                # After the insert, not before: a concurrent add creating the same study made it
                # wait for that commit, and this statement's snapshot then sees the winner's row.
                cur = await conn.execute("SELECT attrs, patient_id FROM studies WHERE study_uid = %s", (rec.study_uid,))
                stored = await cur.fetchone()
                if stored is not None and patient_identity(orjson.loads(stored[0])) != self.patient:
                    raise _PatientMismatch
                added = await conn.execute(
                    _insert_sql("series", series, "study_uid, series_uid") + " RETURNING 1", tuple(series.values())
                )
                new_series = added.rowcount
                inserted = await conn.execute(
                    _insert_sql("instances", instance, "sop_uid") + " RETURNING 1", tuple(instance.values())
                )
                if inserted.rowcount == 0:
                    raise _Exists
                await conn.execute(
                    "UPDATE series SET num_instances = num_instances + 1 WHERE study_uid = %s AND series_uid = %s",
                    (rec.study_uid, rec.series_uid),
                )
                await conn.execute(
                    "UPDATE studies SET num_instances = num_instances + 1, num_series = num_series + %s"
                    " WHERE study_uid = %s",
                    (new_series, rec.study_uid),
                )
                key = (rec.study_uid, rec.series_uid, rec.sop_uid)
                await _write_change(conn, ChangeAction.CREATE, key, rec.origin, stored)
                committing = True
        except _PatientMismatch:
            return AddOutcome.PATIENT_MISMATCH  # rolled back: nothing changed
        except _Exists:
            found = await _sha256_of(conn, rec.sop_uid)
            return AddOutcome.IDENTICAL if found == rec.sha256 else AddOutcome.CONFLICT
        except psycopg.OperationalError as exc:
            if committing and (conn.broken or conn.closed):
                raise IndexOutcomeUnknown(f"the index connection broke while committing: {one_line(exc)}") from exc
            raise
        return AddOutcome.INSERTED


async def _replace(
    conn: psycopg.AsyncConnection[Any],
    study: str,
    rows: list[tuple[Replacement, _PgRow]],
    cause: RemovalCause,
    holder: str | None,
) -> list[str]:
    """The transaction of :meth:`PostgresIndex.replace_instances`."""
    if holder is not None and rows:
        # The operation's row stays locked until the commit: a take-over waits for it, then
        # finds the study committed (and leaves its objects alone).
        cur = await conn.execute(sql_corrections.held_sql("%s", lock="FOR UPDATE"), (rows[0][1].record.version, holder))
        if await cur.fetchone() is None:
            raise OperationTakenOver(f"operation {rows[0][1].record.version} is no longer held by this replica")
    now = time.time()
    switched: list[_PgRow] = []
    for replacement, row in rows:
        rec = row.record
        await _lock_instance(conn, rec.sop_uid)
        cur = await conn.execute(sql_corrections.current_sql("%s"), (rec.sop_uid, study, rec.series_uid))
        current = await cur.fetchone()
        if current is None or (current[0], current[1]) != (replacement.old_version, replacement.old_sha256):
            continue  # deleted, stored anew or corrected meanwhile: not the version this correction read
        cur = await conn.execute("SELECT 1 FROM removals WHERE sop_uid = %s", (rec.sop_uid,))
        if await cur.fetchone() is not None:
            continue
        version, sha256, size, syntax = current
        kept = KeptVersion(study, rec.series_uid, rec.sop_uid, version, sha256, int(size), syntax, now)
        await conn.execute(sql_corrections.keep_sql("%s"), sql_corrections.keep_params(kept))
        await conn.execute(*sql_corrections.update_sql("%s", "instances", row.pg_instance, ("sop_uid",)))
        switched.append(row)
    if not switched:
        return []
    await conn.execute(*sql_corrections.update_sql("%s", "studies", switched[0].pg_study, ("study_uid",)))
    cur = await conn.execute(sql_changes.STUDY_PATIENT_SQL.format(p="%s"), (study,))
    study_row = await cur.fetchone()
    for row in switched:
        key = (study, row.record.series_uid, row.record.sop_uid)
        await _write_change(conn, ChangeAction.UPDATE, key, cause.origin, study_row, cause)
    return [row.record.sop_uid for row in switched]


async def _lock_instance(conn: psycopg.AsyncConnection[Any], sop: str) -> None:
    """Until the transaction ends, no other add or removal of ``sop`` runs (on any replica)."""
    key = zlib.crc32(sop.encode()) - (1 << 31)  # int4 range
    await conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (_INSTANCE_LOCKS, key))


async def _lock_feed(conn: psycopg.AsyncConnection[Any]) -> None:
    """Until the transaction ends, no other change-feed entry commits (module docstring)."""
    await conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", _FEED_LOCK)


async def _write_change(
    conn: psycopg.AsyncConnection[Any],
    action: ChangeAction,
    key: tuple[str, str, str],
    origin: str,
    study_row: tuple[Any, ...] | None,
    cause: RemovalCause | None = None,
) -> None:
    """The change-feed entry of a row added or removed by this transaction. Call it last: it
    takes the feed lock, held until the commit, after the row locks (the order every writer
    keeps, so two never wait for each other). ``study_row``: the study's ``patient_id`` last,
    read in this transaction before the row went."""
    await _lock_feed(conn)
    patient_id = None if study_row is None else study_row[-1]
    params = sql_changes.insert_params(time.time(), action, key, origin, patient_id, cause)
    await conn.execute(sql_changes.insert_sql("%s"), params)


async def _sha256_of(conn: psycopg.AsyncConnection[Any], sop: str) -> str | None:
    cur = await conn.execute("SELECT sha256 FROM instances WHERE sop_uid = %s", (sop,))
    found = await cur.fetchone()
    return None if found is None else str(found[0])


def _norm(level: Level, meta: dict[str, Any]) -> str:
    # An instance's metadata holds the attributes of every level; norm_values keeps the level's.
    return orjson.dumps(norm_values(level, meta)).decode()


def _insert_sql(table: str, values: dict[str, object], conflict: str) -> str:
    # Column names come from our own tables (COLUMNS), never from the request.
    columns, marks = ", ".join(values), ", ".join(["%s"] * len(values))
    return f"INSERT INTO {table} ({columns}) VALUES ({marks}) ON CONFLICT ({conflict}) DO NOTHING"


def _copy_sql(table: str, columns: Iterable[str]) -> str:
    return f"COPY {table} ({', '.join(columns)}) FROM STDIN"


async def _delete(conn: psycopg.AsyncConnection[Any], study: str, series: str, sop: str) -> None:
    cur = await conn.execute(
        "DELETE FROM instances WHERE sop_uid = %s AND study_uid = %s AND series_uid = %s", (sop, study, series)
    )
    if cur.rowcount == 0:
        return
    await conn.execute(sql_corrections.FORGET_ALL_SQL.format(p="%s"), (sop,))
    cur = await conn.execute(
        "UPDATE series SET num_instances = num_instances - 1 WHERE study_uid = %s AND series_uid = %s"
        " RETURNING num_instances",
        (study, series),
    )
    (left,) = (await cur.fetchall())[0]
    if left == 0:
        await conn.execute("DELETE FROM series WHERE study_uid = %s AND series_uid = %s", (study, series))
    cur = await conn.execute(
        "UPDATE studies SET num_instances = num_instances - 1, num_series = num_series - %s"
        " WHERE study_uid = %s RETURNING num_series",
        (int(left == 0), study),
    )
    (series_left,) = (await cur.fetchall())[0]
    if series_left == 0:
        await conn.execute("DELETE FROM studies WHERE study_uid = %s", (study,))


def _redacted(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))
