"""What is particular to the PostgreSQL index (gateway/adapters/postgres_index.py): its URL, its
wiring into settings, the app and the CLI, and how it fails; the Index contract it shares with
SQLite is tests/test_index_contract.py."""

from __future__ import annotations

import subprocess
import sys
import time

import psycopg
import pytest

from gateway.adapters.postgres_index import SCHEMA_VERSION, PostgresIndex, parse_url
from gateway.app import build_index
from gateway.errors import IndexError_
from gateway.settings import SettingsError, load_settings
from tests.peers.ports import free_port


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def test_url_parameters() -> None:
    parsed = parse_url("postgres://u:pw@db:5433/imaging?schema=gw_1&pool_max=4&sslmode=require&operation_timeout=2.5")
    assert (parsed.schema, parsed.pool_min, parsed.pool_max, parsed.operation_timeout) == ("gw_1", 1, 4, 2.5)
    assert parsed.conninfo == "postgresql://u:pw@db:5433/imaging?sslmode=require"
    assert parse_url("postgresql:///imaging")[1:] == (None, 1, 10, 8.0)
    assert parse_url("postgresql:///imaging?operation_timeout=0").operation_timeout is None  # unbounded
    for bad in (
        "postgresql://db/x?schema=Bad-Name",
        "postgresql://db/x?schema=a;drop",
        "postgresql://db/x?pool_max=0",
        "postgresql://db/x?pool_min=5&pool_max=2",
        "postgresql://db/x?pool_max=many",
        "postgresql://db/x?operation_timeout=soon",
        "postgresql://db/x?operation_timeout=-1",
        "mysql://db/x",
    ):
        with pytest.raises(ValueError, match=r"schema|pool|PostgreSQL|operation_timeout"):
            parse_url(bad)


def test_settings_and_app_wiring() -> None:
    for url in ("postgresql://gw@db/imaging", "postgres://gw@db/imaging?schema=s"):
        settings = load_settings(environ={"DICOMWEB_GATEWAY_INDEX_URL": url})
        assert isinstance(build_index(settings), PostgresIndex)
    with pytest.raises(SettingsError, match="postgresql://"):
        load_settings(environ={"DICOMWEB_GATEWAY_INDEX_URL": "mysql://db/x"})


@pytest.mark.anyio
async def test_an_unreachable_server_is_a_quick_503_without_the_password() -> None:
    index = PostgresIndex(f"postgresql://gw:s3cret@127.0.0.1:{free_port()}/x?connect_timeout=2", timeout=2)
    started = time.monotonic()
    with pytest.raises(IndexError_) as caught:
        await index.ping()
    assert time.monotonic() - started < 15
    assert caught.value.status == 503
    assert "s3cret" not in caught.value.reason
    assert "127.0.0.1" in caught.value.reason
    await index.aclose()


def test_migrate_command(postgres_url: str) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "gateway", "migrate", "--index-url", postgres_url],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert f"version {SCHEMA_VERSION}" in run.stdout
    conninfo, schema = parse_url(postgres_url)[:2]
    with psycopg.connect(conninfo, options=f"-c search_path={schema}") as conn:
        tables = {row[0] for row in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s", (schema,))}
        version = conn.execute("SELECT version FROM gateway_schema_version").fetchone()
    assert {"studies", "series", "instances", "gateway_schema_version"} <= tables
    assert version == (SCHEMA_VERSION,)
    again = subprocess.run(
        [sys.executable, "-m", "gateway", "migrate", "--index-url", postgres_url],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert again.returncode == 0, again.stderr
