"""Partial indexes as mongod 7.0 keeps them: a unique index with a `partialFilterExpression` constrains only
the documents its filter selects (the emulator used to drop the filter and refuse what mongod accepts,
e.g. two users without an email under a unique index on the emails that exist), and createIndexes
refuses the filters and combinations mongod refuses."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from pymongo.errors import DuplicateKeyError, OperationFailure

pytestmark = pytest.mark.integration

HAS_EMAIL = {"email": {"$exists": True}}


def test_a_unique_partial_index_ignores_the_documents_its_filter_leaves_out(sync_db: Any) -> None:
    sync_db.users.create_index("email", unique=True, partialFilterExpression=HAS_EMAIL)
    sync_db.users.insert_many([{"_id": 1}, {"_id": 2}, {"_id": 3, "email": "a@x"}])
    with pytest.raises(DuplicateKeyError) as clash:
        sync_db.users.insert_one({"_id": 4, "email": "a@x"})
    details = clash.value.details or {}
    assert "email_1" in details["errmsg"]
    assert (details["keyPattern"], details["keyValue"]) == ({"email": 1}, {"email": "a@x"})
    with pytest.raises(DuplicateKeyError):  # an update that brings a document under the filter
        sync_db.users.update_one({"_id": 1}, {"$set": {"email": "a@x"}})
    sync_db.users.update_one({"_id": 1}, {"$set": {"email": "b@x"}})
    assert sorted(doc["_id"] for doc in sync_db.users.find()) == [1, 2, 3]


def test_the_filter_decides_which_documents_count_with_a_date_and_or(sync_db: Any) -> None:
    since = datetime(2026, 1, 1, tzinfo=UTC)
    active = {"$or": [{"status": "active"}, {"at": {"$gte": since}}]}
    sync_db.c.create_index([("slot", 1)], unique=True, partialFilterExpression=active)
    sync_db.c.insert_many(
        [
            {"_id": 1, "slot": 7, "status": "active"},
            {"_id": 2, "slot": 7, "status": "done", "at": datetime(2025, 6, 1)},  # outside the filter
        ]
    )
    with pytest.raises(DuplicateKeyError):
        sync_db.c.insert_one({"_id": 3, "slot": 7, "status": "done", "at": datetime(2026, 2, 1)})


def test_building_a_unique_partial_index_checks_only_the_selected_documents(sync_db: Any) -> None:
    sync_db.c.insert_many([{"_id": 1, "k": 1}, {"_id": 2, "k": 1}, {"_id": 3, "k": 1, "live": True}])
    sync_db.c.create_index("k", unique=True, partialFilterExpression={"live": True})
    sync_db.c.insert_one({"_id": 4, "k": 2, "live": True})
    sync_db.d.insert_many([{"_id": 1, "k": 1, "live": True}, {"_id": 2, "k": 1, "live": True}])
    with pytest.raises(OperationFailure) as build:
        sync_db.d.create_index("k", unique=True, partialFilterExpression={"live": True})
    assert build.value.code == 11000


def test_list_indexes_shows_the_filter_and_names_compare_with_it(sync_db: Any) -> None:
    sync_db.c.create_index("k", name="k_live", partialFilterExpression={"live": True})
    sync_db.c.create_index("k", name="k_live", partialFilterExpression={"live": True})  # the same: no-op
    listed = {spec["name"]: spec for spec in sync_db.c.list_indexes()}
    assert listed["k_live"]["partialFilterExpression"] == {"live": True}
    with pytest.raises(OperationFailure) as other_filter_same_name:
        sync_db.c.create_index("k", name="k_live", partialFilterExpression={"live": False})
    assert other_filter_same_name.value.code == 85
    # The same key with another filter is another index (mongod keeps both).
    sync_db.c.create_index("k", name="k_dead", partialFilterExpression={"live": False})
    with pytest.raises(OperationFailure) as same_filter_other_name:
        sync_db.c.create_index("k", name="k_again", partialFilterExpression={"live": True})
    assert same_filter_other_name.value.code == 85
    assert sorted(spec["name"] for spec in sync_db.c.list_indexes()) == ["_id_", "k_dead", "k_live"]


@pytest.mark.parametrize(
    ("options", "code"),
    [
        ({"partialFilterExpression": {"a": {"$exists": True}}, "sparse": True}, 67),
        ({"partialFilterExpression": {"a": {"$exists": False}}}, 67),
        ({"partialFilterExpression": {"a": {"$ne": 1}}}, 67),
        ({"partialFilterExpression": {"$nor": [{"a": 1}]}}, 67),
        ({"partialFilterExpression": {"a": {"$regex": "^x"}}}, 67),
        ({"partialFilterExpression": "a"}, 14),
    ],
    ids=["with sparse", "$exists false", "$ne", "$nor", "$regex", "not a document"],
)
def test_create_index_refuses_what_mongod_refuses(sync_db: Any, options: dict[str, Any], code: int) -> None:
    with pytest.raises(OperationFailure) as refused:
        sync_db.c.create_index("a", **options)
    assert refused.value.code == code
    assert "a_1" not in sync_db.c.index_information()


def test_the_id_index_cannot_be_partial(sync_db: Any) -> None:
    with pytest.raises(OperationFailure) as refused:
        sync_db.command(
            "createIndexes",
            "c",
            indexes=[{"key": {"_id": 1}, "name": "_id_", "partialFilterExpression": {"a": 1}}],
        )
    assert refused.value.code == 197


def test_accepted_filter_expressions(sync_db: Any) -> None:
    accepted = [
        {"a": 1},
        {"a": {"$eq": 1}},
        {"a": {"$gt": 1, "$lte": 9}},
        {"a": {"$type": "string"}},
        {"a": {"$in": [1, 2]}},
        {"$and": [{"a": {"$exists": True}}, {"b": {"$gte": 0}}]},
        {"$or": [{"a": 1}, {"b": 2}]},
    ]
    for n, expr in enumerate(accepted):
        sync_db.c.create_index("x", name=f"x_{n}", partialFilterExpression=expr)
    assert len(sync_db.c.index_information()) == len(accepted) + 1
