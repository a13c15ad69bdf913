"""Deployment-wide change streams (`client.watch()`, `$changeStream: {allChangesForCluster: true}` on admin).

What mongod does (src/mongo/db/pipeline/document_source_change_stream.{h,cpp}, change_stream_filter_helpers):
- the stream reads every database but `admin`, `config` and `local` (kRegexAllDBs) and no collection whose
  name starts with `system.` (kRegexAllCollections);
- `ns` is `{db, coll}` for document events and collection DDL, `{db}` alone for dropDatabase, and a rename
  adds `to`; nothing a database or collection does invalidates it;
- opened wrongly it fails in assertIsLegalSpecification: allChangesForCluster elsewhere than
  `{aggregate: 1}` on admin is 72 InvalidOptions naming the namespace; any other stream on admin, config
  or local, or on a `system.` collection, is 73 InvalidNamespace.
Events are collected up to a marker written last, and only this test's databases are asserted on, so the
file also runs against a real deployment (MONGODB_TEST_URI) where other clients write.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from pymongo import AsyncMongoClient
from pymongo.errors import OperationFailure

from tests.emulators.mongodb.stream_reading import events_until

#: Needs a MongoDB server: the emulator, or MONGODB_TEST_URI.
pytestmark = pytest.mark.integration

MAX_AWAIT_MS = 200
INVALID_OPTIONS = 72
INVALID_NAMESPACE = 73
HISTORY_LOST = 286
MARKER = "cluster-stream-marker"


@pytest.fixture
async def dbs(async_client: Any, database_name: str) -> Any:
    """Two fresh database names (dropped afterwards) for the test's writes."""
    names = (database_name, f"{database_name}_b")
    yield names
    for name in names:
        await async_client.drop_database(name)


async def until_marker(stream: Any, marker_db: str) -> list[dict[str, Any]]:
    """Events up to and including the insert of `_id: MARKER` into `marker_db`."""
    return await events_until(
        stream, lambda e: e.get("documentKey", {}).get("_id") == MARKER and e["ns"]["db"] == marker_db
    )


def mine(events: list[dict[str, Any]], names: tuple[str, ...]) -> list[tuple[str, dict[str, Any]]]:
    """(operationType, ns) of the events in this test's databases (invalidates have no ns)."""
    return [(e["operationType"], e.get("ns", {})) for e in events if e.get("ns", {}).get("db") in names]


async def test_internal_databases_and_system_collections_are_left_out(async_client: Any, dbs: Any) -> None:
    first, _ = dbs
    async with await async_client.watch(max_await_time_ms=MAX_AWAIT_MS) as stream:
        await async_client[first]["orders"].insert_one({"_id": 1})
        await async_client["admin"]["emulator_cluster_test"].insert_one({"_id": 1})
        await async_client["config"]["emulator_cluster_test"].insert_one({"_id": 1})
        await async_client["local"]["emulator_cluster_test"].insert_one({"_id": 1})
        await async_client[first]["system.js"].insert_one({"_id": "f", "value": 1})
        await async_client[first]["orders"].insert_one({"_id": MARKER})
        events = await until_marker(stream, first)
    for name in ("admin", "config", "local"):
        await async_client[name].drop_collection("emulator_cluster_test")
    assert all(e["ns"]["db"] not in ("admin", "config", "local") for e in events if "ns" in e)
    assert all(not e["ns"].get("coll", "").startswith("system.") for e in events if "ns" in e)
    assert [ns for _, ns in mine(events, dbs)] == [
        {"db": first, "coll": "orders"},
        {"db": first, "coll": "orders"},
    ]


async def test_ns_of_each_event_kind_and_nothing_invalidates(async_client: Any, dbs: Any) -> None:
    first, second = dbs
    async with await async_client.watch(max_await_time_ms=MAX_AWAIT_MS, show_expanded_events=True) as stream:
        await async_client[first].create_collection("a")
        coll = async_client[first]["a"]
        await coll.create_index("k")
        await coll.insert_one({"_id": 1, "k": 1})
        await coll.update_one({"_id": 1}, {"$set": {"k": 2}})
        await coll.replace_one({"_id": 1}, {"k": 3})
        await coll.delete_one({"_id": 1})
        await coll.rename("b")
        await async_client[first].drop_collection("b")
        await async_client[second]["c"].insert_one({"_id": 2})
        await async_client.drop_database(second)
        await async_client[first]["after"].insert_one({"_id": MARKER})
        events = await until_marker(stream, first)
    assert "invalidate" not in [e["operationType"] for e in events]
    a, b, c = ({"db": first, "coll": "a"}, {"db": first, "coll": "b"}, {"db": second, "coll": "c"})
    assert mine(events, dbs) == [
        ("create", a),
        ("createIndexes", a),
        ("insert", a),
        ("update", a),
        ("replace", a),
        ("delete", a),
        ("rename", a),
        ("drop", b),
        ("create", c),
        ("insert", c),
        ("drop", c),
        ("dropDatabase", {"db": second}),
        ("create", {"db": first, "coll": "after"}),
        ("insert", {"db": first, "coll": "after"}),
    ]
    (rename,) = [e for e in events if e["operationType"] == "rename"]
    assert rename["to"] == b


async def test_without_expanded_events_ddl_shows_only_classic_kinds(async_client: Any, dbs: Any) -> None:
    first, second = dbs
    async with await async_client.watch(max_await_time_ms=MAX_AWAIT_MS) as stream:
        await async_client[first]["a"].insert_one({"_id": 1})
        await async_client[first]["a"].rename("b")
        await async_client[second]["c"].insert_one({"_id": 1})
        await async_client.drop_database(second)
        await async_client[first]["b"].insert_one({"_id": MARKER})
        events = await until_marker(stream, first)
    assert [op for op, _ in mine(events, dbs)] == [
        "insert",
        "rename",
        "insert",
        "drop",
        "dropDatabase",
        "insert",
    ]


async def test_namespace_filter_with_regex_exists_and_nor(async_client: Any, dbs: Any) -> None:
    """A leading `$match` on `ns` as a deployment watch builds it: anchored `$regex` globs, a missing
    `ns.coll` (dropDatabase) passing on its database alone, `$nor` for exclusions."""
    first, second = dbs
    prefix = re.escape(first)
    stage = {
        "$match": {
            "$or": [
                {
                    "ns.db": {"$regex": f"^{prefix}.*$"},
                    "$or": [{"ns.coll": {"$regex": "^ord.*$"}}, {"ns.coll": {"$exists": False}}],
                }
            ],
            "$nor": [{"ns.db": second, "ns.coll": "orders_audit"}],
        }
    }
    async with await async_client.watch([stage], max_await_time_ms=MAX_AWAIT_MS) as stream:
        for name in (first, second):
            for coll in ("orders", "orders_audit", "users"):
                await async_client[name][coll].insert_one({"_id": coll})
        await async_client.drop_database(second)
        await async_client[first]["orders"].insert_one({"_id": MARKER})
        events = await until_marker(stream, first)
    assert mine(events, dbs) == [
        ("insert", {"db": first, "coll": "orders"}),
        ("insert", {"db": first, "coll": "orders_audit"}),
        ("insert", {"db": second, "coll": "orders"}),
        ("drop", {"db": second, "coll": "orders"}),
        ("dropDatabase", {"db": second}),
        ("insert", {"db": first, "coll": "orders"}),
    ]


async def test_a_transaction_across_databases_and_update_lookup(async_client: Any, dbs: Any) -> None:
    """Each statement of a transaction over two databases is its own event (one txnNumber and lsid), and
    `updateLookup` reads the document from the event's own database."""
    first, second = dbs
    await async_client[first]["a"].insert_one({"_id": 1, "v": 0})
    await async_client[second]["b"].insert_one({"_id": 2, "v": 0})
    async with await async_client.watch(
        max_await_time_ms=MAX_AWAIT_MS, full_document="updateLookup"
    ) as stream:
        async with async_client.start_session() as session, await session.start_transaction():
            await async_client[first]["a"].update_one({"_id": 1}, {"$set": {"v": 1}}, session=session)
            await async_client[second]["b"].update_one({"_id": 2}, {"$set": {"v": 2}}, session=session)
        await async_client[first]["a"].insert_one({"_id": MARKER})
        events = [e for e in await until_marker(stream, first) if e["operationType"] == "update"]
    assert [(e["ns"]["db"], e["fullDocument"]) for e in events] == [
        (first, {"_id": 1, "v": 1}),
        (second, {"_id": 2, "v": 2}),
    ]
    assert events[0]["txnNumber"] == events[1]["txnNumber"]
    assert events[0]["lsid"] == events[1]["lsid"]


STAGING = re.compile(r"^tmp[a-zA-Z0-9]{5}\.renameCollection$")


async def test_rename_across_databases_goes_through_a_staging_collection(async_client: Any, dbs: Any) -> None:
    """mongod 7.0 copies into `dst.tmpXXXXX.renameCollection` (create, one createIndexes per index, the
    inserts), renames that over the target and drops the source (jstests ddl_rename_cross_db.js)."""
    first, second = dbs
    await async_client[first]["source"].insert_many([{"_id": 1}, {"_id": 2}])
    await async_client[first]["source"].create_index("k")
    async with await async_client.watch(max_await_time_ms=MAX_AWAIT_MS, show_expanded_events=True) as stream:
        await async_client.admin.command({"renameCollection": f"{first}.source", "to": f"{second}.target"})
        await async_client[first]["z"].insert_one({"_id": MARKER})
        events = await until_marker(stream, first)
    staged = [e for e in events if e["ns"]["db"] == second and STAGING.match(e["ns"].get("coll", ""))]
    kinds = [(e["operationType"], e.get("documentKey")) for e in staged]
    staging_ns = staged[0]["ns"]
    assert kinds == [
        ("create", None),
        ("createIndexes", None),
        ("insert", {"_id": 1}),
        ("insert", {"_id": 2}),
        ("rename", None),
    ]
    assert staged[-1]["to"] == {"db": second, "coll": "target"}
    assert mine([e for e in events if e not in staged], dbs) == [
        ("drop", {"db": first, "coll": "source"}),
        ("create", {"db": first, "coll": "z"}),
        ("insert", {"db": first, "coll": "z"}),
    ]
    assert all(e["ns"] == staging_ns for e in staged)
    assert [doc["_id"] async for doc in async_client[second]["target"].find()] == [1, 2]


async def test_resume_after_start_after_and_start_at_operation_time(async_client: Any, dbs: Any) -> None:
    first, second = dbs
    async with await async_client.watch(max_await_time_ms=MAX_AWAIT_MS) as stream:
        await async_client[first]["a"].insert_one({"_id": 1})
        await async_client[second]["b"].insert_one({"_id": 2})
        await async_client[first]["a"].insert_one({"_id": 3})
        await async_client[second]["b"].insert_one({"_id": MARKER})
        events = [e for e in await until_marker(stream, second) if e["ns"]["db"] in dbs]
    first_event = events[0]
    expected_after_first = [(e["ns"]["db"], e["documentKey"]["_id"]) for e in events[1:]]
    for option in ({"resume_after": first_event["_id"]}, {"start_after": first_event["_id"]}):
        async with await async_client.watch(max_await_time_ms=MAX_AWAIT_MS, **option) as resumed:
            got = [e for e in await until_marker(resumed, second) if e["ns"]["db"] in dbs]
        assert [(e["ns"]["db"], e["documentKey"]["_id"]) for e in got] == expected_after_first
    at = first_event["clusterTime"]
    async with await async_client.watch(
        max_await_time_ms=MAX_AWAIT_MS, start_at_operation_time=at
    ) as resumed:
        got = [e for e in await until_marker(resumed, second) if e["ns"]["db"] in dbs]
    assert [e["_id"] for e in got] == [e["_id"] for e in events]


async def test_database_stream_is_not_invalidated_by_collection_drop(async_client: Any, dbs: Any) -> None:
    first, _ = dbs
    db = async_client[first]
    async with await db.watch(max_await_time_ms=MAX_AWAIT_MS) as stream:
        await db["a"].insert_one({"_id": 1})
        await db.drop_collection("a")
        await db["z"].insert_one({"_id": MARKER})
        events = await until_marker(stream, first)
    assert [e["operationType"] for e in events] == ["insert", "drop", "insert"]


def aggregate_command(coll: Any, spec: dict[str, Any]) -> dict[str, Any]:
    return {"aggregate": coll, "pipeline": [{"$changeStream": spec}], "cursor": {}}


@pytest.mark.parametrize(
    ("database", "target", "spec", "code", "message"),
    [
        (
            "emulator_cluster_db",
            1,
            {"allChangesForCluster": True},
            INVALID_OPTIONS,
            "A $changeStream with 'allChangesForCluster:true' may only be opened on the 'admin' database, "
            "and with no collection name; found emulator_cluster_db.$cmd.aggregate",
        ),
        (
            "admin",
            "c",
            {"allChangesForCluster": True},
            INVALID_OPTIONS,
            "A $changeStream with 'allChangesForCluster:true' may only be opened on the 'admin' database, "
            "and with no collection name; found admin.c",
        ),
        ("admin", 1, {}, INVALID_NAMESPACE, "$changeStream may not be opened on the internal admin database"),
        (
            "admin",
            1,
            {"allChangesForCluster": False},
            INVALID_NAMESPACE,
            "$changeStream may not be opened on the internal admin database",
        ),
        (
            "admin",
            "c",
            {},
            INVALID_NAMESPACE,
            "$changeStream may not be opened on the internal admin database",
        ),
        (
            "config",
            1,
            {},
            INVALID_NAMESPACE,
            "$changeStream may not be opened on the internal config database",
        ),
        (
            "local",
            "c",
            {},
            INVALID_NAMESPACE,
            "$changeStream may not be opened on the internal local database",
        ),
        (
            "emulator_cluster_db",
            "system.js",
            {},
            INVALID_NAMESPACE,
            "$changeStream may not be opened on the internal emulator_cluster_db.system.js collection",
        ),
    ],
)
async def test_opened_on_the_wrong_namespace_is_refused(
    async_client: Any, database: str, target: Any, spec: dict[str, Any], code: int, message: str
) -> None:
    with pytest.raises(OperationFailure) as info:
        await async_client[database].command(aggregate_command(target, spec))
    assert info.value.code == code
    assert info.value.details is not None
    assert info.value.details["errmsg"] == message


async def test_resume_and_start_after_together_are_refused(async_client: Any, dbs: Any) -> None:
    first, _ = dbs
    async with await async_client.watch(max_await_time_ms=MAX_AWAIT_MS) as stream:
        await async_client[first]["a"].insert_one({"_id": MARKER})
        (token,) = [e["_id"] for e in await until_marker(stream, first)][-1:]
    with pytest.raises(OperationFailure) as info:
        await async_client.admin.command(
            aggregate_command(1, {"allChangesForCluster": True, "resumeAfter": token, "startAfter": token})
        )
    assert info.value.code == 50865


async def test_history_lost_on_a_cluster_stream(private_emulator: Any) -> None:
    """A position that fell off the bounded oplog fails the same way as on a database stream (286)."""
    with private_emulator(oplog_size=20) as uri:
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri, serverSelectionTimeoutMS=10_000)
        try:
            async with await client.watch(max_await_time_ms=MAX_AWAIT_MS) as stream:
                await client["one"]["c"].insert_one({"_id": MARKER})
                (first,) = await until_marker(stream, "one")
            await client["two"]["c"].insert_many([{"_id": i} for i in range(100)])
            for option in ({"resume_after": first["_id"]}, {"start_at_operation_time": first["clusterTime"]}):
                with pytest.raises(OperationFailure) as info:
                    async with await client.watch(**option) as resumed:
                        await resumed.try_next()
                assert info.value.code == HISTORY_LOST
        finally:
            await client.close()
