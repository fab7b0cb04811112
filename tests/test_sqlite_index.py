"""What is particular to the SQLite index (gateway/adapters/sqlite_index.py); the Index contract
it shares with PostgreSQL is tests/test_index_contract.py."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from gateway.adapters.sqlite_index import SCHEMA_VERSION, SqliteIndex
from tests.test_index_contract import ROOT, record


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_schema_version_and_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite3"
    index = SqliteIndex(path)
    assert await index.migrate() == SCHEMA_VERSION
    await index.add(record(1, 1, 1))
    await index.aclose()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT count(*) FROM instances").fetchone()[0] == 1
    conn.close()


@pytest.mark.anyio
async def test_parent_directory_is_created(tmp_path: Path) -> None:
    index = SqliteIndex(tmp_path / "a" / "b" / "index.sqlite3")
    await index.add(record(1, 1, 1))
    assert len(await index.instances(f"{ROOT}.1")) == 1
    await index.aclose()
