"""Ably's rule for client-supplied ids (error 40031) and the size limit of messages published together.

Messages published atomically (an array to one channel, one BatchSpec's ``messages``) carry ids
``<base>:<index>`` (0-based, one base) or none at all; an id is a non-empty string.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from emulators.ably import AblyEmulator

MULTI_ID_FORMAT = (
    "Client-specified message ids do not match the required format for multi-message ProtocolMessages"
)


def _array(*ids: str | None) -> list[dict[str, Any]]:
    return [
        {"data": str(i)} if msg_id is None else {"id": msg_id, "data": str(i)} for i, msg_id in enumerate(ids)
    ]


@pytest.mark.parametrize(
    "ids",
    [
        ("b:0", None),  # some messages with ids, some without
        (None, "b:1"),
        ("b:0", "b:1", None),
        ("b:0", "c:1"),  # two bases
        ("b:1", "b:2"),  # not 0-based
        ("b:1", "b:0"),  # out of order
        ("b:0", "b:0"),  # an index repeated
        ("x", "y"),  # unrelated ids: Ably's own example of what it refuses
        ("b", "b"),  # no index
        (":0", ":1"),  # an empty base
    ],
)
async def test_an_array_breaking_the_id_rule_is_400_40031_and_publishes_nothing(
    ably: AblyEmulator, client: httpx.AsyncClient, ids: tuple[str | None, ...]
) -> None:
    response = await client.post("/channels/c/messages", json=_array(*ids))
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["statusCode"]) == (40031, 400)
    assert error["message"].startswith(MULTI_ID_FORMAT)
    assert error["href"] == "https://help.ably.io/error/40031"
    assert response.headers["X-Ably-ErrorCode"] == "40031"
    assert ably.messages() == []
    assert ably.stats()["messages_rejected"] == len(ids)


@pytest.mark.parametrize(
    ("ids", "base"),
    [(("b:0", "b:1", "b:2"), "b"), (("x:y:0", "x:y:1"), "x:y"), (("42:0", "42:1"), "42")],
)
async def test_an_array_with_one_base_and_0_based_indexes_is_published_under_its_base(
    ably: AblyEmulator, client: httpx.AsyncClient, ids: tuple[str, ...], base: str
) -> None:
    response = await client.post("/channels/c/messages", json=_array(*ids))
    assert response.status_code == 201
    assert response.json() == {"channel": "c", "messageId": base}
    assert [m["id"] for m in ably.messages("c")] == list(ids)


@pytest.mark.parametrize("msg_id", ["x:0", "x:7", "plain", "a:b:c", "0"])
async def test_a_single_message_may_have_any_non_empty_id_colon_index_or_not(
    ably: AblyEmulator, client: httpx.AsyncClient, msg_id: str
) -> None:
    # The <base>:<index> rule is for several messages published together; one message keeps its id as is
    # and is deduplicated under it (so x:0 alone is not the unit x).
    for body in ({"id": msg_id, "data": "d"}, [{"id": msg_id, "data": "d"}]):
        response = await client.post("/channels/c/messages", json=body)
        assert response.status_code == 201
        assert response.json() == {"channel": "c", "messageId": msg_id}
    assert [m["id"] for m in ably.messages("c")] == [msg_id]
    assert ably.stats()["duplicates_dropped"] == 1


@pytest.mark.parametrize(
    ("msg_id", "message"), [("", "cannot be empty"), (7, "must be a string"), (["x"], "string")]
)
async def test_an_empty_or_non_string_id_is_40031(
    ably: AblyEmulator, client: httpx.AsyncClient, msg_id: object, message: str
) -> None:
    single = await client.post("/channels/c/messages", json={"id": msg_id, "data": "d"})
    assert single.status_code == 400
    assert single.json()["error"]["code"] == 40031
    assert message in single.json()["error"]["message"]
    in_array = await client.post("/channels/c/messages", json=[{"id": "b:0"}, {"id": msg_id}])
    assert in_array.json()["error"]["code"] == 40031
    assert ably.messages() == []


async def test_a_batchspec_breaking_the_id_rule_fails_on_each_of_its_channels_with_40031(
    ably: AblyEmulator, client: httpx.AsyncClient
) -> None:
    specs = [
        {"channels": "a", "messages": {"id": "one", "data": "1"}},
        {"channels": ["a", "b"], "messages": [{"id": "s:0", "data": "2"}, {"data": "3"}]},  # mixed
        {"channels": "b", "messages": [{"id": "t:0", "data": "4"}, {"id": "t:1", "data": "5"}]},
        {"channels": "a", "messages": [{"id": "u:0", "data": "6"}, {"id": "v:1", "data": "7"}]},  # two bases
    ]
    response = await client.post("/messages", json=specs)
    assert response.status_code == 400
    body = response.json()
    assert body["error"]["code"] == 40020
    entries = body["batchResponse"]
    assert entries[0] == {"channel": "a", "messageId": "one"}
    assert [(e["channel"], e["error"]["code"], e["error"]["statusCode"]) for e in entries[1:3]] == [
        ("a", 40031, 400),
        ("b", 40031, 400),
    ]
    assert entries[3] == {"channel": "b", "messageId": "t"}
    assert (entries[4]["channel"], entries[4]["error"]["code"]) == ("a", 40031)
    assert [(m["channel"], m["id"]) for m in ably.messages()] == [("a", "one"), ("b", "t:0"), ("b", "t:1")]
    assert ably.stats()["messages_rejected"] == 2 + 2 + 2


async def test_one_message_per_batchspec_each_with_its_own_id_is_the_way_to_independent_ids(
    ably: AblyEmulator, client: httpx.AsyncClient
) -> None:
    specs = [{"channels": "c", "messages": {"id": msg_id, "data": msg_id}} for msg_id in ("x", "y", "z:0")]
    response = await client.post("/messages", json=specs)
    assert response.status_code == 201
    assert [e["messageId"] for e in response.json()] == ["x", "y", "z:0"]
    assert [m["id"] for m in ably.messages("c")] == ["x", "y", "z:0"]


async def test_messages_published_together_are_one_payload_for_the_size_limit(
    ably: AblyEmulator, client: httpx.AsyncClient
) -> None:
    ably.configure(max_message_size=10)
    fits = await client.post("/channels/c/messages", json=[{"data": "x" * 5}, {"data": "y" * 5}])
    assert fits.status_code == 201
    over = await client.post("/channels/c/messages", json=[{"data": "x" * 5}, {"data": "y" * 6}])
    assert over.status_code == 413
    error = over.json()["error"]
    assert (error["code"], error["statusCode"]) == (40009, 413)
    assert error["message"] == "Maximum message length exceeded (size was 11 bytes, limit is 10 bytes)"
    specs = [
        {"channels": "c", "messages": [{"data": "x" * 6}, {"data": "y" * 5}]},
        {"channels": "c", "messages": {"data": "z" * 10}},
    ]
    batch = await client.post("/messages", json=specs)
    assert batch.status_code == 400
    entries = batch.json()["batchResponse"]
    assert entries[0]["error"]["code"] == 40009 and "messageId" in entries[1]
    assert [m["data"] for m in ably.messages("c")] == ["x" * 5, "y" * 5, "z" * 10]
