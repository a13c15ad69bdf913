"""Outbox row -> Ably message: Ably's connector's and the Models SDK's contract, and what is unpublishable."""

from __future__ import annotations

import orjson
import pytest

from connector.errors import NoChannelError, UnpublishableEvent
from connector.sources.postgres.messages import OutboxRow, row_to_message


def row(**fields: object) -> OutboxRow:
    base: dict[str, object] = {
        "sequence_id": 42,
        "mutation_id": "mut-1",
        "channel": "posts:7",
        "name": "addComment",
        "rejected": False,
        "data": '{"id": 7, "text": "hi"}',
        "headers": None,
    }
    base.update(fields)
    return OutboxRow(**base)  # type: ignore[arg-type]


def test_message_matches_ablys_connector_and_the_models_sdk() -> None:
    msg = row_to_message(3, row(headers='{"x-trace": "t1"}'), max_message_size=65536, token={"k": 1})
    assert msg.seq == 3 and msg.channel == "posts:7" and msg.token == {"k": 1}
    assert msg.message == {
        "id": "42",
        "name": "addComment",
        "data": '{"id": 7, "text": "hi"}',
        "encoding": "json",
        "extras": {"headers": {"x-trace": "t1", "x-ably-models-event-uuid": "mut-1"}},
    }
    assert orjson.loads(msg.message["data"]) == {"id": 7, "text": "hi"}


def test_rejected_row_carries_the_reject_header_and_null_data_sends_no_data() -> None:
    msg = row_to_message(0, row(rejected=True, data=None), max_message_size=65536, token={})
    assert "data" not in msg.message and "encoding" not in msg.message
    assert msg.message["extras"]["headers"] == {
        "x-ably-models-event-uuid": "mut-1",
        "x-ably-models-reject": "true",
    }


def test_json_null_headers_count_as_none() -> None:
    msg = row_to_message(0, row(headers="null"), max_message_size=65536, token={})
    assert msg.message["extras"]["headers"] == {"x-ably-models-event-uuid": "mut-1"}


def test_size_is_counted_as_ably_counts_it() -> None:
    msg = row_to_message(0, row(), max_message_size=65536, token={})
    extras = orjson.dumps(msg.message["extras"])
    assert msg.size == len("addComment") + len('{"id": 7, "text": "hi"}') + len(extras)
    assert row_to_message(0, row(), max_message_size=msg.size, token={}).size == msg.size
    with pytest.raises(UnpublishableEvent, match=f"message is {msg.size} bytes, over MAX_MESSAGE_SIZE"):
        row_to_message(0, row(), max_message_size=msg.size - 1, token={}, on_oversize="deadletter")


def test_oversize_row_is_published_without_its_data_with_the_truncation_headers() -> None:
    big = row(data='{"text": "' + "x" * 70_000 + '"}', headers='{"x-trace": "t1"}')
    full = row_to_message(0, big, max_message_size=10**6, token={})
    msg = row_to_message(0, big, max_message_size=65536, token={"k": 1})
    assert msg.channel == "posts:7" and msg.token == {"k": 1}
    assert msg.message == {
        "id": "42",
        "name": "addComment",
        "extras": {
            "headers": {
                "x-trace": "t1",
                "x-ably-models-event-uuid": "mut-1",
                "x-livesync-truncated": "true",
                "x-livesync-original-size": str(full.size),
            }
        },
    }
    assert msg.size == len("addComment") + len(orjson.dumps(msg.message["extras"]))


def test_oversize_row_fail_policy_is_fatal_and_too_large_headers_are_unpublishable() -> None:
    big = row(data='{"text": "' + "x" * 70_000 + '"}')
    with pytest.raises(UnpublishableEvent) as info:
        row_to_message(0, big, max_message_size=65536, token={}, on_oversize="fail")
    assert info.value.fatal and info.value.kind == "too_large"
    with pytest.raises(UnpublishableEvent, match="truncated it is still"):
        row_to_message(0, row(headers='{"h": "' + "y" * 200 + '"}'), max_message_size=150, token={})


@pytest.mark.parametrize(
    ("channel", "reason"),
    [
        ("", "channel name is empty"),
        ("[meta]x", "channel name must not start with '[' or ':'"),
        (":x", "channel name must not start with '[' or ':'"),
        ("a\nb", "channel name must not contain a newline"),
    ],
)
def test_bad_channel_is_unpublishable_with_72004(channel: str, reason: str) -> None:
    with pytest.raises(NoChannelError, match=reason.replace("[", r"\[")) as info:
        row_to_message(0, row(channel=channel), max_message_size=65536, token={})
    assert info.value.code == 72004


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ("[1, 2]", "headers must be an object (got list)"),
        ('{"n": 1}', "headers must map strings to strings ('n' is int)"),
        ('{"o": {"a": "b"}}', "headers must map strings to strings ('o' is dict)"),
    ],
)
def test_headers_that_are_not_a_flat_string_map_are_unpublishable(headers: str, reason: str) -> None:
    with pytest.raises(UnpublishableEvent) as info:
        row_to_message(0, row(headers=headers), max_message_size=65536, token={})
    assert info.value.reason == reason
