"""Dates in queries meet stored dates as instants, as on mongod: whether the client decodes dates
timezone-aware (`tz_aware=True`, as the connector does) or naive, every command that filters or compares
stored documents finds them. The emulator once refused any date comparison (code 2, "can't compare
offset-naive and offset-aware datetimes") and silently found nothing on equality."""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from typing import Any

import pytest
from pymongo import MongoClient, ReturnDocument

UTC = datetime.UTC
JAN_2021 = datetime.datetime(2021, 1, 1, tzinfo=UTC)
JAN_2022 = datetime.datetime(2022, 1, 1, tzinfo=UTC)


@pytest.fixture(params=[True, False], ids=["tz_aware", "naive"])
def col(request: pytest.FixtureRequest, emulator_uri: str, database_name: str) -> Iterator[Any]:
    client: MongoClient[dict[str, Any]] = MongoClient(emulator_uri, tz_aware=request.param)
    try:
        collection = client[database_name]["dates"]
        collection.insert_many(
            [
                {"_id": 1, "at": JAN_2021, "seen": [JAN_2021, JAN_2022]},
                {"_id": 2, "at": JAN_2022, "seen": []},
            ]
        )
        yield collection
    finally:
        client.drop_database(database_name)
        client.close()


def when(col: Any, value: datetime.datetime) -> datetime.datetime:
    """The date as this client writes it: aware, or naive UTC."""
    return value if col.database.client.codec_options.tz_aware else value.replace(tzinfo=None)


def test_range_equality_and_arrays_find_the_stored_dates(col: Any) -> None:
    in_2021 = {"$gte": when(col, JAN_2021), "$lt": when(col, JAN_2022)}
    assert [d["_id"] for d in col.find({"at": in_2021})] == [1]
    assert [d["_id"] for d in col.find({"at": when(col, JAN_2022)})] == [2]
    assert [d["_id"] for d in col.find({"seen": when(col, JAN_2022)})] == [1]
    assert [d["_id"] for d in col.find({"at": {"$in": [when(col, JAN_2021)]}})] == [1]
    assert col.count_documents({"at": {"$lte": when(col, JAN_2022)}}) == 2
    assert col.distinct("_id", {"at": {"$gt": when(col, JAN_2021)}}) == [2]
    pipeline = [{"$match": {"at": {"$lt": when(col, JAN_2022)}}}, {"$project": {"_id": 1}}]
    assert list(col.aggregate(pipeline)) == [{"_id": 1}]


def test_writes_select_and_compare_by_date(col: Any) -> None:
    assert col.update_many({"at": {"$lt": when(col, JAN_2022)}}, {"$set": {"old": True}}).modified_count == 1
    # $max / $min compare the stored date with the given one.
    assert col.update_one({"_id": 1}, {"$max": {"at": when(col, JAN_2022)}}).modified_count == 1
    assert col.update_one({"_id": 1}, {"$min": {"at": when(col, JAN_2022)}}).modified_count == 0
    found = col.find_one_and_update(
        {"at": when(col, JAN_2022), "old": True}, {"$set": {"n": 1}}, return_document=ReturnDocument.AFTER
    )
    assert found is not None and found["_id"] == 1 and found["n"] == 1
    assert col.delete_many({"at": when(col, JAN_2022)}).deleted_count == 2
