"""``partial`` faults per entry: Ably publishes a batch request's (BatchSpec, channel) entries independently,
so a channel's first spec can fail while its later specs of the same request are published. These are
the failures a connector must survive without letting a subscriber see the channel out of order."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from emulators.ably import AblyEmulator


def _specs(*channels: str) -> list[dict[str, Any]]:
    """One single-message BatchSpec per channel name, data = the channel and its position in the request."""
    return [
        {"channels": ch, "messages": {"id": f"{ch}-{i}", "data": f"{ch}{i}"}} for i, ch in enumerate(channels)
    ]


def _outcomes(response: httpx.Response) -> list[tuple[str, int | str]]:
    """(channel, error code or message id) per entry."""
    body = response.json()
    entries = body["batchResponse"] if isinstance(body, dict) else body
    return [(e["channel"], e["error"]["code"] if "error" in e else e["messageId"]) for e in entries]


async def test_the_first_spec_of_a_channel_fails_and_its_later_specs_are_published(
    ably: AblyEmulator, client: httpx.AsyncClient
) -> None:
    fault = ably.inject_fault(mode="partial", channels=["c"], entries=[0], code=42913, count=1)
    assert fault["entries"] == [0] and fault["status"] == 429
    response = await client.post("/messages", json=_specs("c", "d", "c", "c"))
    assert response.status_code == 400
    assert response.json()["error"]["code"] == 40020
    assert _outcomes(response) == [("c", 42913), ("d", "d-1"), ("c", "c-2"), ("c", "c-3")]
    assert response.json()["batchResponse"][0]["error"]["statusCode"] == 429
    # What a subscriber of c sees: the later messages without the first one.
    assert [m["data"] for m in ably.messages("c")] == ["c2", "c3"]
    assert ably.stats()["messages_rejected"] == 1
    # Used up: a retry of the first spec is now published, after the later ones.
    retry = await client.post("/messages", json=_specs("c"))
    assert retry.status_code == 201
    assert [m["data"] for m in ably.messages("c")] == ["c2", "c3", "c0"]


@pytest.mark.parametrize(
    ("entries", "failing"),
    [([0], [0]), ([1], [2]), ([-1], [3]), ([0, -1], [0, 3]), ([5], [])],
)
async def test_entries_count_a_channels_specs_in_the_request_negative_from_its_last(
    ably: AblyEmulator, client: httpx.AsyncClient, entries: list[int], failing: list[int]
) -> None:
    ably.inject_fault(mode="partial", channels="c", entries=entries, code=50000)
    response = await client.post("/messages", json=_specs("c", "d", "c", "c"))
    outcomes = _outcomes(response)
    assert [i for i, (_, result) in enumerate(outcomes) if result == 50000] == failing
    assert response.status_code == (400 if failing else 201)


async def test_without_channels_a_partial_fault_selects_entries_of_every_channel(
    ably: AblyEmulator, client: httpx.AsyncClient
) -> None:
    ably.inject_fault(mode="partial", entries=[0], code=50003)
    response = await client.post("/messages", json=_specs("a", "b", "a", "b"))
    assert _outcomes(response) == [("a", 50003), ("b", 50003), ("a", "a-2"), ("b", "b-3")]
    assert [m["data"] for m in ably.messages()] == ["a2", "b3"]


async def test_a_spec_to_several_channels_is_one_entry_of_each(
    ably: AblyEmulator, client: httpx.AsyncClient
) -> None:
    ably.inject_fault(mode="partial", channels="b", entries=[1], code=40160)
    specs = [
        {"channels": ["a", "b"], "messages": {"id": "one", "data": "1"}},
        {"channels": ["b", "a"], "messages": {"id": "two", "data": "2"}},
    ]
    response = await client.post("/messages", json=specs)
    assert _outcomes(response) == [("a", "one"), ("b", "one"), ("b", 40160), ("a", "two")]
    assert response.json()["batchResponse"][2]["error"]["statusCode"] == 401


async def test_an_entry_failing_for_another_reason_still_counts_as_the_channels_entry(
    ably: AblyEmulator, client: httpx.AsyncClient
) -> None:
    ably.inject_fault(mode="partial", channels="c", entries=[1], code=50000)
    specs = [
        {"channels": "c", "messages": {"data": 5}},  # entry 0: invalid data
        {"channels": "c", "messages": {"id": "x", "data": "x"}},  # entry 1: the fault
        {"channels": "c", "messages": {"id": "y", "data": "y"}},
    ]
    response = await client.post("/messages", json=specs)
    assert _outcomes(response) == [("c", 40013), ("c", 50000), ("c", "y")]


async def test_a_bad_channel_name_wins_over_a_fault(ably: AblyEmulator, client: httpx.AsyncClient) -> None:
    ably.inject_fault(mode="partial", code=50000)
    response = await client.post("/messages", json={"channels": [":bad", "ok"], "messages": {"data": "x"}})
    assert _outcomes(response) == [(":bad", 40010), ("ok", 50000)]


async def test_partial_faults_combine_and_the_first_selecting_an_entry_gives_its_error(
    ably: AblyEmulator, client: httpx.AsyncClient
) -> None:
    ably.inject_fault(mode="partial", channels="c", entries=[0], code=42913, count=1)
    ably.inject_fault(mode="partial", channels=["c", "d"], code=50003, count=1)
    ably.inject_fault(mode="partial", channels="e", code=40160, count=1)
    ably.inject_fault(status=503, count=1)  # not a partial fault: not served with them
    response = await client.post("/messages", json=_specs("c", "d", "c", "e", "f"))
    assert _outcomes(response) == [("c", 42913), ("d", 50003), ("c", 50003), ("e", 40160), ("f", "f-4")]
    assert ably.stats()["faults_served"] == 3
    assert [f["mode"] for f in ably.active_faults()] == ["status"]
    assert (await client.post("/messages", json=_specs("c"))).status_code == 503


async def test_a_single_channel_publish_is_its_channels_only_entry(
    ably: AblyEmulator, client: httpx.AsyncClient
) -> None:
    ably.inject_fault(mode="partial", channels="c", entries=[1], code=50000, count=1)
    # Entry 1 of a request that has one entry: nothing fails, and the fault is used up all the same.
    assert (await client.post("/channels/c/messages", json={"data": "1"})).status_code == 201
    assert ably.active_faults() == []
    ably.inject_fault(mode="partial", channels="c", entries=[-1], code=42913, count=1)
    refused = await client.post("/channels/c/messages", json=[{"data": "2"}, {"data": "3"}])
    assert refused.status_code == 429 and refused.json()["error"]["code"] == 42913
    assert [m["data"] for m in ably.messages("c")] == ["1"]


async def test_partial_faults_never_touch_history_or_time(
    ably: AblyEmulator, client: httpx.AsyncClient
) -> None:
    ably.inject_fault(mode="partial", target="all", code=50000)
    assert (await client.get("/channels/c/messages")).status_code == 200
    assert (await client.get("/time")).status_code == 200
    assert ably.stats()["faults_served"] == 0


async def test_entries_round_trip_through_the_admin_api(client: httpx.AsyncClient) -> None:
    spec = {"mode": "partial", "channels": ["c"], "entries": [0, -1], "code": 42913, "count": 2}
    added = (await client.post("/_emulator/faults", json=spec)).json()["faults"][0]
    assert (added["mode"], added["entries"], added["status"], added["remaining"]) == (
        "partial",
        [0, -1],
        429,
        2,
    )
    listed = (await client.get("/_emulator/faults")).json()["faults"]
    assert listed[0]["entries"] == [0, -1]


async def test_by_version_answers_one_batch_result_per_spec_with_201_from_version_3(
    ably: AblyEmulator, client: httpx.AsyncClient
) -> None:
    # Ably from protocol version 3: per BatchSpec {successCount, failureCount, results}, even on failures.
    ably.configure(batch_response="by_version")
    ably.inject_fault(mode="partial", channels="c", entries=[0], code=42913)
    specs = [
        {"channels": ["c", "d"], "messages": {"id": "one", "data": "1"}},
        {"channels": "c", "messages": {"id": "two", "data": "2"}},
    ]
    response = await client.post("/messages", json=specs)  # X-Ably-Version: 6
    assert response.status_code == 201
    first, second = response.json()
    assert (first["successCount"], first["failureCount"]) == (1, 1)
    assert first["results"][0]["channel"] == "c" and first["results"][0]["error"]["code"] == 42913
    assert first["results"][1] == {"channel": "d", "messageId": "one"}
    assert second == {"successCount": 1, "failureCount": 0, "results": [{"channel": "c", "messageId": "two"}]}
    assert [m["data"] for m in ably.messages("c")] == ["2"]
    # Version 2 (what ably-java pins for publishBatch) keeps the old shape; so does every request in "legacy".
    legacy = await client.post("/messages", json=specs, headers={"X-Ably-Version": "2"})
    assert legacy.status_code == 400 and legacy.json()["error"]["code"] == 40020
    ably.configure(batch_response="legacy")
    assert (await client.post("/messages", json=specs)).json()["error"]["code"] == 40020


async def test_by_version_leaves_whole_request_errors_as_they_are(
    ably: AblyEmulator, client: httpx.AsyncClient
) -> None:
    ably.configure(batch_response="by_version")
    response = await client.post("/messages", json=[])
    assert response.status_code == 400 and response.json()["error"]["code"] == 40001
    with pytest.raises(ValueError, match="batch_response"):
        ably.configure(batch_response="v3")
