"""Connections to the PostgreSQL index that fail fast while the database is away and recover at once.

psycopg_pool on its own handles a database outage badly for a gateway that must answer 503 within
seconds and heal without a restart:

- a pooled connection whose backend is gone (server restart, ``pg_terminate_backend``, failover)
  is handed out as if alive, and the request using it fails;
- while the server is down, a request waits the whole pool timeout for a connection that never
  comes;
- reconnection attempts back off exponentially (1, 2, 4, ... s up to ``reconnect_timeout``), so
  after a long outage the pool may take nearly as long again to notice the server is back.

:class:`IndexConnections` wraps the pool with an outage state:

1. Checkout skips dead connections without a round trip in the common case: an idle connection has
   nothing to read, so a readable socket means the server spoke first (in practice the FATAL
   message of a terminated backend, then end of file). Only then is the connection verified with
   an empty query, and discarded when that fails.
2. When a connection is found dead, breaks during an operation, or the pool times out, one direct
   connection attempt (bounded by ``connect_timeout``) tells "the server is unreachable" from
   "this backend was lost" or "every connection is busy". Unreachable declares an outage: the pool
   is closed (requests waiting on it fail at once) and every request answers 503 immediately.
3. During an outage at most one request per :data:`PROBE_INTERVAL` tries a direct connection;
   when one succeeds the outage ends and a fresh pool replaces the closed one, so the gateway is
   back within about a second of the server accepting connections, however long it was away.
4. A server that stops answering without closing anything (the process frozen, a partition that
   drops packets) leaves a query waiting forever: TCP keeps the connection up, and a statement
   timeout needs the server to enforce it. So each use of a connection has a deadline: when it
   passes, a watchdog shuts the connection's socket down (the waiting query fails at once with a
   broken connection), and an outage is declared without a probe, which would only wait for the
   same silent server.

Statements are not retried here: a read may be run again by the caller when it fails with
:class:`ConnectionLost` (the server answers, only that connection died).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import select
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import AsyncConnectionPool, PoolClosed, PoolTimeout

from gateway.errors import IndexError_

log = logging.getLogger(__name__)

# While the database is unreachable, how often one request may try to connect again; the others
# answer 503 at once. This bounds both the recovery delay and the connection attempts made.
PROBE_INTERVAL = 1.0
# libpq waits forever by default (psycopg: 130 s) for a host that drops packets; a request must
# get its 503 well within 10 s. Applies unless the index URL sets connect_timeout itself.
DEFAULT_CONNECT_TIMEOUT = 5
# How long retiring a pool may wait for its background workers (a connection attempt in flight).
_CLOSE_TIMEOUT = 1.0
# Retry-After of "the database is down": clients come back soon, the probe is cheap.
_RETRY_AFTER = 2


Configure = Callable[[psycopg.AsyncConnection[Any]], Awaitable[None]]


class ConnectionLost(IndexError_):
    """A connection broke during an operation but the server still accepts connections (its
    backend was terminated, or restarted in between). Idempotent operations may run again."""


@dataclass
class _Outage:
    since: float
    reason: str
    probed_at: float


class IndexConnections:
    """A psycopg_pool ``AsyncConnectionPool`` (autocommit connections) plus outage handling; see
    the module docstring. ``kwargs`` are psycopg connection arguments; ``where`` names the
    database in messages (without its password)."""

    def __init__(
        self,
        conninfo: str,
        *,
        where: str,
        kwargs: dict[str, Any],
        min_size: int,
        max_size: int,
        timeout: float,
        configure: Configure | None = None,
    ) -> None:
        self._conninfo = conninfo
        self._where = where
        self._kwargs = dict(kwargs)
        if "connect_timeout" not in conninfo_to_dict(conninfo):
            self._kwargs["connect_timeout"] = DEFAULT_CONNECT_TIMEOUT
        given = conninfo_to_dict(conninfo, **self._kwargs).get("connect_timeout")
        self._connect_timeout = float(str(given)) if given is not None else float(DEFAULT_CONNECT_TIMEOUT)
        self._min_size = min_size
        self._max_size = max_size
        self._timeout = timeout
        self._configure = configure
        self._pool: AsyncConnectionPool | None = None
        self._outage: _Outage | None = None
        self._lock: anyio.Lock | None = None
        self._closed = False

    @property
    def connect_timeout(self) -> float:
        return self._connect_timeout

    @contextlib.asynccontextmanager
    async def connection(
        self, wait: float | None = None, *, deadline: float | None = None
    ) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A live pooled connection, waited for at most ``wait`` seconds (default: the pool
        timeout) and usable for ``deadline`` seconds (None: unbounded, for bulk work). psycopg
        errors leaving the block become :class:`IndexError_` (503), or :class:`ConnectionLost`
        when the connection died but the server answers; a block still waiting for the server
        at its deadline fails with the 503 of an outage."""
        pool = await self._pool_in_service()
        conn = await self._checkout(pool, self._timeout if wait is None else wait)
        watchdog = _Watchdog(conn, deadline) if deadline is not None else None
        try:
            yield conn
        except BaseException as exc:
            if watchdog is not None and watchdog.fired:
                await self._declare_outage(f"no answer within {deadline:g} s")
                if isinstance(exc, psycopg.Error):
                    raise self._unavailable(self._outage) from exc
                raise  # e.g. IndexOutcomeUnknown: the caller must still know the outcome is unknown
            if isinstance(exc, psycopg.Error):
                if conn.broken or conn.closed:
                    await self._ensure_reachable()
                    raise ConnectionLost(f"the index connection was lost: {one_line(exc)}") from exc
                raise IndexError_(f"index database error: {one_line(exc)}") from exc
            raise
        finally:
            if watchdog is not None:
                watchdog.cancel()
            # Even when the request is being cancelled: a connection not given back is lost to
            # the pool for good.
            with anyio.CancelScope(shield=True):
                await pool.putconn(conn)

    async def aclose(self) -> None:
        self._closed = True
        pool, self._pool = self._pool, None
        if pool is not None:
            with anyio.CancelScope(shield=True):
                await pool.close()

    # -- outage state --------------------------------------------------------------------------

    async def _pool_in_service(self) -> AsyncConnectionPool:
        if self._closed:
            raise IndexError_("the index is closed")
        if self._pool is not None and self._outage is None:
            return self._pool
        async with self._get_lock():
            if self._outage is not None:
                await self._recover(self._outage)
            elif self._pool is None:
                # The first use: a new pool's first checkout would wait the whole pool timeout
                # for a server that refuses; one direct attempt answers at once.
                await self._ensure_reachable()
            if self._pool is None:
                pool = AsyncConnectionPool(
                    self._conninfo,
                    min_size=self._min_size,
                    max_size=self._max_size,
                    kwargs=self._kwargs,
                    configure=self._configure,
                    open=False,
                    timeout=self._timeout,
                    name="gateway-index",
                )
                await pool.open(wait=False)
                self._pool = pool
            return self._pool

    async def _recover(self, outage: _Outage) -> None:
        """Called with the lock held: end the outage if the server answers again, else raise."""
        if anyio.current_time() - outage.probed_at < PROBE_INTERVAL:
            raise self._unavailable(outage)
        reason = await self._probe()
        outage.probed_at = anyio.current_time()
        if reason is not None:
            outage.reason = reason
            raise self._unavailable(outage)
        self._outage = None
        log.warning("index database %s reachable again after %.1f s", self._where, anyio.current_time() - outage.since)

    async def _ensure_reachable(self) -> None:
        """After a connection failed: return if the server accepts connections, else declare an
        outage and raise its 503."""
        reason = await self._probe()
        if reason is None:
            return
        await self._declare_outage(reason)
        raise self._unavailable(self._outage)

    async def _declare_outage(self, reason: str) -> None:
        now = anyio.current_time()
        if self._outage is None:
            self._outage = _Outage(since=now, reason=reason, probed_at=now)
            log.warning("index database %s unreachable: %s", self._where, reason)
        pool, self._pool = self._pool, None
        if pool is not None:
            # Closing wakes every request waiting for a connection (PoolClosed): they answer 503
            # now rather than after the pool timeout. Connections in use close when returned.
            with anyio.CancelScope(shield=True):
                await pool.close(timeout=_CLOSE_TIMEOUT)

    async def _probe(self) -> str | None:
        """One direct connection attempt, bounded by connect_timeout: None when it succeeds,
        else why it failed."""
        try:
            with anyio.fail_after(self._connect_timeout + 1):
                conn = await psycopg.AsyncConnection.connect(self._conninfo, **self._kwargs)
        except (psycopg.Error, TimeoutError) as exc:
            return one_line(exc)
        with anyio.CancelScope(shield=True):
            await conn.close()
        return None

    def _unavailable(self, outage: _Outage | None) -> IndexError_:
        if outage is None:
            if self._closed:
                return IndexError_("the index is closed")
            # The pool this request waited on was retired by an outage that has ended since.
            return IndexError_(f"the index database {self._where} was unreachable a moment ago", retry_after=1)
        down = anyio.current_time() - outage.since
        return IndexError_(
            f"the index database {self._where} cannot be reached (for {down:.0f} s): {outage.reason}",
            retry_after=_RETRY_AFTER,
        )

    def _get_lock(self) -> anyio.Lock:
        if self._lock is None:  # created on first use, inside the event loop
            self._lock = anyio.Lock()
        return self._lock

    # -- checkout ------------------------------------------------------------------------------

    async def _checkout(self, pool: AsyncConnectionPool, wait: float) -> psycopg.AsyncConnection[Any]:
        deadline = anyio.current_time() + wait
        checked_server = False
        # Every pooled connection may be dead (all backends terminated at once): skip them all.
        for _ in range(self._max_size + 1):
            try:
                conn: psycopg.AsyncConnection[Any] = await pool.getconn(
                    timeout=max(deadline - anyio.current_time(), 0.01)
                )
            except PoolClosed:
                # Another request declared an outage while this one waited for a connection.
                raise self._unavailable(self._outage) from None
            except PoolTimeout as exc:
                await self._ensure_reachable()
                raise IndexError_(
                    f"no index database connection became free within {wait:.0f} s (all {self._max_size} in use)"
                ) from exc
            if await _usable(conn):
                return conn
            with anyio.CancelScope(shield=True):
                await conn.close()
                await pool.putconn(conn)  # the pool opens a replacement
            if not checked_server:
                checked_server = True
                await self._ensure_reachable()  # is the server gone, or only this backend?
        raise IndexError_("every index database connection was found dead")


class _Watchdog:
    """Shuts ``conn``'s socket down after ``seconds`` unless cancelled first."""

    def __init__(self, conn: psycopg.AsyncConnection[Any], seconds: float) -> None:
        self.fired = False
        self._conn = conn
        self._handle = asyncio.get_running_loop().call_later(seconds, self._fire)

    def cancel(self) -> None:
        self._handle.cancel()

    def _fire(self) -> None:
        self.fired = True
        # shutdown, not close: the descriptor stays psycopg's (closing it under a pending wait
        # could let a new socket take its number); the wait sees end of file at once.
        with contextlib.suppress(OSError, psycopg.Error), socket.socket(fileno=os.dup(self._conn.fileno())) as sock:
            sock.shutdown(socket.SHUT_RDWR)


async def _usable(conn: psycopg.AsyncConnection[Any]) -> bool:
    if conn.closed or conn.broken:
        return False
    if not _has_input(conn):
        return True
    try:
        await conn.execute("")  # reads what the server sent: a notice, or why it hung up
    except psycopg.Error:
        return False
    return not conn.broken


def _has_input(conn: psycopg.AsyncConnection[Any]) -> bool:
    """True when an idle connection's socket has something to read (poll, not select: the
    descriptor may be above FD_SETSIZE in a busy process)."""
    poller = select.poll()
    poller.register(conn.fileno(), select.POLLIN | select.POLLERR | select.POLLHUP)
    return bool(poller.poll(0))


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
