"""Raw replies -> events: every stored value decodes, a lossy decode is counted, one bad event costs only
itself (decode.py), and the router and the dead-letter handler take it from there."""

from __future__ import annotations

import datetime
from typing import Any

import bson
import pytest
from bson import DatetimeMS, Int64, Timestamp
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument
from mongomock_motor import AsyncMongoMockClient

from connector.errors import UnpublishableEvent
from connector.sources.mongodb import decode
from connector.sources.mongodb.deadletter import UnpublishableHandler
from connector.sources.mongodb.decode import UndecodableEvent, decode_reply
from connector.sources.mongodb.messages import make_router

YEAR_10000_MS = 253402300800000 + 1000  # 10000-01-01T00:00:01Z
BEFORE_YEAR_1_MS = -62135596800000 - 1


def event(n: int, **fields: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "_id": {"_data": f"82{n:016X}"},
        "operationType": "insert",
        "clusterTime": Timestamp(n, 1),
        "documentKey": {"_id": n},
        "_ablyChannel": "c",
    }
    doc.update(fields)
    return doc


def raw_reply(events: list[bytes], key: str = "nextBatch") -> RawBSONDocument:
    """A getMore reply whose batch holds these raw events (some may be invalid for strict decoding)."""
    marker = [event(999)]
    reply = {"cursor": {"id": Int64(7), "ns": "db.c", key: marker, "postBatchResumeToken": {"_data": "FF"}}}
    template = bson.encode(reply)
    # Splice the raw events in place of the marker array: rebuild the array document by hand.
    array = b"".join(b"\x03" + str(i).encode() + b"\x00" + doc for i, doc in enumerate(events))
    array_doc = (len(array) + 5).to_bytes(4, "little") + array + b"\x00"
    marker_array = bson.encode({"0": marker[0]})
    start = template.index(marker_array)
    body = template[:start] + array_doc + template[start + len(marker_array) :]
    # Fix the lengths of the cursor document and the reply.
    delta = len(body) - len(template)
    cursor_at = template.index(b"cursor\x00") + len(b"cursor\x00")
    cursor_len = int.from_bytes(template[cursor_at : cursor_at + 4], "little") + delta
    body = body[:cursor_at] + cursor_len.to_bytes(4, "little") + body[cursor_at + 4 :]
    body = len(body).to_bytes(4, "little") + body[4:]
    return RawBSONDocument(body, decode.RAW_CODEC_OPTIONS)


def with_bad_utf8(doc: dict[str, Any]) -> bytes:
    return bson.encode(doc).replace(b"abc", b"a\xffc")


def test_out_of_range_dates_and_every_plain_value_decode_in_one_pass() -> None:
    events = [
        bson.encode(
            event(1, fullDocument={"late": DatetimeMS(YEAR_10000_MS), "early": DatetimeMS(BEFORE_YEAR_1_MS)})
        ),
        bson.encode(event(2, fullDocument={"nan": float("nan"), "big": Int64(2**62)})),
    ]
    reply = decode_reply(raw_reply(events), "nextBatch")
    batch = reply["cursor"]["nextBatch"]
    assert batch[0]["fullDocument"]["late"] == DatetimeMS(YEAR_10000_MS)
    assert batch[0]["fullDocument"]["early"] == DatetimeMS(BEFORE_YEAR_1_MS)
    assert isinstance(batch[0]["clusterTime"], Timestamp)
    assert reply["cursor"]["postBatchResumeToken"] == {"_data": "FF"}
    assert reply["cursor"]["id"] == 7


def test_in_range_dates_stay_naive_datetimes() -> None:
    when = datetime.datetime(2026, 12, 6, 12, 0, 0, 123000)
    reply = decode_reply(raw_reply([bson.encode(event(1, wallTime=when))]), "nextBatch")
    assert reply["cursor"]["nextBatch"][0]["wallTime"] == when


def test_invalid_utf8_is_replaced_counted_and_logged_once_with_the_key(
    caplog: pytest.LogCaptureFixture,
) -> None:
    before = decode.STATS.lossy_events
    events = [bson.encode(event(1)), with_bad_utf8(event(2, fullDocument={"s": "abc", "t": "abc"}))]
    batch = decode_reply(raw_reply(events), "nextBatch")["cursor"]["nextBatch"]
    assert batch[1]["fullDocument"] == {"s": "a\ufffdc", "t": "a\ufffdc"}
    assert batch[0]["documentKey"] == {"_id": 1}
    assert decode.STATS.lossy_events == before + 1
    lines = [r.getMessage() for r in caplog.records if "invalid UTF-8" in r.getMessage()]
    assert len(lines) == 1
    assert "{'_id': 2}" in lines[0] and "abc" not in lines[0]


def test_one_undecodable_event_costs_only_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    """Strict codec options stand in for a value nobody foresaw: the year-10000 date fails only its event."""
    strict: CodecOptions[dict[str, Any]] = CodecOptions(tz_aware=False)
    monkeypatch.setattr(decode, "EVENT_CODEC_OPTIONS", strict)
    bad = bson.encode(event(2, fullDocument={"late": DatetimeMS(YEAR_10000_MS)}))
    events = [bson.encode(event(1)), bad, bson.encode(event(3))]
    batch = decode_reply(raw_reply(events), "nextBatch")["cursor"]["nextBatch"]
    assert [e["_id"]["_data"] for e in batch] == [event(n)["_id"]["_data"] for n in (1, 2, 3)]
    assert not isinstance(batch[0], UndecodableEvent) and not isinstance(batch[2], UndecodableEvent)
    broken = batch[1]
    assert isinstance(broken, UndecodableEvent)
    assert broken.raw == bad
    assert broken["documentKey"] == {"_id": 2}
    assert "year 10000 is out of range" in broken.reason


def test_router_makes_an_undecodable_event_unpublishable() -> None:
    route = make_router(json_mode="relaxed", max_message_size=65536)
    broken = UndecodableEvent({"_id": {"_data": "82AA"}}, b"\x05\x00\x00\x00\x00", "cannot decode: boom")
    with pytest.raises(UnpublishableEvent) as info:
        route(0, broken)
    assert info.value.kind == "undecodable"
    assert info.value.reason == "cannot decode: boom"


async def test_deadletter_keeps_the_raw_bson_of_an_undecodable_event() -> None:
    collection = AsyncMongoMockClient()["app"]["ably_deadletter"]
    handler = UnpublishableHandler("deadletter", collection)
    raw = bson.encode(event(5))
    broken = UndecodableEvent({"_id": {"_data": "82AA"}, "documentKey": {"_id": 5}}, raw, "cannot decode")
    await handler.handle(broken, broken.reason, 72000, kind="undecodable")
    stored = await collection.find_one({"_id": {"_data": "82AA"}})
    assert bytes(stored["rawEvent"]) == raw
    assert stored["kind"] == "undecodable"
    assert handler.by_kind == {"undecodable": 1}


async def test_fatal_unpublishable_stops_whatever_the_policy() -> None:
    handler = UnpublishableHandler("deadletter", AsyncMongoMockClient()["app"]["dl"])
    with pytest.raises(Exception, match="ON_OVERSIZE"):
        await handler.handle(event(1), "too large (ON_OVERSIZE=fail)", 72001, kind="too_large", fatal=True)
