"""The option matrix: full-document modes, every shipped pipeline, every unpublishable kind under each policy,
and history lost under both policies."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from tests.integration.harness import connector, delivered, until, wait_delivered

pytestmark = pytest.mark.integration

PIPELINES = Path(__file__).resolve().parents[2] / "pipelines"
PER_DOCUMENT = (PIPELINES / "channel-per-document.json").read_text()


async def four_operations(db: Any) -> None:
    await db.orders.insert_one({"_id": "a", "v": 1, "channel": "room:1"})
    await db.orders.update_one({"_id": "a"}, {"$set": {"v": 2}})
    await db.orders.replace_one({"_id": "a"}, {"v": 3, "channel": "room:1"})
    await db.orders.delete_one({"_id": "a"})


@pytest.mark.parametrize(
    ("full_document", "before_change"),
    [
        ("off", "off"),
        ("updateLookup", "off"),
        ("whenAvailable", "whenAvailable"),
        ("required", "required"),
        ("updateLookup", "whenAvailable"),
    ],
)
async def test_full_document_options(
    full_document: str, before_change: str, connector_env: dict[str, str], db: Any, ably: Any
) -> None:
    await db.create_collection("orders", changeStreamPreAndPostImages={"enabled": True})
    async with connector(
        connector_env, FULL_DOCUMENT=full_document, FULL_DOCUMENT_BEFORE_CHANGE=before_change
    ):
        await db.orders.insert_one({"_id": "a", "v": 1, "channel": "room:1"})
        await db.orders.update_one({"_id": "a"}, {"$set": {"v": 2}})
        # updateLookup reads the document when the stream reaches the update (MongoDB's semantics): the
        # replace must not land before that, or the update's fullDocument is already v 3 (or null).
        await wait_delivered(ably, 2)
        await db.orders.replace_one({"_id": "a"}, {"v": 3, "channel": "room:1"})
        await db.orders.delete_one({"_id": "a"})
        msgs = await wait_delivered(ably, 4)
    insert, update, replace, delete = (m["event"] for m in msgs)
    assert [e["operationType"] for e in (insert, update, replace, delete)] == [
        "insert",
        "update",
        "replace",
        "delete",
    ]
    assert insert["fullDocument"]["v"] == 1 and replace["fullDocument"]["v"] == 3
    if full_document == "off":
        assert "fullDocument" not in update
    else:
        assert update["fullDocument"]["v"] == 2
    if before_change == "off":
        assert all("fullDocumentBeforeChange" not in e for e in (update, replace, delete))
    else:
        assert update["fullDocumentBeforeChange"]["v"] == 1
        assert replace["fullDocumentBeforeChange"]["v"] == 2
        assert delete["fullDocumentBeforeChange"]["v"] == 3


async def test_pipeline_channel_per_document(connector_env: dict[str, str], db: Any, ably: Any) -> None:
    async with connector(
        connector_env, PIPELINE="", PIPELINE_FILE=str(PIPELINES / "channel-per-document.json")
    ):
        await four_operations(db)
        await db.orders.insert_one({"_id": {"compound": 1}})  # an _id $toString cannot convert
        msgs = await wait_delivered(ably, 4)
        dead = await _wait_one(db.ably_deadletter)
    assert {m["channel"] for m in msgs} == {"orders:a"}
    assert dead["event"]["documentKey"] == {"_id": {"compound": 1}}


async def test_pipeline_channel_from_field(connector_env: dict[str, str], db: Any, ably: Any) -> None:
    await db.create_collection("orders", changeStreamPreAndPostImages={"enabled": True})
    async with connector(
        connector_env,
        PIPELINE="",
        PIPELINE_FILE=str(PIPELINES / "channel-from-field.json"),
        FULL_DOCUMENT="updateLookup",
        FULL_DOCUMENT_BEFORE_CHANGE="whenAvailable",
    ):
        await four_operations(db)
        await db.orders.insert_one({"_id": "no-channel"})  # filtered out, not dead-lettered
        msgs = await wait_delivered(ably, 4)
        await asyncio.sleep(0.3)
    assert [m["channel"] for m in delivered(ably)] == ["room:1"] * 4
    assert [m["name"] for m in msgs] == ["insert", "update", "replace", "delete"]
    assert await db.ably_deadletter.count_documents({}) == 0


async def test_pipeline_channel_per_collection(connector_env: dict[str, str], db: Any, ably: Any) -> None:
    async with connector(
        connector_env,
        MONGODB_COLLECTION="",
        PIPELINE="",
        PIPELINE_FILE=str(PIPELINES / "channel-per-collection.json"),
    ):
        for name in ("users", "orders", "users"):
            await db[name].insert_one({})
        msgs = await wait_delivered(ably, 3)
    assert sorted(m["channel"] for m in msgs) == ["orders", "users", "users"]  # order is per channel only


async def test_pipeline_models_sdk(connector_env: dict[str, str], db: Any, ably: Any) -> None:
    async with connector(connector_env, PIPELINE="", PIPELINE_FILE=str(PIPELINES / "models-sdk.json")):
        await db.orders.insert_one({"_id": "m1", "mutationId": "mut-1"})
        await db.orders.update_one({"_id": "m1"}, {"$set": {"x": 1, "mutationId": "mut-2"}})
        await db.orders.delete_one({"_id": "m1"})
        msgs = await wait_delivered(ably, 3)
    headers = [m["extras"]["headers"]["x-ably-models-event-uuid"] for m in msgs]
    assert headers[:2] == ["mut-1", "mut-2"]
    assert headers[2] == msgs[2]["id"]  # falls back to the resume token
    assert all(m["channel"] == "orders:m1" for m in msgs)


UNPUBLISHABLE = {
    "missing channel": ('[{"$set": {"_ablyChannel": "$fullDocument.nope"}}]', 72004),
    "invalid channel": ('[{"$set": {"_ablyChannel": "[bad"}}]', 72004),
    "bad headers": ('[{"$set": {"_ablyChannel": "c", "_ablyMsgHeaders": {"n": 1}}}]', None),
    "oversize": (
        '[{"$set": {"_ablyChannel": "c", "pad": {"$concat": ["$fullDocument.s", "$fullDocument.s"]}}}]',
        None,
    ),
}


async def _wait_one(collection: Any) -> Any:
    for _ in range(200):
        doc = await collection.find_one({})
        if doc is not None:
            return doc
        await asyncio.sleep(0.05)
    raise AssertionError("nothing dead-lettered")


@pytest.mark.parametrize("kind", list(UNPUBLISHABLE))
@pytest.mark.parametrize("policy", ["deadletter", "skip", "fail"])
async def test_unpublishable_kinds_under_each_policy(
    kind: str, policy: str, connector_env: dict[str, str], db: Any, ably: Any
) -> None:
    pipeline, code = UNPUBLISHABLE[kind]
    async with connector(
        connector_env, PIPELINE=pipeline, ON_UNPUBLISHABLE=policy, MAX_MESSAGE_SIZE="4000"
    ) as running:
        await db.orders.insert_one({"_id": 1, "s": "y" * 3000})
        if policy == "fail":
            assert await asyncio.wait_for(running.task, 20) == 1
        else:
            await until(
                lambda: running.source.unpublishable.deadlettered + running.source.unpublishable.skipped == 1,
                what="the event to be handled",
            )
    assert delivered(ably) == []
    count = await db.ably_deadletter.count_documents({})
    if policy == "deadletter":
        dead = await _wait_one(db.ably_deadletter)
        assert dead["event"]["documentKey"] == {"_id": 1}
        if code is not None:
            assert dead["code"] == code
        assert dead["reason"]
    else:
        assert count == 0


@pytest.fixture
def small_oplog_uri(using_emulator: bool) -> Any:
    if not using_emulator:
        pytest.skip("needs an oplog small enough to overflow in a test (the emulator's --oplog-size)")
    from emulators.mongodb import run_in_thread

    with run_in_thread(host="127.0.0.1", port=0, replset="rs0", oplog_size=50) as server:
        yield server.uri


@pytest.mark.parametrize("policy", ["fail", "restart"])
async def test_history_lost(
    policy: str,
    small_oplog_uri: str,
    connector_env: dict[str, str],
    ably: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    env = {**connector_env, "MONGODB_URI": small_oplog_uri, "ON_HISTORY_LOST": policy}
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(small_oplog_uri)
    db = client[env["MONGODB_DATABASE"]]
    try:
        async with connector(env):
            await db.orders.insert_one({"_id": "first"})
            await wait_delivered(ably, 1)
        # While the connector is down, the oplog rolls over past the stored position.
        for i in range(120):
            await db.orders.insert_one({"_id": f"lost-{i}"})
        with caplog.at_level(logging.ERROR):
            async with connector(env) as running:
                if policy == "fail":
                    assert await asyncio.wait_for(running.task, 20) == 1
                else:
                    await until(lambda: running.term.reader.stats.stream_open, what="the restarted stream")
                    await db.orders.insert_one({"_id": "after"})
                    await until(
                        lambda: any(m["channel"] == "orders:after" for m in delivered(ably)), what="after"
                    )
    finally:
        await client.close()
    lost = [r for r in caplog.records if getattr(r, "code", None) == 72008]
    assert lost, "72008 must be logged"
    text = lost[0].getMessage()
    assert "may be missing" in text and "between" in text  # the time range of the gap
