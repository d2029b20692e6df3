"""Ledger fixtures: tests that take `ledger_url` run once on SQLite and once on PostgreSQL.

PostgreSQL is $HEARTH_TEST_POSTGRES_URL when set (.ci/run starts one cluster for the whole run), else a
throwaway cluster this session starts (scripts/postgres.py) and always stops. Each test gets a database of its
own, dropped afterwards. Without PostgreSQL binaries the postgresql variants skip, unless CI is set: then they fail.
"""

import asyncio
import itertools
import os

import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from scripts.postgres import INSTALL_HINT, PostgresCluster, postgres_bin_dir

ENGINES = ["sqlite", "postgresql"]
_databases = itertools.count(1)


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """A postgresql+asyncpg:// URL of a server on which tests may create databases."""
    url = os.environ.get("HEARTH_TEST_POSTGRES_URL")
    if url:
        yield url
        return
    if postgres_bin_dir() is None:
        message = f"PostgreSQL is not installed ({INSTALL_HINT}) and HEARTH_TEST_POSTGRES_URL is not set"
        if _in_ci():
            pytest.fail(f"CI is set but {message}")
        pytest.skip(f"{message}: PostgreSQL variants skipped")
    with PostgresCluster(fsync=False) as cluster:
        yield cluster.url


def _admin(server_url: str, sql: str) -> None:
    async def run() -> None:
        engine = create_async_engine(server_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
        try:
            async with engine.connect() as conn:
                await conn.exec_driver_sql(sql)
        finally:
            await engine.dispose()

    asyncio.run(run())


@pytest.fixture
def postgres_url(postgres_server) -> str:
    """A new empty database on the test server, dropped after the test (connections still open or not)."""
    name = f"hearth_test_{os.getpid()}_{next(_databases)}"
    _admin(postgres_server, f'CREATE DATABASE "{name}"')
    try:
        yield make_url(postgres_server).set(database=name).render_as_string(hide_password=False)
    finally:
        _admin(postgres_server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=ENGINES)
def ledger_url(request, tmp_path) -> str:
    """An empty ledger database: a SQLite file, then a PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'ledger.sqlite3'}"
    return request.getfixturevalue("postgres_url")
