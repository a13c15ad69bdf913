"""The overflow's ordering rules against a fake store: a channel returns to memory only when nothing of
it is stored, being written or waiting to be written; nothing is loaded past what the reader has read."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from connector.ably.ledger import InFlightLedger
from connector.ably.outbound import OutboundMessage
from connector.ably.overflow import Overflow
from connector.ably.publisher import Publisher


class FakeStore:
    def __init__(self) -> None:
        self.rows: dict[str, OutboundMessage] = {}
        self.write_gate = asyncio.Event()
        self.write_gate.set()
        self.deleted: list[str] = []

    async def channels(self) -> list[str]:
        return sorted({msg.channel for msg in self.rows.values()})

    async def write(self, msgs: Sequence[OutboundMessage]) -> None:
        await self.write_gate.wait()
        for msg in msgs:
            key = msg.message["id"]
            self.rows[key] = OutboundMessage(
                -1, msg.channel, msg.message, msg.size, {"spill": key, "key": key}
            )

    async def load(self, channel: str, after: str | None, upto: str, limit: int) -> list[OutboundMessage]:
        keys = sorted(
            k for k, m in self.rows.items() if m.channel == channel and (after is None or k > after)
        )
        return [self.rows[k] for k in keys if k <= upto][:limit]

    async def any_after(self, channel: str, after: str | None) -> bool:
        return any(m.channel == channel and (after is None or k > after) for k, m in self.rows.items())

    async def delete(self, keys: Sequence[str]) -> None:
        self.deleted.extend(keys)
        for key in keys:
            self.rows.pop(key, None)


class NoClient:
    async def publish_batch(self, messages: Sequence[OutboundMessage]) -> list[Any]:
        return [None] * len(messages)


def msg(n: int, channel: str = "hot") -> OutboundMessage:
    return OutboundMessage(n, channel, {"id": f"k{n:04d}", "name": "x", "data": "{}"}, 10, {})


def overflow_with(store: FakeStore) -> tuple[Overflow, Publisher, InFlightLedger]:
    ledger = InFlightLedger(100)

    async def rejected(_m: OutboundMessage, _e: Any) -> None:
        return None

    publisher = Publisher(NoClient(), ledger, on_rejected=rejected, channel_rate=50.0)
    return Overflow(store, publisher, max_backlog=4), publisher, ledger


async def test_a_channel_stays_spilling_while_a_write_of_it_is_in_flight() -> None:
    store = FakeStore()
    overflow, _, ledger = overflow_with(store)
    overflow.spilling.add("hot")
    overflow.read_up_to = "k9999"
    ledger.add(1, {})
    assert overflow.route([msg(1)]) == []
    store.write_gate.clear()
    flushing = asyncio.create_task(overflow.flush(ledger.complete))
    await asyncio.sleep(0)
    await overflow.drain_once()  # the store is empty, but a write of "hot" is under way
    assert "hot" in overflow.spilling
    store.write_gate.set()
    await flushing
    assert ledger.pending == 0  # spilled: done for the source
    await overflow.drain_once()  # loads k0001 into the publisher
    assert "hot" in overflow.spilling
    await overflow.drain_once()  # nothing after it, nothing being written: back to memory
    assert "hot" not in overflow.spilling


async def test_nothing_is_loaded_past_what_the_reader_has_read() -> None:
    store = FakeStore()
    overflow, publisher, _ = overflow_with(store)
    await store.write([msg(1), msg(5)])
    await overflow.start()
    assert overflow.spilling == {"hot"}
    overflow.read_up_to = "k0003"
    await overflow.drain_once()
    assert publisher.backlog("hot") == 1  # k0001 only: k0005 comes after what this term has read
    overflow.read_up_to = "k0009"
    await overflow.drain_once()
    assert publisher.backlog("hot") == 2


async def test_an_unthrottled_channel_is_never_spilled() -> None:
    overflow, publisher, _ = overflow_with(FakeStore())
    batch = [msg(i, "quiet") for i in range(10)]
    assert overflow.route(batch) == batch
    assert not overflow.has_pending and not publisher.pacer.stats.throttled_now
