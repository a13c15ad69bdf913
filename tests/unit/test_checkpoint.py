"""The resume-token store and the checkpoint rule (invariants 1 and 4)."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from bson import Timestamp
from mongomock_motor import AsyncMongoMockClient
from pymongo.errors import AutoReconnect

from connector.ably.ledger import InFlightLedger
from connector.errors import CheckpointError, CorruptCheckpointError
from connector.sources.mongodb.checkpoint import Checkpointer, StreamMark, TokenStore, cluster_time_of


def tok(n: int) -> dict[str, str]:
    # Server layout: 0x82, then the 8-byte timestamp (seconds, increment), then more.
    return {"_data": f"82{1_700_000_000 + n:08X}{n:08X}2B0429"}


@pytest.fixture
def collection() -> Any:
    return AsyncMongoMockClient()["app"]["ably"]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_token_store_round_trip_and_delete(collection: Any) -> None:
    store = TokenStore(collection, "app.orders")
    assert await store.load() is None
    await store.store(tok(1), cluster_time=None, namespace="app.orders", pipeline_hash="h1")
    loaded = await store.load()
    assert loaded is not None
    assert loaded.token == tok(1)
    assert loaded.cluster_time == Timestamp(1_700_000_001, 1)
    assert loaded.namespace == "app.orders"
    assert loaded.pipeline_hash == "h1"
    assert loaded.invalidated is False
    doc = await collection.find_one({"_id": "app.orders"})
    assert set(doc) >= {"_id", "resumeToken", "clusterTime", "updatedAt", "namespace", "pipelineHash"}
    assert await store.delete() is True
    assert await store.load() is None
    assert await store.delete() is False


@pytest.mark.parametrize("bad", [None, "abc", {"_data": 42}, {"_data": ""}, {"other": "x"}])
async def test_unreadable_stored_token_is_a_72006_error(collection: Any, bad: Any) -> None:
    await collection.insert_one({"_id": "c1", "resumeToken": bad})
    with pytest.raises(CorruptCheckpointError) as info:
        await TokenStore(collection, "c1").load()
    assert info.value.code == 72006
    assert "token reset" in str(info.value)


def test_cluster_time_is_decoded_only_from_the_server_layout() -> None:
    assert cluster_time_of(tok(7)) == Timestamp(1_700_000_007, 7)
    assert cluster_time_of({"_data": "00ff"}) is None
    assert cluster_time_of(None) is None


async def make(
    collection: Any, capacity: int = 100, idle: float = 60.0
) -> tuple[Checkpointer, InFlightLedger, FakeClock]:
    ledger = InFlightLedger(capacity)
    clock = FakeClock()
    cp = Checkpointer(
        TokenStore(collection, "c"),
        ledger,
        namespace="app.orders",
        pipeline_hash="h",
        interval=1.0,
        idle_interval=idle,
        clock=clock,
    )
    return cp, ledger, clock


async def stored(collection: Any) -> Any:
    doc = await collection.find_one({"_id": "c"})
    return doc["resumeToken"] if doc else None


async def test_checkpoint_stores_only_up_to_the_acknowledged_prefix(collection: Any) -> None:
    cp, ledger, _ = await make(collection)
    for n in range(3):
        await ledger.reserve(n, tok(n))
    ledger.complete(1)
    ledger.complete(2)
    assert await cp.checkpoint() is False  # event 0 still in flight: nothing is safe
    assert await stored(collection) is None
    ledger.complete(0)
    assert await cp.checkpoint() is True
    assert await stored(collection) == tok(2)
    assert await cp.checkpoint() is False  # not advanced: no write


async def test_post_batch_token_stored_once_everything_read_before_it_completed(collection: Any) -> None:
    cp, ledger, _ = await make(collection)
    await ledger.reserve(0, tok(0))
    cp.note_stream_mark(StreamMark(tok(5), last_read_seq=0))  # idle poll after reading event 0
    assert await cp.checkpoint() is False  # event 0 pending: the post-batch token is not safe
    ledger.complete(0)
    assert await cp.checkpoint() is True
    assert await stored(collection) == tok(5)


async def test_older_mark_never_overrides_a_newer_acknowledged_event(collection: Any) -> None:
    cp, ledger, _ = await make(collection)
    cp.reset_position(tok(0))
    cp.note_stream_mark(StreamMark(tok(1), last_read_seq=-1))
    for n in (2, 3):
        await ledger.reserve(n, tok(n))
        ledger.complete(n)
    assert await cp.checkpoint() is True
    assert await stored(collection) == tok(3)


async def test_first_position_is_stored_at_once(collection: Any) -> None:
    """A fresh start stores where the stream opened, so a crash before any event cannot skip events."""
    cp, _, _ = await make(collection, idle=60.0)
    assert cp.has_position is False
    cp.note_stream_mark(StreamMark(tok(1), last_read_seq=-1))
    assert await cp.checkpoint() is True
    assert await stored(collection) == tok(1)
    assert cp.has_position is True


async def test_idle_stream_token_refreshed_at_most_every_idle_interval(collection: Any) -> None:
    """Invariant 4: a quiet stream's position stays fresh, but an idle connector doesn't write constantly."""
    cp, _, clock = await make(collection, idle=60.0)
    cp.reset_position(tok(0))  # resumed from a stored token
    cp.note_stream_mark(StreamMark(tok(1), last_read_seq=-1))
    assert await cp.checkpoint() is False  # nothing advanced and the idle interval has not passed
    clock.now += 61
    assert await cp.checkpoint() is True
    assert await stored(collection) == tok(1)
    cp.note_stream_mark(StreamMark(tok(2), last_read_seq=-1))
    clock.now += 30
    assert await cp.checkpoint() is False
    assert await stored(collection) == tok(1)
    clock.now += 31
    assert await cp.checkpoint() is True
    assert await stored(collection) == tok(2)


async def test_invalidate_mark_is_stored_with_its_flag(collection: Any) -> None:
    cp, ledger, _ = await make(collection)
    await ledger.reserve(0, tok(9))
    ledger.complete(0)
    cp.note_stream_mark(StreamMark(tok(9), last_read_seq=0, invalidated=True))
    assert await cp.checkpoint() is True
    loaded = await TokenStore(collection, "c").load()
    assert loaded is not None and loaded.invalidated and loaded.token == tok(9)


class FailingCollection:
    async def update_one(self, *args: Any, **kwargs: Any) -> None:
        raise AutoReconnect("primary stepped down")


async def test_failed_checkpoint_write_logs_72007_and_marks_unhealthy(
    collection: Any, caplog: pytest.LogCaptureFixture
) -> None:
    ledger = InFlightLedger(10)
    cp = Checkpointer(
        TokenStore(FailingCollection(), "c"),
        ledger,
        namespace="n",
        pipeline_hash="h",
        interval=1,
        idle_interval=60,
    )
    await ledger.reserve(0, tok(0))
    ledger.complete(0)
    with caplog.at_level(logging.ERROR):
        assert await cp.checkpoint() is False
    assert cp.healthy is False
    assert any(getattr(r, "code", None) == 72007 for r in caplog.records)
    # The position is kept and retried on the next tick.
    assert cp.candidate() is not None


async def test_store_error_is_a_checkpoint_error() -> None:
    with pytest.raises(CheckpointError):
        await TokenStore(FailingCollection(), "c").store(
            tok(1), cluster_time=None, namespace="n", pipeline_hash="h"
        )
