"""The reader against a scripted fake change stream: order, backpressure, invalidate, errors, history lost."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest
from bson import Timestamp
from mongomock_motor import AsyncMongoMockClient
from pymongo.errors import OperationFailure

from connector.ably.ledger import InFlightLedger
from connector.ably.outbound import OutboundMessage
from connector.errors import FatalError, NoChannelError
from connector.sources.mongodb import reader as reader_module
from connector.sources.mongodb.checkpoint import Checkpointer, TokenStore
from connector.sources.mongodb.deadletter import UnpublishableHandler
from connector.sources.mongodb.reader import Reader
from connector.sources.mongodb.stream import StartPosition, StreamOptions

END = object()  # script marker: the stream dies with a non-resumable error


def ev(n: int, op: str = "insert", channel: str | None = "ch") -> dict[str, Any]:
    doc: dict[str, Any] = {
        "_id": {"_data": f"82{n:016X}"},
        "operationType": op,
        "clusterTime": Timestamp(n, 1),
    }
    if channel is not None:
        doc["_ablyChannel"] = channel
    return doc


class FakeStream:
    """Yields scripted batches: an event dict (a batch of one), a list of events (one batch), None (an
    empty poll), or an exception to raise."""

    def __init__(
        self, script: list[Any], on_exhausted: asyncio.Event, token: Mapping[str, Any] | None = None
    ) -> None:
        self._script = list(script)
        self._token: Mapping[str, Any] | None = token  # the post-batch token of the opening aggregate
        self._alive = True
        self._exhausted = on_exhausted
        self.closed = False
        self.polls = 0

    @property
    def alive(self) -> bool:
        return self._alive

    @property
    def resume_token(self) -> Mapping[str, Any] | None:
        return self._token

    async def next_batch(self) -> list[Mapping[str, Any]]:
        self.polls += 1
        await asyncio.sleep(0)
        if not self._script:
            self._exhausted.set()
            await asyncio.sleep(0.01)
            return []
        item = self._script.pop(0)
        if isinstance(item, BaseException):
            raise item
        if item is None:
            self._token = {"_data": (self._token or {"_data": "82"})["_data"] + "00"}
            return []
        batch = item if isinstance(item, list) else [item]
        self._token = batch[-1]["_id"]
        if batch[-1].get("operationType") == "invalidate":
            self._alive = False
        return batch

    async def close(self) -> None:
        self.closed = True


class FakeMongo:
    def __init__(
        self, scripts: list[list[Any] | BaseException], open_token: Mapping[str, Any] | None = None
    ) -> None:
        self.scripts = scripts
        self.open_token = open_token
        self.opened: list[dict[str, Any]] = []
        self.streams: list[FakeStream] = []
        self.exhausted = asyncio.Event()
        self.pipelines: list[Any] = []

    async def server_version(self) -> tuple[int, ...]:
        return (7, 0, 0)

    async def watch_batches(self, collection: str, pipeline: Any, **options: Any) -> FakeStream:
        self.opened.append(options)
        self.pipelines.append(pipeline)
        script = self.scripts.pop(0) if self.scripts else []
        if isinstance(script, BaseException):
            raise script
        stream = FakeStream(script, self.exhausted if not self.scripts else asyncio.Event(), self.open_token)
        self.streams.append(stream)
        return stream


class CollectingPublisher:
    def __init__(self, ledger: InFlightLedger, auto_ack: bool = True) -> None:
        self.ledger = ledger
        self.auto_ack = auto_ack
        self.sent: list[OutboundMessage] = []

    def submit_many(self, msgs: list[OutboundMessage]) -> None:
        for msg in msgs:
            self.sent.append(msg)
            if self.auto_ack:
                self.ledger.complete(msg.seq)


def route(seq: int, event: Mapping[str, Any]) -> OutboundMessage:
    channel = event.get("_ablyChannel")
    if not channel:
        raise NoChannelError("event has no _ablyChannel")
    return OutboundMessage(
        seq=seq, channel=channel, message={"id": event["_id"]["_data"]}, size=1, token=event["_id"]
    )


def build(
    mongo: FakeMongo,
    *,
    capacity: int = 100,
    policy: str = "deadletter",
    history: str = "fail",
    auto_ack: bool = True,
) -> tuple[Reader, InFlightLedger, CollectingPublisher, Any]:
    db = AsyncMongoMockClient()["app"]
    ledger = InFlightLedger(capacity)
    cp = Checkpointer(
        TokenStore(db["ably"], "c"), ledger, namespace="n", pipeline_hash="h", interval=1, idle_interval=60
    )
    publisher = CollectingPublisher(ledger, auto_ack)
    reader = Reader(
        mongo,  # type: ignore[arg-type]
        StreamOptions(collection="orders", pipeline=[]),
        ledger=ledger,
        checkpointer=cp,
        publisher=publisher,
        route=route,
        unpublishable=UnpublishableHandler(policy, db["ably_deadletter"]),  # type: ignore[arg-type]
        on_history_lost=history,  # type: ignore[arg-type]
    )
    return reader, ledger, publisher, db


async def run_until_exhausted(reader: Reader, mongo: FakeMongo, stop: asyncio.Event | None = None) -> None:
    stop = stop or asyncio.Event()
    task = asyncio.create_task(reader.run(StartPosition(), stop))
    waiter = asyncio.create_task(mongo.exhausted.wait())
    done, _ = await asyncio.wait({task, waiter}, timeout=5, return_when=asyncio.FIRST_COMPLETED)
    stop.set()
    if task in done:
        waiter.cancel()
        task.result()
        return
    await asyncio.wait_for(task, 5)


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reader_module, "REOPEN_BACKOFF_INITIAL_S", 0.001)
    monkeypatch.setattr(reader_module, "INVALIDATE_REOPEN_DELAY_S", 0.001)


async def test_events_submitted_in_stream_order() -> None:
    mongo = FakeMongo([[ev(1), ev(2), None, ev(3)]])
    reader, ledger, publisher, _ = build(mongo)
    await run_until_exhausted(reader, mongo)
    assert [m.message["id"] for m in publisher.sent] == [ev(n)["_id"]["_data"] for n in (1, 2, 3)]
    assert [m.seq for m in publisher.sent] == [0, 1, 2]
    assert ledger.checkpoint() == ev(3)["_id"]


@pytest.mark.parametrize(
    "script",
    [[ev(n) for n in range(1, 50)], [[ev(n) for n in range(1, 50)]]],
    ids=["batches-of-one", "one-big-batch"],
)
async def test_reader_stops_pulling_when_the_ledger_is_full(script: list[Any]) -> None:
    """Invariant 5: with nothing acknowledged, at most `capacity` events are read, also when the server
    hands over more than the ledger holds in one batch."""
    mongo = FakeMongo([script])
    reader, ledger, publisher, _ = build(mongo, capacity=5, auto_ack=False)
    stop = asyncio.Event()
    task = asyncio.create_task(reader.run(StartPosition(), stop))
    await asyncio.sleep(0.1)
    assert len(publisher.sent) == 5
    assert ledger.pending == 5
    for msg in publisher.sent[:2]:
        ledger.complete(msg.seq)
    await asyncio.sleep(0.05)
    assert len(publisher.sent) == 7
    stop.set()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_unpublishable_event_is_deadlettered_and_completed() -> None:
    mongo = FakeMongo([[ev(1), ev(2, channel=None), ev(3)]])
    reader, ledger, publisher, db = build(mongo)
    await run_until_exhausted(reader, mongo)
    assert [m.seq for m in publisher.sent] == [0, 2]
    assert ledger.checkpoint() == ev(3)["_id"]
    doc = await db["ably_deadletter"].find_one({"_id": ev(2)["_id"]})
    assert doc["code"] == 72004


async def test_unpublishable_under_fail_stops_before_the_event() -> None:
    mongo = FakeMongo([[ev(1), ev(2, channel=None), ev(3)]])
    reader, ledger, publisher, _ = build(mongo, policy="fail")
    with pytest.raises(FatalError):
        await run_until_exhausted(reader, mongo)
    assert ledger.checkpoint() == ev(1)["_id"]  # never past the failed event
    assert [m.seq for m in publisher.sent] == [0]


async def test_non_resumable_error_reopens_from_the_last_read_position() -> None:
    mongo = FakeMongo([[ev(1), ev(2), OperationFailure("boom", code=8)], [ev(3)]])
    reader, _, publisher, _ = build(mongo)
    await run_until_exhausted(reader, mongo)
    assert mongo.opened[1]["resume_after"] == ev(2)["_id"]
    assert [m.message["id"] for m in publisher.sent] == [ev(n)["_id"]["_data"] for n in (1, 2, 3)]
    assert reader.stats.reopens == 1


async def test_invalidate_reopens_with_start_after() -> None:
    mongo = FakeMongo([[ev(1), ev(2, op="invalidate", channel=None)], [ev(3)]])
    reader, ledger, publisher, _ = build(mongo)
    await run_until_exhausted(reader, mongo)
    assert mongo.opened[1]["start_after"] == ev(2)["_id"]
    assert [m.message["id"] for m in publisher.sent] == [ev(1)["_id"]["_data"], ev(3)["_id"]["_data"]]
    assert reader.stats.invalidations == 1
    assert ledger.checkpoint() == ev(3)["_id"]


async def test_history_lost_under_fail_is_fatal_72008_with_the_range() -> None:
    mongo = FakeMongo([OperationFailure("gone", code=286)])
    reader, _, _, _ = build(mongo, history="fail")
    reader.stored_cluster_time = Timestamp(1_700_000_000, 1)
    with pytest.raises(FatalError) as info:
        await reader.run(StartPosition(token=ev(1)["_id"]), asyncio.Event())
    assert info.value.code == 72008
    assert "2023-11-14T22:13:20+00:00" in str(info.value)


async def test_history_lost_under_restart_starts_from_now() -> None:
    mongo = FakeMongo([OperationFailure("gone", code=286), [ev(5)]])
    reader, _, publisher, _ = build(mongo, history="restart")
    stop = asyncio.Event()
    task = asyncio.create_task(reader.run(StartPosition(token=ev(1)["_id"]), stop))
    await asyncio.wait_for(mongo.exhausted.wait(), 5)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert mongo.opened[0]["resume_after"] == ev(1)["_id"]
    assert "resume_after" not in mongo.opened[1] and "start_after" not in mongo.opened[1]
    assert len(publisher.sent) == 1


async def test_first_start_stores_the_opening_position_before_reading() -> None:
    """A crash right after a first start must not restart from "now" and skip what was committed since."""
    opening = {"_data": "8200000000000000AA"}
    mongo = FakeMongo([[OperationFailure("stop here", code=8)]], open_token=opening)
    reader, _, _, db = build(mongo)
    stop = asyncio.Event()
    task = asyncio.create_task(reader.run(StartPosition(), stop))
    await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(task, 5)
    doc = await db["ably"].find_one({"_id": "c"})
    assert doc is not None and doc["resumeToken"] == opening


async def test_batches_keep_stream_order_and_sequence_numbers() -> None:
    mongo = FakeMongo([[[ev(1), ev(2), ev(3)], None, [ev(4), ev(5)], ev(6)]])
    reader, ledger, publisher, _ = build(mongo)
    await run_until_exhausted(reader, mongo)
    assert [m.message["id"] for m in publisher.sent] == [ev(n)["_id"]["_data"] for n in range(1, 7)]
    assert [m.seq for m in publisher.sent] == list(range(6))
    assert ledger.checkpoint() == ev(6)["_id"]
    assert reader.stats.events_read == 6


async def test_unpublishable_inside_a_batch_keeps_order_around_it() -> None:
    mongo = FakeMongo([[[ev(1), ev(2, channel=None), ev(3)]]])
    reader, ledger, publisher, db = build(mongo)
    await run_until_exhausted(reader, mongo)
    assert [m.seq for m in publisher.sent] == [0, 2]
    assert ledger.checkpoint() == ev(3)["_id"]
    assert await db["ably_deadletter"].find_one({"_id": ev(2)["_id"]}) is not None


async def test_failed_read_ahead_reopens_after_the_batch_it_was_fetched_beside() -> None:
    """The next getMore is sent before a batch is routed; its failure must not lose that batch, and the
    reopen starts right after it."""
    mongo = FakeMongo([[[ev(1), ev(2)], OperationFailure("boom", code=8)], [[ev(3), ev(4)]]])
    reader, _, publisher, _ = build(mongo)
    await run_until_exhausted(reader, mongo)
    assert mongo.opened[1]["resume_after"] == ev(2)["_id"]
    assert [m.message["id"] for m in publisher.sent] == [ev(n)["_id"]["_data"] for n in (1, 2, 3, 4)]


async def test_invalidate_at_the_end_of_a_batch_reopens_with_start_after() -> None:
    mongo = FakeMongo([[[ev(1), ev(2), ev(3, op="invalidate", channel=None)]], [ev(4)]])
    reader, ledger, publisher, _ = build(mongo)
    await run_until_exhausted(reader, mongo)
    assert mongo.opened[1]["start_after"] == ev(3)["_id"]
    assert [m.seq for m in publisher.sent] == [0, 1, 3]
    assert ledger.checkpoint() == ev(4)["_id"]


async def test_a_full_ledger_stops_reading_beyond_one_batch_ahead() -> None:
    """Invariant 5 with read-ahead: while the ledger is full, no batch is asked for beyond the one routed
    and the one already requested."""
    mongo = FakeMongo([[ev(n) for n in range(1, 50)]])
    reader, _, publisher, _ = build(mongo, capacity=5, auto_ack=False)
    task = asyncio.create_task(reader.run(StartPosition(), asyncio.Event()))
    await asyncio.sleep(0.1)
    assert len(publisher.sent) == 5
    assert mongo.streams[0].polls == 7  # 5 routed, the 6th waiting for room, the 7th read ahead
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


# ---- split events ($changeStreamSplitLargeEvent) ----


def fragment(n: int, part: int, of: int, **fields: Any) -> dict[str, Any]:
    """Fragment `part` of `of` of event n: its own token (sorting after the event's earlier fragments)."""
    doc: dict[str, Any] = {
        "_id": {"_data": f"82{n:016X}{part:02X}"},
        "splitEvent": {"fragment": part, "of": of},
    }
    doc.update(fields)
    return doc


def split(n: int, of: int = 3) -> list[dict[str, Any]]:
    head = {"operationType": "update", "clusterTime": Timestamp(n, 1), "_ablyChannel": "ch"}
    parts = [fragment(n, 1, of, **head)]
    parts += [fragment(n, i, of, **{f"body{i}": "x" * 10}) for i in range(2, of + 1)]
    return parts


async def test_split_event_is_reassembled_in_order_with_its_last_fragments_token() -> None:
    frags = split(2)
    mongo = FakeMongo([[[ev(1), frags[0]], [frags[1]], [frags[2], ev(3)]]])
    reader, ledger, publisher, _ = build(mongo)
    await run_until_exhausted(reader, mongo)
    ids = [m.message["id"] for m in publisher.sent]
    assert ids == [ev(1)["_id"]["_data"], frags[2]["_id"]["_data"], ev(3)["_id"]["_data"]]
    assert [m.seq for m in publisher.sent] == [0, 1, 2]
    assert reader.fragments.reassembled == 1
    assert ledger.checkpoint() == ev(3)["_id"]
    assert mongo.pipelines[0][-1] == {"$changeStreamSplitLargeEvent": {}}


async def test_reassembled_event_holds_every_fragments_fields() -> None:
    merged: list[Mapping[str, Any]] = []

    def keep(seq: int, event: Mapping[str, Any]) -> OutboundMessage:
        merged.append(event)
        return route(seq, event)

    frags = split(5, of=3)
    mongo = FakeMongo([[[*frags]]])
    reader, _, _, _ = build(mongo)
    reader._route = keep
    await run_until_exhausted(reader, mongo)
    (event,) = merged
    assert event["_id"] == frags[-1]["_id"]
    assert "splitEvent" not in event
    assert event["operationType"] == "update"
    assert event["body2"] == event["body3"] == "x" * 10


async def test_position_never_falls_between_fragments() -> None:
    """A reopen while an event is incomplete starts before its first fragment (never from a fragment
    token), and the partial event is rebuilt from the start: one message, nothing lost or doubled."""
    frags = split(2)
    mongo = FakeMongo([[[ev(1), frags[0]], None, OperationFailure("boom", code=8)], [[*frags, ev(3)]]])
    reader, ledger, publisher, _ = build(mongo)
    await run_until_exhausted(reader, mongo)
    assert mongo.opened[1]["resume_after"] == ev(1)["_id"]
    ids = [m.message["id"] for m in publisher.sent]
    assert ids == [ev(1)["_id"]["_data"], frags[2]["_id"]["_data"], ev(3)["_id"]["_data"]]
    assert ledger.checkpoint() == ev(3)["_id"]


async def test_no_idle_mark_is_stored_inside_a_split_event() -> None:
    """Empty polls while an event is incomplete move the stream's post-batch token past its first
    fragment; none of those positions may reach the checkpointer."""
    frags = split(2)
    mongo = FakeMongo([[ev(1), frags[0], None, None, OperationFailure("boom", code=8)], [[*frags]]])
    reader, _, _, _ = build(mongo)
    marks: list[str] = []
    original = reader._checkpointer.note_stream_mark

    def spy(mark: Any) -> None:
        marks.append(mark.token["_data"])
        original(mark)

    reader._checkpointer.note_stream_mark = spy  # type: ignore[method-assign]
    await run_until_exhausted(reader, mongo)
    inside = frags[0]["_id"]["_data"]
    assert not [mark for mark in marks if mark.startswith(inside)]
    assert mongo.opened[1]["resume_after"] == ev(1)["_id"]


async def test_fragment_out_of_sequence_reopens_before_the_event() -> None:
    frags = split(2)
    mongo = FakeMongo([[ev(1), frags[1]], [[*frags]]])
    reader, _, publisher, _ = build(mongo)
    await run_until_exhausted(reader, mongo)
    assert reader.stats.reopens == 1
    assert [m.message["id"] for m in publisher.sent] == [ev(1)["_id"]["_data"], frags[2]["_id"]["_data"]]
