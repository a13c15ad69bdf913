"""Batch publish (POST /messages): shapes, limits, per-channel atomicity and partial failure."""

from __future__ import annotations

import httpx
import orjson

from emulators.ably import AblyEmulator


async def test_single_batchspec_with_string_channel_and_object_message(
    ably: AblyEmulator, client: httpx.AsyncClient
) -> None:
    response = await client.post("/messages", json={"channels": "c", "messages": {"id": "m1", "data": "x"}})
    assert response.status_code == 201
    assert response.json() == [{"channel": "c", "messageId": "m1"}]
    assert [m["id"] for m in ably.messages("c")] == ["m1"]


async def test_results_follow_request_order_across_specs_and_channels(
    ably: AblyEmulator, client: httpx.AsyncClient
) -> None:
    specs = [
        {"channels": ["a", "b"], "messages": [{"id": "x:0", "data": "1"}, {"id": "x:1", "data": "2"}]},
        {"channels": "c", "messages": {"id": "y", "data": "3"}},
        {"channels": ["a"], "messages": [{"id": "z", "data": "4"}]},
    ]
    response = await client.post("/messages", json=specs)
    assert response.status_code == 201
    assert response.json() == [
        {"channel": "a", "messageId": "x"},
        {"channel": "b", "messageId": "x"},
        {"channel": "c", "messageId": "y"},
        {"channel": "a", "messageId": "z"},
    ]
    assert [m["id"] for m in ably.messages("a")] == ["x:0", "x:1", "z"]
    assert [m["id"] for m in ably.messages("b")] == ["x:0", "x:1"]
    assert [(m["channel"], m["id"]) for m in ably.messages()] == [
        ("a", "x:0"),
        ("a", "x:1"),
        ("b", "x:0"),
        ("b", "x:1"),
        ("c", "y"),
        ("a", "z"),
    ]


async def test_more_than_100_distinct_channels_is_rejected_whole(
    ably: AblyEmulator, client: httpx.AsyncClient
) -> None:
    at_limit = [{"channels": f"c{i}", "messages": {"data": "x"}} for i in range(100)]
    assert (await client.post("/messages", json=at_limit)).status_code == 201
    # Repeating a channel does not count twice toward the distinct-channel limit.
    repeated = [*at_limit, {"channels": "c0", "messages": {"data": "again"}}]
    assert (await client.post("/messages", json=repeated)).status_code == 201
    over = [*at_limit, {"channels": "c100", "messages": {"data": "x"}}]
    response = await client.post("/messages", json=over)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == 40000
    assert "batchResponse" not in response.json()
    assert len(ably.messages()) == 201


async def test_more_than_1000_messages_in_one_batchspec_is_rejected(client: httpx.AsyncClient) -> None:
    at_limit = {"channels": "c", "messages": [{"data": "x"} for _ in range(1000)]}
    assert (await client.post("/messages", json=at_limit)).status_code == 201
    over = {"channels": "c", "messages": [{"data": "x"} for _ in range(1001)]}
    response = await client.post("/messages", json=over)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == 40000


async def test_body_of_2_mib_or_more_is_rejected(ably: AblyEmulator, client: httpx.AsyncClient) -> None:
    ably.configure(max_message_size=4 * 1024 * 1024)
    spec = {"channels": "c", "messages": {"data": ""}}
    small = len(b'{"channels":"c","messages":{"data":""}}')
    spec["messages"] = {"data": "x" * (2 * 1024 * 1024 - 1 - small)}
    under = await client.post(
        "/messages", content=orjson.dumps(spec), headers={"Content-Type": "application/json"}
    )
    assert under.status_code == 201
    spec["messages"] = {"data": "x" * (2 * 1024 * 1024 - small)}
    at = await client.post(
        "/messages", content=orjson.dumps(spec), headers={"Content-Type": "application/json"}
    )
    assert at.status_code == 400
    assert at.json()["error"]["code"] == 40000


async def test_malformed_batchspecs_are_rejected_with_40001(client: httpx.AsyncClient) -> None:
    for body in (
        [],
        [1],
        {"channels": [], "messages": {"data": "x"}},
        {"channels": "c"},
        {"channels": "c", "messages": []},
    ):
        response = await client.post("/messages", json=body)
        assert response.status_code == 400, body
        assert response.json()["error"]["code"] == 40001, body


async def test_invalid_channel_fails_only_its_entry_with_40020(
    ably: AblyEmulator, client: httpx.AsyncClient
) -> None:
    specs = [
        {"channels": ["ok", ":bad"], "messages": {"id": "m1", "data": "x"}},
        {"channels": "ok2", "messages": {"id": "m2", "data": "y"}},
    ]
    response = await client.post("/messages", json=specs)
    assert response.status_code == 400
    body = response.json()
    assert body["error"]["code"] == 40020
    assert body["error"]["statusCode"] == 400
    assert body["batchResponse"][0] == {"channel": "ok", "messageId": "m1"}
    assert body["batchResponse"][1]["channel"] == ":bad"
    assert body["batchResponse"][1]["error"]["code"] == 40010
    assert body["batchResponse"][2] == {"channel": "ok2", "messageId": "m2"}
    assert [m["channel"] for m in ably.messages()] == ["ok", "ok2"]


async def test_oversized_message_fails_its_spec_on_every_channel_others_succeed(
    ably: AblyEmulator, client: httpx.AsyncClient
) -> None:
    ably.configure(max_message_size=10)
    specs = [
        {"channels": "a", "messages": {"data": "small"}},
        {"channels": ["b", "c"], "messages": {"data": "much too large"}},
    ]
    response = await client.post("/messages", json=specs)
    assert response.status_code == 400
    entries = response.json()["batchResponse"]
    assert "messageId" in entries[0]
    assert [e["error"]["code"] for e in entries[1:]] == [40009, 40009]
    assert [e["error"]["statusCode"] for e in entries[1:]] == [413, 413]
    assert [m["channel"] for m in ably.messages()] == ["a"]
    assert ably.stats()["messages_rejected"] == 2
