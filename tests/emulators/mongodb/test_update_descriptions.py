"""`updateDescription` for the update shapes MongoDB documents (manual: reference/change-events/update).

The connector publishes `updateDescription` verbatim to subscribers, so a drop-in replacement must describe
updates as the server does: removals listed in `removedFields`, array appends as `<array>.<index>`, pulls as
the whole new array, pipeline truncations in `truncatedArrays`, and a pipeline update that removes most of
a sub-document reported as the sub-document's new value.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

#: Needs a MongoDB server: the emulator, or MONGODB_TEST_URI.
pytestmark = pytest.mark.integration

EVENT_WAIT_S = 10.0
MAX_AWAIT_MS = 200

CONTACT = {"email": "user@example.com", "phone": "555-0100", "mobile": "555-0101"}


async def descriptions(
    coll: Any, documents: list[dict[str, Any]], updates: list[tuple[Any, Any]]
) -> list[Any]:
    """Insert `documents`, then apply each (filter, update) under a stream; return the updateDescriptions."""
    await coll.insert_many(documents)
    async with await coll.watch(max_await_time_ms=MAX_AWAIT_MS) as stream:
        for flt, update in updates:
            await coll.update_one(flt, update)
        found: list[Any] = []
        async with asyncio.timeout(EVENT_WAIT_S):
            while len(found) < len(updates):
                event = await stream.try_next()
                if event is not None:
                    assert event["operationType"] == "update", event
                    found.append(event["updateDescription"])
    return found


def described(
    updated: dict[str, Any], removed: list[str], truncated: list[Any] | None = None
) -> dict[str, Any]:
    return {"updatedFields": updated, "removedFields": removed, "truncatedArrays": truncated or []}


async def test_unset_subfields_are_listed_as_removed(async_db: Any) -> None:
    result = await descriptions(
        async_db["c"],
        [
            {"_id": "standard_remove_1_of_3", "contactMethods": CONTACT},
            {"_id": "standard_remove_2_of_3", "contactMethods": CONTACT},
        ],
        [
            ({"_id": "standard_remove_1_of_3"}, {"$unset": {"contactMethods.email": ""}}),
            (
                {"_id": "standard_remove_2_of_3"},
                {"$unset": {"contactMethods.email": "", "contactMethods.phone": ""}},
            ),
        ],
    )
    assert result == [
        described({}, ["contactMethods.email"]),
        described({}, ["contactMethods.email", "contactMethods.phone"]),
    ]


async def test_pipeline_unset_of_one_subfield_is_a_removal(async_db: Any) -> None:
    result = await descriptions(
        async_db["c"],
        [{"_id": "pipeline_remove_1_of_3", "contactMethods": CONTACT}],
        [({"_id": "pipeline_remove_1_of_3"}, [{"$unset": "contactMethods.email"}])],
    )
    assert result == [described({}, ["contactMethods.email"])]


async def test_pipeline_unset_of_most_subfields_reports_the_new_subdocument(async_db: Any) -> None:
    """The server's diff picks the more concise form: here the remaining sub-document.

    The `_id` is the manual's own: document sizes decide between a diff and a full replacement (a diff
    plus 15 bytes of oplog metadata must be smaller than the new document), so a shorter `_id` would turn
    this into a `replace` event.
    """
    result = await descriptions(
        async_db["c"],
        [{"_id": "pipeline_remove_2_of_3", "contactMethods": CONTACT}],
        [({"_id": "pipeline_remove_2_of_3"}, [{"$unset": ["contactMethods.email", "contactMethods.phone"]}])],
    )
    assert result == [described({"contactMethods": {"mobile": "555-0101"}}, [])]


async def test_array_push_and_pull(async_db: Any) -> None:
    key = {"student_id": 1}
    result = await descriptions(
        async_db["students"],
        [{**key, "scores": []}],
        [
            (key, {"$push": {"scores": 0.85}}),
            (key, {"$push": {"scores": 0.94}}),
            (key, {"$push": {"scores": 0.78}}),
            (key, {"$pull": {"scores": 0.94}}),
        ],
    )
    assert result == [
        described({"scores": [0.85]}, []),  # push onto an empty array: the whole (new) array
        described({"scores.1": 0.94}, []),  # append: the new position
        described({"scores.2": 0.78}, []),
        described({"scores": [0.85, 0.78]}, []),  # pull: the whole new array
    ]


async def test_pipeline_truncation_and_regrowth(async_db: Any) -> None:
    key = {"student_id": 2}
    result = await descriptions(
        async_db["students"],
        [{**key, "scores": [0.85, 0.94, 0.78]}],
        [
            (key, [{"$addFields": {"scores": [0.85, 0.94]}}]),
            (key, [{"$addFields": {"scores": [0.85, 0.94, 0.78]}}]),
        ],
    )
    assert result == [
        described({}, [], [{"field": "scores", "newSize": 2}]),
        described({"scores.2": 0.78}, []),
    ]


async def _one_event(coll: Any, action: Any) -> dict[str, Any]:
    async with await coll.watch(max_await_time_ms=MAX_AWAIT_MS) as stream:
        await action
        async with asyncio.timeout(EVENT_WAIT_S):
            while True:
                event = await stream.try_next()
                if event is not None:
                    return dict(event)


async def test_upsert_that_inserts_is_an_insert_event(async_db: Any) -> None:
    coll = async_db["c"]
    event = await _one_event(coll, coll.update_one({"_id": 9}, {"$set": {"v": 1}}, upsert=True))
    assert event["operationType"] == "insert"
    assert event["fullDocument"] == {"_id": 9, "v": 1}


async def test_pipeline_update_whose_diff_is_longer_than_the_document_is_a_replace_event(
    async_db: Any,
) -> None:
    """Deleting many long-named fields: the diff outweighs the new document, so the server logs a replace."""
    coll = async_db["c"]
    names = [f"a_rather_long_field_name_number_{index:02d}_to_delete" for index in range(6)]
    await coll.insert_one({"_id": 1, **dict.fromkeys(names, 0)})
    event = await _one_event(coll, coll.update_one({"_id": 1}, [{"$replaceWith": {"_id": "$_id", "k": 1}}]))
    assert event["operationType"] == "replace"
    assert event["fullDocument"] == {"_id": 1, "k": 1}
    assert "updateDescription" not in event


async def test_same_pipeline_unset_on_a_smaller_document_is_a_replace_event(async_db: Any) -> None:
    """With `_id: "two"` the new document is 60 bytes and the diff 55 + 15 bytes of metadata: a replace."""
    coll = async_db["c"]
    await coll.insert_one({"_id": "two", "contactMethods": CONTACT})
    update = [{"$unset": ["contactMethods.email", "contactMethods.phone"]}]
    event = await _one_event(coll, coll.update_one({"_id": "two"}, update))
    assert event["operationType"] == "replace"
    assert event["fullDocument"] == {"_id": "two", "contactMethods": {"mobile": "555-0101"}}
