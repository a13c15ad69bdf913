"""ON_UNPUBLISHABLE: dead-letter (default), skip, fail."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from mongomock_motor import AsyncMongoMockClient
from pymongo import AsyncMongoClient
from pymongo.errors import AutoReconnect

from connector.errors import FatalError
from connector.sources.mongodb import retrying
from connector.sources.mongodb.deadletter import UnpublishableHandler

EVENT = {"_id": {"_data": "8200AA"}, "operationType": "insert", "fullDocument": {"x": 1}, "_ablyChannel": ""}


@pytest.fixture
def collection() -> Any:
    return AsyncMongoMockClient()["app"]["ably_deadletter"]


async def test_deadletter_document_shape(collection: Any) -> None:
    handler = UnpublishableHandler("deadletter", collection)
    await handler.handle(EVENT, "no _ablyChannel", 72004)
    doc = await collection.find_one({"_id": EVENT["_id"]})
    assert doc["event"] == EVENT
    assert doc["reason"] == "no _ablyChannel"
    assert doc["code"] == 72004
    assert doc["at"] is not None
    assert handler.deadlettered == 1


async def test_deadletter_twice_after_a_replay_is_idempotent(collection: Any) -> None:
    handler = UnpublishableHandler("deadletter", collection)
    await handler.handle(EVENT, "r", 72004)
    await handler.handle(EVENT, "r", 72004)
    assert await collection.count_documents({}) == 1


async def test_ttl_index_created(collection: Any) -> None:
    await UnpublishableHandler("deadletter", collection, ttl_days=3).ensure_indexes()
    info = await collection.index_information()
    assert info["at_ttl"]["expireAfterSeconds"] == 3 * 86_400


async def test_skip_counts_and_logs_without_writing(
    collection: Any, caplog: pytest.LogCaptureFixture
) -> None:
    handler = UnpublishableHandler("skip", collection)
    with caplog.at_level(logging.WARNING):
        await handler.handle(EVENT, "bad headers", 72001)
    assert handler.skipped == 1
    assert await collection.count_documents({}) == 0
    assert any("skipped" in r.getMessage() and getattr(r, "code", None) == 72001 for r in caplog.records)


async def test_fail_raises_fatal_with_the_code(collection: Any) -> None:
    with pytest.raises(FatalError) as info:
        await UnpublishableHandler("fail", collection).handle(EVENT, "too large", 40009)
    assert info.value.code == 40009
    assert "8200AA" in str(info.value)


class FlakyCollection:
    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.docs: list[dict[str, Any]] = []

    async def insert_one(self, doc: dict[str, Any]) -> None:
        if self.failures:
            self.failures -= 1
            raise AutoReconnect("not primary")
        self.docs.append(doc)


async def test_failed_deadletter_write_is_retried_until_stored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(retrying, "RETRY_DELAYS_S", (0.0,))
    flaky = FlakyCollection(failures=3)
    await UnpublishableHandler("deadletter", flaky).handle(EVENT, "r", 72004)
    assert len(flaky.docs) == 1


# ---- DEADLETTER_TTL_DAYS against a server (the emulator, or MONGODB_TEST_URI): collMod and dropIndexes ----


@pytest.fixture
async def server_collection(mongo_uri: str) -> AsyncIterator[Any]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri, serverSelectionTimeoutMS=10_000)
    database = client[f"deadletter_ttl_{uuid.uuid4().hex[:8]}"]
    try:
        yield database["ably_deadletter"]
    finally:
        await client.drop_database(database.name)
        await client.close()


async def ttl_of(collection: Any) -> Any:
    return (await collection.index_information()).get("at_ttl", {}).get("expireAfterSeconds", "no index")


@pytest.mark.integration
async def test_a_changed_ttl_updates_the_existing_index(
    server_collection: Any, caplog: pytest.LogCaptureFixture
) -> None:
    await UnpublishableHandler("deadletter", server_collection, ttl_days=14).ensure_indexes()
    with caplog.at_level(logging.INFO):
        await UnpublishableHandler("deadletter", server_collection, ttl_days=3).ensure_indexes()
    assert await ttl_of(server_collection) == 3 * 86_400
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("now expire after 3 days" in r.getMessage() for r in caplog.records)


@pytest.mark.integration
async def test_ttl_zero_drops_the_existing_index_and_keeps_dead_letters(server_collection: Any) -> None:
    handler = UnpublishableHandler("deadletter", server_collection, ttl_days=14)
    await handler.ensure_indexes()
    await handler.handle(EVENT, "no _ablyChannel", 72004)
    await UnpublishableHandler("deadletter", server_collection, ttl_days=0).ensure_indexes()
    assert await ttl_of(server_collection) == "no index"
    assert await server_collection.count_documents({}) == 1
    await UnpublishableHandler("deadletter", server_collection, ttl_days=0).ensure_indexes()  # again: no-op


@pytest.mark.integration
async def test_an_unchanged_ttl_and_other_policies_leave_the_index_alone(
    server_collection: Any, caplog: pytest.LogCaptureFixture
) -> None:
    await UnpublishableHandler("deadletter", server_collection, ttl_days=5).ensure_indexes()
    with caplog.at_level(logging.INFO):
        await UnpublishableHandler("deadletter", server_collection, ttl_days=5).ensure_indexes()
        await UnpublishableHandler("skip", server_collection, ttl_days=0).ensure_indexes()
    assert await ttl_of(server_collection) == 5 * 86_400
    assert not [r for r in caplog.records if r.name.endswith("deadletter")]
