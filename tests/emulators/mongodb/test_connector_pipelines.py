"""The ready-made pipelines in `pipelines/` evaluated by the emulator inside real change streams.

The connector runs these server-side; the emulator must evaluate their stages and expressions (`$addFields`,
`$match` with `$type`/`$in`, `$concat`, `$toString` of ObjectId and int, three-argument `$ifNull`) as
MongoDB 7.0 does, or the demo and the integration tests would route messages differently than production.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from bson import ObjectId, json_util

from tests.emulators.mongodb.stream_reading import EVENT_WAIT_S, events_until

#: Needs a MongoDB server: the emulator, or MONGODB_TEST_URI.
pytestmark = pytest.mark.integration

PIPELINES_DIR = Path(__file__).resolve().parents[3] / "pipelines"
MAX_AWAIT_MS = 200


def load_pipeline(name: str) -> list[dict[str, Any]]:
    pipeline: list[dict[str, Any]] = json_util.loads((PIPELINES_DIR / name).read_text(encoding="utf-8"))
    return pipeline


async def events_until_marker(stream: Any) -> list[dict[str, Any]]:
    """Collect events until the one for `_id: "marker"` (written last)."""
    return await events_until(stream, lambda e: e.get("documentKey", {}).get("_id") == "marker")


async def test_channel_per_document(async_db: Any) -> None:
    coll = async_db["orders"]
    oid = ObjectId()
    watch = coll.watch(load_pipeline("channel-per-document.json"), max_await_time_ms=MAX_AWAIT_MS)
    async with await watch as stream:
        await coll.insert_one({"_id": oid})
        await coll.insert_one({"_id": 5})
        await coll.update_one({"_id": 5}, {"$set": {"x": 1}})
        await coll.delete_one({"_id": oid})
        await coll.insert_one({"_id": "marker"})
        events = await events_until_marker(stream)
    assert [(e["operationType"], e["_ablyChannel"]) for e in events] == [
        ("insert", f"orders:{oid}"),
        ("insert", "orders:5"),
        ("update", "orders:5"),
        ("delete", f"orders:{oid}"),
        ("insert", "orders:marker"),
    ]


async def test_channel_per_collection_on_a_database_stream(async_db: Any) -> None:
    watch = async_db.watch(load_pipeline("channel-per-collection.json"), max_await_time_ms=MAX_AWAIT_MS)
    async with await watch as stream:
        await async_db["a"].insert_one({"_id": 1})
        await async_db["b"].insert_one({"_id": "marker"})
        events = await events_until_marker(stream)
    assert [e["_ablyChannel"] for e in events] == ["a", "b"]


async def test_channel_from_field_uses_pre_image_and_filters_missing(async_db: Any) -> None:
    await async_db.create_collection("rooms", changeStreamPreAndPostImages={"enabled": True})
    coll = async_db["rooms"]
    await coll.insert_one({"_id": "r1", "channel": "room:1"})
    watch = coll.watch(
        load_pipeline("channel-from-field.json"),
        full_document="whenAvailable",
        full_document_before_change="whenAvailable",
        max_await_time_ms=MAX_AWAIT_MS,
    )
    async with await watch as stream:
        await coll.insert_one({"_id": "no-channel"})  # filtered: _ablyChannel is null
        await coll.update_one({"_id": "r1"}, {"$set": {"n": 1}})
        await coll.delete_one({"_id": "r1"})  # channel only in the pre-image
        await coll.insert_one({"_id": "marker", "channel": "room:m"})
        events = await events_until_marker(stream)
    assert [(e["_ablyMsgName"], e["_ablyChannel"], e["documentKey"]["_id"]) for e in events] == [
        ("update", "room:1", "r1"),
        ("delete", "room:1", "r1"),
        ("insert", "room:m", "marker"),
    ]


async def test_models_sdk_event_uuid_header_fallbacks(async_db: Any) -> None:
    coll = async_db["posts"]
    await coll.insert_one({"_id": 1})
    watch = coll.watch(load_pipeline("models-sdk.json"), max_await_time_ms=MAX_AWAIT_MS)
    async with await watch as stream:
        await coll.update_one({"_id": 1}, {"$set": {"mutationId": "m-update"}})
        await coll.insert_one({"_id": 2, "mutationId": "m-insert"})
        await coll.delete_one({"_id": 2})
        await coll.insert_one({"_id": "marker"})
        events = await events_until_marker(stream)
    headers = [e["_ablyMsgHeaders"]["x-ably-models-event-uuid"] for e in events]
    assert headers[:2] == ["m-update", "m-insert"]
    # No mutationId anywhere (a delete has no fullDocument): the resume token's hex string.
    assert headers[2] == events[2]["_id"]["_data"]
    assert [e["_ablyChannel"] for e in events] == ["posts:1", "posts:2", "posts:2", "posts:marker"]


async def test_exclusion_match_hides_own_collections_but_keeps_database_events(async_db: Any) -> None:
    """The connector's leading `{ns.coll: {$nin: [...]}}` also passes events without `ns.coll`."""
    exclusion = {"$match": {"ns.coll": {"$nin": ["resume_tokens", "dead_letters"]}}}
    async with await async_db.watch([exclusion], max_await_time_ms=MAX_AWAIT_MS) as stream:
        await async_db["resume_tokens"].insert_one({"_id": "hidden"})
        await async_db["orders"].insert_one({"_id": 1})
        await async_db["dead_letters"].insert_one({"_id": "hidden"})
        await async_db.client.drop_database(async_db.name)
        events: list[dict[str, Any]] = []
        async with asyncio.timeout(EVENT_WAIT_S):
            while not events or events[-1]["operationType"] != "invalidate":
                event = await stream.try_next()
                if event is not None:
                    events.append(event)
    assert [(e["operationType"], e.get("ns", {}).get("coll")) for e in events] == [
        ("insert", "orders"),
        ("drop", "orders"),
        ("dropDatabase", None),
        ("invalidate", None),
    ]


async def test_list_collections_reports_image_option_and_views(async_db: Any) -> None:
    """`check` reads these options to warn when pre- and post-images are off."""
    await async_db.create_collection("created_on", changeStreamPreAndPostImages={"enabled": True})
    await async_db.create_collection("modded")
    await async_db.command({"collMod": "modded", "changeStreamPreAndPostImages": {"enabled": True}})
    await async_db.create_collection("plain")
    await async_db.create_collection("view", viewOn="plain", pipeline=[])
    cursor = await async_db.list_collections()
    infos = {info["name"]: info async for info in cursor}
    assert {"created_on", "modded", "plain", "view"} <= set(infos)
    for name in ("created_on", "modded"):
        assert infos[name]["type"] == "collection"
        assert infos[name]["options"]["changeStreamPreAndPostImages"] == {"enabled": True}
    assert "changeStreamPreAndPostImages" not in infos["plain"].get("options", {})
    assert infos["view"]["type"] == "view"
    assert infos["view"]["options"]["viewOn"] == "plain"
