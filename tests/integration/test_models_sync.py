"""`current_sequence_id`: a Models SDK sequenceId read before the state never lets a replay skip an event."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from connector.sources.mongodb.models_sync import current_sequence_id

pytestmark = pytest.mark.integration

EVENT_WAIT_S = 20.0  # bound on collecting events the test itself wrote


async def events(stream: Any, count: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    async with asyncio.timeout(EVENT_WAIT_S):
        while len(out) < count:
            event = await stream.try_next()
            if event is not None:
                out.append(event)
    return out


async def test_token_sorts_after_earlier_events_and_before_later_ones(db: Any) -> None:
    coll = db.orders
    async with await coll.watch(max_await_time_ms=50) as stream:
        await coll.insert_one({"_id": "before"})
        await coll.update_one({"_id": "before"}, {"$set": {"x": 1}})
        sequence_id = await current_sequence_id(coll)
        await coll.insert_one({"_id": "after"})
        seen = await events(stream, 3)
    before, updated, after = (e["_id"]["_data"] for e in seen)
    # The connector's message ids are these `_data` strings; the Models SDK compares them as text.
    assert before < updated <= sequence_id < after


async def test_database_watch_token_bounds_collection_events(db: Any) -> None:
    async with await db.orders.watch(max_await_time_ms=50) as stream:
        await db.orders.insert_one({"_id": 1})
        sequence_id = await current_sequence_id(db)
        await db.orders.insert_one({"_id": 2})
        first, second = (e["_id"]["_data"] for e in await events(stream, 2))
    assert first <= sequence_id < second


async def test_state_read_after_the_token_misses_no_event_newer_than_it(db: Any) -> None:
    """While a writer runs: every event the state does not reflect sorts after the sequenceId."""
    coll = db.orders
    total = 60
    async with await coll.watch(max_await_time_ms=50) as stream:
        started = asyncio.Event()

        async def writer() -> None:
            for i in range(total):
                await coll.insert_one({"_id": i})
                if i == total // 3:
                    started.set()

        task = asyncio.create_task(writer())
        await started.wait()
        sequence_id = await current_sequence_id(coll)
        state = {doc["_id"] async for doc in coll.find({}, {"_id": 1})}
        await task
        seen = await events(stream, total)
    assert len(state) > total // 3  # read after the writer passed a third of its inserts
    missing_from_state = [e for e in seen if e["documentKey"]["_id"] not in state]
    assert all(e["_id"]["_data"] > sequence_id for e in missing_from_state)
    # And what sorts at or before the token is in the state (so replay from it repeats, never skips).
    assert all(e["documentKey"]["_id"] in state for e in seen if e["_id"]["_data"] <= sequence_id)
