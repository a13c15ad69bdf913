"""The batch change-stream cursor against the MongoDB under test: the change-streams spec's resume rules.

Each test watches its own database's `items` collection through `ChangeStreamCursor` on a client that
records the commands it sends, and checks what a reader relies on: every event once, in order, across
batches and resumes; the cached position; resume-once on resumable errors; the option a resume uses.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest
from bson import Timestamp
from pymongo import AsyncMongoClient, monitoring
from pymongo.errors import OperationFailure

from connector.sources.mongodb.client import CODEC_OPTIONS, Mongo
from connector.sources.mongodb.cursor import ChangeStreamCursor, DriverStreamBatches


class Commands(monitoring.CommandListener):
    """The change-stream commands sent (aggregate / getMore / killCursors), with their bodies."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Mapping[str, Any]]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name in ("aggregate", "getMore", "killCursors"):
            self.sent.append((event.command_name, event.command))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass

    def stages(self) -> list[Mapping[str, Any]]:
        """The $changeStream stage of each aggregate, in order."""
        return [cmd["pipeline"][0]["$changeStream"] for name, cmd in self.sent if name == "aggregate"]


@pytest.fixture
async def watched(mongo_uri: str, db_name: str) -> AsyncIterator[tuple[Any, Commands]]:
    commands = Commands()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri, event_listeners=[commands])
    yield client.get_database(db_name, codec_options=CODEC_OPTIONS), commands
    await client.admin.command({"configureFailPoint": "failCommand", "mode": "off"})
    await client.drop_database(db_name)
    await client.close()


def cursor_on(db: Any, **position: Any) -> ChangeStreamCursor:
    return ChangeStreamCursor(
        db,
        "items",
        [{"$set": {"_ablyChannel": "c"}}],
        change_stream_options={},
        max_await_time_ms=50,
        batch_size=position.pop("batch_size", 100),
        **position,
    )


async def start_time(db: Any) -> Timestamp:
    reply = await db.command({"ping": 1})
    ts: Timestamp = reply["operationTime"]
    return ts


async def read(cursor: ChangeStreamCursor, count: int, *, max_batches: int = 200) -> list[Any]:
    """`count` events' `_id`s (or fewer if the stream runs dry for many polls)."""
    seen: list[Any] = []
    for _ in range(max_batches):
        if len(seen) >= count:
            break
        seen.extend(event["fullDocument"]["_id"] for event in await cursor.next_batch())
    return seen


async def fail_next(db: Any, command: str, **data: Any) -> None:
    await db.client.admin.command(
        {
            "configureFailPoint": "failCommand",
            "mode": {"times": 1},
            "data": {"failCommands": [command], **data},
        }
    )


async def test_batches_arrive_in_order_and_each_position_resumes_exactly(watched: Any) -> None:
    db, _ = watched
    start = await start_time(db)
    await db.items.insert_many([{"_id": n} for n in range(250)])
    cursor = cursor_on(db, start_at_operation_time=start)
    await cursor.open()
    first = await cursor.next_batch()
    second = await cursor.next_batch()
    assert [e["fullDocument"]["_id"] for e in [*first, *second]] == list(range(200))
    token = cursor.resume_token
    await cursor.close()
    reopened = cursor_on(db, resume_after=token)
    await reopened.open()
    assert await read(reopened, 50) == list(range(200, 250))  # no gap, no duplicate
    await reopened.close()


async def test_an_idle_poll_returns_nothing_and_moves_the_position(watched: Any) -> None:
    db, _ = watched
    cursor = cursor_on(db)
    await cursor.open()
    opened_at = cursor.resume_token
    assert opened_at is not None  # the aggregate's post-batch token
    await db.items.insert_one({"_id": 1})
    assert await read(cursor, 1) == [1]
    assert await cursor.next_batch() == []
    assert cursor.resume_token is not None and cursor.resume_token != opened_at
    await cursor.close()


@pytest.mark.parametrize(
    "failure",
    [
        {"errorCode": 6, "errorLabels": ["ResumableChangeStreamError"]},  # HostUnreachable
        {"closeConnection": True},  # a network error
        {"errorCode": 43},  # CursorNotFound
    ],
    ids=["labelled", "network", "cursor-not-found"],
)
async def test_a_resumable_getmore_error_resumes_once_with_nothing_lost(
    watched: Any, failure: dict[str, Any]
) -> None:
    db, commands = watched
    start = await start_time(db)
    await db.items.insert_many([{"_id": n} for n in range(150)])
    cursor = cursor_on(db, start_at_operation_time=start)
    await cursor.open()
    seen = list(await read(cursor, 100))
    await fail_next(db, "getMore", **failure)
    seen += await read(cursor, 50)
    assert seen == list(range(150))
    stages = commands.stages()
    assert len(stages) == 2
    assert "startAtOperationTime" in stages[0]
    assert "resumeAfter" in stages[1] and "startAtOperationTime" not in stages[1]
    await cursor.close()


async def test_a_non_resumable_error_is_raised_and_closes_the_cursor(watched: Any) -> None:
    db, commands = watched
    cursor = cursor_on(db)
    await cursor.open()
    await fail_next(db, "getMore", errorCode=8)  # UnknownError, no resumable label
    with pytest.raises(OperationFailure):
        await cursor.next_batch()
    assert not cursor.alive
    assert [name for name, _ in commands.sent].count("aggregate") == 1
    assert commands.sent[-1][0] == "killCursors"


async def test_a_stream_started_after_an_event_resumes_after_once_it_returned_one(watched: Any) -> None:
    """startAfter is kept only until the stream has returned an event (spec: Resume Process)."""
    db, commands = watched
    start = await start_time(db)
    await db.items.insert_one({"_id": 0})
    probe = cursor_on(db, start_at_operation_time=start)
    await probe.open()
    token = (await probe.next_batch())[0]["_id"]
    await probe.close()
    cursor = cursor_on(db, resume_after=token, start_after=True)
    await cursor.open()
    resumable = {"errorCode": 6, "errorLabels": ["ResumableChangeStreamError"]}
    await fail_next(db, "getMore", **resumable)
    assert await cursor.next_batch() == []  # resumed, still before any event: startAfter again
    await db.items.insert_one({"_id": 1})
    assert await read(cursor, 1) == [1]
    await fail_next(db, "getMore", **resumable)
    await cursor.next_batch()
    stages = [stage for stage in commands.stages() if "startAtOperationTime" not in stage]
    assert ["startAfter" in stage for stage in stages] == [True, True, False]
    assert "resumeAfter" in stages[-1]
    await cursor.close()


async def test_close_kills_the_server_cursor(watched: Any) -> None:
    db, commands = watched
    cursor = cursor_on(db)
    await cursor.open()
    await cursor.next_batch()
    await cursor.close()
    kills = [cmd for name, cmd in commands.sent if name == "killCursors"]
    assert len(kills) == 1 and kills[0]["killCursors"] == "items"
    assert await cursor.next_batch() == [] and not cursor.alive


async def test_a_non_primary_read_preference_keeps_the_drivers_own_stream(
    mongo_uri: str, db_name: str, watched: Any
) -> None:
    """A getMore must reach the member holding the cursor; only the driver pins one, so a client that
    may read from secondaries gets the driver's stream (one event per batch), and events still flow."""
    db, _ = watched
    separator = "&" if "?" in mongo_uri else "?"
    mongo = Mongo(f"{mongo_uri}{separator}readPreference=secondaryPreferred", db_name)
    try:
        start = await start_time(db)
        await db.items.insert_many([{"_id": 0}, {"_id": 1}])
        stream = await mongo.watch_batches("items", [], max_await_time_ms=50, start_at_operation_time=start)
        assert isinstance(stream, DriverStreamBatches)
        seen: list[Any] = []
        for _ in range(50):
            seen += [event["fullDocument"]["_id"] for event in await stream.next_batch()]
            if len(seen) == 2:
                break
        assert seen == [0, 1]
        await stream.close()
        plain = Mongo(mongo_uri, db_name)
        primary = await plain.watch_batches("items", [], max_await_time_ms=50)
        assert isinstance(primary, ChangeStreamCursor)
        await primary.close()
        await plain.close()
    finally:
        await mongo.close()
