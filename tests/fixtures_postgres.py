"""Fixtures for tests that need a real PostgreSQL (the shared index of multi-replica deployments).

The server is the machine's PostgreSQL (``scripts/test.sh`` installs and starts it when missing);
``GATEWAY_TEST_POSTGRES_URL`` names another one. The tests use their own database
(``dicomweb_gateway_test``, created when missing) and a fresh schema per test, dropped afterwards.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
TEST_DATABASE = "dicomweb_gateway_test"


def _with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + database))


@pytest.fixture(scope="session")
def postgres_database() -> str:
    """URL of the tests' database on the PostgreSQL server, created when missing."""
    server = os.environ.get("GATEWAY_TEST_POSTGRES_URL", DEFAULT_SERVER)
    try:
        with psycopg.connect(server, autocommit=True, connect_timeout=5) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (TEST_DATABASE,)).fetchone()
            if exists is None:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(TEST_DATABASE)))
    except psycopg.OperationalError as exc:
        pytest.fail(
            f"PostgreSQL is not reachable at {server} ({exc}); scripts/test.sh installs and starts it,"
            " or set GATEWAY_TEST_POSTGRES_URL"
        )
    return _with_database(server, TEST_DATABASE)


@pytest.fixture
def postgres_url(postgres_database: str) -> Iterator[str]:
    """An index URL on a fresh, empty schema (the index creates it); dropped after the test."""
    schema = f"t_{uuid.uuid4().hex[:20]}"
    yield f"{postgres_database}?schema={schema}"
    with psycopg.connect(postgres_database, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
