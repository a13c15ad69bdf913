"""Change-stream semantics beyond the driver spec: DDL events, start options, document images, errors.

Each test states what a MongoDB 7.0 replica set does; the connector relies on these behaviours (resume
tokens, invalidate handling, images, fatal-error codes), so the emulator must reproduce them.
"""

from __future__ import annotations

import asyncio
import datetime
from typing import Any

import pytest
from bson import Timestamp
from pymongo.errors import OperationFailure

#: Needs a MongoDB server: the emulator, or MONGODB_TEST_URI.
pytestmark = pytest.mark.integration

#: Bound on waiting for one expected event; an idle awaitData getMore returns within MAX_AWAIT_MS.
EVENT_WAIT_S = 10.0
MAX_AWAIT_MS = 300
#: A real server's idle high-water mark moves with its periodic no-op writer (10 s by default).
IDLE_TOKEN_WAIT_S = 25.0

#: Server error codes (src/mongo/base/error_codes.yml) the connector classifies.
CHANGE_STREAM_FATAL = 280
ILLEGAL_STAGE = 40324


async def next_events(stream: Any, count: int) -> list[dict[str, Any]]:
    """Collect `count` events, polling with try_next (as the connector does), bounded by EVENT_WAIT_S."""
    events: list[dict[str, Any]] = []
    async with asyncio.timeout(EVENT_WAIT_S):
        while len(events) < count:
            event = await stream.try_next()
            if event is not None:
                events.append(event)
    return events


def kinds(events: list[dict[str, Any]]) -> list[str]:
    return [event["operationType"] for event in events]


async def test_event_shape_and_token_order(async_db: Any) -> None:
    coll = async_db["c"]
    async with await coll.watch(max_await_time_ms=MAX_AWAIT_MS) as stream:
        await coll.insert_many([{"_id": i} for i in range(3)])
        events = await next_events(stream, 3)
    tokens = [event["_id"]["_data"] for event in events]
    assert all(isinstance(token, str) for token in tokens)
    assert tokens == sorted(tokens)
    assert len(set(tokens)) == 3
    first = events[0]
    assert first["ns"] == {"db": async_db.name, "coll": "c"}
    assert first["documentKey"] == {"_id": 0}
    assert first["fullDocument"] == {"_id": 0}
    assert isinstance(first["clusterTime"], Timestamp)
    assert isinstance(first["wallTime"], datetime.datetime)
    assert "collectionUUID" not in first  # shown only with showExpandedEvents


async def test_drop_emits_drop_then_invalidate(async_db: Any) -> None:
    coll = async_db["c"]
    await coll.insert_one({"_id": 0})
    stream = await coll.watch(max_await_time_ms=MAX_AWAIT_MS)
    try:
        await coll.insert_one({"_id": 1})
        await coll.drop()
        events = await next_events(stream, 3)
        assert kinds(events) == ["insert", "drop", "invalidate"]
        assert events[1]["ns"] == {"db": async_db.name, "coll": "c"}
        assert "documentKey" not in events[1]
        # An invalidate names no namespace: only _id, operationType, clusterTime and wallTime.
        assert set(events[2]) == {"_id", "operationType", "clusterTime", "wallTime"}
        assert await stream.try_next() is None
        assert not stream.alive
    finally:
        await stream.close()


async def test_rename_emits_rename_with_to_then_invalidate(async_db: Any) -> None:
    coll = async_db["src"]
    await coll.insert_one({"_id": 0})
    async with await coll.watch(max_await_time_ms=MAX_AWAIT_MS) as stream:
        await coll.rename("dst")
        events = await next_events(stream, 2)
    assert kinds(events) == ["rename", "invalidate"]
    assert events[0]["ns"] == {"db": async_db.name, "coll": "src"}
    assert events[0]["to"] == {"db": async_db.name, "coll": "dst"}


async def test_drop_database_on_database_stream(async_client: Any, async_db: Any) -> None:
    await async_db["a"].insert_one({"_id": 0})
    async with await async_db.watch(max_await_time_ms=MAX_AWAIT_MS) as stream:
        await async_db["a"].insert_one({"_id": 1})
        await async_client.drop_database(async_db.name)
        events = await next_events(stream, 4)
    assert kinds(events) == ["insert", "drop", "dropDatabase", "invalidate"]
    assert events[1]["ns"] == {"db": async_db.name, "coll": "a"}
    assert events[2]["ns"] == {"db": async_db.name}


async def test_start_after_an_invalidate_continues_with_later_events(async_db: Any) -> None:
    coll = async_db["c"]
    await coll.insert_one({"_id": 0})
    async with await coll.watch(max_await_time_ms=MAX_AWAIT_MS) as stream:
        await coll.drop()
        invalidate = (await next_events(stream, 2))[1]
    assert invalidate["operationType"] == "invalidate"
    await coll.insert_one({"_id": "after"})
    async with await coll.watch(start_after=invalidate["_id"], max_await_time_ms=MAX_AWAIT_MS) as resumed:
        events = await next_events(resumed, 1)
    assert kinds(events) == ["insert"]
    assert events[0]["documentKey"] == {"_id": "after"}


async def test_resume_after_continues_after_the_token(async_db: Any) -> None:
    coll = async_db["c"]
    async with await coll.watch(max_await_time_ms=MAX_AWAIT_MS) as stream:
        await coll.insert_many([{"_id": i} for i in range(4)])
        events = await next_events(stream, 2)
    async with await coll.watch(resume_after=events[1]["_id"], max_await_time_ms=MAX_AWAIT_MS) as resumed:
        rest = await next_events(resumed, 2)
    assert [event["documentKey"]["_id"] for event in rest] == [2, 3]


async def test_start_at_operation_time_includes_that_operation(async_db: Any) -> None:
    reply = await async_db.command({"insert": "c", "documents": [{"_id": 1}]})
    started = reply["operationTime"]
    assert isinstance(started, Timestamp)
    await async_db["c"].insert_one({"_id": 2})
    watch = async_db["c"].watch(start_at_operation_time=started, max_await_time_ms=MAX_AWAIT_MS)
    async with await watch as stream:
        events = await next_events(stream, 2)
    assert [event["documentKey"]["_id"] for event in events] == [1, 2]


async def test_idle_stream_resume_token_advances(async_db: Any) -> None:
    """With nothing written, empty getMores still move `resume_token` (the postBatchResumeToken).

    A real replica set advances it at least with its periodic no-op write (every 10 s by default), so
    the wait is bounded by IDLE_TOKEN_WAIT_S rather than expecting a change on every poll.
    """
    tokens: list[str] = []
    async with await async_db["c"].watch(max_await_time_ms=MAX_AWAIT_MS) as stream:
        async with asyncio.timeout(IDLE_TOKEN_WAIT_S):
            while len(set(tokens)) < 2:
                assert await stream.try_next() is None
                tokens.append(stream.resume_token["_data"])
    assert tokens == sorted(tokens)


async def test_full_document_default_and_update_lookup(async_db: Any) -> None:
    coll = async_db["c"]
    await coll.insert_one({"_id": 1, "n": 0})
    plain_watch = coll.watch(max_await_time_ms=MAX_AWAIT_MS)
    lookup_watch = coll.watch(full_document="updateLookup", max_await_time_ms=MAX_AWAIT_MS)
    async with await plain_watch as plain, await lookup_watch as lookup:
        await coll.update_one({"_id": 1}, {"$inc": {"n": 1}})
        without = (await next_events(plain, 1))[0]
        with_doc = (await next_events(lookup, 1))[0]
    assert "fullDocument" not in without
    expected = {"updatedFields": {"n": 1}, "removedFields": [], "truncatedArrays": []}
    assert without["updateDescription"] == expected
    assert with_doc["fullDocument"] == {"_id": 1, "n": 1}


async def enable_images(database: Any, collection: str, enabled: bool) -> None:
    await database.command({"collMod": collection, "changeStreamPreAndPostImages": {"enabled": enabled}})


@pytest.mark.parametrize("enabled", [True, False])
async def test_when_available_images_follow_the_collection_setting(async_db: Any, enabled: bool) -> None:
    coll = async_db["c"]
    await coll.insert_one({"_id": 1, "v": "old"})
    await enable_images(async_db, "c", enabled)
    watch = coll.watch(
        full_document="whenAvailable",
        full_document_before_change="whenAvailable",
        max_await_time_ms=MAX_AWAIT_MS,
    )
    async with await watch as stream:
        await coll.update_one({"_id": 1}, {"$set": {"v": "new"}})
        await coll.delete_one({"_id": 1})
        update, delete = await next_events(stream, 2)
    if enabled:
        assert update["fullDocument"] == {"_id": 1, "v": "new"}
        assert update["fullDocumentBeforeChange"] == {"_id": 1, "v": "old"}
        assert delete["fullDocumentBeforeChange"] == {"_id": 1, "v": "new"}
    else:
        assert update["fullDocument"] is None
        assert update["fullDocumentBeforeChange"] is None
        assert delete["fullDocumentBeforeChange"] is None


async def test_required_images_work_when_enabled_at_create(async_db: Any) -> None:
    await async_db.create_collection("c", changeStreamPreAndPostImages={"enabled": True})
    coll = async_db["c"]
    await coll.insert_one({"_id": 1, "v": 1})
    watch = coll.watch(
        full_document="required", full_document_before_change="required", max_await_time_ms=MAX_AWAIT_MS
    )
    async with await watch as stream:
        await coll.replace_one({"_id": 1}, {"v": 2})
        (event,) = await next_events(stream, 1)
    assert event["operationType"] == "replace"
    assert event["fullDocument"] == {"_id": 1, "v": 2}
    assert event["fullDocumentBeforeChange"] == {"_id": 1, "v": 1}


@pytest.mark.parametrize("option", ["full_document", "full_document_before_change"])
async def test_required_image_missing_is_a_server_error(async_db: Any, option: str) -> None:
    coll = async_db["c"]
    await coll.insert_one({"_id": 1})
    async with await coll.watch(max_await_time_ms=MAX_AWAIT_MS, **{option: "required"}) as stream:
        await coll.update_one({"_id": 1}, {"$set": {"x": 1}})
        with pytest.raises(OperationFailure) as excinfo:
            await next_events(stream, 1)
    assert excinfo.value.code is not None


async def test_full_document_before_change_off_omits_field(async_db: Any) -> None:
    coll = async_db["c"]
    await coll.insert_one({"_id": 1})
    await enable_images(async_db, "c", True)
    watch = coll.watch(full_document_before_change="off", max_await_time_ms=MAX_AWAIT_MS)
    async with await watch as stream:
        await coll.update_one({"_id": 1}, {"$set": {"x": 1}})
        (event,) = await next_events(stream, 1)
    assert "fullDocumentBeforeChange" not in event


async def test_pipeline_removing_id_fails_with_280(async_db: Any) -> None:
    coll = async_db["c"]
    async with await coll.watch([{"$project": {"_id": 0}}], max_await_time_ms=MAX_AWAIT_MS) as stream:
        await coll.insert_one({"_id": 1})
        with pytest.raises(OperationFailure) as excinfo:
            await next_events(stream, 1)
    assert excinfo.value.code == CHANGE_STREAM_FATAL
    assert excinfo.value.has_error_label("NonResumableChangeStreamError")


async def test_disallowed_stage_fails_with_40324(async_db: Any) -> None:
    with pytest.raises(OperationFailure) as excinfo:
        await async_db["c"].watch([{"$unsupported": "foo"}])
    assert excinfo.value.code == ILLEGAL_STAGE


async def test_user_pipeline_set_and_match_on_timestamps(async_db: Any) -> None:
    """`$set` computed fields and a Timestamp comparison in `$match` (broken in plain mongomock)."""
    pipeline = [
        {"$match": {"clusterTime": {"$gt": Timestamp(0, 0)}, "operationType": "insert"}},
        {"$set": {"channel": {"$concat": ["orders:", {"$toString": "$documentKey._id"}]}}},
        {"$unset": "fullDocument.secret"},
    ]
    coll = async_db["c"]
    async with await coll.watch(pipeline, max_await_time_ms=MAX_AWAIT_MS) as stream:
        await coll.insert_one({"_id": 5, "secret": "s", "v": 1})
        await coll.delete_one({"_id": 5})
        await coll.insert_one({"_id": 6})
        events = await next_events(stream, 2)
    assert [event["channel"] for event in events] == ["orders:5", "orders:6"]
    assert events[0]["fullDocument"] == {"_id": 5, "v": 1}


async def test_cluster_stream_sees_every_database(async_client: Any, database_name: str) -> None:
    other = f"{database_name}_2"
    async with await async_client.watch(max_await_time_ms=MAX_AWAIT_MS) as stream:
        await async_client[database_name]["a"].insert_one({"_id": 1})
        await async_client[other]["b"].insert_one({"_id": 2})
        events = await next_events(stream, 2)
    assert [event["ns"] for event in events] == [
        {"db": database_name, "coll": "a"},
        {"db": other, "coll": "b"},
    ]
    await async_client.drop_database(database_name)
    await async_client.drop_database(other)


async def test_history_lost_after_oplog_overflow(private_emulator: Any) -> None:
    """Resuming from a token that fell off a bounded oplog fails with 286 ChangeStreamHistoryLost."""
    from pymongo import AsyncMongoClient

    history_lost = 286
    with private_emulator(oplog_size=20) as uri:
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri, serverSelectionTimeoutMS=10_000)
        try:
            coll = client["db"]["c"]
            reply = await client["db"].command({"insert": "c", "documents": [{"_id": 0}]})
            old_time = reply["operationTime"]
            async with await coll.watch(max_await_time_ms=MAX_AWAIT_MS) as stream:
                await coll.insert_one({"_id": 1})
                (first,) = await next_events(stream, 1)
            await coll.insert_many([{"_id": i} for i in range(2, 200)])
            with pytest.raises(OperationFailure) as by_token:
                async with await coll.watch(resume_after=first["_id"]) as resumed:
                    await resumed.try_next()
            assert by_token.value.code == history_lost
            with pytest.raises(OperationFailure) as by_time:
                async with await coll.watch(start_at_operation_time=old_time) as resumed:
                    await resumed.try_next()
            assert by_time.value.code == history_lost
        finally:
            await client.close()


async def test_resume_after_an_invalidate_is_invalid_resume_token(async_db: Any) -> None:
    """Only startAfter may continue past an invalidate; resumeAfter fails with 260 (no error label)."""
    invalid_resume_token = 260
    coll = async_db["c"]
    await coll.insert_one({"_id": 0})
    async with await coll.watch(max_await_time_ms=MAX_AWAIT_MS) as stream:
        await coll.drop()
        invalidate = (await next_events(stream, 2))[1]
    with pytest.raises(OperationFailure) as excinfo:
        async with await coll.watch(resume_after=invalidate["_id"]) as resumed:
            await resumed.try_next()
    assert excinfo.value.code == invalid_resume_token
    assert not excinfo.value.has_error_label("ResumableChangeStreamError")


async def test_database_stream_survives_collection_drop_and_rename(async_db: Any) -> None:
    """Only a collection stream is invalidated by drop/rename; a database stream just reports them."""
    await async_db["a"].insert_one({"_id": 0})
    await async_db["b"].insert_one({"_id": 0})
    async with await async_db.watch(max_await_time_ms=MAX_AWAIT_MS) as stream:
        await async_db["a"].drop()
        await async_db["b"].rename("b2")
        await async_db["b2"].insert_one({"_id": 1})
        events = await next_events(stream, 3)
        assert stream.alive
    assert kinds(events) == ["drop", "rename", "insert"]
    assert events[1]["to"] == {"db": async_db.name, "coll": "b2"}
    assert events[2]["ns"] == {"db": async_db.name, "coll": "b2"}


async def test_cluster_stream_survives_drop_database(async_client: Any, database_name: str) -> None:
    db = async_client[database_name]
    await db["a"].insert_one({"_id": 0})
    async with await async_client.watch(max_await_time_ms=MAX_AWAIT_MS) as stream:
        await async_client.drop_database(database_name)
        await db["again"].insert_one({"_id": 1})
        events = await next_events(stream, 3)
        assert stream.alive
    assert kinds(events) == ["drop", "dropDatabase", "insert"]
    assert events[1]["ns"] == {"db": database_name}
    await async_client.drop_database(database_name)
