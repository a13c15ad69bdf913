"""TTL indexes as mongod applies them: a background pass (every `ttlMonitorSleepSecs`) deletes expired
documents with ordinary delete events, and an expired document stays readable until that pass.

mongomock hid an expired document from every read at once and recorded nothing, so a change stream on a
collection with a TTL index saw no deletes on the emulator where mongod sends one per expired document.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from bson.datetime_ms import DatetimeMS
from pymongo import MongoClient

from emulators.mongodb import run_in_thread
from emulators.mongodb.server import ThreadedEmulator
from emulators.mongodb.ttl import expire_once

pytestmark = pytest.mark.integration

HOUR = timedelta(hours=1)


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


@pytest.fixture
def idle_monitor(emulator_only: None) -> Iterator[ThreadedEmulator]:
    """An emulator whose monitor never runs by itself: the test runs each pass."""
    with run_in_thread(host="127.0.0.1", port=0, ttl_monitor_sleep_s=3600.0) as server:
        yield server


def _client(server: ThreadedEmulator) -> MongoClient[dict[str, Any]]:
    return MongoClient(server.uri, serverSelectionTimeoutMS=10_000, datetime_conversion="DATETIME_AUTO")


def _pass(server: ThreadedEmulator, at: datetime | None = None) -> int:
    assert server.server is not None
    storage = server.server.engine.shared_storage
    return int(server.call(expire_once, storage, at or _now()))


def test_an_expired_document_stays_until_a_pass_deletes_it_with_a_delete_event(
    idle_monitor: ThreadedEmulator,
) -> None:
    with _client(idle_monitor) as client:
        coll = client.db.sessions
        coll.create_index("at", expireAfterSeconds=60)
        with coll.watch() as stream:
            coll.insert_many([{"_id": "old", "at": _now() - HOUR}, {"_id": "new", "at": _now()}])
            assert sorted(doc["_id"] for doc in coll.find()) == ["new", "old"]  # mongod: until the pass
            assert _pass(idle_monitor) == 1
            assert [doc["_id"] for doc in coll.find()] == ["new"]
            kinds = [(event["operationType"], event["documentKey"]) for event in _read(stream, 3)]
    assert kinds == [("insert", {"_id": "old"}), ("insert", {"_id": "new"}), ("delete", {"_id": "old"})]


def _read(stream: Any, count: int) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    deadline = time.monotonic() + 10
    while len(events) < count and time.monotonic() < deadline:
        event = stream.try_next()
        if event is not None:
            events.append(event)
    return events


def test_which_values_expire(idle_monitor: ThreadedEmulator) -> None:
    now = _now()
    docs: dict[str, Any] = {
        "past": now - HOUR,
        "exactly at the limit": now - timedelta(seconds=60),
        "future": now + HOUR,
        "not yet": now - timedelta(seconds=59),
        "an array, by its earliest date": [now + HOUR, now - HOUR, "x"],
        "an array without dates": ["2020-01-01", 1],
        "an empty array": [],
        "a string": "2020-01-01T00:00:00Z",
        "a number": 0,
        "null": None,
        "past year 9999": DatetimeMS(253_402_300_800_000 + 86_400_000),
        "before year 1": DatetimeMS(-62_135_596_800_000 - 86_400_000),
    }
    with _client(idle_monitor) as client:
        coll = client.db.c
        coll.create_index("at", expireAfterSeconds=60)
        coll.insert_many([{"_id": name, "at": value} for name, value in docs.items()])
        coll.insert_one({"_id": "no field"})
        assert _pass(idle_monitor, now) == 4
        kept = sorted(doc["_id"] for doc in coll.find())
    assert kept == sorted(
        {*docs, "no field"}
        - {"past", "exactly at the limit", "an array, by its earliest date", "before year 1"}
    )


def test_an_index_on_an_embedded_field_and_one_on_another_collection(idle_monitor: ThreadedEmulator) -> None:
    with _client(idle_monitor) as client:
        client.a.c.create_index("lease.until", expireAfterSeconds=0)
        client.b.c.create_index("at", expireAfterSeconds=3600)
        client.a.c.insert_many([{"_id": 1, "lease": {"until": _now() - HOUR}}, {"_id": 2, "lease": 5}])
        client.b.c.insert_many([{"_id": 1, "at": _now() - 2 * HOUR}, {"_id": 2, "at": _now() - HOUR / 2}])
        client.b.plain.insert_one({"_id": 1, "at": _now() - 100 * HOUR})  # no TTL index: kept
        assert _pass(idle_monitor) == 2
        assert [d["_id"] for d in client.a.c.find()] == [2]
        assert [d["_id"] for d in client.b.c.find()] == [2]
        assert client.b.plain.count_documents({}) == 1


def test_the_monitor_runs_by_itself_and_counts_in_server_status(emulator_only: None) -> None:
    with (
        run_in_thread(host="127.0.0.1", port=0, ttl_monitor_sleep_s=0.05) as server,
        _client(server) as client,
    ):
        coll = client.db.c
        coll.create_index("at", expireAfterSeconds=1)
        coll.insert_many([{"_id": n, "at": _now() - HOUR} for n in range(3)])
        deadline = time.monotonic() + 10
        while coll.count_documents({}) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert coll.count_documents({}) == 0
        ttl = client.admin.command("serverStatus")["metrics"]["ttl"]
    assert ttl["deletedDocuments"] == 3
    assert ttl["passes"] >= 1


def test_a_partial_ttl_index_expires_only_what_its_filter_selects(idle_monitor: ThreadedEmulator) -> None:
    old = _now() - HOUR
    with _client(idle_monitor) as client:
        coll = client.db.carts
        coll.create_index("at", expireAfterSeconds=60, partialFilterExpression={"state": "abandoned"})
        coll.insert_many(
            [
                {"_id": 1, "at": old, "state": "abandoned"},
                {"_id": 2, "at": old, "state": "ordered"},
                {"_id": 3, "at": old},
            ]
        )
        assert _pass(idle_monitor) == 1
        assert sorted(doc["_id"] for doc in coll.find()) == [2, 3]
