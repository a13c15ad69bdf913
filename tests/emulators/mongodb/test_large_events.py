"""Change events over 16 MiB: BSONObjectTooLarge, or fragments with `$changeStreamSplitLargeEvent`.

The connector accepts `$changeStreamSplitLargeEvent` as the last user stage (connector/pipeline.py); an
event carrying both images of a ~9 MiB document exceeds the 16 MiB limit on a real server, which then fails
the getMore with 10334 unless the stream splits the event (MongoDB manual: "Large Change Stream Events").
"""

from __future__ import annotations

import asyncio
from typing import Any

import bson
import pytest
from pymongo.errors import OperationFailure

#: Needs a MongoDB server: the emulator, or MONGODB_TEST_URI.
pytestmark = pytest.mark.integration

EVENT_WAIT_S = 20.0
MAX_AWAIT_MS = 200
BSON_OBJECT_TOO_LARGE = 10334
MAX_BSON_SIZE = 16 * 1024 * 1024

#: Each image is ~9 MiB, so an event with both is ~18 MiB: over the limit, fits in two fragments.
BIG = "x" * (9 * 1024 * 1024)


async def _large_update_stream(async_db: Any, pipeline: list[dict[str, Any]]) -> Any:
    await async_db.create_collection("big", changeStreamPreAndPostImages={"enabled": True})
    await async_db["big"].insert_one({"_id": 1, "blob": BIG})
    return await async_db["big"].watch(
        pipeline,
        full_document="required",
        full_document_before_change="required",
        max_await_time_ms=MAX_AWAIT_MS,
    )


async def test_event_over_16_mib_fails_with_bson_object_too_large(async_db: Any) -> None:
    stream = await _large_update_stream(async_db, [])
    try:
        await async_db["big"].update_one({"_id": 1}, {"$set": {"small": 1}})
        with pytest.raises(OperationFailure) as excinfo:
            async with asyncio.timeout(EVENT_WAIT_S):
                while await stream.try_next() is None:
                    pass
        assert excinfo.value.code == BSON_OBJECT_TOO_LARGE
    finally:
        await stream.close()


async def test_split_large_event_delivers_numbered_fragments(async_db: Any) -> None:
    stream = await _large_update_stream(async_db, [{"$changeStreamSplitLargeEvent": {}}])
    fragments: list[dict[str, Any]] = []
    try:
        await async_db["big"].update_one({"_id": 1}, {"$set": {"small": 1}})
        async with asyncio.timeout(EVENT_WAIT_S):
            while (
                not fragments or fragments[-1]["splitEvent"]["fragment"] < fragments[-1]["splitEvent"]["of"]
            ):
                event = await stream.try_next()
                if event is not None:
                    fragments.append(event)
    finally:
        await stream.close()
    total = fragments[0]["splitEvent"]["of"]
    assert total >= 2
    assert [f["splitEvent"] for f in fragments] == [{"fragment": i, "of": total} for i in range(1, total + 1)]
    tokens = [f["_id"]["_data"] for f in fragments]
    assert tokens == sorted(tokens)
    assert len(set(tokens)) == total
    assert all(len(bson.encode(f)) <= MAX_BSON_SIZE for f in fragments)
    merged: dict[str, Any] = {}
    for fragment in fragments:
        merged.update({key: value for key, value in fragment.items() if key not in ("_id", "splitEvent")})
    assert merged["operationType"] == "update"
    assert merged["fullDocument"] == {"_id": 1, "blob": BIG, "small": 1}
    assert merged["fullDocumentBeforeChange"] == {"_id": 1, "blob": BIG}


async def test_split_stage_must_be_last(async_db: Any) -> None:
    with pytest.raises(OperationFailure):
        await async_db["c"].watch([{"$changeStreamSplitLargeEvent": {}}, {"$match": {}}])
