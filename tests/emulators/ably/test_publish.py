"""Single-channel publish, history and time, as the connector and the demo use them."""

from __future__ import annotations

import time

import httpx
import orjson

from emulators.ably import AblyEmulator


async def test_single_message_publish_returns_201_with_channel_and_id(
    ably: AblyEmulator, client: httpx.AsyncClient
) -> None:
    response = await client.post(
        "/channels/orders/messages", json={"name": "insert", "data": "x", "id": "abc"}
    )
    assert response.status_code == 201
    assert response.json() == {"channel": "orders", "messageId": "abc"}
    [stored] = ably.messages("orders")
    assert stored["id"] == "abc"
    assert stored["name"] == "insert"
    assert stored["data"] == "x"
    assert stored["channel"] == "orders"


async def test_object_payload_is_stored_as_json_string_with_json_encoding(
    ably: AblyEmulator, client: httpx.AsyncClient
) -> None:
    await client.post("/channels/c/messages", json={"data": {"a": [1, 2]}, "extras": {"headers": {"k": "v"}}})
    [stored] = ably.messages("c")
    assert stored["encoding"] == "json"
    assert orjson.loads(stored["data"]) == {"a": [1, 2]}
    assert stored["extras"] == {"headers": {"k": "v"}}


async def test_url_encoded_channel_names_with_colon_and_slash_are_decoded(
    ably: AblyEmulator, client: httpx.AsyncClient
) -> None:
    response = await client.post("/channels/db%3Aorders%2F42/messages", json={"data": "x"})
    assert response.status_code == 201
    assert response.json()["channel"] == "db:orders/42"
    assert [m["data"] for m in ably.messages("db:orders/42")] == ["x"]


async def test_array_without_ids_gets_server_ids_sharing_one_base(
    ably: AblyEmulator, client: httpx.AsyncClient
) -> None:
    response = await client.post("/channels/c/messages", json=[{"data": "a"}, {"data": "b"}])
    assert response.status_code == 201
    base = response.json()["messageId"]
    assert [m["id"] for m in ably.messages("c")] == [f"{base}:0", f"{base}:1"]


async def test_array_ids_must_follow_base_colon_index(client: httpx.AsyncClient, ably: AblyEmulator) -> None:
    bad = await client.post(
        "/channels/c/messages", json=[{"id": "b:0", "data": "a"}, {"id": "b:2", "data": "b"}]
    )
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] == 40031
    assert bad.headers["X-Ably-ErrorCode"] == "40031"
    mixed = await client.post("/channels/c/messages", json=[{"id": "b:0", "data": "a"}, {"data": "b"}])
    assert mixed.status_code == 400
    assert mixed.json()["error"]["code"] == 40031
    assert ably.messages() == []
    assert ably.stats()["messages_rejected"] == 4
    good = await client.post(
        "/channels/c/messages", json=[{"id": "b:0", "data": "a"}, {"id": "b:1", "data": "b"}]
    )
    assert good.status_code == 201
    assert good.json()["messageId"] == "b"
    assert [m["id"] for m in ably.messages("c")] == ["b:0", "b:1"]


async def test_invalid_json_body_is_rejected_with_40001(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/channels/c/messages", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == 40001
    assert response.headers["X-Ably-ErrorCode"] == "40001"


async def test_history_is_newest_first_by_default_and_honours_direction_and_limit(
    client: httpx.AsyncClient,
) -> None:
    for i in range(5):
        await client.post("/channels/h/messages", json={"id": f"m{i}", "data": str(i)})
    newest_first = await client.get("/channels/h/messages")
    assert [m["id"] for m in newest_first.json()] == ["m4", "m3", "m2", "m1", "m0"]
    forwards = await client.get("/channels/h/messages", params={"direction": "forwards", "limit": 2})
    assert [m["id"] for m in forwards.json()] == ["m0", "m1"]
    backwards = await client.get("/channels/h/messages", params={"limit": 2})
    assert [m["id"] for m in backwards.json()] == ["m4", "m3"]
    item = newest_first.json()[0]
    assert set(item) == {"id", "data", "timestamp"}  # absent fields are omitted, like Ably's history


async def test_history_rejects_bad_parameters(client: httpx.AsyncClient) -> None:
    assert (await client.get("/channels/h/messages", params={"direction": "sideways"})).status_code == 400
    assert (await client.get("/channels/h/messages", params={"limit": 1001})).status_code == 400
    assert (await client.get("/channels/h/messages", params={"limit": "x"})).json()["error"]["code"] == 40003


async def test_time_returns_server_milliseconds_in_a_list(client: httpx.AsyncClient) -> None:
    before = time.time_ns() // 1_000_000
    response = await client.get("/time")
    after = time.time_ns() // 1_000_000
    [server_ms] = response.json()
    assert before <= server_ms <= after


async def test_unknown_path_answers_an_ably_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/nowhere")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == 40400


async def test_messages_admin_view_filters_by_channel_and_skips_with_since(
    ably: AblyEmulator, client: httpx.AsyncClient
) -> None:
    for channel in ("a", "b", "a"):
        await client.post(f"/channels/{channel}/messages", json={"data": channel})
    admin = await client.get("/_emulator/messages", params={"channel": "a", "since": 1})
    assert [m["channel"] for m in admin.json()] == ["a"]
    everything = (await client.get("/_emulator/messages")).json()
    assert [m["channel"] for m in everything] == ["a", "b", "a"]
    assert all(isinstance(m["received_at"], int) for m in everything)
    assert set(everything[0]) >= {"channel", "id", "name", "data", "encoding", "extras", "received_at"}
