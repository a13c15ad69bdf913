"""Invariant 11 in the publisher: per-channel pacing under Ably's rate limit, a throttled channel slowing
down alone, and one message per channel per request so a partial answer cannot reorder a channel."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from connector.ably.pacing import MIN_RATE, RECOVERY_S, ChannelPacer
from tests.unit.ably_fakes import FakeAbly, make_message
from tests.unit.test_publisher import WAIT_S, ids, rig


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_bucket_allows_one_second_of_burst_then_the_rate() -> None:
    clock = Clock()
    pacer = ChannelPacer(50, clock=clock)
    assert pacer.allowance("a", 80) == 50
    pacer.spend("a", 50)
    assert pacer.allowance("a", 30) == 0
    assert pacer.wait_s("a", 30) == pytest.approx(10 / 50)  # a worthwhile batch: 0.2 s of rate
    clock.now += 0.2
    assert pacer.allowance("a", 30) == 10
    assert pacer.allowance("b", 5) == 5  # every channel has its own bucket


def test_rejection_halves_the_channels_rate_and_it_recovers_linearly() -> None:
    clock = Clock()
    pacer = ChannelPacer(50, clock=clock)
    pacer.rejected("a")
    assert pacer.channel_rate("a") == 25
    pacer.rejected("a")
    assert pacer.channel_rate("a") == 12.5
    assert pacer.channel_rate("b") == 50
    clock.now += RECOVERY_S / 2
    assert pacer.channel_rate("a") == pytest.approx(12.5 + 25)
    clock.now += RECOVERY_S
    assert pacer.channel_rate("a") == 50
    for _ in range(20):
        pacer.rejected("c")
    assert pacer.channel_rate("c") == MIN_RATE


def test_throttled_time_is_counted_until_the_backlog_is_gone() -> None:
    clock = Clock()
    pacer = ChannelPacer(10, clock=clock)
    pacer.spend("a", 10)
    assert pacer.allowance("a", 5) == 0
    pacer.wait_s("a", 5)
    assert set(pacer.stats.throttled_now) == {"a"}
    clock.now += 3
    pacer.settled("a", backlog=True)
    assert pacer.throttled_seconds() == pytest.approx(3)
    pacer.settled("a", backlog=False)
    clock.now += 5
    assert pacer.throttled_seconds() == pytest.approx(3)
    assert pacer.stats.throttled_now == {}


def test_rate_zero_is_off() -> None:
    pacer = ChannelPacer(0)
    assert not pacer.enabled
    assert pacer.allowance("a", 10_000) == 10_000


async def test_paced_channel_goes_one_message_per_request_at_its_rate_and_holds_back_no_other() -> None:
    fake = FakeAbly()
    async with rig(fake=fake, channel_rate=20.0) as r:
        started = time.monotonic()
        hot = [make_message(i, "hot") for i in range(30)]
        quiet = [make_message(100 + i, f"q{i}") for i in range(10)]
        await r.submit(*hot)
        await r.submit(*quiet)
        await r.drained()
        elapsed = time.monotonic() - started
    assert fake.delivered["hot"] == ids(hot)
    # One second of burst (20), then 20/s: the last 10 take about half a second.
    assert elapsed >= 0.4
    assert all(len([e for e in req.entries if e[0] == "hot"]) <= 1 for req in fake.batch_requests)
    # The quiet channels went out with the first requests, not behind the hot channel's backlog.
    first_quiet = [i for i, req in enumerate(fake.batch_requests) if any(e[0] == "q9" for e in req.entries)]
    assert first_quiet and first_quiet[0] <= 3
    assert r.publisher.pacer.stats.paced_waits > 0


async def test_channel_rate_limited_by_ably_slows_down_alone_and_keeps_its_order() -> None:
    """Ably refuses "hot" three times with 42913 (another publisher shares it): its rate halves each time,
    it is retried as its bucket allows (no exponential sleep), and "cold" is untouched."""
    fake = FakeAbly()
    refusals = {"n": 3}

    def fault(channel: str, _msg: dict[str, Any]) -> dict[str, Any] | None:
        if channel == "hot" and refusals["n"] > 0:
            refusals["n"] -= 1
            return {"code": 42913, "statusCode": 429, "message": "channel rate"}
        return None

    fake.entry_fault = fault
    async with rig(fake=fake, channel_rate=50.0) as r:
        hot = [make_message(i, "hot") for i in range(5)]
        cold = [make_message(10 + i, "cold") for i in range(5)]
        await r.submit(*hot, *cold)
        await r.drained()
        assert r.publisher.pacer.channel_rate("hot") < 50
        assert r.publisher.pacer.channel_rate("cold") == 50
    assert fake.delivered["hot"] == ids(hot)
    assert fake.delivered["cold"] == ids(cold)
    assert r.publisher.stats.rate_limited_requests == 3
    assert r.publisher.stats.order_hazards == 0
    assert r.sleep.delays == []  # paced by the bucket, not by the exponential backoff


async def test_first_spec_refused_later_accepted_cannot_reorder_a_paced_channel() -> None:
    """The hazard Ably's independent per-spec publishing allows: the fake refuses the first entry of each
    channel in a request and accepts the rest. Paced, a request holds one entry per channel: nothing is
    ever accepted ahead of a refused entry."""
    fake = FakeAbly()
    fake.sticky_channel_failures = False
    refused: set[str] = set()

    def fault(channel: str, msg: dict[str, Any]) -> dict[str, Any] | None:
        if msg["id"] not in refused and len(refused) < 20:
            refused.add(msg["id"])
            return {"code": 42913, "statusCode": 429, "message": "channel rate"}
        return None

    fake.entry_fault = fault
    async with rig(fake=fake, channel_rate=1000.0) as r:
        msgs = [make_message(i, "abc"[i % 3]) for i in range(30)]
        await r.submit(*msgs)
        await asyncio.wait_for(r.drained(), WAIT_S)
    for channel in "abc":
        assert fake.delivered[channel] == ids([m for m in msgs if m.channel == channel])
    assert r.publisher.stats.order_hazards == 0
