"""Concurrency the connector depends on: awaitData wakes on a write, many connections at once.

Bounds here are generous behaviour checks (the server does not wait out maxTimeMS when an event arrives;
it serves hundreds of concurrent operations), not benchmarks.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from pymongo import AsyncMongoClient

#: Needs a MongoDB server: the emulator, or MONGODB_TEST_URI.
pytestmark = pytest.mark.integration

SERVER_SELECTION_TIMEOUT_MS = 10_000

#: A long awaitData wait: the getMore must return when the event arrives, well before this.
LONG_AWAIT_MS = 8_000
PARK_S = 0.3

#: Concurrent load: clients x operations in flight at once.
CLIENTS = 8
OPERATIONS_PER_CLIENT = 25
LOAD_TIMEOUT_S = 60.0


async def test_parked_get_more_returns_as_soon_as_an_event_arrives(async_db: Any) -> None:
    reply = await async_db.command({"aggregate": "c", "pipeline": [{"$changeStream": {}}], "cursor": {}})
    cursor_id = reply["cursor"]["id"]
    get_more = {"getMore": cursor_id, "collection": "c", "maxTimeMS": LONG_AWAIT_MS}
    started = time.monotonic()
    waiting = asyncio.ensure_future(async_db.command(get_more))
    try:
        await asyncio.sleep(PARK_S)
        assert not waiting.done()  # parked in awaitData: nothing to return yet
        await async_db["c"].insert_one({"_id": "wake"})
        async with asyncio.timeout(LONG_AWAIT_MS / 1000):
            batch = (await waiting)["cursor"]["nextBatch"]
        elapsed = time.monotonic() - started
    finally:
        waiting.cancel()
        await async_db.command({"killCursors": "c", "cursors": [cursor_id]})
    assert [event["documentKey"]["_id"] for event in batch] == ["wake"]
    assert elapsed < LONG_AWAIT_MS / 1000 / 2, elapsed


async def _client_work(uri: str, database: str, index: int) -> int:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        uri, maxPoolSize=OPERATIONS_PER_CLIENT, serverSelectionTimeoutMS=SERVER_SELECTION_TIMEOUT_MS
    )
    try:
        coll = client[database]["load"]
        await asyncio.gather(
            *(coll.insert_one({"client": index, "op": op}) for op in range(OPERATIONS_PER_CLIENT))
        )
        return int(await coll.count_documents({"client": index}))
    finally:
        await client.close()


async def test_many_clients_and_connections_at_once(
    emulator_uri: str, async_client: Any, database_name: str
) -> None:
    async with asyncio.timeout(LOAD_TIMEOUT_S):
        counts = await asyncio.gather(*(_client_work(emulator_uri, database_name, i) for i in range(CLIENTS)))
    assert counts == [OPERATIONS_PER_CLIENT] * CLIENTS
    assert await async_client[database_name]["load"].count_documents({}) == CLIENTS * OPERATIONS_PER_CLIENT
    await async_client.drop_database(database_name)
