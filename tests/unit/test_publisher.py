"""Publisher invariants against a fake Ably: per-channel order, one request per channel, limits, retries."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connector.ably.client import MAX_BODY_BYTES, AblyRestClient
from connector.ably.ledger import InFlightLedger
from connector.ably.outbound import OutboundMessage
from connector.ably.publisher import Publisher
from connector.errors import AblyAuthError, AblyError, AblyRetryableError
from tests.unit.ably_fakes import API_KEY, FakeAbly, SleepRecorder, error_response, make_message

PRIMARY = "http://ably.test"
# Generous bound for waits in tests (never asserted on; only keeps a broken test from hanging).
WAIT_S = 10.0


@dataclass
class Rig:
    """A publisher wired to a fake Ably, with its run() task."""

    fake: FakeAbly
    ledger: InFlightLedger
    publisher: Publisher
    sleep: SleepRecorder
    rejected: list[tuple[OutboundMessage, AblyError]] = field(default_factory=list)
    task: asyncio.Task[None] | None = None

    async def submit(self, *msgs: OutboundMessage) -> None:
        for msg in msgs:
            await self.ledger.reserve(msg.seq, msg.token)
            self.publisher.submit(msg)

    async def drained(self) -> None:
        assert await self.publisher.drain(WAIT_S), f"not drained: {self.publisher.stats}"


@contextlib.asynccontextmanager
async def rig(
    *,
    fake: FakeAbly | None = None,
    capacity: int = 1_000_000,
    on_rejected: Callable[[OutboundMessage, AblyError], Any] | None = None,
    sleep: Callable[[float], Awaitable[None]] | None = None,
    **options: Any,
) -> AsyncIterator[Rig]:
    fake = fake or FakeAbly()
    recorder = SleepRecorder()
    ledger = InFlightLedger(capacity)
    client = AblyRestClient(
        api_key=API_KEY, rest_url=PRIMARY, transport=fake.transport, sleep=SleepRecorder()
    )
    rejected: list[tuple[OutboundMessage, AblyError]] = []

    async def record_rejection(msg: OutboundMessage, err: AblyError) -> None:
        rejected.append((msg, err))
        if on_rejected is not None:
            await on_rejected(msg, err)

    publisher = Publisher(client, ledger, on_rejected=record_rejection, sleep=sleep or recorder, **options)
    r = Rig(fake, ledger, publisher, recorder, rejected)
    r.task = asyncio.create_task(publisher.run())
    try:
        yield r
    finally:
        await publisher.aclose()
        await asyncio.wait_for(asyncio.gather(r.task, return_exceptions=True), WAIT_S)
        await client.aclose()


async def until(condition: Callable[[], bool], max_yields: int = 100_000) -> None:
    """Yield to the event loop until `condition` holds (bounded by a number of yields, not by time)."""
    for _ in range(max_yields):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never became true")


def ids(msgs: list[OutboundMessage]) -> list[str]:
    return [m.message["id"] for m in msgs]


def per_channel(msgs: list[OutboundMessage]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for m in msgs:
        out.setdefault(m.channel, []).append(m.message["id"])
    return out


# -- adaptive batching ---------------------------------------------------------------------------------------


async def test_lone_message_is_sent_at_once_and_backlog_forms_the_next_batch() -> None:
    fake = FakeAbly()
    fake.gate = asyncio.Event()
    async with rig(fake=fake, concurrency=1) as r:
        first = make_message(0, "a")
        await r.submit(first)
        await asyncio.wait_for(fake.started.wait(), WAIT_S)
        # The lone message went out by itself, without waiting for company.
        assert fake.batch_requests[0].entries == [("a", "id-00000000")]
        later = [make_message(i, "bc"[i % 2]) for i in range(1, 10)]
        await r.submit(*later)
        fake.gate.set()
        await r.drained()
    assert len(fake.batch_requests) == 2
    # Ready order: "c" (seq 1) then "b" (seq 2); each channel's messages consecutively, in order.
    assert [int(mid[-1]) for _, mid in fake.batch_requests[1].entries] == [1, 3, 5, 7, 9, 2, 4, 6, 8]
    assert r.ledger.pending == 0 and r.ledger.checkpoint() == {"_data": 9}
    assert r.publisher.stats.published == 10 and r.publisher.stats.requests == 2


async def test_linger_waits_for_a_fuller_batch_but_sends_once_full() -> None:
    async with rig(linger_ms=60_000, max_batch_messages=5) as r:
        for i in range(5):
            await r.submit(make_message(i, f"ch{i}"))
            await asyncio.sleep(0)
        await r.drained()
    (request,) = r.fake.batch_requests
    assert len(request.entries) == 5


async def test_busy_channel_waits_while_other_channels_go_concurrently() -> None:
    fake = FakeAbly()
    fake.gate = asyncio.Event()
    async with rig(fake=fake, concurrency=4) as r:
        await r.submit(make_message(0, "a"))
        await asyncio.wait_for(fake.started.wait(), WAIT_S)
        await r.submit(make_message(1, "a"), make_message(2, "b"))
        await until(lambda: len(fake.batch_requests) >= 2)
        # "b" went out beside the in-flight request; the second "a" waits for the first.
        assert fake.batch_requests[1].entries == [("b", "id-00000002")]
        assert fake.channel_overlaps == 0
        fake.gate.set()
        await r.drained()
    assert fake.batch_requests[2].entries == [("a", "id-00000001")]
    assert fake.max_concurrent == 2


# -- completion and rejection --------------------------------------------------------------------------------


async def test_rejected_entry_goes_to_on_rejected_and_its_channel_moves_on() -> None:
    fake = FakeAbly()
    fake.sticky_channel_failures = False
    fake.entry_fault = lambda _ch, msg: (
        {"code": 40013, "statusCode": 400, "message": "bad data"} if msg["id"] == "id-00000001" else None
    )
    async with rig(fake=fake) as r:
        msgs = [make_message(i, "a") for i in range(3)]
        await r.submit(*msgs)
        await r.drained()
    assert [(m.seq, e.ably_code) for m, e in r.rejected] == [(1, 40013)]
    assert fake.delivered["a"] == ["id-00000000", "id-00000002"]
    assert r.ledger.pending == 0 and r.ledger.checkpoint() == {"_data": 2}
    assert r.publisher.stats.rejected == 1 and r.publisher.stats.published == 2


async def test_on_rejected_failure_stops_run_and_leaves_the_event_pending() -> None:
    class Stop(Exception):
        pass

    async def fail(_msg: OutboundMessage, _err: AblyError) -> None:
        raise Stop("ON_UNPUBLISHABLE=fail")

    fake = FakeAbly()
    fake.entry_fault = lambda _ch, _msg: {"code": 40010, "statusCode": 400, "message": "bad channel"}
    async with rig(fake=fake, on_rejected=fail) as r:
        await r.submit(make_message(0, "a"))
        assert r.task is not None
        with pytest.raises(Stop):
            await asyncio.wait_for(r.task, WAIT_S)
        assert r.ledger.pending == 1 and r.ledger.checkpoint() is None


async def test_auth_error_is_fatal_out_of_run() -> None:
    fake = FakeAbly()
    fake.fail_next(PRIMARY, lambda _r: error_response(40101, 401, "Invalid credentials"))
    async with rig(fake=fake) as r:
        await r.submit(make_message(0, "a"))
        assert r.task is not None
        with pytest.raises(AblyAuthError) as info:
            await asyncio.wait_for(r.task, WAIT_S)
        assert info.value.ably_code == 40101
        assert r.ledger.pending == 1
        assert not await r.publisher.drain(0.01)  # a stopped publisher does not pretend to drain


async def test_whole_request_rejection_is_bisected_to_the_poison_message() -> None:
    fake = FakeAbly()

    def poison(request: httpx.Request) -> httpx.Response | None:
        return error_response(40009, 413, "too large") if b"poison" in request.content else None

    fake.fail_next(PRIMARY, *[poison] * 50)
    fake.gate = asyncio.Event()
    async with rig(fake=fake, concurrency=1) as r:
        await r.submit(make_message(0, "z"))
        await asyncio.wait_for(fake.started.wait(), WAIT_S)
        msgs = [make_message(i, "ab"[i % 2], data="poison" if i == 5 else None) for i in range(1, 9)]
        await r.submit(*msgs)
        fake.gate.set()
        await r.drained()
    assert [m.seq for m, _ in r.rejected] == [5]
    expected = per_channel([m for m in msgs if m.seq != 5])
    assert {ch: fake.delivered[ch] for ch in expected} == expected


# -- retries -------------------------------------------------------------------------------------------------


async def test_partial_failure_retries_only_the_failed_entry_and_counts_the_order_hazard() -> None:
    """Without a per-channel rate limit several entries of a channel share a request. Ably accepts a5
    although a3 failed: a5 has reached subscribers, so it is complete (never re-sent) and the hazard is
    counted; only a3 is retried."""
    fake = FakeAbly()
    fake.sticky_channel_failures = False
    fake.gate = asyncio.Event()
    failures = {"id-00000003": 1}

    def fault(_ch: str, msg: dict[str, Any]) -> dict[str, Any] | None:
        if failures.get(msg["id"], 0) > 0:
            failures[msg["id"]] -= 1
            return {"code": 50000, "statusCode": 500, "message": "internal"}
        return None

    fake.entry_fault = fault
    async with rig(fake=fake, concurrency=1) as r:
        await r.submit(make_message(0, "z"))
        await asyncio.wait_for(fake.started.wait(), WAIT_S)
        await r.submit(*[make_message(i, ch) for i, ch in enumerate("ababa", start=1)])
        fake.gate.set()
        await r.drained()
    second, third = fake.batch_requests[1:]
    # Consecutive messages of a channel go in one request, one BatchSpec each, in order.
    assert [mid[-1] for _, mid in second.entries] == ["1", "3", "5", "2", "4"]
    assert third.entries == [("a", "id-00000003")]
    assert fake.resent_ids == []
    assert sorted(fake.delivered["a"]) == ["id-00000001", "id-00000003", "id-00000005"]
    assert fake.delivered["b"] == ["id-00000002", "id-00000004"]
    assert r.publisher.stats.retries == 1 and r.ledger.pending == 0
    assert r.publisher.stats.order_hazards == 1
    assert r.sleep.delays == [1.0]


async def test_failed_entry_is_retried_before_anything_newer_of_its_channel() -> None:
    fake = FakeAbly()  # sticky: a failed entry fails the channel's later entries in that request too
    failures = {"id-00000001": 2}

    def fault(_ch: str, msg: dict[str, Any]) -> dict[str, Any] | None:
        if failures.get(msg["id"], 0) > 0:
            failures[msg["id"]] -= 1
            return {"code": 42913, "statusCode": 429, "message": "channel rate"}
        return None

    fake.entry_fault = fault
    async with rig(fake=fake) as r:
        msgs = [make_message(i, "a") for i in range(6)]
        await r.submit(*msgs)
        await r.drained()
    assert fake.delivered["a"] == ids(msgs)
    assert r.sleep.delays == [1.0, 2.0]


async def test_backoff_keeps_growing_while_a_channel_keeps_failing_despite_partial_progress() -> None:
    """Each round the first entry is accepted and the next refused: the channel's backoff grows instead of
    restarting at its first step (restarting is what made the connector hammer Ably)."""
    fake = FakeAbly()
    seen: set[str] = set()

    def fault(_ch: str, msg: dict[str, Any]) -> dict[str, Any] | None:
        if msg["id"] in seen or msg["id"] == "id-00000000":
            return None
        seen.add(msg["id"])
        return {"code": 42913, "statusCode": 429, "message": "channel rate"}

    fake.entry_fault = fault
    async with rig(fake=fake) as r:
        msgs = [make_message(i, "a") for i in range(6)]
        await r.submit(*msgs)
        await r.drained()
    assert fake.delivered["a"] == ids(msgs)
    assert r.sleep.delays == [1.0, 2.0, 4.0, 8.0, 16.0]


async def test_retryable_failures_are_retried_forever_with_growing_capped_backoff() -> None:
    fake = FakeAbly()
    fake.fail_next(PRIMARY, *[lambda _r: error_response(50000, 500)] * 4 * 12)  # 12 rounds of 4 attempts
    async with rig(fake=fake, retry_backoff_max=8.0) as r:
        msgs = [make_message(i, "a") for i in range(3)]
        await r.submit(*msgs)
        await r.drained()
    assert r.sleep.delays == [1.0, 2.0, 4.0] + [8.0] * 9
    assert fake.delivered["a"] == ids(msgs)
    assert r.publisher.stats.failed_requests == 12 and r.ledger.pending == 0
    assert isinstance(r.publisher.stats.last_error, AblyRetryableError)


async def test_channel_in_backoff_sends_nothing_newer_first() -> None:
    fake = FakeAbly()
    hot = {"failing": True}
    fake.entry_fault = lambda ch, _m: (
        {"code": 42913, "statusCode": 429, "message": "channel rate"}
        if ch == "hot" and hot["failing"]
        else None
    )
    release = asyncio.Event()

    async def held_sleep(_delay: float) -> None:
        await asyncio.wait_for(release.wait(), WAIT_S)

    async with rig(fake=fake, sleep=held_sleep) as r:
        await r.submit(make_message(0, "hot"), make_message(1, "cold"))
        await until(lambda: r.publisher.stats.retries > 0)
        await r.submit(make_message(2, "hot"), make_message(3, "cold"))
        await until(lambda: fake.delivered.get("cold") == ["id-00000001", "id-00000003"])
        # "cold" kept flowing; "hot" sent nothing newer while its first message waits out the backoff.
        assert all("id-00000002" not in [mid for _, mid in req.entries] for req in fake.batch_requests)
        hot["failing"] = False
        release.set()
        await r.drained()
    assert fake.delivered["hot"] == ["id-00000000", "id-00000002"]


# -- invariants under load -----------------------------------------------------------------------------------


async def test_request_limits_hold_under_a_large_random_load() -> None:
    rng = random.Random(7)
    fake = FakeAbly()
    async with rig(fake=fake, concurrency=4, max_batch_messages=1000) as r:
        msgs = []
        for i in range(4000):
            size = rng.choice([10, 10, 10, 100, 100, 1000, 20_000, 60_000])
            msgs.append(make_message(i, f"ch{rng.randrange(300)}", data="x" * size))
        for chunk in range(0, len(msgs), 500):
            await r.submit(*msgs[chunk : chunk + 500])
            await asyncio.sleep(0)
        await r.drained()
    assert fake.limit_violations == []
    assert all(len(req.channels) <= 100 and req.raw_size <= MAX_BODY_BYTES for req in fake.batch_requests)
    assert max(len(req.channels) for req in fake.batch_requests) == 100  # the limit was actually reached
    assert max(req.raw_size for req in fake.batch_requests) > 1_500_000  # and bodies got big
    assert dict(fake.delivered) == per_channel(msgs)
    assert fake.channel_overlaps == 0


async def test_at_most_one_request_per_channel_with_concurrency() -> None:
    rng = random.Random(11)
    fake = FakeAbly()
    fake.latency = lambda: rng.random() * 0.002
    async with rig(fake=fake, concurrency=8, max_batch_messages=50) as r:
        msgs = [make_message(i, f"ch{rng.randrange(40)}") for i in range(3000)]
        for chunk in range(0, len(msgs), 100):
            await r.submit(*msgs[chunk : chunk + 100])
            await asyncio.sleep(0)
        await r.drained()
    assert fake.channel_overlaps == 0
    assert fake.max_concurrent > 1  # requests really ran concurrently
    assert dict(fake.delivered) == per_channel(msgs)


async def _order_scenario(
    seed: int, n_msgs: int, n_channels: int, concurrency: int, fail_rate: float
) -> None:
    rng = random.Random(seed)
    fake = FakeAbly()
    fake.latency = lambda: rng.random() * 0.001

    def host_fault(_request: httpx.Request) -> httpx.Response | None:
        roll = rng.random()
        if roll < fail_rate / 2:
            return error_response(50000, 500)
        if roll < fail_rate:
            return error_response(42910, 429)
        return None

    def entry_fault(_ch: str, _msg: dict[str, Any]) -> dict[str, Any] | None:
        roll = rng.random()
        if roll < fail_rate / 2:
            return {"code": 42913, "statusCode": 429, "message": "channel rate"}
        if roll < fail_rate:
            return {"code": 50003, "statusCode": 504, "message": "timeout"}
        return None

    fake.fail_next(PRIMARY, *[host_fault] * 100_000)
    fake.entry_fault = entry_fault
    async with rig(fake=fake, concurrency=concurrency, max_batch_messages=rng.choice([1, 7, 50, 500])) as r:
        msgs = [make_message(i, f"ch{rng.randrange(n_channels)}") for i in range(n_msgs)]
        pos = 0
        while pos < len(msgs):
            step = rng.randrange(1, 40)
            await r.submit(*msgs[pos : pos + step])
            pos += step
            await asyncio.sleep(rng.random() * 0.001)
        await r.drained()
    assert fake.channel_overlaps == 0
    assert dict(fake.delivered) == per_channel(msgs)
    assert r.ledger.pending == 0 and r.ledger.checkpoint() == {"_data": n_msgs - 1}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32),
    n_msgs=st.integers(1, 300),
    n_channels=st.integers(1, 30),
    concurrency=st.integers(2, 8),
    fail_rate=st.sampled_from([0.0, 0.05, 0.3]),
)
def test_per_channel_order_holds_under_random_latency_and_faults(
    seed: int, n_msgs: int, n_channels: int, concurrency: int, fail_rate: float
) -> None:
    asyncio.run(asyncio.wait_for(_order_scenario(seed, n_msgs, n_channels, concurrency, fail_rate), 60))


# -- lifecycle -----------------------------------------------------------------------------------------------


async def test_drain_times_out_while_ably_holds_requests_and_aclose_stops_run() -> None:
    fake = FakeAbly()
    fake.gate = asyncio.Event()
    async with rig(fake=fake) as r:
        await r.submit(make_message(0, "a"))
        assert not await r.publisher.drain(0.01)
        assert r.publisher.stats.in_flight_requests == 1
        await r.publisher.aclose()
        assert r.task is not None
        await asyncio.wait_for(r.task, WAIT_S)  # returns normally on close
        assert r.publisher.stats.in_flight_requests == 0
        assert r.ledger.pending == 1
        with pytest.raises(RuntimeError):
            r.publisher.submit(make_message(1, "a"))
        await r.publisher.aclose()  # idempotent


async def test_drain_on_an_idle_publisher_is_immediate() -> None:
    async with rig() as r:
        assert await r.publisher.drain(0)


async def test_invalid_limits_are_refused() -> None:
    client = AblyRestClient(api_key=API_KEY, rest_url=PRIMARY, transport=FakeAbly().transport)
    ledger = InFlightLedger(10)

    async def noop(_m: OutboundMessage, _e: AblyError) -> None:
        return None

    bad_options: list[dict[str, Any]] = [
        {"max_channels_per_request": 101},
        {"max_batch_bytes": 3_000_000},
        {"concurrency": 0},
        {"linger_ms": -1},
    ]
    for bad in bad_options:
        with pytest.raises(ValueError):
            Publisher(client, ledger, on_rejected=noop, **bad)
    await client.aclose()
