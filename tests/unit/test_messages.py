"""Event -> Ably message: routing fields, ids, Extended JSON of every BSON type, size as Ably counts it."""

from __future__ import annotations

import datetime
import json
import re
import uuid
from decimal import Decimal
from typing import Any

import bson
import pytest
from bson import SON, Binary, Code, DBRef, Decimal128, Int64, MaxKey, MinKey, ObjectId, Regex, Timestamp
from bson.datetime_ms import DatetimeMS
from bson.json_util import CANONICAL_JSON_OPTIONS, RELAXED_JSON_OPTIONS
from hypothesis import given, settings
from hypothesis import strategies as st

from connector.errors import NoChannelError, UnpublishableEvent
from connector.sources.mongodb.client import CODEC_OPTIONS
from connector.sources.mongodb.messages import (
    ENCODERS,
    MISSING,
    decimal128_str,
    encode_driver_event,
    encode_fast,
    encode_reference,
    message_size,
    to_message,
)

OID = ObjectId("65a1b2c3d4e5f60718293a4b")
TOKEN = {"_data": "8265A1B2C3000000012B022C0100296E5A1004"}


def event(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "_id": dict(TOKEN),
        "operationType": "insert",
        "ns": {"db": "shop", "coll": "orders"},
        "documentKey": {"_id": OID},
        "fullDocument": {"_id": OID, "total": Decimal128("19.99")},
        "_ablyChannel": "orders:1",
    }
    base.update(fields)
    return base


def mapped(
    ev: dict[str, Any], *, json_mode: str = "relaxed", limit: int = 65536, on_oversize: Any = "truncate"
) -> Any:
    return to_message(42, ev, json_mode=json_mode, max_message_size=limit, on_oversize=on_oversize)


def data_of(ev: dict[str, Any], json_mode: str = "relaxed") -> Any:
    out = mapped(ev, json_mode=json_mode)
    assert out.message["encoding"] == "json"
    return json.loads(out.message["data"])


# ---- routing fields ----


def test_basic_mapping() -> None:
    ev = event()
    out = mapped(ev)
    assert out.seq == 42
    assert out.channel == "orders:1"
    assert out.token == TOKEN
    assert out.message["id"] == TOKEN["_data"]
    assert out.message["name"] == "insert"
    assert out.message["encoding"] == "json"
    assert "extras" not in out.message
    assert bson.json_util.loads(out.message["data"]) == ev


def test_name_from_ably_msg_name() -> None:
    assert mapped(event(_ablyMsgName="order-created")).message["name"] == "order-created"


def test_name_defaults_to_operation_type() -> None:
    assert mapped(event(operationType="delete")).message["name"] == "delete"


def test_non_string_name_is_unpublishable() -> None:
    with pytest.raises(UnpublishableEvent) as info:
        mapped(event(_ablyMsgName=5))
    assert info.value.reason == "_ablyMsgName must be a string (got int)"
    assert not isinstance(info.value, NoChannelError)


def test_headers_become_extras_headers() -> None:
    out = mapped(event(_ablyMsgHeaders={"x-ably-models-event-uuid": "m-1", "tenant": "t9"}))
    assert out.message["extras"] == {"headers": {"x-ably-models-event-uuid": "m-1", "tenant": "t9"}}


def test_empty_headers_send_no_extras() -> None:
    assert "extras" not in mapped(event(_ablyMsgHeaders={})).message


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ("a=b", "_ablyMsgHeaders must be an object (got str)"),
        (["a"], "_ablyMsgHeaders must be an object (got list)"),
        ({"n": 1}, "_ablyMsgHeaders must map strings to strings ('n' is int)"),
        ({"nested": {"a": "b"}}, "_ablyMsgHeaders must map strings to strings ('nested' is dict)"),
        ({"null": None}, "_ablyMsgHeaders must map strings to strings ('null' is NoneType)"),
    ],
)
def test_bad_headers_are_unpublishable(headers: Any, reason: str) -> None:
    with pytest.raises(UnpublishableEvent) as info:
        mapped(event(_ablyMsgHeaders=headers))
    assert info.value.reason == reason


@pytest.mark.parametrize(
    ("channel", "reason"),
    [
        (MISSING, "event has no _ablyChannel field (the pipeline must set it)"),
        (None, "_ablyChannel is null (the pipeline computed no channel for this event)"),
        (5, "_ablyChannel must be a string (got int 5)"),
        (["a"], "_ablyChannel must be a string (got list ['a'])"),
        ("", "_ablyChannel is empty"),
        ("[meta]x", "_ablyChannel must not start with '[' or ':' (got '[meta]x')"),
        (":x", "_ablyChannel must not start with '[' or ':' (got ':x')"),
        ("a\nb", "_ablyChannel must not contain a newline (got 'a\\nb')"),
        ("a\rb", "_ablyChannel must not contain a newline (got 'a\\rb')"),
        ("[" + "x" * 200, "_ablyChannel must not start with '[' or ':' (got '[" + "x" * 75 + "...)"),
    ],
)
def test_invalid_channels_raise_no_channel_error(channel: Any, reason: str) -> None:
    ev = event(_ablyChannel=channel)
    if channel is MISSING:
        del ev["_ablyChannel"]
    with pytest.raises(NoChannelError) as info:
        mapped(ev)
    assert info.value.code == 72004
    assert info.value.reason == reason


def test_valid_channel_shapes() -> None:
    for channel in ("a", "orders:65a1", "x[y]", "a:b:c", "ünïcode ✓", "with space"):
        assert mapped(event(_ablyChannel=channel)).channel == channel


@pytest.mark.parametrize("token", [None, "8265", {"_data": 5}, {}])
def test_missing_resume_token_is_unpublishable(token: Any) -> None:
    ev = event(_id=token)
    with pytest.raises(UnpublishableEvent, match="no resume token"):
        mapped(ev)


def test_encoder_can_be_swapped() -> None:
    def reference(ev: Any) -> bytes:
        return encode_reference(ev, "relaxed")

    out = to_message(1, event(), json_mode="relaxed", max_message_size=65536, encoder=reference)
    assert out.message["data"] == reference(event()).decode()
    assert set(ENCODERS) == {"relaxed", "canonical"}


# ---- Extended JSON ----

WHEN = datetime.datetime(2024, 5, 1, 12, 30, 45, 123456)
UUID = uuid.UUID("0123456789abcdef0123456789abcdef")


@pytest.mark.parametrize(
    ("value", "relaxed", "canonical"),
    [
        (OID, {"$oid": "65a1b2c3d4e5f60718293a4b"}, {"$oid": "65a1b2c3d4e5f60718293a4b"}),
        (Decimal128("1.10"), {"$numberDecimal": "1.10"}, {"$numberDecimal": "1.10"}),
        (Decimal128("-1E+3"), {"$numberDecimal": "-1E+3"}, {"$numberDecimal": "-1E+3"}),
        (Decimal128("NaN"), {"$numberDecimal": "NaN"}, {"$numberDecimal": "NaN"}),
        (WHEN, {"$date": "2024-05-01T12:30:45.123Z"}, {"$date": {"$numberLong": "1714566645123"}}),
        (datetime.datetime(1970, 1, 1), {"$date": "1970-01-01T00:00:00Z"}, {"$date": {"$numberLong": "0"}}),
        (
            datetime.datetime(1969, 12, 31, 23, 59, 59),
            {"$date": {"$numberLong": "-1000"}},
            {"$date": {"$numberLong": "-1000"}},
        ),
        (
            datetime.datetime(9999, 12, 31, 23, 59, 59, 999000),
            {"$date": "9999-12-31T23:59:59.999Z"},
            {"$date": {"$numberLong": "253402300799999"}},
        ),
        (
            DatetimeMS(253402300800000),
            {"$date": {"$numberLong": "253402300800000"}},
            {"$date": {"$numberLong": "253402300800000"}},
        ),
        (Binary(b"\x00\x01\x02", 0), {"$binary": {"base64": "AAEC", "subType": "00"}}, None),
        (b"\xff", {"$binary": {"base64": "/w==", "subType": "00"}}, None),
        (
            Binary(UUID.bytes, 4),
            {"$binary": {"base64": "ASNFZ4mrze8BI0VniavN7w==", "subType": "04"}},
            None,
        ),
        (UUID, {"$binary": {"base64": "ASNFZ4mrze8BI0VniavN7w==", "subType": "04"}}, None),
        (Int64(5), 5, {"$numberLong": "5"}),
        (7, 7, {"$numberInt": "7"}),
        (2**40, 2**40, {"$numberLong": str(2**40)}),
        (1.5, 1.5, {"$numberDouble": "1.5"}),
        (float("nan"), {"$numberDouble": "NaN"}, {"$numberDouble": "NaN"}),
        (float("-inf"), {"$numberDouble": "-Infinity"}, {"$numberDouble": "-Infinity"}),
        (Timestamp(1700000000, 3), {"$timestamp": {"t": 1700000000, "i": 3}}, None),
        (Regex("^a.b", "im"), {"$regularExpression": {"pattern": "^a.b", "options": "im"}}, None),
        (re.compile("x+", re.IGNORECASE), {"$regularExpression": {"pattern": "x+", "options": "iu"}}, None),
        (MinKey(), {"$minKey": 1}, None),
        (MaxKey(), {"$maxKey": 1}, None),
        (Code("f()"), {"$code": "f()"}, None),
        (True, True, True),
        (None, None, None),
        ("héllo ✓", "héllo ✓", "héllo ✓"),
        (
            {"a": [Int64(1), {"b": OID}]},
            {"a": [1, {"b": {"$oid": str(OID)}}]},
            {"a": [{"$numberLong": "1"}, {"b": {"$oid": str(OID)}}]},
        ),
        (SON([("z", 1), ("a", 2)]), {"z": 1, "a": 2}, {"z": {"$numberInt": "1"}, "a": {"$numberInt": "2"}}),
        ((1, "x"), [1, "x"], [{"$numberInt": "1"}, "x"]),
    ],
)
def test_extended_json_of_each_type(value: Any, relaxed: Any, canonical: Any) -> None:
    got_relaxed = data_of(event(v=value))["v"]
    got_canonical = data_of(event(v=value), "canonical")["v"]
    assert got_relaxed == relaxed
    assert got_canonical == (relaxed if canonical is None else canonical)


def test_relaxed_and_canonical_differ_only_in_numbers() -> None:
    ev = event(n=Int64(3), when=WHEN)
    relaxed, canonical = data_of(ev), data_of(ev, "canonical")
    assert relaxed["n"] == 3 and canonical["n"] == {"$numberLong": "3"}
    assert relaxed["when"] == {"$date": "2024-05-01T12:30:45.123Z"}
    assert canonical["when"] == {"$date": {"$numberLong": "1714566645123"}}
    assert relaxed["_id"] == canonical["_id"] == TOKEN


def test_data_matches_json_util_dumps() -> None:
    ev = event(
        wallTime=WHEN,
        clusterTime=Timestamp(1, 2),
        updateDescription={"updatedFields": {"a.b": Int64(9), "when": WHEN}, "removedFields": ["x"]},
        ref=DBRef("c", OID, "db"),
        code=Code("f(x)", {"x": Int64(1)}),
        tz=datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone(datetime.timedelta(hours=2))),
    )
    for mode, options in (("relaxed", RELAXED_JSON_OPTIONS), ("canonical", CANONICAL_JSON_OPTIONS)):
        expected = json.loads(bson.json_util.dumps(ev, json_options=options))
        assert data_of(ev, mode) == expected


# ---- size as Ably counts it ----


def test_size_counts_name_data_and_extras_bytes() -> None:
    ev = event(_ablyMsgName="créé", _ablyMsgHeaders={"k": "vä"}, _ablyChannel="kanal-ü")
    out = mapped(ev)
    extras_json = json.dumps(out.message["extras"], separators=(",", ":"), ensure_ascii=False)
    expected = len("créé".encode()) + len(out.message["data"].encode()) + len(extras_json.encode())
    assert out.size == expected
    assert len("créé".encode()) == 6  # multi-byte UTF-8 counted as bytes, not characters


def test_size_multibyte_data() -> None:
    ascii_out = mapped(event(note="a" * 100))
    wide_out = mapped(event(note="€" * 100))  # 3 bytes each in UTF-8
    assert wide_out.size - ascii_out.size == 200
    assert wide_out.size == message_size("insert", wide_out.message["data"].encode(), None)


def test_exactly_at_the_limit_passes_one_over_fails() -> None:
    ev = event(fill="x" * 1000)
    size = mapped(ev).size
    assert mapped(ev, limit=size).size == size
    with pytest.raises(UnpublishableEvent) as info:
        mapped(ev, limit=size - 1, on_oversize="deadletter")
    assert info.value.reason == f"message is {size} bytes, over MAX_MESSAGE_SIZE of {size - 1} bytes"
    assert info.value.kind == "too_large"
    assert not info.value.fatal
    assert not isinstance(info.value, NoChannelError)


def test_big_event_is_unpublishable_at_default_limit_when_deadlettering() -> None:
    with pytest.raises(UnpublishableEvent, match=r"^message is \d+ bytes, over MAX_MESSAGE_SIZE of 65536"):
        mapped(event(fill="x" * 70000), on_oversize="deadletter")


def test_oversize_fail_policy_is_fatal() -> None:
    with pytest.raises(UnpublishableEvent) as info:
        mapped(event(fullDocument={"_id": OID, "fill": "x" * 70000}), on_oversize="fail")
    assert info.value.fatal
    assert "ON_OVERSIZE=fail" in info.value.reason


def test_oversize_change_is_published_truncated_on_its_channel_with_its_id_and_name() -> None:
    big = {"_id": OID, "fill": "x" * 70000}
    ev = event(
        operationType="update",
        fullDocument=big,
        fullDocumentBeforeChange=big,
        updateDescription={"updatedFields": {"fill": "x" * 70000}, "removedFields": []},
        _ablyMsgName="order.updated",
        _ablyMsgHeaders={"x-ably-models-event-uuid": "m-1"},
    )
    full_size = message_size(
        "order.updated",
        encode_reference(ev),
        {"headers": {"x-ably-models-event-uuid": "m-1"}},
    )
    out = mapped(ev)
    assert out.channel == "orders:1"
    assert out.message["id"] == TOKEN["_data"]
    assert out.message["name"] == "order.updated"
    headers = out.message["extras"]["headers"]
    assert headers == {
        "x-ably-models-event-uuid": "m-1",
        "x-livesync-truncated": "true",
        "x-livesync-original-size": str(full_size),
    }
    data = json.loads(out.message["data"])
    assert set(data) == {
        "_id",
        "operationType",
        "ns",
        "documentKey",
        "_ablyChannel",
        "_ablyMsgName",
        "_ablyMsgHeaders",
    }
    assert data["documentKey"] == {"_id": {"$oid": str(OID)}}
    assert out.size <= 65536
    assert out.size == message_size("order.updated", out.message["data"].encode(), out.message["extras"])


def test_truncated_form_still_too_large_is_unpublishable() -> None:
    ev = event(fullDocument={"_id": OID, "fill": "x" * 70000}, documentKey={"_id": "k" * 70000})
    with pytest.raises(UnpublishableEvent) as info:
        mapped(ev)
    assert info.value.kind == "too_large"
    assert "truncated it is still" in info.value.reason


def test_bodies_dropped_by_the_server_are_published_truncated_with_their_size() -> None:
    ev = event(_livesyncOversize=20_000_000)
    del ev["fullDocument"]
    out = mapped(ev)
    headers = out.message["extras"]["headers"]
    assert headers["x-livesync-truncated"] == "true"
    assert int(headers["x-livesync-original-size"]) > 20_000_000
    assert "_livesyncOversize" not in json.loads(out.message["data"])


# ---- the fast encoder equals json_util on arbitrary BSON ----


def exact_decimal128(coefficient: int, exponent: int) -> Decimal128 | None:
    """A Decimal128 with this exact coefficient and exponent, or None where it has none."""
    try:
        return Decimal128(Decimal(f"{coefficient}E{exponent}"))
    except ArithmeticError:
        return None


decimals128 = st.one_of(
    st.builds(Decimal128.from_bid, st.binary(min_size=16, max_size=16)),
    st.builds(exact_decimal128, st.integers(-(10**34) + 1, 10**34 - 1), st.integers(-6176, 6111)).filter(
        lambda d: d is not None
    ),
    st.builds(exact_decimal128, st.integers(-(10**6), 10**6), st.integers(-8, 3)).filter(
        lambda d: d is not None
    ),
)
binaries = st.one_of(
    st.builds(Binary, st.binary(max_size=20), st.sampled_from([0, 1, 2, 3, 5, 6, 7, 8, 0x80])),
    st.builds(Binary, st.binary(min_size=16, max_size=16), st.just(4)),
)
NO_NUL = st.characters(exclude_characters="\x00", exclude_categories=["Cs"])
keys = st.text(NO_NUL, max_size=8)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(),
    st.text(max_size=20),
    st.binary(max_size=20),
    st.builds(ObjectId, st.binary(min_size=12, max_size=12)),
    st.datetimes(
        min_value=datetime.datetime(1, 1, 2),
        max_value=datetime.datetime(9999, 12, 30),
        timezones=st.sampled_from([None, datetime.UTC, datetime.timezone(datetime.timedelta(hours=-5))]),
    ),
    st.builds(Int64, st.integers(-(2**63), 2**63 - 1)),
    st.builds(Timestamp, st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
    decimals128,
    binaries,
    st.builds(Regex, st.text(NO_NUL, max_size=10), st.sampled_from(["", "i", "ms", "imsux"])),
    st.sampled_from([MinKey(), MaxKey()]),
    st.builds(Code, st.text(max_size=10)),
    st.uuids(),
)
documents = st.recursive(
    st.dictionaries(keys, scalars, max_size=5),
    lambda inner: st.dictionaries(
        keys, st.one_of(scalars, inner, st.lists(st.one_of(scalars, inner), max_size=4)), max_size=5
    ),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(documents, st.sampled_from(["relaxed", "canonical"]))
def test_fast_encoder_equals_json_util(doc: dict[str, Any], mode: str) -> None:
    assert json.loads(encode_fast(doc, mode)) == json.loads(encode_reference(doc, mode))


@settings(max_examples=200, deadline=None)
@given(documents)
def test_fast_encoder_equals_json_util_after_bson_round_trip(doc: dict[str, Any]) -> None:
    """What the driver actually hands us: values as decoded from BSON."""
    options: bson.CodecOptions[dict[str, Any]] = bson.CodecOptions(
        uuid_representation=bson.binary.UuidRepresentation.STANDARD
    )
    decoded = bson.decode(bson.encode(doc, codec_options=options), codec_options=options)
    for mode, json_options in (("relaxed", RELAXED_JSON_OPTIONS), ("canonical", CANONICAL_JSON_OPTIONS)):
        reference = bson.json_util.dumps(
            decoded, json_options=json_options.with_options(uuid_representation=4)
        )
        assert json.loads(encode_fast(decoded, mode)) == json.loads(reference)


@settings(max_examples=300, deadline=None)
@given(documents)
def test_driver_event_encoder_equals_json_util(doc: dict[str, Any]) -> None:
    """The hot-path encoder, on events decoded with the connector's codec options (subtype 4 as Binary)."""
    standard: bson.CodecOptions[dict[str, Any]] = bson.CodecOptions(
        uuid_representation=bson.binary.UuidRepresentation.STANDARD
    )
    raw = bson.encode(doc, codec_options=standard)
    reference = bson.json_util.dumps(
        bson.decode(raw, codec_options=standard),
        json_options=RELAXED_JSON_OPTIONS.with_options(uuid_representation=4),
    )
    assert json.loads(encode_driver_event(bson.decode(raw, codec_options=CODEC_OPTIONS))) == json.loads(
        reference
    )


def test_driver_event_encoder_is_exact_for_non_finite_floats() -> None:
    event = {"a": float("nan"), "b": float("inf"), "c": None, "d": Int64(7), "e": Code("x")}
    assert json.loads(encode_driver_event(event)) == json.loads(encode_reference(event, "relaxed"))


@settings(max_examples=500, deadline=None)
@given(decimals128)
def test_decimal128_str_equals_bson(value: Decimal128) -> None:
    assert decimal128_str(value) == str(value)


@pytest.mark.parametrize(
    "text", ["0", "-0", "0E-6176", "1E+6144", "9" * 34, "-1.10", "1E-7", "Infinity", "-NaN"]
)
def test_decimal128_str_edges(text: str) -> None:
    value = Decimal128(Decimal(text))
    assert decimal128_str(value) == str(value)
