"""Idempotent publishing: a repeated id within the window is accepted but delivered once."""

from __future__ import annotations

import asyncio

import httpx

from emulators.ably import AblyEmulator

SHORT_WINDOW_S = 0.2


async def test_duplicate_single_message_is_accepted_but_not_delivered_again(
    ably: AblyEmulator, client: httpx.AsyncClient
) -> None:
    first = await client.post("/channels/c/messages", json={"id": "same", "data": "1"})
    again = await client.post("/channels/c/messages", json={"id": "same", "data": "2"})
    assert first.status_code == again.status_code == 201
    assert again.json() == {"channel": "c", "messageId": "same"}
    assert [m["data"] for m in ably.messages("c")] == ["1"]
    assert ably.stats()["duplicates_dropped"] == 1


async def test_array_is_deduplicated_as_a_unit_by_its_base(
    ably: AblyEmulator, client: httpx.AsyncClient
) -> None:
    batch = [{"id": "base:0", "data": "a"}, {"id": "base:1", "data": "b"}]
    await client.post("/channels/c/messages", json=batch)
    response = await client.post("/channels/c/messages", json=batch)
    assert response.status_code == 201
    assert response.json()["messageId"] == "base"
    assert [m["id"] for m in ably.messages("c")] == ["base:0", "base:1"]
    assert ably.stats()["duplicates_dropped"] == 2


async def test_same_id_on_another_channel_is_not_a_duplicate(
    ably: AblyEmulator, client: httpx.AsyncClient
) -> None:
    await client.post("/channels/a/messages", json={"id": "x", "data": "1"})
    await client.post("/channels/b/messages", json={"id": "x", "data": "1"})
    assert [m["channel"] for m in ably.messages()] == ["a", "b"]


async def test_batch_with_one_spec_per_message_dedupes_each_message_across_requests(
    ably: AblyEmulator, client: httpx.AsyncClient
) -> None:
    first = [{"channels": "c", "messages": {"id": f"tok{i}", "data": str(i)}} for i in range(3)]
    await client.post("/messages", json=first)
    # A retry that overlaps the first request: tok1 and tok2 again, then a new tok3.
    retry = [{"channels": "c", "messages": {"id": f"tok{i}", "data": str(i)}} for i in range(1, 4)]
    response = await client.post("/messages", json=retry)
    assert response.status_code == 201
    assert [e["messageId"] for e in response.json()] == ["tok1", "tok2", "tok3"]
    assert [m["id"] for m in ably.messages("c")] == ["tok0", "tok1", "tok2", "tok3"]
    assert ably.stats()["duplicates_dropped"] == 2


async def test_single_publish_and_batch_share_the_dedupe_window(
    ably: AblyEmulator, client: httpx.AsyncClient
) -> None:
    await client.post("/channels/c/messages", json={"id": "shared", "data": "1"})
    await client.post("/messages", json={"channels": "c", "messages": {"id": "shared", "data": "1"}})
    assert len(ably.messages("c")) == 1


async def test_id_is_delivered_again_after_the_window_expires(
    ably: AblyEmulator, client: httpx.AsyncClient
) -> None:
    ably.configure(dedupe_window_s=SHORT_WINDOW_S)
    await client.post("/channels/c/messages", json={"id": "late", "data": "1"})
    await client.post("/channels/c/messages", json={"id": "late", "data": "1"})
    assert len(ably.messages("c")) == 1
    await asyncio.sleep(SHORT_WINDOW_S * 1.5)
    await client.post("/channels/c/messages", json={"id": "late", "data": "2"})
    assert [m["data"] for m in ably.messages("c")] == ["1", "2"]


async def test_reset_forgets_messages_and_dedupe_state(ably: AblyEmulator, client: httpx.AsyncClient) -> None:
    await client.post("/channels/c/messages", json={"id": "r", "data": "1"})
    assert (await client.post("/_emulator/reset")).status_code == 200
    assert ably.messages() == []
    await client.post("/channels/c/messages", json={"id": "r", "data": "1"})
    assert len(ably.messages("c")) == 1
    assert ably.stats()["duplicates_dropped"] == 0
