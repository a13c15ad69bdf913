"""Multi-document transactions as a MongoDB 7.0 replica set runs them, and their change events.

mongod reports each operation of a committed transaction as its own change event: all share the
commit's ``clusterTime`` and carry the session's ``lsid`` and the ``txnNumber``; they appear only after
the commit (never for an aborted transaction), and each has its own resume token, ordered by the
operation's index in the transaction, so a stream can resume in the middle of a transaction.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from bson import Int64
from pymongo import MongoClient
from pymongo.errors import OperationFailure

pytestmark = pytest.mark.integration

EVENT_WAIT_S = 10.0
MAX_AWAIT_MS = 200

#: src/mongo/base/error_codes.yml
WRITE_CONFLICT = 112
NO_SUCH_TRANSACTION = 251
NOT_SUPPORTED_IN_TRANSACTION = 263
DUPLICATE_KEY = 11000
TRANSIENT = "TransientTransactionError"


def next_events_sync(stream: Any, count: int) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    deadline = time.monotonic() + EVENT_WAIT_S
    while len(events) < count:
        assert time.monotonic() < deadline, f"only {len(events)} of {count} events: {events}"
        event = stream.try_next()
        if event is not None:
            events.append(event)
    return events


async def next_events(stream: Any, count: int) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    async with asyncio.timeout(EVENT_WAIT_S):
        while len(events) < count:
            event = await stream.try_next()
            if event is not None:
                events.append(event)
    return events


def assert_one_transaction(events: list[dict[str, Any]], lsid: Any) -> None:
    """One clusterTime, the session's lsid, one txnNumber (a long), strictly increasing tokens."""
    assert len({event["clusterTime"] for event in events}) == 1, events
    tokens = [event["_id"]["_data"] for event in events]
    assert tokens == sorted(tokens) and len(set(tokens)) == len(tokens), tokens
    assert len({event["txnNumber"] for event in events}) == 1
    for event in events:
        assert event["lsid"]["id"] == lsid["id"]
        assert isinstance(event["txnNumber"], Int64) and event["txnNumber"] >= 1


def test_committed_transaction_events_appear_only_at_commit(
    sync_client: MongoClient[Any], sync_db: Any
) -> None:
    coll = sync_db["c"]
    coll.insert_one({"_id": "a", "n": 0})
    with coll.watch(max_await_time_ms=MAX_AWAIT_MS) as stream, sync_client.start_session() as session:
        with session.start_transaction():
            coll.insert_one({"_id": "b"}, session=session)
            coll.update_one({"_id": "a"}, {"$inc": {"n": 1}}, session=session)
            coll.delete_one({"_id": "b"}, session=session)
            # Another session sees none of it, and the stream shows nothing of it before the commit.
            assert coll.find_one({"_id": "a"}) == {"_id": "a", "n": 0}
            coll.insert_one({"_id": "outside"})
            (outside,) = next_events_sync(stream, 1)
            assert outside["documentKey"] == {"_id": "outside"} and "lsid" not in outside
        events = next_events_sync(stream, 3)
        lsid = session.session_id
    assert [e["operationType"] for e in events] == ["insert", "update", "delete"]
    assert_one_transaction(events, lsid)
    assert events[0]["clusterTime"] > outside["clusterTime"]
    assert events[1]["updateDescription"]["updatedFields"] == {"n": 1}
    assert coll.find_one({"_id": "a"}) == {"_id": "a", "n": 1}


def test_reads_in_a_transaction_see_its_own_writes(sync_client: MongoClient[Any], sync_db: Any) -> None:
    coll = sync_db["c"]
    coll.insert_many([{"_id": 1, "v": 1}, {"_id": 2, "v": 2}])
    with sync_client.start_session() as session, session.start_transaction():
        coll.insert_one({"_id": 3, "v": 3}, session=session)
        coll.delete_one({"_id": 1}, session=session)
        coll.update_one({"_id": 2}, {"$set": {"v": 20}}, session=session)
        assert list(coll.find({}, session=session)) == [{"_id": 2, "v": 20}, {"_id": 3, "v": 3}]
        assert coll.count_documents({}, session=session) == 2
        assert coll.find_one({"_id": 1}, session=session) is None
        assert list(coll.find()) == [{"_id": 1, "v": 1}, {"_id": 2, "v": 2}]
        session.abort_transaction()
    assert list(coll.find()) == [{"_id": 1, "v": 1}, {"_id": 2, "v": 2}]


def test_aborted_transaction_produces_no_events(sync_client: MongoClient[Any], sync_db: Any) -> None:
    coll = sync_db["c"]
    with coll.watch(max_await_time_ms=MAX_AWAIT_MS) as stream, sync_client.start_session() as session:
        session.start_transaction()
        coll.insert_many([{"_id": 1}, {"_id": 2}], session=session)
        session.abort_transaction()
        coll.insert_one({"_id": "marker"})
        (event,) = next_events_sync(stream, 1)
    assert event["documentKey"] == {"_id": "marker"}
    assert coll.count_documents({}) == 1


def _five_in_one_transaction(client: MongoClient[Any], coll: Any) -> None:
    with client.start_session() as session, session.start_transaction():
        for i in range(5):
            coll.insert_one({"_id": i}, session=session)


def test_resume_in_the_middle_of_a_transaction_sync(sync_client: MongoClient[Any], sync_db: Any) -> None:
    coll = sync_db["c"]
    with coll.watch(max_await_time_ms=MAX_AWAIT_MS) as stream:
        _five_in_one_transaction(sync_client, coll)
        events = next_events_sync(stream, 5)
    assert len({e["clusterTime"] for e in events}) == 1
    with coll.watch(resume_after=events[1]["_id"], max_await_time_ms=MAX_AWAIT_MS) as resumed:
        rest = next_events_sync(resumed, 3)
    assert [e["documentKey"]["_id"] for e in rest] == [2, 3, 4]
    assert [e["_id"] for e in rest] == [e["_id"] for e in events[2:]]


async def test_resume_in_the_middle_of_a_transaction_async(async_client: Any, async_db: Any) -> None:
    coll = async_db["c"]
    async with await coll.watch(max_await_time_ms=MAX_AWAIT_MS) as stream:
        async with async_client.start_session() as session, await session.start_transaction():
            for i in range(5):
                await coll.insert_one({"_id": i}, session=session)
        events = await next_events(stream, 5)
    async with await coll.watch(start_after=events[1]["_id"], max_await_time_ms=MAX_AWAIT_MS) as resumed:
        rest = await next_events(resumed, 3)
    assert [e["documentKey"]["_id"] for e in rest] == [2, 3, 4]
    assert len({e["clusterTime"] for e in events + rest}) == 1


def test_a_second_transaction_writing_the_same_document_gets_a_write_conflict(
    sync_client: MongoClient[Any], sync_db: Any
) -> None:
    coll = sync_db["c"]
    with sync_client.start_session() as first, sync_client.start_session() as second:
        first.start_transaction()
        coll.insert_one({"_id": 1, "by": "first"}, session=first)
        second.start_transaction()
        with pytest.raises(OperationFailure) as info:
            coll.insert_one({"_id": 1, "by": "second"}, session=second)
        assert info.value.code == WRITE_CONFLICT and info.value.has_error_label(TRANSIENT)
        first.commit_transaction()
        with pytest.raises(OperationFailure) as commit_info:
            second.commit_transaction()  # the conflict aborted the second transaction
        assert commit_info.value.code == NO_SUCH_TRANSACTION
        assert commit_info.value.has_error_label(TRANSIENT)
    assert list(coll.find()) == [{"_id": 1, "by": "first"}]


def test_an_error_in_a_statement_aborts_the_transaction(sync_client: MongoClient[Any], sync_db: Any) -> None:
    coll = sync_db["c"]
    coll.insert_one({"_id": 1})
    with sync_client.start_session() as session:
        session.start_transaction()
        coll.insert_one({"_id": 2}, session=session)
        with pytest.raises(OperationFailure) as info:
            coll.insert_one({"_id": 1}, session=session)  # a command error, not a write error
        assert info.value.code == DUPLICATE_KEY and not info.value.has_error_label(TRANSIENT)
        with pytest.raises(OperationFailure) as commit_info:
            session.commit_transaction()
        assert commit_info.value.code == NO_SUCH_TRANSACTION
    assert list(coll.find()) == [{"_id": 1}]


def test_commands_a_transaction_may_not_run(sync_client: MongoClient[Any], sync_db: Any) -> None:
    coll = sync_db["c"]
    coll.insert_one({"_id": 1})
    with sync_client.start_session() as session:
        session.start_transaction()
        with pytest.raises(OperationFailure) as info:
            sync_db.command("count", "c", session=session)
        assert info.value.code == NOT_SUPPORTED_IN_TRANSACTION
        session.abort_transaction()
        session.start_transaction()
        with pytest.raises(OperationFailure) as stream_info:
            coll.watch(session=session)
        assert stream_info.value.code == NOT_SUPPORTED_IN_TRANSACTION
        session.abort_transaction()


def test_statement_of_an_unknown_transaction_is_no_such_transaction(sync_db: Any) -> None:
    with sync_db.client.start_session() as session:
        command = {
            "find": "c",
            "lsid": session.session_id,
            "txnNumber": Int64(7),
            "autocommit": False,
        }
        with pytest.raises(OperationFailure) as info:
            sync_db.command(command)
    assert info.value.code == NO_SUCH_TRANSACTION and info.value.has_error_label(TRANSIENT)
