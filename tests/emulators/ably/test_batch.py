"""Batch publish (POST /messages): shapes, limits, per-channel atomicity and partial failure."""

from __future__ import annotations

import gc
from typing import Any

import httpx
import orjson
import pytest

from emulators.ably import AblyEmulator, rest


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


async def test_every_view_of_a_batch_published_message_shows_extras_as_an_object(
    ably: AblyEmulator, client: httpx.AsyncClient
) -> None:
    # The store keeps extras as JSON text; every way of reading a message must show the object.
    extras = {"headers": {"x-ably-models-event-uuid": "u1", "ü": "ß"}, "other": {"nested": [1, None]}}
    specs = [
        {"channels": "one", "messages": {"id": "m1", "name": "insert", "data": "x", "extras": extras}},
        {"channels": ["two", "three"], "messages": [{"data": {"a": 1}, "extras": extras}, {"data": "y"}]},
    ]
    assert (await client.post("/messages", json=specs)).status_code == 201
    stored = ably.messages()
    assert [(m["channel"], m["extras"]) for m in stored] == [
        ("one", extras),
        ("two", extras),
        ("two", None),
        ("three", extras),
        ("three", None),
    ]
    assert list(stored[0]) == [
        "id",
        "name",
        "data",
        "encoding",
        "clientId",
        "extras",
        "channel",
        "received_at",
    ]
    stored[0]["extras"]["headers"]["x-ably-models-event-uuid"] = "changed"  # a copy: the store is unchanged
    assert ably.messages("one")[0]["extras"] == extras
    admin = (await client.get("/_emulator/messages", params={"channel": "two"})).json()
    assert [m["extras"] for m in admin] == [extras, None]
    history = (await client.get("/channels/three/messages", params={"direction": "forwards"})).json()
    assert [m.get("extras") for m in history] == [extras, None]
    assert history[0]["data"] == '{"a":1}' and history[0]["encoding"] == "json"


async def test_stored_messages_are_flat_dicts_the_garbage_collector_does_not_track(
    ably: AblyEmulator, client: httpx.AsyncClient
) -> None:
    # 100k+ stored messages walked at every collection cost more CPU than publishing them.
    extras = {"headers": {"h": "v"}}
    specs = [
        {"channels": "c", "messages": {"id": "one-channel", "data": "x", "extras": extras}},
        {"channels": ["c", "d"], "messages": [{"data": "y", "extras": extras}, {"data": {"z": 1}}]},
    ]
    assert (await client.post("/messages", json=specs)).status_code == 201
    assert (
        await client.post("/channels/c/messages", json={"data": "z", "extras": extras})
    ).status_code == 201
    stored = ably.store.history("c") + ably.store.history("d")
    assert len(stored) == 6
    assert not any(gc.is_tracked(m) for m in stored)


async def test_one_batch_dedupes_its_own_repeats_and_ids_each_unit_apart(
    ably: AblyEmulator, client: httpx.AsyncClient
) -> None:
    specs = [
        {"channels": "c", "messages": {"id": "same", "data": "1"}},
        {"channels": "c", "messages": {"id": "same", "data": "2"}},  # a duplicate within the request
        {"channels": "d", "messages": {"id": "same", "data": "3"}},  # another channel: not a duplicate
        {"channels": ["c", "d"], "messages": [{"data": "4"}, {"data": "5"}]},  # server ids, one base each
    ]
    response = await client.post("/messages", json=specs)
    assert response.status_code == 201
    entries = response.json()
    assert [e["messageId"] for e in entries[:3]] == ["same", "same", "same"]
    base_c, base_d = entries[3]["messageId"], entries[4]["messageId"]
    assert base_c != base_d
    assert [m["id"] for m in ably.messages("c")] == ["same", f"{base_c}:0", f"{base_c}:1"]
    assert [m["id"] for m in ably.messages("d")] == ["same", f"{base_d}:0", f"{base_d}:1"]
    assert [m["data"] for m in ably.messages("c")] == ["1", "4", "5"]
    stats = ably.stats()
    assert (stats["messages_delivered"], stats["duplicates_dropped"]) == (6, 1)


async def test_each_batchspec_counts_one_toward_the_channel_rate_limit(
    ably: AblyEmulator, client: httpx.AsyncClient
) -> None:
    ably.configure(channel_rate_limit=2)
    specs = [{"channels": "c", "messages": [{"data": "a"}, {"data": "b"}, {"data": "c"}]} for _ in range(3)]
    response = await client.post("/messages", json=[*specs, {"channels": "other", "messages": {"data": "d"}}])
    assert response.status_code == 400
    entries = response.json()["batchResponse"]
    assert ["messageId" in e for e in entries] == [True, True, False, True]
    assert entries[2]["error"]["code"] == 42913 and entries[2]["error"]["statusCode"] == 429
    stats = ably.stats()
    assert (stats["messages_delivered"], stats["rate_limited"], stats["messages_rejected"]) == (7, 1, 3)


async def test_a_batchspec_failing_with_a_500_leaves_the_specs_before_it_published(
    ably: AblyEmulator, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As when each BatchSpec was validated and published in turn: an unexpected failure (an emulator
    # bug, answered 500) stops the request where it happened, after what came before.
    normalize = rest.normalize_for_store

    def failing(raw: Any, max_size: int) -> dict[str, Any]:
        if raw.get("data") == "boom":
            raise RuntimeError("unexpected")
        return normalize(raw, max_size)

    monkeypatch.setattr(rest, "normalize_for_store", failing)
    specs = [
        {"channels": "c", "messages": {"id": "before", "data": "x"}},
        {"channels": ":bad", "messages": {"id": "rejected", "data": "x"}},
        {"channels": "c", "messages": {"id": "failing", "data": "boom"}},
        {"channels": "c", "messages": {"id": "after", "data": "x"}},
    ]
    response = await client.post("/messages", json=specs)
    assert response.status_code == 500
    assert [m["id"] for m in ably.messages()] == ["before"]
    assert ably.stats()["messages_rejected"] == 1
