"""Fixtures running a test over every Index implementation (SQLite and PostgreSQL), each on a
fresh database: a SQLite file in the test's tmp dir, a PostgreSQL schema of its own."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from gateway.adapters.postgres_index import PostgresIndex
from gateway.adapters.postgres_index import parse_url as parse_postgres_url
from gateway.adapters.sqlite_index import SqliteIndex
from gateway.ports import Index


@dataclass(frozen=True)
class Backend:
    """One Index implementation on one fresh database: ``open`` opens another index object on
    it (another replica or process, as far as the index can tell)."""

    name: str
    open: Callable[..., Index]
    set_schema_version: Callable[[int], None]
    path: Path | None = None  # SQLite: the database file
    url: str | None = None  # PostgreSQL: the index URL (with its schema)


def _sqlite_backend(tmp_path: Path) -> Backend:
    path = tmp_path / "db" / "index.sqlite3"

    def set_version(version: int) -> None:
        with sqlite3.connect(path) as conn:
            conn.execute(f"PRAGMA user_version = {version}")
        conn.close()

    return Backend("sqlite", lambda **kw: SqliteIndex(path, **kw), set_version, path=path)


def _postgres_backend(url: str) -> Backend:
    conninfo, schema = parse_postgres_url(url)[:2]

    def set_version(version: int) -> None:
        with psycopg.connect(conninfo, autocommit=True, options=f"-c search_path={schema}") as conn:
            conn.execute("UPDATE gateway_schema_version SET version = %s", (version,))

    return Backend("postgres", lambda **kw: PostgresIndex(url, **kw), set_version, url=url)


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        return _sqlite_backend(tmp_path)
    return _postgres_backend(request.getfixturevalue("postgres_url"))


@pytest.fixture
async def index(backend: Backend) -> AsyncIterator[Index]:
    idx = backend.open(max_results=50)
    yield idx
    await idx.aclose()
