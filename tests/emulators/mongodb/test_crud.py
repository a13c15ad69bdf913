"""CRUD and DDL commands the emulator must answer like a MongoDB 7.0 primary (issue 3's command list)."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from bson import Int64
from pymongo import ASCENDING, ReturnDocument, WriteConcern
from pymongo.errors import BulkWriteError, DocumentTooLarge, DuplicateKeyError, OperationFailure, WriteError
from pymongo.read_concern import ReadConcern

#: Needs a MongoDB server: the emulator, or MONGODB_TEST_URI.
pytestmark = pytest.mark.integration

#: MongoDB's BSON document limit; hello must report it and the server must enforce it.
MAX_BSON_SIZE = 16 * 1024 * 1024

#: Server error codes asserted below (src/mongo/base/error_codes.yml).
DUPLICATE_KEY = 11000
COMMAND_NOT_FOUND = 59
NAMESPACE_EXISTS = 48
BAD_VALUE = 2


def test_update_operators(sync_db: Any) -> None:
    coll = sync_db["c"]
    coll.insert_one(
        {"_id": 1, "a": 1, "b": 5, "gone": True, "old": "x", "tags": ["a", "b", "c"], "n": [1, 2]}
    )
    coll.update_one(
        {"_id": 1},
        {
            "$set": {"s.t": 1},
            "$unset": {"gone": ""},
            "$inc": {"a": 2},
            "$mul": {"b": 3},
            "$rename": {"old": "new"},
            "$push": {"n": {"$each": [3, 4], "$slice": -3}},
            "$pull": {"tags": "b"},
            "$currentDate": {"touched": True},
        },
    )
    coll.update_one({"_id": 1}, {"$min": {"a": 0}, "$max": {"b": 100}, "$addToSet": {"tags": "a"}})
    coll.update_one({"_id": 1}, {"$pop": {"n": 1}})
    doc = coll.find_one({"_id": 1})
    assert doc is not None
    touched = doc.pop("touched")
    assert isinstance(touched, datetime.datetime)
    assert doc == {"_id": 1, "a": 0, "b": 100, "tags": ["a", "c"], "n": [2, 3], "s": {"t": 1}, "new": "x"}


def test_upsert_with_set_on_insert(sync_db: Any) -> None:
    coll = sync_db["c"]
    result = coll.update_one(
        {"sku": "x"}, {"$set": {"qty": 1}, "$setOnInsert": {"created": True}}, upsert=True
    )
    assert result.upserted_id is not None
    assert result.matched_count == 0
    again = coll.update_one(
        {"sku": "x"}, {"$set": {"qty": 2}, "$setOnInsert": {"created": False}}, upsert=True
    )
    assert (again.matched_count, again.modified_count, again.upserted_id) == (1, 1, None)
    assert coll.find_one({"sku": "x"}, {"_id": 0}) == {"sku": "x", "qty": 2, "created": True}


def test_update_many_and_update_one_touch_the_right_count(sync_db: Any) -> None:
    coll = sync_db["c"]
    coll.insert_many([{"_id": i, "even": i % 2 == 0} for i in range(6)])
    assert coll.update_one({"even": True}, {"$set": {"seen": 1}}).modified_count == 1
    many = coll.update_many({"even": True}, {"$set": {"seen": 2}})
    assert (many.matched_count, many.modified_count) == (3, 3)
    assert coll.count_documents({"seen": 2}) == 3
    noop = coll.update_many({"even": True}, {"$set": {"seen": 2}})
    assert (noop.matched_count, noop.modified_count) == (3, 0)


def test_replacement_keeps_id_and_drops_other_fields(sync_db: Any) -> None:
    coll = sync_db["c"]
    coll.insert_one({"_id": 7, "a": 1, "b": 2})
    assert coll.replace_one({"_id": 7}, {"c": 3}).modified_count == 1
    assert coll.find_one({"_id": 7}) == {"_id": 7, "c": 3}


def test_pipeline_update(sync_db: Any) -> None:
    coll = sync_db["c"]
    coll.insert_one({"_id": 1, "a": 2, "b": 3, "tmp": 1})
    coll.update_one({"_id": 1}, [{"$set": {"total": {"$add": ["$a", "$b"]}}}, {"$unset": "tmp"}])
    assert coll.find_one({"_id": 1}) == {"_id": 1, "a": 2, "b": 3, "total": 5}


def test_find_and_modify_variants(sync_db: Any) -> None:
    coll = sync_db["c"]
    coll.insert_many([{"_id": 1, "q": 10}, {"_id": 2, "q": 20}])
    before = coll.find_one_and_update({}, {"$inc": {"q": 1}}, sort=[("q", -1)])
    assert before == {"_id": 2, "q": 20}
    after = coll.find_one_and_update({"_id": 1}, {"$inc": {"q": 1}}, return_document=ReturnDocument.AFTER)
    assert after == {"_id": 1, "q": 11}
    upserted = coll.find_one_and_update(
        {"_id": 3}, {"$set": {"q": 30}}, upsert=True, return_document=ReturnDocument.AFTER
    )
    assert upserted == {"_id": 3, "q": 30}
    replaced = coll.find_one_and_replace({"_id": 3}, {"r": 1}, return_document=ReturnDocument.AFTER)
    assert replaced == {"_id": 3, "r": 1}
    assert coll.find_one_and_delete({"_id": 3}) == {"_id": 3, "r": 1}
    assert coll.find_one_and_delete({"_id": 3}) is None
    assert sorted(d["_id"] for d in coll.find()) == [1, 2]


def test_count_and_distinct(sync_db: Any) -> None:
    coll = sync_db["c"]
    coll.insert_many([{"k": "a", "v": 1}, {"k": "b", "v": 2}, {"k": "a", "v": 3}])
    assert sync_db.command("count", "c")["n"] == 3
    assert sync_db.command("count", "c", query={"k": "a"})["n"] == 2
    assert coll.count_documents({"v": {"$gt": 1}}) == 2
    assert coll.estimated_document_count() == 3
    assert sorted(coll.distinct("k")) == ["a", "b"]
    assert sorted(coll.distinct("v", {"k": "a"})) == [1, 3]


def test_find_with_projection_sort_skip_limit_and_getmore(sync_db: Any) -> None:
    coll = sync_db["c"]
    coll.insert_many([{"_id": i, "x": i * 10, "y": "drop"} for i in range(250)])
    cursor = coll.find({"x": {"$gte": 100}}, {"y": 0}).sort("x", ASCENDING).skip(5).limit(120).batch_size(7)
    docs = list(cursor)
    assert len(docs) == 120
    assert docs[0] == {"_id": 15, "x": 150}
    assert docs[-1] == {"_id": 134, "x": 1340}


def test_rename_collection(sync_db: Any) -> None:
    sync_db["src"].insert_one({"_id": 1})
    sync_db["other"].insert_one({"_id": 2})
    sync_db["src"].rename("dst")
    names = set(sync_db.list_collection_names())
    assert "dst" in names
    assert "src" not in names
    assert sync_db["dst"].find_one() == {"_id": 1}
    with pytest.raises(OperationFailure) as excinfo:
        sync_db["dst"].rename("other")
    assert excinfo.value.code == NAMESPACE_EXISTS
    sync_db["dst"].rename("other", dropTarget=True)
    assert sync_db["other"].find_one() == {"_id": 1}


def test_unique_index_rejects_duplicates_with_11000(sync_db: Any) -> None:
    coll = sync_db["c"]
    coll.create_index("email", unique=True)
    coll.insert_one({"_id": 1, "email": "a@x"})
    coll.insert_one({"_id": 2, "email": "b@x"})
    with pytest.raises(DuplicateKeyError) as insert_error:
        coll.insert_one({"_id": 3, "email": "a@x"})
    assert insert_error.value.code == DUPLICATE_KEY
    with pytest.raises(DuplicateKeyError) as update_error:
        coll.update_one({"_id": 2}, {"$set": {"email": "a@x"}})
    assert update_error.value.code == DUPLICATE_KEY
    with pytest.raises(DuplicateKeyError):
        coll.insert_one({"_id": 1, "email": "c@x"})
    assert coll.count_documents({}) == 2


def test_list_collections_indexes_and_databases(sync_client: Any, sync_db: Any) -> None:
    sync_db["a"].insert_one({"x": 1})
    sync_db.create_collection("b")
    sync_db["a"].create_index([("x", ASCENDING)], name="x_1")
    assert {"a", "b"} <= set(sync_db.list_collection_names())
    assert [c["name"] for c in sync_db.list_collections(filter={"name": "b"})] == ["b"]
    indexes = sync_db["a"].index_information()
    assert set(indexes) == {"_id_", "x_1"}
    assert indexes["x_1"]["key"] == [("x", 1)]
    sync_db["a"].drop_index("x_1")
    assert set(sync_db["a"].index_information()) == {"_id_"}
    assert sync_db.name in sync_client.list_database_names()


def test_drop_collection_and_database(sync_client: Any, sync_db: Any) -> None:
    sync_db["a"].insert_one({"x": 1})
    sync_db["b"].insert_one({"x": 1})
    sync_db.drop_collection("a")
    assert set(sync_db.list_collection_names()) == {"b"}
    sync_client.drop_database(sync_db.name)
    assert sync_db.name not in sync_client.list_database_names()


def test_hello_reports_limits(sync_client: Any) -> None:
    hello = sync_client.admin.command("hello")
    assert hello["isWritablePrimary"] is True
    assert hello["maxBsonObjectSize"] == MAX_BSON_SIZE
    assert hello["maxWriteBatchSize"] == 100_000
    assert "setName" in hello


def test_documents_over_16_mib_are_rejected(sync_db: Any) -> None:
    coll = sync_db["c"]
    # Far over the limit: PyMongo refuses before sending.
    with pytest.raises(DocumentTooLarge):
        coll.insert_one({"blob": "x" * (MAX_BSON_SIZE + 64 * 1024)})
    # Just over it: PyMongo leaves ~16 KiB of headroom for command overhead, so only the server can refuse.
    # mongod's fixDocumentForInsert answers BadValue (2), "object to insert too large. size in bytes: ...".
    with pytest.raises(WriteError) as too_large:
        coll.insert_one({"blob": "x" * MAX_BSON_SIZE})
    assert too_large.value.code == BAD_VALUE
    assert "object to insert too large" in str(too_large.value)
    coll.insert_one({"_id": 1, "a": "a" * (9 * 1024 * 1024)})
    # Growing a document past the limit can only be caught by the server.
    with pytest.raises(OperationFailure):
        coll.update_one({"_id": 1}, {"$set": {"b": "b" * (9 * 1024 * 1024)}})
    assert coll.find_one({"_id": 1}, {"b": 1}) == {"_id": 1}
    assert coll.count_documents({}) == 1


def test_unknown_command_is_59(sync_db: Any) -> None:
    with pytest.raises(OperationFailure) as excinfo:
        sync_db.command("definitelyNotACommand")
    assert excinfo.value.code == COMMAND_NOT_FOUND
    assert excinfo.value.details is not None
    assert excinfo.value.details.get("codeName") == "CommandNotFound"


def test_retried_write_with_same_txn_number_is_applied_once(sync_client: Any, sync_db: Any) -> None:
    """A write resent with the same lsid and txnNumber returns the stored reply instead of inserting again."""
    command = {"insert": "c", "documents": [{"v": "no _id: a second apply would add a 2nd doc"}]}
    with sync_client.start_session() as session:
        first = sync_db.command({**command, "txnNumber": Int64(1)}, session=session)
        second = sync_db.command({**command, "txnNumber": Int64(1)}, session=session)
        assert first["n"] == second["n"] == 1
        assert sync_db["c"].count_documents({}) == 1
        third = sync_db.command({**command, "txnNumber": Int64(2)}, session=session)
        assert third["n"] == 1
    assert sync_db["c"].count_documents({}) == 2


def test_write_and_read_concern_majority_are_accepted(sync_db: Any) -> None:
    majority = sync_db["c"].with_options(
        write_concern=WriteConcern("majority", wtimeout=1000, j=True), read_concern=ReadConcern("majority")
    )
    assert majority.insert_one({"_id": 1}).acknowledged
    assert majority.find_one({"_id": 1}) == {"_id": 1}
    assert list(majority.aggregate([{"$match": {"_id": 1}}])) == [{"_id": 1}]


def test_create_existing_collection_is_namespace_exists(sync_db: Any) -> None:
    sync_db.create_collection("c")
    with pytest.raises(OperationFailure) as excinfo:
        sync_db.create_collection("c", check_exists=False)
    assert excinfo.value.code == NAMESPACE_EXISTS


def test_unique_index_over_existing_duplicates_fails_with_11000(sync_db: Any) -> None:
    coll = sync_db["c"]
    coll.insert_many([{"k": 1}, {"k": 1}])
    with pytest.raises(OperationFailure) as excinfo:
        coll.create_index("k", unique=True)
    assert excinfo.value.code == DUPLICATE_KEY
    assert set(coll.index_information()) == {"_id_"}


def test_unordered_insert_continues_past_duplicates(sync_db: Any) -> None:
    coll = sync_db["c"]
    coll.insert_one({"_id": 1})
    with pytest.raises(BulkWriteError) as excinfo:
        coll.insert_many([{"_id": 0}, {"_id": 1}, {"_id": 2}], ordered=False)
    details = excinfo.value.details
    assert details["nInserted"] == 2
    assert [(error["index"], error["code"]) for error in details["writeErrors"]] == [(1, DUPLICATE_KEY)]
    assert sorted(doc["_id"] for doc in coll.find()) == [0, 1, 2]


def test_positional_and_array_filter_updates(sync_db: Any) -> None:
    coll = sync_db["c"]
    items = [{"sku": "a", "qty": -1}, {"sku": "b", "qty": 5}, {"sku": "c", "qty": -3}]
    coll.insert_one({"_id": 1, "items": items})
    coll.update_one({"_id": 1, "items.sku": "b"}, {"$inc": {"items.$.qty": 1}})
    coll.update_one({"_id": 1}, {"$set": {"items.$[neg].qty": 0}}, array_filters=[{"neg.qty": {"$lt": 0}}])
    coll.update_one({"_id": 1}, {"$set": {"items.$[].seen": True}})
    doc = coll.find_one({"_id": 1})
    assert doc is not None
    assert doc["items"] == [
        {"sku": "a", "qty": 0, "seen": True},
        {"sku": "b", "qty": 6, "seen": True},
        {"sku": "c", "qty": 0, "seen": True},
    ]


def test_aggregate_match_group_sort_project(sync_db: Any) -> None:
    coll = sync_db["c"]
    coll.insert_many([{"k": "a", "v": 1}, {"k": "b", "v": 2}, {"k": "a", "v": 3}, {"k": "c", "v": 0}])
    result = list(
        coll.aggregate(
            [
                {"$match": {"v": {"$gt": 0}}},
                {"$group": {"_id": "$k", "total": {"$sum": "$v"}, "n": {"$sum": 1}}},
                {"$sort": {"total": -1}},
                {"$project": {"_id": 0, "key": "$_id", "total": 1, "n": 1}},
            ]
        )
    )
    assert result == [{"total": 4, "n": 2, "key": "a"}, {"total": 2, "n": 1, "key": "b"}]
