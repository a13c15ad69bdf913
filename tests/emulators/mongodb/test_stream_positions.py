"""Resume positions the connector checkpoints: every token it may store must resume exactly where it left off.

The connector stores either an event's `_id` or, on quiet streams, the postBatchResumeToken that
`stream.resume_token` exposes after an empty getMore. Resuming from any of them must deliver every later
change once: nothing skipped (a high-water mark must never pass an unreturned event) and nothing repeated.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pymongo.errors import BulkWriteError, OperationFailure

#: Needs a MongoDB server: the emulator, or MONGODB_TEST_URI.
pytestmark = pytest.mark.integration

#: Bound on collecting expected events; an idle getMore returns within MAX_AWAIT_MS.
EVENT_WAIT_S = 20.0
MAX_AWAIT_MS = 200

#: A backlog larger than one default batch (101 first, then up to 16 MiB per getMore).
BACKLOG = 2_500

#: Concurrent writer/reader check: this many inserts, in bursts with pauses so idle PBRTs interleave.
CONCURRENT_WRITES = 120
BURST = 7
BURST_PAUSE_S = 0.05

CURSOR_NOT_FOUND = 43


async def collect(stream: Any, count: int) -> list[Any]:
    ids: list[Any] = []
    async with asyncio.timeout(EVENT_WAIT_S):
        while len(ids) < count:
            event = await stream.try_next()
            if event is not None:
                ids.append(event["documentKey"]["_id"])
    return ids


async def test_backlog_is_read_in_order_without_loss(async_db: Any) -> None:
    coll = async_db["c"]
    async with await coll.watch(max_await_time_ms=MAX_AWAIT_MS) as stream:
        await coll.insert_many([{"_id": i} for i in range(BACKLOG)])
        ids = await collect(stream, BACKLOG)
        assert await stream.try_next() is None
    assert ids == list(range(BACKLOG))


async def test_resume_from_token_after_last_event_of_a_batch(async_db: Any) -> None:
    """After the last event of a batch, `resume_token` is the PBRT; resuming from it repeats nothing."""
    coll = async_db["c"]
    async with await coll.watch(max_await_time_ms=MAX_AWAIT_MS) as stream:
        await coll.insert_many([{"_id": i} for i in range(3)])
        assert await collect(stream, 3) == [0, 1, 2]
        token = stream.resume_token
    await coll.insert_many([{"_id": i} for i in range(3, 6)])
    async with await coll.watch(resume_after=token, max_await_time_ms=MAX_AWAIT_MS) as resumed:
        assert await collect(resumed, 3) == [3, 4, 5]
        assert await resumed.try_next() is None


async def test_resume_from_idle_high_water_mark_skips_nothing(async_db: Any) -> None:
    coll = async_db["c"]
    await coll.insert_one({"_id": "before"})
    async with await coll.watch(max_await_time_ms=MAX_AWAIT_MS) as stream:
        assert await stream.try_next() is None
        assert await stream.try_next() is None
        idle_token = stream.resume_token
    await coll.insert_many([{"_id": i} for i in range(4)])
    async with await coll.watch(resume_after=idle_token, max_await_time_ms=MAX_AWAIT_MS) as resumed:
        assert await collect(resumed, 4) == [0, 1, 2, 3]


async def _write_in_bursts(coll: Any) -> None:
    for start in range(0, CONCURRENT_WRITES, BURST):
        await coll.insert_many([{"_id": i} for i in range(start, min(start + BURST, CONCURRENT_WRITES))])
        await asyncio.sleep(BURST_PAUSE_S)


async def test_every_observed_token_resumes_exactly_after_what_was_read(async_db: Any) -> None:
    """Checkpoint invariant under concurrent writes: token after k events resumes at event k+1."""
    coll = async_db["c"]
    checkpoints: list[tuple[Any, int]] = []
    read: list[int] = []
    watch = coll.watch(max_await_time_ms=MAX_AWAIT_MS, batch_size=5)
    async with await watch as stream, asyncio.timeout(EVENT_WAIT_S), asyncio.TaskGroup() as group:
        group.create_task(_write_in_bursts(coll))
        while len(read) < CONCURRENT_WRITES:
            event = await stream.try_next()
            if event is not None:
                read.append(event["documentKey"]["_id"])
            checkpoints.append((stream.resume_token, len(read)))
    assert read == list(range(CONCURRENT_WRITES))
    # Resume from a spread of the recorded positions (events and idle PBRTs alike).
    step = max(1, len(checkpoints) // 12)
    for token, consumed in checkpoints[::step]:
        remaining = CONCURRENT_WRITES - consumed
        async with await coll.watch(resume_after=token, max_await_time_ms=MAX_AWAIT_MS) as resumed:
            rest = await collect(resumed, remaining)
            assert await resumed.try_next() is None
        assert rest == list(range(consumed, CONCURRENT_WRITES)), f"resumed after {consumed} events"


async def test_no_op_writes_produce_no_events(async_db: Any) -> None:
    coll = async_db["c"]
    await coll.insert_one({"_id": 1, "v": 1})
    async with await coll.watch(max_await_time_ms=MAX_AWAIT_MS) as stream:
        assert (await coll.update_one({"_id": 1}, {"$set": {"v": 1}})).modified_count == 0
        assert (await coll.update_one({"_id": 2}, {"$set": {"v": 1}})).matched_count == 0
        assert (await coll.delete_one({"_id": 3})).deleted_count == 0
        await coll.insert_one({"_id": "marker"})
        assert await collect(stream, 1) == ["marker"]


async def test_ordered_insert_stops_at_duplicate_and_emits_only_inserted(async_db: Any) -> None:
    coll = async_db["c"]
    await coll.insert_one({"_id": 2})
    async with await coll.watch(max_await_time_ms=MAX_AWAIT_MS) as stream:
        with pytest.raises(BulkWriteError) as excinfo:
            await coll.insert_many([{"_id": 0}, {"_id": 1}, {"_id": 2}, {"_id": 3}])
        assert excinfo.value.details["nInserted"] == 2
        await coll.insert_one({"_id": "marker"})
        assert await collect(stream, 3) == [0, 1, "marker"]


async def test_update_description_reports_removed_and_dotted_fields(async_db: Any) -> None:
    coll = async_db["c"]
    await coll.insert_one({"_id": 1, "a": {"b": 1, "c": 2}, "gone": True, "n": 1})
    async with await coll.watch(max_await_time_ms=MAX_AWAIT_MS) as stream:
        await coll.update_one({"_id": 1}, {"$set": {"a.b": 5}, "$unset": {"gone": ""}, "$inc": {"n": 2}})
        event = await _next_event(stream)
    assert event["operationType"] == "update"
    description = event["updateDescription"]
    assert description["updatedFields"] == {"a.b": 5, "n": 3}
    assert description["removedFields"] == ["gone"]
    assert description["truncatedArrays"] == []


async def _next_event(stream: Any) -> dict[str, Any]:
    async with asyncio.timeout(EVENT_WAIT_S):
        while True:
            event = await stream.try_next()
            if event is not None:
                return dict(event)


async def test_killed_change_stream_cursor_is_cursor_not_found(async_db: Any) -> None:
    """Raw protocol: getMore after killCursors fails with 43, which drivers treat as resumable."""
    reply = await async_db.command({"aggregate": "c", "pipeline": [{"$changeStream": {}}], "cursor": {}})
    cursor_id = reply["cursor"]["id"]
    assert cursor_id != 0
    assert "postBatchResumeToken" in reply["cursor"]
    killed = await async_db.command({"killCursors": "c", "cursors": [cursor_id]})
    assert killed["cursorsKilled"] == [cursor_id]
    with pytest.raises(OperationFailure) as excinfo:
        await async_db.command({"getMore": cursor_id, "collection": "c", "maxTimeMS": 100})
    assert excinfo.value.code == CURSOR_NOT_FOUND
