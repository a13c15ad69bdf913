"""The per-channel publish rate limit (42913) as Ably describes it, and the counters a pacing test reads.

Every test runs on a clock it moves by hand, so no token comes back unless the test says so.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from emulators.ably import AblyEmulator

KEY = "app.key:secret"
OTHER_KEY = "app.other:pw"


class FakeClock:
    """Monotonic seconds, moved by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def ably(clock: FakeClock) -> AsyncIterator[AblyEmulator]:
    async with AblyEmulator(keys=[KEY, OTHER_KEY], channel_rate_limit=2, clock=clock) as emulator:
        yield emulator


def _client(ably: AblyEmulator, key: str = KEY) -> httpx.AsyncClient:
    name, _, secret = key.partition(":")
    return httpx.AsyncClient(base_url=ably.url, auth=(name, secret), headers={"X-Ably-Version": "6"})


@pytest.fixture
async def client(ably: AblyEmulator) -> AsyncIterator[httpx.AsyncClient]:
    async with _client(ably) as http:
        yield http


def _spec(channels: str | list[str], *data: str) -> dict[str, Any]:
    return {"channels": channels, "messages": [{"data": d} for d in data]}


def _pacing(ably: AblyEmulator) -> tuple[int, dict[str, int], int]:
    stats = ably.stats()
    return stats["rate_limited"], stats["rate_limited_by_channel"], stats["rate_limited_requests"]


async def test_one_budget_per_channel_shared_by_every_key(
    ably: AblyEmulator, client: httpx.AsyncClient
) -> None:
    async with _client(ably, OTHER_KEY) as other:
        assert (await client.post("/channels/c/messages", json={"data": "1"})).status_code == 201
        assert (await other.post("/channels/c/messages", json={"data": "2"})).status_code == 201
        limited = await other.post("/channels/c/messages", json={"data": "3"})
        assert limited.status_code == 429
        error = limited.json()["error"]
        assert (error["code"], error["statusCode"]) == (42913, 429)
        assert limited.headers["X-Ably-ErrorCode"] == "42913"
        assert (await client.post("/channels/c/messages", json={"data": "4"})).status_code == 429
        # Another channel has a budget of its own.
        assert (await other.post("/channels/d/messages", json={"data": "5"})).status_code == 201
    assert [m["data"] for m in ably.messages("c")] == ["1", "2"]  # refused messages are not delivered
    assert _pacing(ably) == (2, {"c": 2}, 2)
    assert ably.stats()["requests_by_key"] == {"app.key": 2, "app.other": 3}


async def test_a_single_channel_array_counts_as_one_message(
    ably: AblyEmulator, client: httpx.AsyncClient
) -> None:
    # Ably: "The publish will only count as a single message for the purpose of per-channel rate limit".
    for start in (0, 10):
        array = [{"data": str(start + i)} for i in range(10)]
        assert (await client.post("/channels/c/messages", json=array)).status_code == 201
    refused = await client.post("/channels/c/messages", json=[{"data": "x"}, {"data": "y"}])
    assert refused.status_code == 429
    assert len(ably.messages("c")) == 20
    stats = ably.stats()
    assert (stats["rate_limited"], stats["messages_rejected"]) == (1, 2)


async def test_a_batchspec_counts_one_on_each_of_its_channels(
    ably: AblyEmulator, client: httpx.AsyncClient
) -> None:
    first = await client.post("/messages", json=[_spec(["a", "b"], "1", "2", "3"), _spec("a", "4")])
    assert first.status_code == 201  # a: two specs, two tokens; b: one
    second = await client.post("/messages", json=_spec(["a", "b"], "5", "6"))
    assert second.status_code == 400
    entries = second.json()["batchResponse"]
    assert [e["channel"] for e in entries] == ["a", "b"]
    assert (entries[0]["error"]["code"], entries[0]["error"]["statusCode"]) == (42913, 429)
    assert entries[1] == {"channel": "b", "messageId": entries[1]["messageId"]}
    assert [m["data"] for m in ably.messages("a")] == ["1", "2", "3", "4"]
    assert [m["data"] for m in ably.messages("b")] == ["1", "2", "3", "5", "6"]
    assert _pacing(ably) == (1, {"a": 1}, 1)
    assert ably.stats()["messages_rejected"] == 2


async def test_a_budget_running_out_mid_request_accepts_a_channels_earlier_specs_in_request_order(
    ably: AblyEmulator, client: httpx.AsyncClient
) -> None:
    ably.configure(channel_rate_limit=3)
    specs = [_spec("c" if i % 2 == 0 else "d", str(i)) for i in range(10)]  # c: 0 2 4 6 8, d: 1 3 5 7 9
    response = await client.post("/messages", json=specs)
    assert response.status_code == 400
    entries = response.json()["batchResponse"]
    assert [e["channel"] for e in entries] == [s["channels"] for s in specs]
    assert ["messageId" in e for e in entries] == [True] * 6 + [False] * 4
    assert {e["error"]["code"] for e in entries[6:]} == {42913}
    # Accepted in request order: each channel's first three specs, never a later one before an earlier one.
    assert [m["data"] for m in ably.messages()] == ["0", "1", "2", "3", "4", "5"]
    assert _pacing(ably) == (4, {"c": 2, "d": 2}, 1)


async def test_tokens_come_back_at_the_rate(
    ably: AblyEmulator, client: httpx.AsyncClient, clock: FakeClock
) -> None:
    async def publish(data: str) -> int:
        return (await client.post("/channels/c/messages", json={"data": data})).status_code

    assert [await publish(d) for d in "abc"] == [201, 201, 429]
    clock.now += 0.25  # half a token at 2/s
    assert await publish("d") == 429
    clock.now += 0.25
    assert [await publish(d) for d in "ef"] == [201, 429]
    clock.now += 60  # the bucket holds one second of rate, no more
    assert [await publish(d) for d in "ghi"] == [201, 201, 429]
    assert [m["data"] for m in ably.messages("c")] == ["a", "b", "e", "g", "h"]
    assert _pacing(ably) == (4, {"c": 4}, 4)


async def test_rate_limited_requests_counts_requests_with_at_least_one_refusal(
    ably: AblyEmulator, client: httpx.AsyncClient, clock: FakeClock
) -> None:
    ably.configure(channel_rate_limit=1)
    # One refusal-free request, then one refusing three entries of two channels, then one refusing nothing.
    assert (await client.post("/messages", json=[_spec("a", "1"), _spec("b", "2")])).status_code == 201
    mixed = [_spec("a", "3"), _spec("b", "4"), _spec("a", "5"), _spec("c", "6")]
    assert (await client.post("/messages", json=mixed)).status_code == 400
    clock.now += 1
    assert (await client.post("/messages", json=_spec("a", "7"))).status_code == 201
    assert _pacing(ably) == (3, {"a": 2, "b": 1}, 1)
    stats = (await client.get("/_emulator/stats")).json()
    assert (stats["rate_limited"], stats["rate_limited_by_channel"], stats["rate_limited_requests"]) == (
        3,
        {"a": 2, "b": 1},
        1,
    )
    assert stats["publish_requests"] == 3


async def test_a_fault_answering_42913_is_not_counted_as_rate_limiting(
    ably: AblyEmulator, client: httpx.AsyncClient
) -> None:
    ably.inject_fault(code=42913, count=1)
    ably.inject_fault(mode="partial", channels="c", code=42913, count=1)
    assert (await client.post("/channels/c/messages", json={"data": "1"})).status_code == 429
    assert (await client.post("/messages", json=_spec("c", "2"))).status_code == 400
    assert _pacing(ably) == (0, {}, 0)
    assert ably.stats()["faults_served"] == 2


async def test_reset_forgets_the_buckets_and_the_pacing_counters(
    ably: AblyEmulator, client: httpx.AsyncClient
) -> None:
    for data in "abc":
        await client.post("/channels/c/messages", json={"data": data})
    assert _pacing(ably) == (1, {"c": 1}, 1)
    ably.reset()
    assert _pacing(ably) == (0, {}, 0)
    assert [(await client.post("/channels/c/messages", json={"data": d})).status_code for d in "de"] == [
        201,
        201,
    ]
