"""The PACS bridge's small durable state in SQLite (``{data_dir}/pacs-bridge.sqlite3``).

Two tables, both tiny next to the index:

* ``retrieved``: entities (``study``, ``study/series`` or ``study/series/sop``) fully retrieved
  from a PACS. Only then is a cached series known to be whole: a series of which one instance
  was fetched alone, or whose retrieve broke off, is retrieved again rather than answered in
  part from the cache.
* ``forward_queue``: instances to C-STORE to a PACS after STOW (``forward_to``). A row is
  written before the STOW is acknowledged and deleted only after the PACS accepted the
  instance, so a crash or an unreachable PACS loses nothing; failures keep their last error
  and the time of the next attempt.

Kept per gateway process (beside its data directory), not in the shared index: losing it costs
at most one more retrieve, never data.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import anyio

from gateway.ports import ForwardJob

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS retrieved (
    key TEXT PRIMARY KEY,
    node TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS forward_queue (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    node TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    sop_uid TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL,
    last_error TEXT,
    created REAL NOT NULL,
    UNIQUE (node, sop_uid)
);
CREATE INDEX IF NOT EXISTS forward_due ON forward_queue (next_attempt);
"""


class SqliteBridgeState:
    """:class:`gateway.ports.BridgeState` on one SQLite file (one connection, one lock)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")  # a queued forward must survive a crash
        self._conn.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self._limiter: anyio.CapacityLimiter | None = None

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(1)

        def locked() -> T:
            with self._lock:
                return fn(self._conn)

        return await anyio.to_thread.run_sync(locked, limiter=self._limiter)

    async def mark_retrieved(self, key: str, node: str) -> None:
        await self._run(
            lambda c: c.execute(
                "INSERT INTO retrieved (key, node, at) VALUES (?, ?, ?)"
                " ON CONFLICT (key) DO UPDATE SET node = excluded.node, at = excluded.at",
                (key, node, time.time()),
            )
        )

    async def retrieved(self, keys: list[str]) -> bool:
        if not keys:
            return False
        marks = ",".join("?" * len(keys))
        row = await self._run(lambda c: c.execute(f"SELECT 1 FROM retrieved WHERE key IN ({marks})", keys).fetchone())
        return row is not None

    async def forget_retrieved(self, study: str, series: str) -> None:
        # UIDs are digits and dots (validated), so the LIKE pattern has no wildcard of its own.
        await self._run(
            lambda c: c.execute(
                "DELETE FROM retrieved WHERE key IN (?, ?) OR key LIKE ?",
                (study, f"{study}/{series}", f"{study}/{series}/%"),
            )
        )

    async def enqueue_forward(self, node: str, study_uid: str, series_uid: str, sop_uid: str) -> None:
        now = time.time()
        await self._run(
            lambda c: c.execute(
                "INSERT INTO forward_queue (node, study_uid, series_uid, sop_uid, next_attempt, created)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (node, sop_uid) DO NOTHING",
                (node, study_uid, series_uid, sop_uid, now, now),
            )
        )

    async def due_forwards(self, now: float, limit: int) -> list[ForwardJob]:
        rows = await self._run(
            lambda c: c.execute(
                "SELECT id, node, study_uid, series_uid, sop_uid, attempts, last_error FROM forward_queue"
                " WHERE next_attempt <= ? ORDER BY next_attempt, id LIMIT ?",
                (now, limit),
            ).fetchall()
        )
        return [ForwardJob(*row) for row in rows]

    async def next_forward_at(self) -> float | None:
        row = await self._run(lambda c: c.execute("SELECT MIN(next_attempt) FROM forward_queue").fetchone())
        return None if row is None or row[0] is None else float(row[0])

    async def forward_done(self, job_id: int) -> None:
        await self._run(lambda c: c.execute("DELETE FROM forward_queue WHERE id = ?", (job_id,)))

    async def forward_failed(self, job_id: int, error: str, next_attempt: float) -> None:
        await self._run(
            lambda c: c.execute(
                "UPDATE forward_queue SET attempts = attempts + 1, last_error = ?, next_attempt = ? WHERE id = ?",
                (error[:500], next_attempt, job_id),
            )
        )

    async def forward_counts(self) -> dict[str, int]:
        row = await self._run(
            lambda c: c.execute(
                "SELECT COUNT(*), COALESCE(SUM(attempts > 0), 0) FROM forward_queue",
            ).fetchone()
        )
        return {"pending": int(row[0]), "failing": int(row[1])}

    async def aclose(self) -> None:
        def close() -> None:
            with self._lock:
                self._conn.close()

        await anyio.to_thread.run_sync(close)
