"""What a lease written with the server's clock needs, as mongod does it: `$$NOW`, `$add` on a date,
`$expr` (with any expression) in an update's filter, and pipeline updates of embedded fields that stick."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError, OperationFailure

pytestmark = pytest.mark.integration


def test_pipeline_update_of_an_embedded_field_is_stored(sync_db: Any) -> None:
    sync_db.c.insert_one({"_id": 1, "a": {"b": 1, "keep": True}})
    result = sync_db.c.update_one({"_id": 1}, [{"$set": {"a.b": 2}}])
    assert (result.matched_count, result.modified_count) == (1, 1)
    assert sync_db.c.find_one() == {"_id": 1, "a": {"b": 2, "keep": True}}
    sync_db.c.update_one({"_id": 1}, [{"$unset": "a.keep"}])
    assert sync_db.c.find_one() == {"_id": 1, "a": {"b": 2}}


def test_now_is_the_server_clock_and_add_moves_a_date_by_milliseconds(sync_db: Any) -> None:
    before = datetime.now(UTC).replace(tzinfo=None, microsecond=0)  # stored dates are naive UTC
    sync_db.c.insert_one({"_id": 1})
    sync_db.c.update_one({"_id": 1}, [{"$set": {"at": "$$NOW", "until": {"$add": ["$$NOW", 1500]}}}])
    doc = sync_db.c.find_one()
    assert before <= doc["at"] <= before + timedelta(seconds=30)
    assert doc["until"] - doc["at"] == timedelta(milliseconds=1500)
    assert doc["at"].microsecond % 1000 == 0  # BSON dates have millisecond precision


def test_now_is_one_instant_for_the_whole_command(sync_db: Any) -> None:
    """mongod reads the clock once per operation: every document an update_many touches gets the same
    `$$NOW`, however many milliseconds the command takes."""
    sync_db.c.insert_many([{"_id": n} for n in range(3000)])
    sync_db.c.update_many({}, [{"$set": {"at": "$$NOW", "later": {"$add": ["$$NOW", 1]}}}])
    stamps = {(doc["at"], doc["later"]) for doc in sync_db.c.find()}
    assert len(stamps) == 1
    ((at, later),) = stamps
    assert later - at == timedelta(milliseconds=1)


def test_add_refuses_two_dates_and_strings(sync_db: Any) -> None:
    sync_db.c.insert_one({"_id": 1, "s": "x"})
    with pytest.raises(OperationFailure) as two_dates:
        sync_db.c.update_one({"_id": 1}, [{"$set": {"x": {"$add": ["$$NOW", "$$NOW"]}}}])
    assert two_dates.value.code == 16612
    with pytest.raises(OperationFailure) as string:
        sync_db.c.update_one({"_id": 1}, [{"$set": {"x": {"$add": [1, "$s"]}}}])
    assert string.value.code == 16554


def test_expr_in_a_filter_evaluates_type_and_now(sync_db: Any) -> None:
    free = {
        "$or": [
            {"$eq": [{"$type": "$lease.expiresAt"}, "missing"]},
            {"$lte": ["$lease.expiresAt", "$$NOW"]},
        ]
    }
    take = [
        {
            "$set": {
                "lease": {
                    "epoch": {"$add": [{"$ifNull": ["$lease.epoch", 0]}, 1]},
                    "expiresAt": {"$add": ["$$NOW", 60_000]},
                }
            }
        }
    ]
    first = sync_db.c.find_one_and_update(
        {"_id": "l", "$expr": free}, take, upsert=True, return_document=ReturnDocument.AFTER
    )
    assert first["lease"]["epoch"] == 1
    # Held and unexpired: the filter matches nothing, so the upsert's insert collides with the document.
    with pytest.raises(DuplicateKeyError):
        sync_db.c.find_one_and_update({"_id": "l", "$expr": free}, take, upsert=True)
    sync_db.c.update_one({"_id": "l"}, {"$set": {"lease.expiresAt": datetime(1970, 1, 1)}})
    again = sync_db.c.find_one_and_update(
        {"_id": "l", "$expr": free}, take, upsert=True, return_document=ReturnDocument.AFTER
    )
    assert again["lease"]["epoch"] == 2
    assert sync_db.c.count_documents({"$expr": {"$gt": ["$lease.expiresAt", "$$NOW"]}}) == 1
