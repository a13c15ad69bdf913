"""Channel rate limit (42913) and simulated network latency."""

from __future__ import annotations

import time

import httpx

from emulators.ably import AblyEmulator


async def test_channel_rate_limit_answers_429_with_42913_per_channel(
    ably: AblyEmulator, client: httpx.AsyncClient
) -> None:
    # One message per second per channel: the second publish within the same second is refused.
    ably.configure(channel_rate_limit=1)
    assert (await client.post("/channels/a/messages", json={"data": "1"})).status_code == 201
    limited = await client.post("/channels/a/messages", json={"data": "2"})
    assert limited.status_code == 429
    assert limited.json()["error"]["code"] == 42913
    # Other channels have their own allowance.
    assert (await client.post("/channels/b/messages", json={"data": "1"})).status_code == 201
    assert [m["data"] for m in ably.messages("a")] == ["1"]
    assert ably.stats()["rate_limited"] == 1


async def test_rate_limit_in_a_batch_fails_only_that_channels_entry(
    ably: AblyEmulator, client: httpx.AsyncClient
) -> None:
    ably.configure(channel_rate_limit=1)
    # Each BatchSpec counts as one message toward its channel's limit, however many messages it has.
    first = await client.post("/messages", json={"channels": "a", "messages": [{"data": "1"}, {"data": "2"}]})
    assert first.status_code == 201
    second = await client.post(
        "/messages",
        json=[{"channels": "a", "messages": {"data": "3"}}, {"channels": "b", "messages": {"data": "4"}}],
    )
    assert second.status_code == 400
    entries = second.json()["batchResponse"]
    assert entries[0]["error"]["code"] == 42913
    assert entries[0]["error"]["statusCode"] == 429
    assert "messageId" in entries[1]


async def test_rate_limit_is_off_by_default(ably: AblyEmulator, client: httpx.AsyncClient) -> None:
    for i in range(50):
        assert (await client.post("/channels/a/messages", json={"data": str(i)})).status_code == 201
    assert len(ably.messages("a")) == 50


async def test_latency_delays_every_response_by_at_least_latency_ms(ably: AblyEmulator) -> None:
    ably.configure(latency_ms=150)
    version = {"X-Ably-Version": "6"}
    requests = [
        ("POST", "/channels/c/messages", version, 201),
        ("POST", "/channels/c/messages", {}, 400),  # error answers are delayed too
        ("GET", "/time", version, 200),
    ]
    async with httpx.AsyncClient(base_url=ably.url, auth=("app.key", "secret")) as http:
        for method, path, headers, expected in requests:
            started = time.monotonic()
            body = {"data": "x"} if method == "POST" else None
            response = await http.request(method, path, json=body, headers=headers)
            assert time.monotonic() - started >= 0.15
            assert response.status_code == expected


async def test_latency_does_not_slow_the_admin_path(ably: AblyEmulator, client: httpx.AsyncClient) -> None:
    ably.configure(latency_ms=150)
    started = time.monotonic()
    await client.post("/channels/c/messages", json={"data": "x"})
    assert time.monotonic() - started >= 0.15
    stats = (await client.get("/_emulator/stats")).json()
    assert stats["messages_delivered"] == 1
