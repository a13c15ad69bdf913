"""Fixtures for the MongoDB emulator's own tests.

One emulator per session (`run_in_thread`, its own loop and thread), or the server at `MONGODB_TEST_URI`
when that is set, so every behaviour test here can also be checked against a real replica set. Tests that
need the emulator's hooks (`emulatorDropConnections`, `emulatorStepDown`, a small oplog) request
`emulator_only` and are skipped against a real server. Every test works in its own database.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import pytest
from pymongo import AsyncMongoClient, MongoClient

from tests.conformance.server import URI_ENV, emulator_unavailable_reason, mongodb_uri

#: Client-side bound for server selection: a healthy emulator answers in milliseconds; a step-down test
#: waits at most a few seconds; a hung emulator should fail the test, not hang the suite.
SERVER_SELECTION_TIMEOUT_MS = 10_000


@pytest.fixture(scope="session")
def emulator_uri(mongo_uri: str) -> str:
    """The session's one MongoDB (tests/conftest.py): the emulator unless `MONGODB_TEST_URI` is set."""
    return mongo_uri


@pytest.fixture
def emulator_only() -> None:
    """Skip when testing a real server: the test relies on an emulator hook or option."""
    if os.environ.get(URI_ENV):
        pytest.skip("needs the emulator's test hooks (MONGODB_TEST_URI is set)")
    reason = emulator_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)


@pytest.fixture
def private_emulator(emulator_only: None) -> Callable[..., AbstractContextManager[str]]:
    """Factory for a dedicated emulator (e.g. small oplog, or a step-down that must not hit other tests)."""

    def start(**options: Any) -> AbstractContextManager[str]:
        return mongodb_uri(**options)

    return start


@pytest.fixture
def database_name() -> str:
    """A fresh database name per test, so tests never see each other's data or events."""
    return f"emu_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def sync_client(emulator_uri: str) -> Iterator[MongoClient[dict[str, Any]]]:
    client: MongoClient[dict[str, Any]] = MongoClient(
        emulator_uri, serverSelectionTimeoutMS=SERVER_SELECTION_TIMEOUT_MS
    )
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
async def async_client(emulator_uri: str) -> AsyncIterator[AsyncMongoClient[dict[str, Any]]]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        emulator_uri, serverSelectionTimeoutMS=SERVER_SELECTION_TIMEOUT_MS
    )
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
def sync_db(sync_client: MongoClient[dict[str, Any]], database_name: str) -> Iterator[Any]:
    """A fresh database (sync client), dropped afterwards."""
    yield sync_client[database_name]
    sync_client.drop_database(database_name)


@pytest.fixture
async def async_db(async_client: AsyncMongoClient[dict[str, Any]], database_name: str) -> AsyncIterator[Any]:
    """A fresh database (async client), dropped afterwards."""
    yield async_client[database_name]
    await async_client.drop_database(database_name)
