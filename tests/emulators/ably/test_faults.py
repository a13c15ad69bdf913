"""Fault injection over /_emulator/faults and the Python API: error statuses, delays, dropped
connections, refused connections on the same port, and partial batch failures."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from emulators.ably import AblyEmulator

RECOVERY_DEADLINE_S = 10.0  # a generous bound on waiting for the emulator to listen again


async def _publish(client: httpx.AsyncClient, data: str, channel: str = "c") -> httpx.Response:
    return await client.post(f"/channels/{channel}/messages", json={"data": data})


async def test_status_fault_answers_the_next_n_publishes_then_recovers(
    ably: AblyEmulator, client: httpx.AsyncClient
) -> None:
    injected = await client.post("/_emulator/faults", json={"status": 503, "code": 50003, "count": 2})
    assert injected.status_code == 200
    failures = [await _publish(client, str(i)) for i in range(2)]
    assert [r.status_code for r in failures] == [503, 503]
    assert failures[0].json()["error"]["code"] == 50003
    assert failures[0].headers["X-Ably-ErrorCode"] == "50003"
    assert (await _publish(client, "ok")).status_code == 201
    assert [m["data"] for m in ably.messages()] == ["ok"]
    assert ably.stats()["faults_served"] == 2


async def test_fault_without_count_lasts_until_cleared(ably: AblyEmulator, client: httpx.AsyncClient) -> None:
    ably.inject_fault(status=500)
    assert [(await _publish(client, "x")).status_code for _ in range(3)] == [500, 500, 500]
    assert (await client.get("/_emulator/faults")).json()["faults"][0]["served"] == 3
    assert (await client.delete("/_emulator/faults")).status_code == 200
    assert (await _publish(client, "x")).status_code == 201


async def test_fault_with_duration_expires(ably: AblyEmulator, client: httpx.AsyncClient) -> None:
    ably.inject_fault(status=504, code=50003, duration_s=0.2)
    assert (await _publish(client, "x")).status_code == 504
    await asyncio.sleep(0.3)
    assert (await _publish(client, "x")).status_code == 201


async def test_rate_limit_fault_by_code_gets_status_429(client: httpx.AsyncClient) -> None:
    await client.post("/_emulator/faults", json={"code": 42913, "count": 1})
    response = await _publish(client, "x")
    assert response.status_code == 429
    assert response.json()["error"]["code"] == 42913


async def test_faults_target_publishes_only_unless_target_all(
    ably: AblyEmulator, client: httpx.AsyncClient
) -> None:
    ably.inject_fault(status=500, count=1)
    assert (await client.get("/time")).status_code == 200
    assert (await client.get("/channels/c/messages")).status_code == 200
    ably.clear_faults()
    ably.inject_fault(status=500, count=2, target="all")
    assert (await client.get("/time")).status_code == 500
    assert (await client.get("/channels/c/messages")).status_code == 500
    assert (await client.get("/time")).status_code == 200


async def test_channel_filtered_fault_hits_only_requests_touching_those_channels(
    ably: AblyEmulator, client: httpx.AsyncClient
) -> None:
    ably.inject_fault(status=500, channels=["hot"])
    assert (await _publish(client, "x", channel="cold")).status_code == 201
    assert (await _publish(client, "x", channel="hot")).status_code == 500
    batch = await client.post("/messages", json={"channels": ["cold", "hot"], "messages": {"data": "x"}})
    assert batch.status_code == 500


async def test_delay_fault_delays_then_answers_normally(
    ably: AblyEmulator, client: httpx.AsyncClient
) -> None:
    await client.post("/_emulator/faults", json={"mode": "delay", "delay_ms": 300, "count": 1})
    started = time.monotonic()
    response = await _publish(client, "slow")
    assert time.monotonic() - started >= 0.3
    assert response.status_code == 201
    assert [m["data"] for m in ably.messages()] == ["slow"]


async def test_delay_longer_than_client_timeout_gives_a_read_timeout(
    ably: AblyEmulator, client: httpx.AsyncClient
) -> None:
    ably.inject_fault(mode="delay", delay_ms=2000, count=1)
    with pytest.raises(httpx.ReadTimeout):
        await client.post("/channels/c/messages", json={"data": "x"}, timeout=0.2)


async def test_drop_fault_closes_the_connection_without_a_response(
    ably: AblyEmulator, client: httpx.AsyncClient
) -> None:
    await client.post("/_emulator/faults", json={"mode": "drop", "count": 1})
    with pytest.raises(httpx.RemoteProtocolError):
        await _publish(client, "lost")
    assert ably.messages() == []
    assert (await _publish(client, "after")).status_code == 201
    stats = ably.stats()
    assert stats["status_counts"]["dropped"] == 1
    assert stats["faults_served"] == 1


async def _wait_until_listening(url: str) -> float:
    """Poll /time until it answers; return when (monotonic) it did."""
    deadline = time.monotonic() + RECOVERY_DEADLINE_S
    async with httpx.AsyncClient(base_url=url, headers={"X-Ably-Version": "6"}) as probe:
        while True:
            try:
                if (await probe.get("/time")).status_code == 200:
                    return time.monotonic()
            except httpx.ConnectError:
                if time.monotonic() > deadline:
                    raise
            await asyncio.sleep(0.05)


async def test_refuse_fault_refuses_connections_then_listens_again_on_the_same_port(
    ably: AblyEmulator, client: httpx.AsyncClient
) -> None:
    port = ably.port
    started = time.monotonic()
    response = await client.post("/_emulator/faults", json={"mode": "refuse", "duration_s": 0.5})
    assert response.status_code == 200
    assert response.json()["faults"][0]["mode"] == "refuse"
    # Both the kept-alive connection and new ones fail while refusing.
    with pytest.raises(httpx.ConnectError):
        await _publish(client, "refused")
    async with httpx.AsyncClient() as fresh:
        with pytest.raises(httpx.ConnectError):
            await fresh.get(f"{ably.url}/time")
    recovered_at = await _wait_until_listening(ably.url)
    assert recovered_at - started >= 0.5
    assert ably.port == port
    assert (await _publish(client, "back")).status_code == 201
    assert [m["data"] for m in ably.messages()] == ["back"]


async def test_clear_faults_ends_a_refusal_at_once(ably: AblyEmulator, client: httpx.AsyncClient) -> None:
    ably.inject_fault(mode="refuse", duration_s=60)
    with pytest.raises(httpx.ConnectError):
        await _publish(client, "refused")
    assert [f["mode"] for f in ably.active_faults()] == ["refuse"]
    ably.clear_faults()
    assert (await _publish(client, "back")).status_code == 201
    assert ably.active_faults() == []


async def test_partial_fault_fails_listed_channels_with_40020_entries(
    ably: AblyEmulator, client: httpx.AsyncClient
) -> None:
    await client.post(
        "/_emulator/faults", json={"mode": "partial", "channels": ["b"], "code": 50000, "count": 1}
    )
    specs = [{"channels": ch, "messages": {"id": f"id-{ch}", "data": ch}} for ch in ("a", "b", "c")]
    response = await client.post("/messages", json=specs)
    assert response.status_code == 400
    body = response.json()
    assert body["error"]["code"] == 40020
    entries = body["batchResponse"]
    assert entries[0] == {"channel": "a", "messageId": "id-a"}
    assert entries[1]["channel"] == "b"
    assert entries[1]["error"]["code"] == 50000
    assert entries[1]["error"]["statusCode"] == 500
    assert entries[2] == {"channel": "c", "messageId": "id-c"}
    assert [m["channel"] for m in ably.messages()] == ["a", "c"]
    # The fault was used up: the retry of b succeeds, a and c are dropped as duplicates.
    retry = await client.post("/messages", json=specs)
    assert retry.status_code == 201
    assert [m["channel"] for m in ably.messages()] == ["a", "c", "b"]
    assert ably.stats()["duplicates_dropped"] == 2


async def test_partial_fault_with_a_4xx_code_uses_its_status(
    ably: AblyEmulator, client: httpx.AsyncClient
) -> None:
    ably.inject_fault(mode="partial", channels=["x"], code=40160)
    response = await client.post("/messages", json={"channels": ["x", "y"], "messages": {"data": "d"}})
    entries = response.json()["batchResponse"]
    assert entries[0]["error"] == {
        "code": 40160,
        "statusCode": 401,
        "message": "injected fault (partial, code 40160)",
        "href": "https://help.ably.io/error/40160",
    }
    assert "messageId" in entries[1]
    # A single-channel publish to a partially failing channel gets that error as its answer.
    single = await _publish(client, "d", channel="x")
    assert single.status_code == 401
    assert single.json()["error"]["code"] == 40160


@pytest.mark.parametrize(
    "spec",
    [
        {"mode": "bogus"},
        {"mode": "delay"},
        {"mode": "status", "entries": [0]},
        {"mode": "partial", "entries": []},
        {"mode": "partial", "entries": 0},
        {"mode": "partial", "entries": [True]},
        {"mode": "partial", "entries": ["0"]},
        {"status": 500, "count": 0},
        {"status": 500, "duration_s": -1},
        {"status": 500, "channels": []},
        {"status": 500, "target": "elsewhere"},
    ],
)
async def test_invalid_fault_specs_are_rejected(client: httpx.AsyncClient, spec: dict[str, object]) -> None:
    response = await client.post("/_emulator/faults", json=spec)
    assert response.status_code == 400
    assert response.json()["error"]
    assert (await client.get("/_emulator/faults")).json()["faults"] == []


async def test_several_faults_apply_in_order(ably: AblyEmulator, client: httpx.AsyncClient) -> None:
    await client.post("/_emulator/faults", json=[{"status": 503, "count": 1}, {"status": 500, "count": 1}])
    statuses = [(await _publish(client, "x")).status_code for _ in range(3)]
    assert statuses == [503, 500, 201]


async def test_refuse_right_after_clearing_a_refusal_still_refuses(
    ably: AblyEmulator, client: httpx.AsyncClient
) -> None:
    ably.inject_fault(mode="refuse", duration_s=60)
    ably.clear_faults()  # listening again is still starting up on the loop...
    ably.inject_fault(mode="refuse", duration_s=60)  # ...when the next refusal comes
    await asyncio.sleep(0.05)
    with pytest.raises(httpx.ConnectError):
        await _publish(client, "refused")
    ably.clear_faults()
    assert (await _publish(client, "back")).status_code == 201


async def test_back_to_back_refuse_and_clear_end_up_listening(
    ably: AblyEmulator, client: httpx.AsyncClient
) -> None:
    for _ in range(3):
        ably.inject_fault(mode="refuse", duration_s=60)
        ably.clear_faults()
    assert (await _publish(client, "back")).status_code == 201
    assert ably.active_faults() == []
