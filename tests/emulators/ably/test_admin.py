"""The admin surface and the Python API: stats, runtime config, the SSE stream, run_in_thread."""

from __future__ import annotations

import asyncio
import threading

import httpx
import orjson
import pytest

import emulators.ably
from emulators.ably import AblyEmulator, run_in_thread

STREAM_TIMEOUT_S = 10.0


def test_public_api_is_exported_in_sorted_all() -> None:
    assert emulators.ably.__all__ == sorted(emulators.ably.__all__)
    for name in ("AblyEmulator", "AblyEmulatorAdmin", "run_in_thread"):
        assert name in emulators.ably.__all__
        assert getattr(emulators.ably, name) is not None


async def test_stats_count_requests_by_status_and_messages(
    ably: AblyEmulator, client: httpx.AsyncClient
) -> None:
    await client.post("/channels/a/messages", json={"id": "1", "data": "x"})
    await client.post("/channels/a/messages", json={"id": "1", "data": "x"})
    await client.post("/messages", json={"channels": ["a", "b"], "messages": {"data": "y"}})
    await client.post("/channels/%3Abad/messages", json={"data": "z"})
    await client.get("/time")
    stats = (await client.get("/_emulator/stats")).json()
    assert stats == ably.stats()
    assert stats["requests"] == 5
    assert stats["publish_requests"] == 4
    assert stats["messages_delivered"] == 3
    assert stats["duplicates_dropped"] == 1
    assert stats["messages_rejected"] == 1
    assert stats["status_counts"] == {"201": 3, "400": 1, "200": 1}
    assert stats["channels"] == {"a": 2, "b": 1}
    # Every authenticated request counts for its key (GET /time needs none).
    assert stats["requests_by_key"] == {"app.key": 4}


async def test_config_can_be_read_and_changed_at_runtime(
    ably: AblyEmulator, client: httpx.AsyncClient
) -> None:
    current = (await client.get("/_emulator/config")).json()
    assert current["max_message_size"] == 65536
    assert current["dedupe_window_s"] == 120.0
    changed = await client.post("/_emulator/config", json={"max_message_size": 5, "keys": ["app.new:pw"]})
    assert changed.status_code == 200
    assert changed.json()["max_message_size"] == 5
    # The old key no longer works, the new one does, and the new size limit applies.
    assert (await client.post("/channels/c/messages", json={"data": "x"})).status_code == 401
    async with httpx.AsyncClient(
        base_url=ably.url, auth=("app.new", "pw"), headers={"X-Ably-Version": "6"}
    ) as new:
        assert (await new.post("/channels/c/messages", json={"data": "123456"})).status_code == 413


@pytest.mark.parametrize(
    "change",
    [
        {"latency_ms": -1},
        {"max_message_size": 0},
        {"keys": ["no-colon"]},
        {"unknown": 1},
        {"latency_ms": "x"},
    ],
)
async def test_invalid_config_changes_are_rejected_and_change_nothing(
    ably: AblyEmulator, client: httpx.AsyncClient, change: dict[str, object]
) -> None:
    before = ably.config.public()
    response = await client.post("/_emulator/config", json=change)
    assert response.status_code == 400
    assert ably.config.public() == before


async def _read_events(response: httpx.Response, count: int) -> list[dict[str, object]]:
    events: list[dict[str, object]] = []
    async for line in response.aiter_lines():
        if line.startswith("data: "):
            events.append(orjson.loads(line[len("data: ") :]))
            if len(events) == count:
                break
    return events


async def test_stream_sends_new_messages_of_its_channel_as_server_sent_events(
    ably: AblyEmulator, client: httpx.AsyncClient
) -> None:
    await client.post("/channels/s/messages", json={"data": "before"})
    async with (
        httpx.AsyncClient(base_url=ably.url, timeout=STREAM_TIMEOUT_S) as subscriber,
        subscriber.stream("GET", "/_emulator/stream", params={"channel": "s", "replay": "1"}) as response,
    ):
        assert response.headers["content-type"].startswith("text/event-stream")
        reader = asyncio.create_task(_read_events(response, 3))
        await client.post("/channels/other/messages", json={"data": "ignored"})
        await client.post("/messages", json={"channels": ["s"], "messages": [{"data": "a"}, {"data": "b"}]})
        events = await asyncio.wait_for(reader, STREAM_TIMEOUT_S)
    assert [e["data"] for e in events] == ["before", "a", "b"]
    assert {e["channel"] for e in events} == {"s"}


def test_run_in_thread_serves_sync_clients_and_its_api_is_thread_safe() -> None:
    with run_in_thread(keys=["app.key:secret"]) as ably:
        assert ably.url.startswith("http://127.0.0.1:")
        headers = {"X-Ably-Version": "6"}
        with httpx.Client(base_url=ably.url, auth=("app.key", "secret"), headers=headers) as http:
            errors: list[BaseException] = []

            def publish(worker: int) -> None:
                try:
                    for i in range(20):
                        response = http.post(f"/channels/w{worker}/messages", json={"id": f"{worker}-{i}"})
                        assert response.status_code == 201
                except BaseException as exc:  # surfaced below in the test thread
                    errors.append(exc)

            workers = [threading.Thread(target=publish, args=(n,)) for n in range(4)]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join(timeout=30)
            assert errors == []
            assert len(ably.messages()) == 80
            assert [m["id"] for m in ably.messages("w2")] == [f"2-{i}" for i in range(20)]

            ably.inject_fault(status=503, count=1)
            assert http.post("/channels/c/messages", json={}).status_code == 503
            ably.inject_fault(mode="refuse", duration_s=60)
            with pytest.raises(httpx.ConnectError):
                http.post("/channels/c/messages", json={})
            ably.clear_faults()
            assert http.post("/channels/c/messages", json={}).status_code == 201
            ably.reset()
            assert ably.messages() == []
            assert ably.stats()["requests"] == 0


async def test_emulator_cannot_be_restarted_and_stop_is_idempotent() -> None:
    emulator = AblyEmulator()
    await emulator.start()
    await emulator.stop()
    await emulator.stop()
    with pytest.raises(RuntimeError):
        await emulator.start()


async def test_port_in_use_raises_oserror(ably: AblyEmulator) -> None:
    with pytest.raises(OSError):
        async with AblyEmulator(port=ably.port):
            pass


async def test_reset_restores_startup_settings_for_shared_emulators() -> None:
    async with AblyEmulator(latency_ms=1, max_message_size=100) as ably:
        ably.configure(latency_ms=0, max_message_size=5, channel_rate_limit=7)
        ably.reset()
        settings = ably.config.public()
        assert (settings["latency_ms"], settings["max_message_size"], settings["channel_rate_limit"]) == (
            1,
            100,
            0,
        )
