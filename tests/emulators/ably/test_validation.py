"""What the emulator rejects: oversize messages (counted as Ably counts), bad channels, bad headers,
failed auth and a missing protocol version."""

from __future__ import annotations

import base64
from typing import Any

import httpx
import orjson
import pytest

from emulators.ably import AblyEmulator, measure_message

LIMIT = 200
ABLY_HEADERS = {"X-Ably-Version": "6"}


def _sized(total: int, **fields: object) -> dict[str, object]:
    """A message whose counted size is exactly ``total`` bytes, padding ``data`` (ASCII)."""
    message: dict[str, object] = {"data": "", **fields}
    _, base = measure_message(message)
    message["data"] = "x" * (total - base)
    return message


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"name": "update"},
        {"name": "é€", "clientId": "client-1"},
        {"extras": {"headers": {"x-ably-models-event-uuid": "7f1c"}}},
        {"name": "n", "clientId": "c", "extras": {"headers": {"a": "b", "ü": "ß"}}},
    ],
)
async def test_message_exactly_at_the_limit_passes_one_byte_over_fails(
    ably: AblyEmulator, client: httpx.AsyncClient, fields: dict[str, object]
) -> None:
    ably.configure(max_message_size=LIMIT)
    at_limit = await client.post("/channels/c/messages", json=_sized(LIMIT, **fields))
    assert at_limit.status_code == 201
    over = await client.post("/channels/c/messages", json=_sized(LIMIT + 1, **fields))
    assert over.status_code == 413
    assert over.json()["error"] == {
        "code": 40009,
        "statusCode": 413,
        "message": f"Maximum message length exceeded (size was {LIMIT + 1} bytes, limit is {LIMIT} bytes)",
        "href": "https://help.ably.io/error/40009",
    }
    assert len(ably.messages("c")) == 1


def test_size_counts_utf8_bytes_json_of_objects_and_compact_json_of_extras() -> None:
    assert measure_message({"name": "é", "data": "€"})[1] == 2 + 3
    # An object payload counts as its compact JSON string.
    assert measure_message({"data": {"a": 1}})[1] == len(b'{"a":1}')
    assert measure_message({"data": '{"a":1}', "encoding": "json"})[1] == len(b'{"a":1}')
    extras = {"headers": {"k": "v"}}
    assert measure_message({"clientId": "ab", "extras": extras})[1] == 2 + len(orjson.dumps(extras))
    # base64 data counts as the decoded bytes.
    payload = base64.b64encode(b"\x00" * 10).decode()
    assert measure_message({"data": payload, "encoding": "base64"})[1] == 10


async def test_object_payload_limit_counts_its_json(ably: AblyEmulator, client: httpx.AsyncClient) -> None:
    ably.configure(max_message_size=LIMIT)
    key_overhead = len(b'{"k":""}')
    at_limit = {"data": {"k": "x" * (LIMIT - key_overhead)}}
    assert (await client.post("/channels/c/messages", json=at_limit)).status_code == 201
    over = {"data": {"k": "x" * (LIMIT - key_overhead + 1)}}
    assert (await client.post("/channels/c/messages", json=over)).status_code == 413


@pytest.mark.parametrize("channel", ["%5Bmeta%5Dchan", "%3Aleading-colon", "new%0Aline"])
async def test_invalid_channel_names_are_rejected_with_40010(
    ably: AblyEmulator, client: httpx.AsyncClient, channel: str
) -> None:
    response = await client.post(f"/channels/{channel}/messages", json={"data": "x"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == 40010
    assert ably.messages() == []


async def test_empty_channel_name_in_a_batch_is_rejected_with_40010(client: httpx.AsyncClient) -> None:
    response = await client.post("/messages", json={"channels": [""], "messages": {"data": "x"}})
    assert response.json()["batchResponse"][0]["error"]["code"] == 40010


@pytest.mark.parametrize(
    "extras",
    [
        {"headers": {"nested": {"a": "b"}}},
        {"headers": {"number": 1}},
        {"headers": ["a", "b"]},
        "not-an-object",
    ],
)
async def test_non_flat_string_headers_are_rejected_with_40013(
    client: httpx.AsyncClient, extras: object
) -> None:
    response = await client.post("/channels/c/messages", json={"data": "x", "extras": extras})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == 40013


@pytest.mark.parametrize(
    "message",
    [
        {"data": 5},
        {"data": True},
        {"name": 3},
        {"data": "!!", "encoding": "base64"},
        {"data": "aé==", "encoding": "base64"},
    ],
)
async def test_invalid_fields_are_rejected_with_40013(client: httpx.AsyncClient, message: object) -> None:
    response = await client.post("/channels/c/messages", json=message)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == 40013


@pytest.mark.parametrize("field", ["data", "extras"])
async def test_a_payload_nested_too_deep_to_store_is_40013_not_a_500(
    client: httpx.AsyncClient, field: str
) -> None:
    body = b'{"%s":' % field.encode() + b'{"a":' * 300 + b"{}" + b"}" * 300 + b"}"
    response = await client.post(
        "/channels/c/messages", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == 40013


async def test_wrong_secret_unknown_key_and_missing_auth_are_40101(ably: AblyEmulator, connect: Any) -> None:
    async with connect(ably.url, key="app.key:wrong") as wrong:
        response = await wrong.post("/channels/c/messages", json={"data": "x"})
        assert response.status_code == 401
        assert response.json()["error"]["code"] == 40101
    async with connect(ably.url, key="app.other:secret") as unknown:
        assert (await unknown.post("/messages", json={"channels": "c", "messages": {}})).status_code == 401
    async with httpx.AsyncClient(base_url=ably.url, headers=ABLY_HEADERS) as anonymous:
        response = await anonymous.get("/channels/c/messages")
        assert response.status_code == 401
        assert response.json()["error"]["code"] == 40101
        malformed = await anonymous.get("/channels/c/messages", headers={"Authorization": "Basic %%%"})
        assert malformed.json()["error"]["code"] == 40101
        token = await anonymous.get("/channels/c/messages", headers={"Authorization": "Bearer nope"})
        assert token.status_code == 401
        assert token.json()["error"]["code"] == 40140
    assert ably.messages() == []
    assert ably.stats()["status_counts"]["401"] == 5


async def test_configured_bearer_token_and_second_key_are_accepted(connect: Any) -> None:
    async with AblyEmulator(keys=["app.one:s1", "app.two:s2"], tokens=["tok"]) as ably:
        async with connect(ably.url, key="app.two:s2") as second:
            assert (await second.post("/channels/c/messages", json={"data": "x"})).status_code == 201
        headers = {**ABLY_HEADERS, "Authorization": "Bearer tok"}
        async with httpx.AsyncClient(base_url=ably.url, headers=headers) as bearer:
            assert (await bearer.post("/channels/c/messages", json={"data": "y"})).status_code == 201
        assert len(ably.messages("c")) == 2


async def test_missing_x_ably_version_is_400_with_40000(ably: AblyEmulator) -> None:
    async with httpx.AsyncClient(base_url=ably.url, auth=("app.key", "secret")) as no_version:
        response = await no_version.post("/channels/c/messages", json={"data": "x"})
        assert response.status_code == 400
        assert response.json()["error"]["code"] == 40000
        assert (await no_version.get("/time")).status_code == 400
        # The version may also be given as the `v` query parameter.
        assert (await no_version.get("/time", params={"v": "6"})).status_code == 200
    assert ably.messages() == []


async def test_time_needs_no_auth(ably: AblyEmulator) -> None:
    async with httpx.AsyncClient(base_url=ably.url, headers=ABLY_HEADERS) as anonymous:
        assert (await anonymous.get("/time")).status_code == 200


async def test_msgpack_bodies_are_refused_clearly(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/channels/c/messages", content=b"\x80", headers={"Content-Type": "application/x-msgpack"}
    )
    assert response.status_code == 400
    assert "msgpack" in response.json()["error"]["message"]
