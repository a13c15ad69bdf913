"""`livesync-connector deadletter list | show | replay | purge` on the MongoDB source, against the emulators.

Dead letters are written by the connector's own `UnpublishableHandler`, as a running connector writes them.
"""

from __future__ import annotations

import asyncio
import datetime
import json
from collections.abc import Iterator
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from connector.sources.mongodb.deadletter import UnpublishableHandler
from tests.deadletter_cli import listed, run
from tests.encryption import KEY_256, decrypt_data

pytestmark = pytest.mark.integration

BIG = "x" * 3_000
WALL = datetime.datetime(2026, 12, 1, 9, 30)


def event(
    n: int, channel: str | None, *, big: bool = False, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "_id": {"_data": f"82{n:08X}"},
        "operationType": "update",
        "ns": {"db": "shop", "coll": "orders"},
        "documentKey": {"_id": n},
        "wallTime": WALL,
        "fullDocument": {"_id": n, "blob": BIG if big else "small", "v": n},
    }
    if channel is not None:
        out["_ablyChannel"] = channel
    if headers is not None:
        out["_ablyMsgHeaders"] = headers
    return out


#: (event, reason, code, kind) as the connector dead-letters them, in stream order.
DEAD = [
    (
        event(1, "orders:1", big=True),
        "message is 3300 bytes, over MAX_MESSAGE_SIZE of 1000 bytes",
        72001,
        "too_large",
    ),
    (
        event(2, "orders:2", big=True, headers={"x-ably-models-event-uuid": "m2"}),
        "message is 3300 bytes, over",
        72001,
        "too_large",
    ),
    (event(3, "locked:3"), "rejected by Ably: capability (ably code 40160, http 401)", 40160, "rejected"),
    (event(4, None), "event has no _ablyChannel field (the pipeline must set it)", 72004, "no_channel"),
]
IDS = [e["_id"]["_data"] for e, *_ in DEAD]


@pytest.fixture
def env(connector_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> dict[str, str]:
    monkeypatch.chdir(tmp_path)  # no stray .env
    for name, value in connector_env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MAX_MESSAGE_SIZE", "1000")
    return connector_env


@pytest.fixture
def dead(env: dict[str, str], mongo_uri: str, db_name: str, sync_db: Any) -> Iterator[Any]:
    """The four dead letters of DEAD, written by the connector's handler; yields the collection."""

    async def write() -> None:
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri)
        handler = UnpublishableHandler("deadletter", client[db_name]["ably_deadletter"])
        for doc, reason, code, kind in DEAD:
            await handler.handle(doc, reason, code, kind=kind)
        await client.close()

    asyncio.run(write())
    yield sync_db["ably_deadletter"]


def test_list_prints_a_table_oldest_first(dead: Any, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "list")
    assert status == 0
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "AT", "(UTC)", "KIND", "CODE", "CHANNEL", "REPLAYED", "REASON"]
    assert [line.split()[0] for line in lines[1:5]] == IDS
    assert "too_large" in lines[1] and "orders:1" in lines[1] and " - " in lines[1]
    assert lines[-1].endswith("4 dead letter(s) in " + dead.database.name + ".ably_deadletter")


def test_list_filters(dead: Any, capsys: pytest.CaptureFixture[str]) -> None:
    assert listed(capsys, "--kind", "too_large") == IDS[:2]
    assert listed(capsys, "--channel", "orders:2") == IDS[1:2]
    assert listed(capsys, "--channel", "orders:*") == IDS[:2]
    assert listed(capsys, "--channel", "*:3") == IDS[2:3]
    assert listed(capsys, "--reason", "CAPABILITY") == IDS[2:3]
    assert listed(capsys, "--limit", "3") == IDS[:3]
    assert listed(capsys, "--channel", "orders:*", "--limit", "1") == IDS[:1]
    assert listed(capsys, "--since", "1h") == IDS
    assert listed(capsys, "--until", "1h") == []
    assert listed(capsys, "--since", "2020-01-01T00:00Z", "--until", "2099-01-01") == IDS
    assert listed(capsys, "--replayed") == []
    assert listed(capsys, "--pending") == IDS


def test_list_json_has_the_summary_fields(dead: Any, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "list", "--json", "--kind", "rejected")
    assert status == 0
    [record] = json.loads(out)
    assert record["id"] == IDS[2]
    assert record["channel"] == "locked:3" and record["name"] == "update" and record["code"] == 40160
    assert record["replayOutcome"] is None and record["replays"] == 0 and record["whole"] is True


def test_show_prints_one_record_whole_and_3_for_an_unknown_id(
    dead: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _ = run(capsys, "show", IDS[0])
    assert status == 0
    shown = json.loads(out)
    assert shown["id"] == IDS[0] and shown["kind"] == "too_large"
    assert shown["stored"]["event"]["fullDocument"]["blob"] == BIG
    status, _, err = run(capsys, "show", "82FFFF")
    assert status == 3
    assert "no dead letter '82FFFF'" in err


def test_dry_run_sends_and_marks_nothing(dead: Any, ably: Any, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "replay", "--all", "--dry-run")
    assert status == 0
    assert f"would send  {IDS[0]} to 'orders:1' as 'update' (compact" in out
    assert f"would fail  {IDS[3]} on None: event has no _ablyChannel field" in out
    assert "nothing sent, nothing marked" in out
    assert ably.messages() == []
    assert dead.count_documents({"replayOutcome": {"$exists": True}}) == 0


def test_replay_sends_the_compact_form_once_with_the_original_ids(
    dead: Any, ably: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _ = run(capsys, "replay", "--channel", "orders:*")
    assert status == 0, out
    assert f"replayed  {IDS[0]} on 'orders:1' (compact)" in out
    sent = {m["id"]: m for m in ably.messages()}
    assert set(sent) == set(IDS[:2])
    message = sent[IDS[1]]
    assert message["channel"] == "orders:2" and message["name"] == "update"
    headers = message["extras"]["headers"]
    assert headers["x-livesync-truncated"] == "true" and headers["x-livesync-replayed"] == "true"
    assert headers["x-ably-models-event-uuid"] == "m2"
    assert int(headers["x-livesync-original-size"]) > 3_000
    data = json.loads(message["data"])
    assert "fullDocument" not in data and data["documentKey"] == {"_id": 2}
    marked = dead.find_one({"_id": {"_data": IDS[0]}})
    assert marked["replayOutcome"] == "published" and marked["replayForm"] == "compact"
    assert marked["replays"] == 1 and isinstance(marked["replayedAt"], datetime.datetime)
    # A second replay selects nothing, sends nothing.
    status, out, err = run(capsys, "replay", "--channel", "orders:*")
    assert status == 3
    assert "nothing to do" in err
    assert len(ably.messages()) == 2
    assert listed(capsys, "--replayed") == IDS[:2]


@pytest.mark.parametrize("page", [1, 2])
def test_a_replay_reads_page_by_page_in_stream_order(
    page: int, dead: Any, ably: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """However many records are selected, a replay holds one page at a time; every page is sent, in
    stream order, and --limit counts across pages."""
    from connector.deadletter import commands

    monkeypatch.setattr(commands, "REPLAY_PAGE", page)
    status, out, _ = run(capsys, "replay", "--all", "--dry-run")
    assert status == 0 and "dry run: 4 dead letter(s) selected" in out
    assert [line.split()[2] for line in out.splitlines() if line.startswith("would")] == IDS
    status, out, _ = run(capsys, "replay", "--all", "--limit", "3")
    assert status == 0, out
    assert [m["id"] for m in ably.messages()] == IDS[:3]
    assert "replayed 3 of 3 dead letter(s)" in out
    status, out, _ = run(capsys, "replay", "--all")  # only the fourth is left: it has no channel
    assert status == 1
    assert "replayed 0 of 1 dead letter(s)" in out and "1 still cannot be published" in out
    assert [m["id"] for m in ably.messages()] == IDS[:3]


def test_replay_as_original_sends_the_whole_event_once_the_limit_is_raised(
    dead: Any, ably: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ON_OVERSIZE", "deadletter")
    status, out, _ = run(capsys, "replay", "--id", IDS[0], "--as-original")
    assert status == 1
    assert "over MAX_MESSAGE_SIZE of 1000 bytes" in out and "stays a dead letter" in out
    assert ably.messages() == []
    assert dead.find_one({"_id": {"_data": IDS[0]}})["replayOutcome"] == "failed"
    monkeypatch.setenv("MAX_MESSAGE_SIZE", "65536")
    status, out, _ = run(capsys, "replay", "--id", IDS[0], "--as-original")
    assert status == 0, out
    [message] = ably.messages()
    assert json.loads(message["data"])["fullDocument"]["blob"] == BIG
    assert "x-livesync-truncated" not in message["extras"]["headers"]
    assert message["extras"]["headers"]["x-livesync-replayed"] == "true"
    doc = dead.find_one({"_id": {"_data": IDS[0]}})
    assert doc["replayOutcome"] == "published" and doc["replayForm"] == "original" and doc["replays"] == 2


def test_as_original_over_the_limit_follows_on_oversize_truncate(
    dead: Any, ably: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _ = run(capsys, "replay", "--id", IDS[0], "--as-original")
    assert status == 0, out
    assert f"replayed  {IDS[0]} on 'orders:1' (compact)" in out
    [message] = ably.messages()
    assert message["extras"]["headers"]["x-livesync-truncated"] == "true"


def test_a_channel_the_key_may_not_publish_to_stays_a_dead_letter_with_the_new_reason(
    dead: Any, ably: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    ably.inject_fault(
        mode="partial", status=401, code=40160, message="capability denied", channels=["locked:3"]
    )
    status, out, _ = run(capsys, "replay", "--kind", "rejected")
    assert status == 1
    assert f"FAILED    {IDS[2]} on 'locked:3'" in out
    assert "the key may not publish on 'locked:3': widen its capability" in out
    doc = dead.find_one({"_id": {"_data": IDS[2]}})
    assert doc["replayOutcome"] == "failed" and doc["code"] == 40160 and "capability denied" in doc["reason"]
    ably.clear_faults()
    status, out, _ = run(capsys, "replay", "--kind", "rejected")  # failed records are selected again
    assert status == 0, out
    assert [m["id"] for m in ably.messages("locked:3")] == [IDS[2]]


def test_again_resends_a_replayed_record(dead: Any, ably: Any, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "replay", "--id", IDS[2])[0] == 0
    assert run(capsys, "replay", "--id", IDS[2])[0] == 3
    status, out, _ = run(capsys, "replay", "--id", IDS[2], "--again")
    assert status == 0, out
    assert dead.find_one({"_id": {"_data": IDS[2]}})["replays"] == 2
    assert len(ably.messages()) == 1  # the same id within Ably's idempotency window: dropped


def test_purge_needs_yes_and_deletes_only_the_selection(
    dead: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, "replay", "--kind", "rejected")[0] == 0
    status, _, err = run(capsys, "purge", "--replayed")
    assert status == 2 and "--yes" in err
    status, out, _ = run(capsys, "purge", "--replayed", "--yes")
    assert status == 0 and "purged 1 dead letter(s)" in out
    assert listed(capsys) == [IDS[0], IDS[1], IDS[3]]
    status, out, _ = run(capsys, "purge", "--kind", "no_channel", "--yes")
    assert status == 0
    assert listed(capsys) == IDS[:2]
    assert run(capsys, "purge", "--kind", "no_channel", "--yes")[0] == 3
    assert run(capsys, "purge", "--all", "--yes")[0] == 0
    assert listed(capsys) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["replay"], "say which records"),
        (["purge", "--yes"], "say which records"),
        (["replay", "--all", "--id", "82"], "exclude each other"),
        (["list", "--since", "yesterday"], "neither an ISO 8601 time"),
        (["list", "--limit", "0"], "--limit must be at least 1"),
    ],
)
def test_usage_errors_exit_2(
    env: dict[str, str], capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    status, _, err = run(capsys, *args)
    assert status == 2
    assert message in err


def test_an_empty_collection_lists_nothing_and_replays_nothing(
    env: dict[str, str], ably: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _ = run(capsys, "list")
    assert status == 0 and "no dead letters match" in out
    status, _, err = run(capsys, "replay", "--all")
    assert status == 3 and "no dead letters match" in err


def test_a_wrong_connection_string_is_one_line_and_exit_1(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MONGODB_URI", "mongodb://127.0.0.1:99999")
    status, _, err = run(capsys, "list")
    assert status == 1
    assert "livesync-connector: deadletter list: MongoDB: invalid MONGODB_URI: Port must be" in err


def test_an_unreachable_mongodb_is_one_line_and_exit_1(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MONGODB_URI", "mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=300")
    status, _, err = run(capsys, "list")
    assert status == 1
    assert "livesync-connector: deadletter list: MongoDB, connecting: cannot connect to 127.0.0.1:1" in err


def test_a_wrong_ably_key_stops_the_replay_and_marks_nothing(
    dead: Any, ably: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ABLY_API_KEY", "testapp.key1:not-the-secret")
    status, out, err = run(capsys, "replay", "--kind", "too_large")
    assert status == 1
    assert "Ably refused the key: check ABLY_API_KEY" in err
    assert "not-the-secret" not in out + err
    assert "2 not settled, left unmarked" in out
    assert dead.count_documents({"replayOutcome": {"$exists": True}}) == 0


def test_a_replay_is_encrypted_like_the_connectors_messages(
    dead: Any, ably: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHANNEL_CIPHER_KEY", KEY_256)
    status, out, _ = run(capsys, "replay", "--id", IDS[1])
    assert status == 0, out
    [message] = ably.messages()
    assert message["id"] == IDS[1]
    assert message["extras"]["headers"]["x-livesync-replayed"] == "true"  # headers stay readable
    event = json.loads(decrypt_data(message, KEY_256))
    assert event["documentKey"] == {"_id": 2} and "fullDocument" not in event


def test_an_undecodable_event_is_replayed_compact_from_its_identity(
    env: dict[str, str],
    mongo_uri: str,
    db_name: str,
    sync_db: Any,
    ably: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from connector.sources.mongodb.decode import UndecodableEvent

    identity = {"_id": {"_data": "8200000009"}, "operationType": "insert", "documentKey": {"_id": 9}}
    undecodable = UndecodableEvent(
        {**identity, "_ablyChannel": "orders:9"}, b"\x05\x00\x00\x00\x01", "bad BSON"
    )

    async def write() -> None:
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri)
        handler = UnpublishableHandler("deadletter", client[db_name]["ably_deadletter"])
        await handler.handle(undecodable, "bad BSON", 72000, kind="undecodable")
        await client.close()

    asyncio.run(write())
    status, out, _ = run(capsys, "replay", "--all", "--as-original")
    assert status == 1
    assert "FAILED    8200000009 on 'orders:9': cannot decode the event's BSON" in out
    status, out, _ = run(capsys, "replay", "--all")
    assert status == 0, out
    [message] = ably.messages("orders:9")
    assert json.loads(message["data"])["documentKey"] == {"_id": 9}
    assert message["extras"]["headers"]["x-livesync-truncated"] == "true"
