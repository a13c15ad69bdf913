"""Requests a MongoDB 7.0 primary refuses (or answers differently) that the emulator once accepted.

Found by real driver workloads (issue 8, item 4). Each test states mongod's behaviour with its source:
a write mongod rejects must neither change the data nor produce a change event, so every "no event"
check writes a marker afterwards and expects the marker to be the next event.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pymongo.errors import OperationFailure, WriteError
from pymongo.read_concern import ReadConcern

#: Needs a MongoDB server: the emulator, or MONGODB_TEST_URI.
pytestmark = pytest.mark.integration

EVENT_WAIT_S = 10.0
MAX_AWAIT_MS = 300

#: src/mongo/base/error_codes.yml
FAILED_TO_PARSE = 9
DOLLAR_PREFIXED_FIELD_NAME = 52
INVALID_OPTIONS = 72


async def next_event(stream: Any) -> dict[str, Any]:
    async with asyncio.timeout(EVENT_WAIT_S):
        while True:
            event = await stream.try_next()
            if event is not None:
                return dict(event)


async def assert_next_is_marker(stream: Any, coll: Any) -> None:
    """Nothing was written before the marker: the next event on the stream is the marker's insert."""
    await coll.insert_one({"_id": "marker"})
    event = await next_event(stream)
    assert (event["operationType"], event["documentKey"]) == ("insert", {"_id": "marker"}), event


# -- change streams and read concern (document_source_change_stream.h: onlySingleReadConcernSupported) --
@pytest.mark.parametrize("level", ["local", "available", "snapshot", "linearizable"])
async def test_change_stream_refuses_a_read_concern_other_than_majority(async_db: Any, level: str) -> None:
    coll = async_db.get_collection("c", read_concern=ReadConcern(level))
    with pytest.raises(OperationFailure) as info:
        await coll.watch()
    assert info.value.code == INVALID_OPTIONS
    assert (
        "Aggregation stage $changeStream cannot run with a readConcern other than 'majority'. "
        f"Current readConcern: {level}"
    ) in str(info.value)


@pytest.mark.parametrize("read_concern", [ReadConcern(), ReadConcern("majority")])
async def test_change_stream_accepts_no_read_concern_and_majority(async_db: Any, read_concern: Any) -> None:
    coll = async_db.get_collection("c", read_concern=read_concern)
    async with await coll.watch(max_await_time_ms=MAX_AWAIT_MS) as stream:
        await coll.insert_one({"_id": 1})
        assert (await next_event(stream))["documentKey"] == {"_id": 1}


async def test_change_stream_accepts_an_empty_read_concern(async_db: Any) -> None:
    # An empty readConcern is "not specified": the implicit default applies, which a change stream accepts.
    reply = await async_db.command(
        {"aggregate": "c", "pipeline": [{"$changeStream": {}}], "cursor": {}, "readConcern": {}}
    )
    await async_db.command({"killCursors": "c", "cursors": [reply["cursor"]["id"]]})
    assert reply["ok"] == 1


# -- replacement documents (update/storage_validation.cpp: validateDollarPrefixElement) ---------------
async def test_replacement_with_a_top_level_dollar_field_is_refused(async_db: Any) -> None:
    coll = async_db["c"]
    await coll.insert_one({"_id": 1, "a": 1})
    async with await coll.watch(max_await_time_ms=MAX_AWAIT_MS) as stream:
        with pytest.raises(WriteError) as info:
            # PyMongo checks only the first key of a replacement; the server checks them all.
            await coll.replace_one({"_id": 1}, {"a": 2, "$set": {"b": 1}})
        assert info.value.code == DOLLAR_PREFIXED_FIELD_NAME
        assert "The dollar ($) prefixed field '$set' in '$set' is not allowed" in str(info.value)
        with pytest.raises(WriteError) as upsert_info:
            await coll.replace_one({"_id": 2}, {"a": 2, "$inc": {"b": 1}}, upsert=True)
        assert upsert_info.value.code == DOLLAR_PREFIXED_FIELD_NAME
        await assert_next_is_marker(stream, coll)
    assert await coll.find({}, sort=[("_id", 1)]).to_list() == [{"_id": 1, "a": 1}, {"_id": "marker"}]


async def test_nested_dollar_fields_in_a_replacement_are_allowed(async_db: Any) -> None:
    # Since 5.0 only top-level `$` fields are refused in a replacement.
    coll = async_db["c"]
    await coll.insert_one({"_id": 1})
    await coll.replace_one({"_id": 1}, {"a": {"$price": 3}})
    assert await coll.find_one({"_id": 1}) == {"_id": 1, "a": {"$price": 3}}


# -- update operators (update/update_driver.cpp: parsed before any document is matched) ---------------
@pytest.mark.parametrize("existing", [True, False], ids=["collection exists", "no collection"])
async def test_unknown_update_operator_fails_to_parse_whatever_matches(async_db: Any, existing: bool) -> None:
    coll = async_db["c"]
    if existing:
        await coll.insert_one({"_id": 1})
    bad = {"$thismodifierdoesntexist": {"a": 1}}
    for write in (
        coll.update_one({"_id": "no such document"}, bad),
        coll.update_many({"_id": "no such document"}, bad),
        coll.update_one({"_id": "no such document"}, bad, upsert=True),
    ):
        with pytest.raises(WriteError) as info:
            await write
        assert info.value.code == FAILED_TO_PARSE
        assert "Unknown modifier: $thismodifierdoesntexist" in str(info.value)
    assert await coll.count_documents({}) == (1 if existing else 0)


async def test_empty_update_operand_is_a_no_op(async_db: Any) -> None:
    # Since 5.0 `{$set: {}}` changes nothing and logs nothing, instead of failing.
    coll = async_db["c"]
    await coll.insert_one({"_id": 1, "a": 1})
    async with await coll.watch(max_await_time_ms=MAX_AWAIT_MS) as stream:
        result = await coll.update_one({"_id": 1}, {"$set": {}})
        assert (result.matched_count, result.modified_count) == (1, 0)
        await assert_next_is_marker(stream, coll)


# -- upsert of a null _id (write_ops_exec.cpp: the upserted _id is reported whatever its value) -------
async def test_upsert_with_a_null_id_reports_the_upsert_and_the_document_stays_updatable(
    async_db: Any,
) -> None:
    coll = async_db["c"]
    async with await coll.watch(max_await_time_ms=MAX_AWAIT_MS) as stream:
        result = await coll.update_one({"_id": None}, {"$set": {"a": 1}}, upsert=True)
        assert result.raw_result["n"] == 1
        assert "upserted" in result.raw_result and result.upserted_id is None
        inserted = await next_event(stream)
        assert (inserted["operationType"], inserted["documentKey"]) == ("insert", {"_id": None})
        again = await coll.update_one({"_id": None}, {"$set": {"a": 2}})
        assert (again.matched_count, again.modified_count, again.upserted_id) == (1, 1, None)
        updated = await next_event(stream)
        assert updated["operationType"] == "update"
        assert updated["updateDescription"]["updatedFields"] == {"a": 2}
    assert await coll.find_one({"_id": None}) == {"_id": None, "a": 2}
    replaced = await coll.replace_one({"_id": None}, {"b": 1})
    assert replaced.modified_count == 1
    assert await coll.find_one({"_id": None}) == {"_id": None, "b": 1}
