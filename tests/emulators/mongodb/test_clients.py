"""The three client stacks the connector supports all work against the emulator: CRUD and `watch()`.

PyMongo sync (`MongoClient`), PyMongo async (`AsyncMongoClient`) and Motor (`AsyncIOMotorClient`) differ in
handshake details, pooling and cursor handling; each must insert, find, update, delete and receive the
matching change events in order.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from motor.motor_asyncio import AsyncIOMotorClient
from pymongo import MongoClient

from tests.emulators.mongodb.conftest import SERVER_SELECTION_TIMEOUT_MS

#: Needs a MongoDB server: the emulator, or MONGODB_TEST_URI.
pytestmark = pytest.mark.integration

#: Upper bound on waiting for one expected change event (awaitData returns within ~1 s when idle).
EVENT_WAIT_S = 10.0


def _strip(event: dict[str, Any]) -> tuple[str, Any, Any]:
    return event["operationType"], event["documentKey"]["_id"], event.get("fullDocument")


def _next_sync(stream: Any) -> dict[str, Any]:
    """Poll try_next until an event arrives (bounded by attempts: each idle poll is one ~1 s getMore)."""
    for _ in range(int(EVENT_WAIT_S)):
        event = stream.try_next()
        if event is not None:
            return dict(event)
    raise AssertionError(f"no change event within ~{EVENT_WAIT_S:g} s")


def test_pymongo_sync_crud_and_watch(emulator_uri: str, database_name: str) -> None:
    client: MongoClient[dict[str, Any]] = MongoClient(
        emulator_uri, serverSelectionTimeoutMS=SERVER_SELECTION_TIMEOUT_MS
    )
    try:
        coll = client[database_name]["orders"]
        with coll.watch(max_await_time_ms=500) as stream:
            coll.insert_one({"_id": 1, "status": "new"})
            assert coll.find_one({"_id": 1}) == {"_id": 1, "status": "new"}
            result = coll.update_one({"_id": 1}, {"$set": {"status": "paid"}})
            assert (result.matched_count, result.modified_count) == (1, 1)
            coll.replace_one({"_id": 1}, {"status": "shipped"})
            assert coll.delete_one({"_id": 1}).deleted_count == 1
            assert coll.count_documents({}) == 0
            events = [_next_sync(stream) for _ in range(4)]
        assert [_strip(e) for e in events] == [
            ("insert", 1, {"_id": 1, "status": "new"}),
            ("update", 1, None),
            ("replace", 1, {"_id": 1, "status": "shipped"}),
            ("delete", 1, None),
        ]
        assert events[1]["updateDescription"]["updatedFields"] == {"status": "paid"}
        assert "updateDescription" not in events[2]  # a replacement carries the whole document instead
        client.drop_database(database_name)
    finally:
        client.close()


async def test_pymongo_async_crud_and_watch(async_client: Any, database_name: str) -> None:
    coll = async_client[database_name]["orders"]
    async with await coll.watch(max_await_time_ms=500) as stream:
        await coll.insert_many([{"_id": i, "n": i} for i in range(3)])
        found = await coll.find({"n": {"$gte": 1}}).sort("n", -1).to_list()
        assert found == [{"_id": 2, "n": 2}, {"_id": 1, "n": 1}]
        await coll.update_many({}, {"$inc": {"n": 10}})
        await coll.delete_many({"n": {"$lt": 12}})
        assert await coll.distinct("n") == [12]
        events: list[dict[str, Any]] = []
        async with asyncio.timeout(EVENT_WAIT_S):
            while len(events) < 8:
                event = await stream.try_next()
                if event is not None:
                    events.append(event)
    kinds = [(e["operationType"], e["documentKey"]["_id"]) for e in events]
    assert kinds == [
        ("insert", 0),
        ("insert", 1),
        ("insert", 2),
        ("update", 0),
        ("update", 1),
        ("update", 2),
        ("delete", 0),
        ("delete", 1),
    ]
    await async_client.drop_database(database_name)


async def test_motor_crud_and_watch(emulator_uri: str, database_name: str) -> None:
    client: Any = AsyncIOMotorClient(emulator_uri, serverSelectionTimeoutMS=SERVER_SELECTION_TIMEOUT_MS)
    try:
        coll = client[database_name]["orders"]
        async with coll.watch(full_document="updateLookup", max_await_time_ms=500) as stream:
            await coll.insert_one({"_id": "a", "qty": 1})
            await coll.update_one({"_id": "a"}, {"$inc": {"qty": 4}})
            assert await coll.find_one({"_id": "a"}) == {"_id": "a", "qty": 5}
            await coll.delete_one({"_id": "a"})
            events: list[dict[str, Any]] = []
            async with asyncio.timeout(EVENT_WAIT_S):
                while len(events) < 3:
                    event = await stream.try_next()
                    if event is not None:
                        events.append(event)
        assert [_strip(e) for e in events] == [
            ("insert", "a", {"_id": "a", "qty": 1}),
            # updateLookup reads the document at lookup time; it was deleted after the update, so the
            # lookup may legitimately find nothing (the server returns null) or the post-update state.
            ("update", "a", events[1].get("fullDocument")),
            ("delete", "a", None),
        ]
        assert events[1].get("fullDocument") in (None, {"_id": "a", "qty": 5})
        assert events[1]["updateDescription"]["updatedFields"] == {"qty": 5}
        await client.drop_database(database_name)
    finally:
        client.close()


async def test_motor_stream_resumes_after_a_dropped_get_more(
    emulator_uri: str, async_client: Any, database_name: str
) -> None:
    """Motor runs PyMongo's sync resume logic on a thread pool; it must resume against the emulator too."""
    client: Any = AsyncIOMotorClient(emulator_uri, serverSelectionTimeoutMS=SERVER_SELECTION_TIMEOUT_MS)
    fail_point = {
        "configureFailPoint": "failCommand",
        "mode": {"times": 1},
        "data": {"failCommands": ["getMore"], "closeConnection": True},
    }
    try:
        coll = client[database_name]["orders"]
        async with coll.watch(max_await_time_ms=500) as stream:
            await coll.insert_one({"_id": 0})
            ids: list[Any] = []
            async with asyncio.timeout(EVENT_WAIT_S):
                while len(ids) < 1:
                    event = await stream.try_next()
                    if event is not None:
                        ids.append(event["documentKey"]["_id"])
                await async_client.admin.command(fail_point)
                await coll.insert_many([{"_id": 1}, {"_id": 2}])
                while len(ids) < 3:
                    event = await stream.try_next()
                    if event is not None:
                        ids.append(event["documentKey"]["_id"])
        assert ids == [0, 1, 2]
        await client.drop_database(database_name)
    finally:
        await async_client.admin.command({"configureFailPoint": "failCommand", "mode": "off"})
        client.close()
