"""Smoke tests of the MongoDB emulator with the three drivers the project uses."""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from typing import Any

import bson
import pytest
from bson import Binary, Decimal128, Int64, Timestamp
from motor.motor_asyncio import AsyncIOMotorClient
from pymongo import AsyncMongoClient, MongoClient
from pymongo.errors import NotPrimaryError, OperationFailure, WriteError

from emulators.mongodb import MongoEmulator, run_in_thread

# Short waits keep idle getMores quick; the emulator honours maxTimeMS exactly like the server.
AWAIT_MS = 100


@pytest.fixture
async def server() -> AsyncIterator[MongoEmulator]:
    async with MongoEmulator(port=0, oplog_size=50) as srv:
        yield srv


@pytest.fixture
async def client(server: MongoEmulator) -> AsyncIterator[AsyncMongoClient]:
    c: AsyncMongoClient = AsyncMongoClient(server.uri, serverSelectionTimeoutMS=5000)
    yield c
    await c.close()


async def test_crud_round_trip(client: AsyncMongoClient) -> None:
    coll = client.db.items
    await coll.insert_many([{"_id": i, "v": i % 3} for i in range(10)])
    await coll.update_many({"v": 0}, {"$inc": {"v": 10}})
    await coll.delete_one({"_id": 1})
    docs = await coll.find({"v": {"$gte": 2}}, {"_id": 1}).sort("_id", -1).to_list()
    assert [d["_id"] for d in docs] == [9, 8, 6, 5, 3, 2, 0]
    assert await coll.count_documents({}) == 9
    found = await coll.find_one_and_update({"_id": 2}, {"$set": {"x": 1}}, return_document=True)
    assert found == {"_id": 2, "v": 2, "x": 1}


async def test_find_batches_through_get_more(client: AsyncMongoClient) -> None:
    await client.db.many.insert_many([{"_id": i} for i in range(250)])
    ids = [d["_id"] async for d in client.db.many.find(batch_size=40)]
    assert ids == list(range(250))


async def test_watch_reports_crud_events_in_order(client: AsyncMongoClient) -> None:
    coll = client.db.watched
    await coll.insert_one({"_id": 1, "a": 1})
    async with await coll.watch(max_await_time_ms=AWAIT_MS) as stream:
        await coll.insert_one({"_id": 2})
        await coll.update_one({"_id": 1}, {"$set": {"b": 2}, "$unset": {"a": ""}})
        await coll.replace_one({"_id": 2}, {"x": 1})
        await coll.delete_one({"_id": 2})
        events = [await stream.next() for _ in range(4)]
    assert [e["operationType"] for e in events] == ["insert", "update", "replace", "delete"]
    assert events[1]["updateDescription"] == {
        "updatedFields": {"b": 2},
        "removedFields": ["a"],
        "truncatedArrays": [],
    }
    assert events[2]["fullDocument"] == {"_id": 2, "x": 1}
    tokens = [e["_id"]["_data"] for e in events]
    assert tokens == sorted(tokens)
    assert all(isinstance(e["clusterTime"], Timestamp) for e in events)


async def test_resume_after_and_start_at_operation_time(client: AsyncMongoClient) -> None:
    coll = client.db.resumed
    async with await coll.watch(max_await_time_ms=AWAIT_MS) as stream:
        await coll.insert_many([{"_id": i} for i in range(3)])
        first = await stream.next()
    async with await coll.watch(resume_after=first["_id"], max_await_time_ms=AWAIT_MS) as stream:
        rest = [(await stream.next())["documentKey"]["_id"] for _ in range(2)]
    assert rest == [1, 2]
    async with await coll.watch(
        start_at_operation_time=first["clusterTime"], max_await_time_ms=AWAIT_MS
    ) as s:
        assert (await s.next())["documentKey"]["_id"] == 0


async def test_idle_stream_resume_token_advances(client: AsyncMongoClient) -> None:
    coll = client.db.idle
    await coll.insert_one({"_id": 0})
    async with await coll.watch(max_await_time_ms=AWAIT_MS) as stream:
        await stream.try_next()
        before = stream.resume_token
        await client.db.other.insert_one({"_id": 1})  # moves the cluster time
        assert await stream.try_next() is None
        after = stream.resume_token
    assert before is not None and after is not None
    assert after["_data"] > before["_data"]


async def test_history_lost_when_token_falls_off_the_oplog(client: AsyncMongoClient) -> None:
    coll = client.db.bounded
    async with await coll.watch(max_await_time_ms=AWAIT_MS) as stream:
        await coll.insert_one({"_id": "first"})
        token = (await stream.next())["_id"]
    await coll.insert_many([{"_id": i} for i in range(60)])  # oplog holds 50 events
    with pytest.raises(OperationFailure) as info:
        async with await coll.watch(resume_after=token) as stream:
            await stream.try_next()
    assert info.value.code == 286


async def test_invalid_stage_and_id_projection_errors(client: AsyncMongoClient) -> None:
    coll = client.db.errs
    with pytest.raises(OperationFailure) as info:
        await coll.watch([{"$group": {"_id": None}}])
    assert info.value.code == 40324
    async with await coll.watch([{"$project": {"_id": 0}}], max_await_time_ms=AWAIT_MS) as stream:
        await coll.insert_one({"x": 1})
        with pytest.raises(OperationFailure) as info:
            await stream.next()
    assert info.value.code == 280
    assert info.value.has_error_label("NonResumableChangeStreamError")


async def test_step_down_refuses_writes_with_topology_version(
    server: MongoEmulator, client: AsyncMongoClient
) -> None:
    await client.db.sd.insert_one({"_id": 0})
    server.step_down(30)
    with pytest.raises(NotPrimaryError):
        await client.db.sd.insert_one({"_id": 1})
    server.step_down(0)
    await client.db.sd.insert_one({"_id": 2})


async def test_motor_watch() -> None:
    # Motor's close() is synchronous (it sends endSessions and waits), so the emulator must not share
    # the test's event loop with it: run it in its own thread.
    with run_in_thread(port=0) as server:
        motor: AsyncIOMotorClient = AsyncIOMotorClient(server.uri, serverSelectionTimeoutMS=5000)
        try:
            coll = motor.db.motor
            async with coll.watch(max_await_time_ms=AWAIT_MS) as stream:
                await coll.insert_one({"_id": "m"})
                event = await stream.next()
            assert event["documentKey"] == {"_id": "m"}
        finally:
            motor.close()


def test_sync_client_against_threaded_emulator() -> None:
    with run_in_thread(port=0) as server:
        client: MongoClient = MongoClient(server.uri, serverSelectionTimeoutMS=5000)
        try:
            coll = client.db.sync
            with coll.watch(max_await_time_ms=AWAIT_MS) as stream:
                coll.insert_one({"_id": 1})
                assert stream.next()["fullDocument"] == {"_id": 1}
            assert client.admin.command({"emulatorReset": 1})["ok"] == 1.0
            assert client.db.sync.count_documents({}) == 0
            assert server.call(lambda: 6 * 7) == 42
        finally:
            client.close()


def test_cli_prints_uri_and_stops_on_sigterm() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "emulators.mongodb", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("mongodb://127.0.0.1:") and line.endswith("/?replicaSet=rs0")
        with MongoClient(line, serverSelectionTimeoutMS=5000) as client:
            assert client.admin.command("ping")["ok"] == 1.0
    finally:
        proc.terminate()
        code = proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()
    assert code == 0


# Pipeline features mongomock lacks or gets wrong, fixed inside the emulator (EMULATOR-NOTES).
PIPELINE_CASES: list[tuple[str, list[dict[str, Any]], dict[str, Any]]] = [
    ("$$REMOVE", [{"$addFields": {"fullDocument": "$$REMOVE", "x": 1}}], {"x": 1}),
    ("timestamp $gt", [{"$match": {"clusterTime": {"$gt": Timestamp(1, 0)}}}], {"operationType": "insert"}),
    ("$not array", [{"$match": {"$expr": {"$not": [{"$eq": ["$operationType", "delete"]}]}}}], {}),
    ("$getField", [{"$set": {"g": {"$getField": {"field": "a.b", "input": "$fullDocument"}}}}], {"g": 7}),
    ("$mergeObjects", [{"$replaceWith": {"$mergeObjects": ["$$ROOT", {"m": 1}]}}], {"m": 1}),
    ("$type", [{"$set": {"t": {"$type": "$fullDocument.n"}}}], {"t": "int"}),
    (
        "$project dotted",
        [{"$project": {"operationType": 1, "ns.viewOn": "db.coll"}}],
        {"ns": {"viewOn": "db.coll"}},
    ),
    ("$redact", [{"$redact": {"$cond": [{"$eq": ["$operationType", "insert"]}, "$$KEEP", "$$PRUNE"]}}], {}),
]


@pytest.mark.parametrize(
    ("label", "pipeline", "expected"), PIPELINE_CASES, ids=[c[0] for c in PIPELINE_CASES]
)
async def test_change_stream_pipeline_features(
    client: AsyncMongoClient, label: str, pipeline: list[dict[str, Any]], expected: dict[str, Any]
) -> None:
    coll = client.db.pipelines
    async with await coll.watch(pipeline, max_await_time_ms=AWAIT_MS) as stream:
        await coll.insert_one({"a.b": 7, "n": 3})
        event = await stream.next()
    assert event.items() >= expected.items()
    if label == "$$REMOVE":
        assert "fullDocument" not in event


async def test_unset_stage_and_timestamp_filter_excludes(client: AsyncMongoClient) -> None:
    coll = client.db.unset
    pipeline = [{"$match": {"clusterTime": {"$gte": Timestamp(1, 0)}}}, {"$unset": ["ns", "wallTime"]}]
    async with await coll.watch(pipeline, max_await_time_ms=AWAIT_MS) as stream:
        await coll.insert_one({"_id": 1})
        event = await stream.next()
    assert "ns" not in event and "wallTime" not in event
    async with await coll.watch(
        [{"$match": {"clusterTime": {"$lt": Timestamp(1, 0)}}}], max_await_time_ms=AWAIT_MS
    ) as s:
        await coll.insert_one({"_id": 2})
        assert await s.try_next() is None


async def test_large_event_is_split_or_refused(client: AsyncMongoClient) -> None:
    db = client.db
    await db.create_collection("big", changeStreamPreAndPostImages={"enabled": True})
    coll = db.big
    await coll.insert_one({"_id": 1, "blob": "a" * (9 * 1024 * 1024)})
    options: dict[str, Any] = {"full_document_before_change": "required", "max_await_time_ms": AWAIT_MS}
    split = [{"$changeStreamSplitLargeEvent": {}}]
    async with await coll.watch(split, **options) as stream, await coll.watch(**options) as whole:
        await coll.replace_one({"_id": 1}, {"blob": "b" * (9 * 1024 * 1024)})
        first, second = await stream.next(), await stream.next()
        with pytest.raises(OperationFailure) as info:
            await whole.next()
    assert info.value.code == 10334
    assert [first["splitEvent"], second["splitEvent"]] == [{"fragment": 1, "of": 2}, {"fragment": 2, "of": 2}]
    assert first["_id"]["_data"] < second["_id"]["_data"]
    merged = {**first, **second}
    assert merged["fullDocument"]["blob"][0] == "b" and merged["fullDocumentBeforeChange"]["blob"][0] == "a"
    async with await coll.watch(split, resume_after=first["_id"], **options) as resumed:
        again = await resumed.next()
    assert again["_id"] == second["_id"]


async def test_resume_after_drop_invalidates_and_start_after_continues(client: AsyncMongoClient) -> None:
    coll = client.db.dropped
    await coll.insert_one({"_id": 0})
    async with await coll.watch(max_await_time_ms=AWAIT_MS) as stream:
        await coll.drop()
        drop = await stream.next()
        invalidate = await stream.next()
    assert (drop["operationType"], invalidate["operationType"]) == ("drop", "invalidate")
    async with await coll.watch(resume_after=drop["_id"], max_await_time_ms=AWAIT_MS) as resumed:
        assert (await resumed.next())["operationType"] == "invalidate"
    with pytest.raises(OperationFailure):
        await coll.watch(resume_after=invalidate["_id"])
    async with await coll.watch(start_after=invalidate["_id"], max_await_time_ms=AWAIT_MS) as fresh:
        await coll.insert_one({"_id": 1})
        assert (await fresh.next())["documentKey"] == {"_id": 1}


def _legacy_is_master(port: int) -> dict[str, Any]:
    """Send OP_QUERY {isMaster: 1} to admin.$cmd like pre-OP_MSG drivers, read the OP_REPLY."""
    query = bson.encode({"isMaster": 1})
    body = struct.pack("<i", 0) + b"admin.$cmd\x00" + struct.pack("<ii", 0, -1) + query
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(struct.pack("<iiii", 16 + len(body), 7, 0, 2004) + body)
        header = sock.recv(16, socket.MSG_WAITALL)
        length, _, response_to, op_code = struct.unpack("<iiii", header)
        payload = sock.recv(length - 16, socket.MSG_WAITALL)
    assert (response_to, op_code) == (7, 1)
    return bson.decode(payload[20:])


def test_legacy_op_query_handshake_gets_op_reply() -> None:
    with run_in_thread(port=0) as server:
        reply = _legacy_is_master(server.port)
    assert reply["ismaster"] is True and reply["setName"] == "rs0" and reply["ok"] == 1.0


async def test_retried_write_with_same_txn_number_is_applied_once(client: AsyncMongoClient) -> None:
    lsid = {"id": Binary(uuid.uuid4().bytes, 4)}
    command = {"insert": "retried", "documents": [{"k": 1}], "lsid": lsid, "txnNumber": Int64(1)}
    first = await client.db.command(dict(command))
    second = await client.db.command(dict(command))
    assert first["n"] == second["n"] == 1
    assert await client.db.retried.count_documents({}) == 1


async def test_fail_command_honours_app_name_and_times(server: MongoEmulator) -> None:
    failing: AsyncMongoClient = AsyncMongoClient(server.uri, appname="victim", retryWrites=False)
    bystander: AsyncMongoClient = AsyncMongoClient(server.uri, appname="bystander", retryWrites=False)
    try:
        await failing.admin.command(
            {
                "configureFailPoint": "failCommand",
                "mode": {"times": 1},
                "data": {"failCommands": ["insert"], "errorCode": 91, "appName": "victim"},
            }
        )
        await bystander.db.fp.insert_one({"_id": "ok"})
        with pytest.raises(NotPrimaryError) as info:
            await failing.db.fp.insert_one({"_id": "fails"})
        assert info.value.details is not None and "topologyVersion" in info.value.details
        await failing.db.fp.insert_one({"_id": "fine-after"})
        assert sorted(await bystander.db.fp.distinct("_id")) == ["fine-after", "ok"]
    finally:
        await failing.close()
        await bystander.close()


async def test_drop_connections_command_closes_sockets(client: AsyncMongoClient) -> None:
    await client.db.drop_me.insert_one({"_id": 1})
    # The caller's own connection is closed right after this reply, so the reply still arrives.
    reply = await client.admin.command({"emulatorDropConnections": 1})
    assert reply["dropped"] >= 2  # the monitor's and this pooled connection at least
    assert await client.db.drop_me.count_documents({}) == 1  # retryable read over a new connection


UPDATE_DESCRIPTIONS: list[tuple[str, Any, dict[str, Any]]] = [
    (
        "$push appends by index",
        {"$push": {"arr": {"$each": [4, 5]}}},
        {"updatedFields": {"arr.3": 4, "arr.4": 5}},
    ),
    ("$pull sets the array", {"$pull": {"arr": 2}}, {"updatedFields": {"arr": [1, 3]}}),
    ("$set creates parents", {"$set": {"new.deep": 1}}, {"updatedFields": {"new": {"deep": 1}}}),
    ("$rename", {"$rename": {"s": "t"}}, {"updatedFields": {"t": "x"}, "removedFields": ["s"]}),
    ("positional", {"$set": {"objs.$[].v": 0}}, {"updatedFields": {"objs.0.v": 0, "objs.1.v": 0}}),
    ("no-op $set is omitted", {"$set": {"s": "x", "n": 2}}, {"updatedFields": {"n": 2}}),
]


@pytest.mark.parametrize(
    ("label", "update", "expected"), UPDATE_DESCRIPTIONS, ids=[c[0] for c in UPDATE_DESCRIPTIONS]
)
async def test_update_description_follows_the_update(
    client: AsyncMongoClient, label: str, update: Any, expected: dict[str, Any]
) -> None:
    coll = client.db.described
    await coll.insert_one({"_id": 1, "arr": [1, 2, 3], "s": "x", "n": 1, "objs": [{"v": 1}, {"v": 2}]})
    async with await coll.watch(max_await_time_ms=AWAIT_MS) as stream:
        await coll.update_one({"_id": 1}, update)
        event = await stream.next()
    assert event["updateDescription"] == {
        "updatedFields": {},
        "removedFields": [],
        "truncatedArrays": [],
        **expected,
    }


async def test_pipeline_update_is_described_by_the_servers_delta_rules(client: AsyncMongoClient) -> None:
    coll = client.db.delta
    letters = ["a" * 10, "b" * 10, "c" * 10]
    doc = {"_id": 1, "arr": letters, "s": "x", "objs": [{"v": 1}, {"v": 2}], "pad": "p" * 200}
    await coll.insert_one(doc)
    await coll.insert_one({"_id": 2, "a": 1, "b": 2})
    async with await coll.watch(max_await_time_ms=AWAIT_MS) as stream:
        await coll.update_one(
            {"_id": 1}, [{"$set": {"arr": letters[:1], "objs": [{"v": 1}, {"v": 9}]}}, {"$unset": "s"}]
        )
        # Most of a small document changes: the delta would outweigh it, so the server logs a replace.
        await coll.update_one({"_id": 2}, [{"$replaceWith": {"_id": "$_id", "c": 3}}])
        update, replace = await stream.next(), await stream.next()
    assert update["updateDescription"] == {
        "updatedFields": {"objs.1": {"v": 9}},  # the element, not {v: 9}'s own delta (no smaller)
        "removedFields": ["s"],
        "truncatedArrays": [{"field": "arr", "newSize": 1}],
    }
    assert replace["operationType"] == "replace" and replace["fullDocument"] == {"_id": 2, "c": 3}


async def test_update_that_changes_nothing_writes_no_event(client: AsyncMongoClient) -> None:
    coll = client.db.noop
    await coll.insert_one({"_id": 1, "a": 1})
    async with await coll.watch(max_await_time_ms=AWAIT_MS) as stream:
        result = await coll.update_one({"_id": 1}, {"$set": {"a": 1}})
        await coll.insert_one({"_id": 2})
        event = await stream.next()
    assert result.modified_count == 0
    assert event["operationType"] == "insert"


@pytest.mark.parametrize(
    "key", [Decimal128("2.5"), {"tenant": 1, "n": 2}, "text", Int64(7), 1.5], ids=lambda k: type(k).__name__
)
async def test_any_bson_id_round_trips_through_writes(client: AsyncMongoClient, key: Any) -> None:
    coll = client.db.ids
    async with await coll.watch(max_await_time_ms=AWAIT_MS) as stream:
        await coll.insert_one({"_id": key, "n": 0})
        await coll.update_one({"_id": key}, {"$inc": {"n": 1}})
        assert await coll.find_one({"_id": key}) == {"_id": key, "n": 1}
        await coll.delete_one({"_id": key})
        events = [await stream.next() for _ in range(3)]
    assert [e["documentKey"] for e in events] == [{"_id": key}] * 3
    assert await coll.count_documents({}) == 0


async def test_array_id_is_refused(client: AsyncMongoClient) -> None:
    with pytest.raises(WriteError):
        await client.db.ids.insert_one({"_id": [1, 2]})
