"""Every BSON value mongod stores comes back byte for byte: insert, find/getMore, aggregate, update,
replacement, upsert, findAndModify and change streams (fullDocument, pre-images, updatedFields).

What mongod 7.0 accepts is what its default BSON validation accepts (src/mongo/bson/bson_validate.cpp,
``validateBSON`` in ``kDefault`` mode): lengths and NUL terminators, bool bytes 0 or 1, known type bytes,
at most 200 levels of nesting on the wire, and a valid BSON column in BinData subtype 7. It does not check
UTF-8 (in values or field names), date ranges, deprecated types, UUID/MD5 lengths or regex flags (the
extended and full modes do, only for the ``validate`` command). Storage adds fixDocumentForInsert's rules
(src/mongo/db/ops/insert.cpp): 180 levels of nesting (Overflow 45), `_id` not a regex, array or undefined,
top-level Timestamp(0, 0) filled in; `$`-prefixed and dotted field names are allowed in inserts since 5.0
(manual, "Field Names with Periods and Dollar Signs").

The documents are built here as raw bytes and read back as RawBSONDocument, so the comparison is of
bytes; every test also runs against a real server (MONGODB_TEST_URI).
"""

from __future__ import annotations

import datetime
import math
import struct
import time
from typing import Any

import bson
import pytest
from bson import Binary, Code, Decimal128, Int64, MaxKey, MinKey, ObjectId, Regex, Timestamp
from bson.codec_options import CodecOptions, DatetimeConversion
from bson.datetime_ms import DatetimeMS
from bson.raw_bson import RawBSONDocument
from pymongo import ReturnDocument
from pymongo.errors import OperationFailure, WriteError

from tests.emulators.mongodb.raw_bson import (
    binary,
    decimal_bits,
    document,
    double_bits,
    element,
    int32,
    int64,
    string,
)

#: Needs a MongoDB server: the emulator, or MONGODB_TEST_URI.
pytestmark = pytest.mark.integration

#: Server error codes (src/mongo/base/error_codes.yml, and assertion ids).
INVALID_BSON = 22
OVERFLOW = 45
NON_CONFORMANT_BSON = 378
BSON_SIZE_NOT_A_DOCUMENT = 31393
#: BSONDepth::getMaxDepthForUserStorage(): nesting a stored document may have (counting itself).
MAX_STORAGE_DEPTH = 180
MAX_BSON_SIZE = 16 * 1024 * 1024
EVENT_WAIT_S = 20.0
MAX_AWAIT_MS = 200

#: Reads return RawBSONDocument: the bytes the server sent.
RAW = CodecOptions(document_class=RawBSONDocument)
#: What this client needs to decode such values itself (a driver's default refuses them).
LENIENT: CodecOptions[dict[str, Any]] = CodecOptions(
    datetime_conversion=DatetimeConversion.DATETIME_AUTO, unicode_decode_error_handler="surrogateescape"
)
_LENIENT_RAW = CodecOptions(
    document_class=RawBSONDocument,
    datetime_conversion=DatetimeConversion.DATETIME_AUTO,
    unicode_decode_error_handler="surrogateescape",
)


# -- raw BSON ------------------------------------------------------------------------------------------
def raw(data: bytes) -> RawBSONDocument:
    """A document to send as these exact bytes (the lenient options only serve the driver's own look at
    its keys, e.g. the `$set` of an update)."""
    return RawBSONDocument(data, _LENIENT_RAW)


def id_element(value: int) -> bytes:
    return element(0x10, b"_id", int32(value))


OID = bytes.fromhex("0123456789abcdef01234567")
UUID_BYTES = bytes(range(16))

#: Values mongod stores as sent, by kind; each is one element of a test document.
VALUES: dict[str, list[bytes]] = {
    "dates": [
        element(0x09, b"min", int64(-(2**63))),
        element(0x09, b"before_year_1", int64(-62135596800000 - 1)),
        element(0x09, b"epoch", int64(0)),
        element(0x09, b"minus_1ms", int64(-1)),
        element(0x09, b"year_10000", int64(253402300800000 + 1000)),
        element(0x09, b"max", int64(2**63 - 1)),
    ],
    "strings": [
        element(0x02, b"invalid_byte", string(b"a\xffc")),
        element(0x02, b"lone_continuation", string(b"\x80")),
        element(0x02, b"truncated", string(b"\xe2\x82")),
        element(0x02, b"surrogate", string(b"\xed\xa0\x80")),
        element(0x02, b"overlong", string(b"\xc0\xaf")),
        element(0x02, b"embedded_nul", string(b"a\x00b")),
        element(0x02, b"empty", string(b"")),
        element(0x02, b"euro", string("€".encode())),
    ],
    "doubles": [
        element(0x01, b"nan", double_bits(0x7FF8000000000000)),
        element(0x01, b"nan_payload", double_bits(0x7FF8000000000001)),
        element(0x01, b"negative_nan", double_bits(0xFFF8000000000000)),
        element(0x01, b"inf", struct.pack("<d", math.inf)),
        element(0x01, b"minus_inf", struct.pack("<d", -math.inf)),
        element(0x01, b"minus_zero", struct.pack("<d", -0.0)),
        element(0x01, b"denormal", struct.pack("<d", 5e-324)),
        element(0x01, b"max", struct.pack("<d", 1.7976931348623157e308)),
    ],
    "decimals": [
        element(0x13, b"nan", decimal_bits(0x7C00000000000000, 0)),
        element(0x13, b"negative_nan", decimal_bits(0xFC00000000000000, 0)),
        element(0x13, b"snan", decimal_bits(0x7E00000000000000, 0)),
        element(0x13, b"inf", decimal_bits(0x7800000000000000, 0)),
        element(0x13, b"minus_inf", decimal_bits(0xF800000000000000, 0)),
        element(0x13, b"minus_zero", Decimal128("-0").bid),
        element(0x13, b"zero_min_exponent", Decimal128("0E-6176").bid),
        element(0x13, b"tiny", Decimal128("1E-6176").bid),
        element(0x13, b"max", Decimal128("9.999999999999999999999999999999999E+6144").bid),
        element(0x13, b"non_canonical", decimal_bits(0x3041ED09BEAD87C0, 0xFFFFFFFFFFFFFFFF)),
    ],
    "integers": [
        element(0x10, b"int32_min", int32(-(2**31))),
        element(0x10, b"int32_max", int32(2**31 - 1)),
        element(0x12, b"int64_min", int64(-(2**63))),
        element(0x12, b"int64_max", int64(2**63 - 1)),
        element(0x12, b"int64_zero", int64(0)),
        element(0x08, b"false", b"\x00"),
        element(0x08, b"true", b"\x01"),
    ],
    "deprecated": [
        element(0x06, b"undefined", b""),
        element(0x0C, b"dbpointer", string(b"db.coll") + OID),
        element(0x0E, b"symbol", string(b"sym")),
        # Empty names, at the end of nested documents: the bytes look like a string's length.
        element(0x03, b"deep_undefined", document(element(0x03, b"x", document(element(0x06, b"", b""))))),
        element(0x03, b"empty_name_symbol", document(element(0x0E, b"", string(b"abcdefghijklm")))),
        element(0x0D, b"code", string(b"function () { return 1; }")),
        element(
            0x0F,
            b"code_with_scope",
            (lambda code, scope: int32(4 + len(code) + len(scope)) + code + scope)(
                string(b"x + 1"), document(element(0x10, b"x", int32(1)))
            ),
        ),
        # A DBRef-shaped document in an unusual order, with an extra field (a driver would reorder it).
        element(
            0x03, b"dbref", document(element(0x10, b"$id", int32(1)), element(0x02, b"$ref", string(b"c")))
        ),
        element(
            0x03,
            b"dbref_extra",
            document(
                element(0x02, b"$ref", string(b"c")),
                element(0x10, b"$id", int32(2)),
                element(0x10, b"extra", int32(3)),
                element(0x02, b"$db", string(b"d")),
            ),
        ),
        element(0xFF, b"min_key", b""),
        element(0x7F, b"max_key", b""),
    ],
    "regexes": [
        element(0x0B, b"no_flags", b"^a.*$\x00\x00"),
        element(0x0B, b"all_flags", b"a\x00ilmsux\x00"),
        element(0x0B, b"unknown_flags", b"a\x00zyx\x00"),
        element(0x0B, b"unsorted_flags", b"a\x00xi\x00"),
        element(0x0B, b"invalid_utf8_pattern", b"a\xff\x00i\x00"),
    ],
    "binaries": [
        element(0x05, b"generic", binary(0, b"\x00\x01\x02")),
        element(0x05, b"empty_binary", binary(0, b"")),
        element(0x05, b"function", binary(1, b"fn")),
        element(0x05, b"old", binary(2, int32(3) + b"abc")),
        element(0x05, b"old_inconsistent", binary(2, int32(9) + b"abc")),
        element(0x05, b"uuid_old", binary(3, UUID_BYTES)),
        element(0x05, b"uuid_old_short", binary(3, b"abcde")),
        element(0x05, b"uuid", binary(4, UUID_BYTES)),
        element(0x05, b"uuid_short", binary(4, b"abc")),
        element(0x05, b"md5", binary(5, UUID_BYTES)),
        element(0x05, b"md5_short", binary(5, b"abcd")),
        element(0x05, b"encrypted", binary(6, b"\x01" + UUID_BYTES + b"\x02" + bytes(32))),
        element(0x05, b"column", binary(7, b"\x00")),  # an empty BSON column: just its EOO
        element(0x05, b"column_literal", binary(7, element(0x10, b"", int32(5)) + b"\x00")),
        element(0x05, b"sensitive", binary(8, b"secret")),
        element(0x05, b"vector", binary(9, b"\x03\x00\x01\x02\x7f")),
        element(0x05, b"user_0x80", binary(0x80, b"user")),
        element(0x05, b"user_0xff", binary(0xFF, b"user")),
    ],
    "timestamps": [
        element(0x11, b"one", struct.pack("<II", 1, 0)),
        element(0x11, b"max", struct.pack("<II", 0xFFFFFFFF, 0xFFFFFFFF)),
        # Timestamp(0, 0) is filled in only in top-level fields; this one is nested.
        element(0x03, b"nested", document(element(0x11, b"zero", struct.pack("<II", 0, 0)))),
    ],
    "names": [
        element(0x10, b"", int32(1)),
        element(0x10, b"invalid_utf8_\xff", int32(2)),
        element(0x10, b"$dollar", int32(3)),
        element(0x10, b"dot.ted", int32(4)),
        element(0x10, b"$inc", int32(5)),
        element(
            0x03,
            b"nested",
            document(
                element(0x10, b"$in", int32(6)),
                element(0x10, b"a.b", int32(7)),
                element(0x10, b"", int32(8)),
                element(0x10, b"\xc3", int32(9)),
            ),
        ),
    ],
}


def _combined(*kinds: str) -> list[bytes]:
    """The values of several kinds in one document (their names are distinct: mongod would keep two
    fields of one name, a dictionary cannot)."""
    elements = [e for kind in kinds for e in VALUES[kind]]
    names = [e[1 : e.index(b"\x00", 1)] for e in elements]
    assert len(set(names)) == len(names)
    return elements


def _next_event(stream: Any) -> Any:
    deadline = time.monotonic() + EVENT_WAIT_S
    while time.monotonic() < deadline:
        event = stream.try_next()
        if event is not None:
            return event
    raise AssertionError("no change event arrived")


def _raw_collection(sync_db: Any, name: str = "values", *, images: bool = True) -> Any:
    if images:
        sync_db.create_collection(name, changeStreamPreAndPostImages={"enabled": True})
    return sync_db.get_collection(name, codec_options=RAW)


@pytest.mark.parametrize("kind", sorted(VALUES))
def test_values_come_back_byte_for_byte(sync_db: Any, kind: str) -> None:
    elements = VALUES[kind]
    sub = document(*elements)
    original = document(id_element(1), *elements)
    updated = document(id_element(1), *elements, element(0x03, b"copy", sub))
    modified = document(id_element(1), *elements, element(0x03, b"copy", sub), element(0x03, b"fam", sub))
    replacement = document(element(0x02, b"kind", string(b"replaced")), element(0x03, b"r", sub))
    replaced = document(id_element(1), element(0x02, b"kind", string(b"replaced")), element(0x03, b"r", sub))
    upserted = document(id_element(2), element(0x03, b"up", sub))
    coll = _raw_collection(sync_db)
    options = {"full_document": "required", "full_document_before_change": "whenAvailable"}
    with coll.watch(max_await_time_ms=MAX_AWAIT_MS, **options) as stream:
        coll.insert_one(raw(original))
        assert coll.find_one({"_id": 1}).raw == original
        assert [doc.raw for doc in coll.find({})] == [original]
        assert [doc.raw for doc in coll.aggregate([{"$match": {"_id": 1}}])] == [original]

        coll.update_one(
            {"_id": 1}, raw(document(element(0x03, b"$set", document(element(0x03, b"copy", sub)))))
        )
        assert coll.find_one({"_id": 1}).raw == updated

        after = coll.find_one_and_update(
            {"_id": 1},
            raw(document(element(0x03, b"$set", document(element(0x03, b"fam", sub))))),
            return_document=ReturnDocument.AFTER,
        )
        assert after.raw == modified

        coll.replace_one({"_id": 1}, raw(replacement))
        assert coll.find_one({"_id": 1}).raw == replaced

        result = coll.update_one(
            {"_id": 2},
            raw(document(element(0x03, b"$set", document(element(0x03, b"up", sub))))),
            upsert=True,
        )
        assert result.upserted_id == 2
        # A batch of one document each: the second comes back through getMore.
        assert [doc.raw for doc in coll.find({}, batch_size=1).sort("_id", 1)] == [replaced, upserted]

        events = [_next_event(stream) for _ in range(5)]
    assert [e["operationType"] for e in events] == ["insert", "update", "update", "replace", "insert"]
    insert, update, fam, replace, upsert = events
    assert insert["fullDocument"].raw == original
    assert update["fullDocument"].raw == updated
    assert update["fullDocumentBeforeChange"].raw == original
    assert update["updateDescription"]["updatedFields"].raw == document(element(0x03, b"copy", sub))
    assert fam["fullDocument"].raw == modified
    assert fam["fullDocumentBeforeChange"].raw == updated
    assert fam["updateDescription"]["updatedFields"].raw == document(element(0x03, b"fam", sub))
    assert replace["fullDocument"].raw == replaced
    assert replace["fullDocumentBeforeChange"].raw == modified
    assert upsert["fullDocument"].raw == upserted


def test_lossy_values_among_ordinary_documents_of_one_batch(sync_db: Any) -> None:
    """An insert_many message holds many documents; the ones the C decoder would change are found among
    them (a 5-character string's length byte is 0x06, as undefined's type byte)."""
    docs = [
        document(id_element(1), element(0x02, b"s", string(b"12345"))),
        document(id_element(2), element(0x06, b"", b"")),
        document(id_element(3), element(0x02, b"s", string(b"abcdefghijklm"))),
        document(id_element(4), element(0x0E, b"", string(b"12345"))),
        document(
            id_element(5),
            element(
                0x03, b"d", document(element(0x10, b"$id", int32(1)), element(0x02, b"$ref", string(b"c")))
            ),
        ),
        document(id_element(6), element(0x10, b"n", int32(6))),
    ]
    coll = sync_db.get_collection("batch", codec_options=RAW)
    coll.insert_many([raw(doc) for doc in docs])
    assert [doc.raw for doc in coll.find({}).sort("_id", 1)] == docs


def test_update_lookup_returns_the_stored_bytes(sync_db: Any) -> None:
    elements = _combined("dates", "strings", "deprecated", "regexes")
    original = document(id_element(1), *elements)
    coll = _raw_collection(sync_db, images=False)
    coll.insert_one(raw(original))
    with coll.watch(full_document="updateLookup", max_await_time_ms=MAX_AWAIT_MS) as stream:
        coll.update_one({"_id": 1}, {"$set": {"n": 1}})
        event = _next_event(stream)
    assert event["fullDocument"].raw == document(id_element(1), *elements, element(0x10, b"n", int32(1)))


def test_a_lenient_client_decodes_what_it_stored(sync_client: Any, database_name: str) -> None:
    """With DATETIME_AUTO and surrogateescape (what a driver needs to read such data at all)."""
    coll = sync_client[database_name].get_collection("lenient", codec_options=LENIENT)
    coll.insert_one(raw(document(id_element(1), *VALUES["dates"], *VALUES["strings"][:2])))
    coll.insert_one(
        {"_id": 2, "nan": math.nan, "minus_zero": -0.0, "long": Int64(2**63 - 1), "far": DatetimeMS(2**62)}
    )
    one, two = coll.find({}).sort("_id", 1)
    assert one["min"] == DatetimeMS(-(2**63)) and one["year_10000"] == DatetimeMS(253402300800000 + 1000)
    assert one["epoch"] == datetime.datetime(1970, 1, 1)
    assert one["invalid_byte"] == "a\udcffc" and one["lone_continuation"] == "\udc80"
    assert math.isnan(two["nan"]) and math.copysign(1.0, two["minus_zero"]) == -1.0
    assert two["long"] == Int64(2**63 - 1) and isinstance(two["long"], Int64)
    assert two["far"] == DatetimeMS(2**62)


#: `_id` values mongod accepts (all but regex, array and undefined: storageValidIdField).
EXOTIC_IDS: list[bytes] = [
    element(0x09, b"_id", int64(253402300800000 + 1000)),
    element(0x09, b"_id", int64(-(2**63))),
    element(0x02, b"_id", string(b"a\xffc")),
    element(0x01, b"_id", double_bits(0x7FF8000000000001)),
    element(0x13, b"_id", Decimal128("-Infinity").bid),
    element(0x0E, b"_id", string(b"sym")),
    element(0x0C, b"_id", string(b"db.c") + OID),
    element(0xFF, b"_id", b""),
    element(0x7F, b"_id", b""),
    element(0x0D, b"_id", string(b"code")),
    element(0x05, b"_id", binary(0x80, b"\x00\x01")),
    element(0x11, b"_id", struct.pack("<II", 1, 1)),
    element(0x03, b"_id", document(element(0x06, b"u", b""), element(0x02, b"s", string(b"\xff")))),
]


@pytest.mark.parametrize("id_element_bytes", EXOTIC_IDS, ids=range(len(EXOTIC_IDS)))
def test_documents_with_any_id_are_found_updated_and_deleted_by_it(
    sync_db: Any, id_element_bytes: bytes
) -> None:
    coll = sync_db.get_collection("ids", codec_options=RAW)
    by_id = raw(document(id_element_bytes))
    stored = document(id_element_bytes, element(0x10, b"n", int32(1)))
    coll.insert_one(raw(stored))
    coll.insert_one({"_id": "other"})
    assert coll.find_one(by_id).raw == stored
    assert coll.update_one(by_id, {"$set": {"n": 2}}).modified_count == 1
    assert coll.find_one(by_id).raw == document(id_element_bytes, element(0x10, b"n", int32(2)))
    assert coll.delete_one(by_id).deleted_count == 1
    assert coll.count_documents({}) == 1


# -- nesting ---------------------------------------------------------------------------------------------
def _nested(levels: int, innermost: dict[str, Any] | None = None) -> dict[str, Any]:
    """A document nesting ``levels`` documents (itself included)."""
    doc: dict[str, Any] = {"x": 1} if innermost is None else innermost
    for _ in range(levels - 1):
        doc = {"a": doc}
    return doc


def test_documents_nest_up_to_180_levels(sync_db: Any) -> None:
    coll = sync_db["deep"]
    deepest = {"_id": 1, "a": _nested(MAX_STORAGE_DEPTH - 1)}
    coll.insert_one(deepest)
    assert coll.find_one({"_id": 1}) == deepest
    # Empty documents do not count (fixDocumentForInsert's validateDepth).
    coll.insert_one({"_id": 2, "a": _nested(MAX_STORAGE_DEPTH - 1, innermost={"e": {}})})
    with pytest.raises(WriteError) as excinfo:
        coll.insert_one({"_id": 3, "a": _nested(MAX_STORAGE_DEPTH)})
    assert excinfo.value.code == OVERFLOW
    with pytest.raises(WriteError) as excinfo:
        coll.update_one({"_id": 1}, {"$set": {"b": _nested(MAX_STORAGE_DEPTH)}})
    assert excinfo.value.code == OVERFLOW
    assert coll.count_documents({}) == 2


def test_beyond_200_levels_the_whole_message_is_refused(sync_db: Any) -> None:
    """BSONDepth::kDefaultMaxAllowableDepth: mongod refuses the message, so nothing of it is applied."""
    coll = sync_db["deeper"]
    with pytest.raises(OperationFailure) as excinfo:
        coll.insert_many([{"_id": 1}, {"_id": 2, "a": _nested(250)}], ordered=True)
    assert excinfo.value.code == OVERFLOW
    assert not isinstance(excinfo.value, WriteError)
    assert coll.count_documents({}) == 0
    with pytest.raises(OperationFailure) as excinfo:
        coll.find_one({"a": _nested(250)})
    assert excinfo.value.code == OVERFLOW


# -- what mongod refuses, it answers (the connection stays) ------------------------------------------------
@pytest.mark.parametrize(
    ("bad", "code"),
    [
        (element(0x08, b"bool", b"\x02"), INVALID_BSON),
        (element(0x20, b"unknown_type", b""), INVALID_BSON),
        (element(0x05, b"not_a_column", binary(7, b"\x01\x02\x03")), NON_CONFORMANT_BSON),
    ],
)
def test_invalid_bson_is_refused_with_an_error_reply(sync_db: Any, bad: bytes, code: int) -> None:
    coll = sync_db["invalid"]
    with pytest.raises(OperationFailure) as excinfo:
        coll.insert_one(raw(document(id_element(1), bad)))
    assert excinfo.value.code == code
    coll.insert_one({"_id": 2})  # the same client carries on
    assert coll.count_documents({}) == 1


def test_id_may_not_be_a_regex_array_or_undefined(sync_db: Any) -> None:
    coll = sync_db["ids"]
    for bad in (
        element(0x0B, b"_id", b"a\x00\x00"),
        element(0x04, b"_id", document()),
        element(0x06, b"_id", b""),
    ):
        with pytest.raises(WriteError) as excinfo:
            coll.insert_one(raw(document(bad)))
        assert excinfo.value.code == 53  # InvalidIdField
    assert coll.count_documents({}) == 0


def test_id_goes_first_and_top_level_empty_timestamps_are_filled_in(sync_db: Any) -> None:
    coll = sync_db.get_collection("stamps", codec_options=RAW)
    zero = struct.pack("<II", 0, 0)
    coll.insert_one(raw(document(element(0x11, b"_id", zero), element(0x11, b"t", zero))))
    coll.insert_one(raw(document(element(0x10, b"a", int32(1)), id_element(2))))
    first = coll.find_one({"_id": Timestamp(0, 0)})
    assert first is not None
    stamped = bson.decode(first.raw)
    assert list(stamped) == ["_id", "t"] and stamped["_id"] == Timestamp(0, 0)  # SERVER-43014
    assert stamped["t"] != Timestamp(0, 0)
    assert coll.find_one({"_id": 2}).raw == document(id_element(2), element(0x10, b"a", int32(1)))


def test_dollar_prefixed_fields_in_updates(sync_db: Any) -> None:
    """An upsert's insert may create a top-level `$` field; an update of an existing document may not
    (manual, "Dollar-Prefixed Field Names")."""
    coll = sync_db["dollars"]
    coll.update_one({"date": "2021-07-07"}, {"$set": {"phone": 25.17, "$hotel": 320.10}}, upsert=True)
    stored = coll.find_one({"date": "2021-07-07"})
    assert stored is not None and stored["$hotel"] == 320.10
    with pytest.raises(WriteError):
        coll.update_one({"date": "2021-07-07"}, {"$set": {"$hotel": 1}})
    coll.update_one({"date": "2021-07-07"}, {"$set": {"nested": {"$dollar": 1, "dot.ted": 2}}})
    stored = coll.find_one({"date": "2021-07-07"})
    assert stored is not None and stored["nested"] == {"$dollar": 1, "dot.ted": 2}


# -- sizes ---------------------------------------------------------------------------------------------------
def test_a_document_of_exactly_16_mib_is_stored_and_streamed(sync_db: Any) -> None:
    coll = _raw_collection(sync_db, "big", images=False)
    envelope = len(document(id_element(1), element(0x05, b"blob", binary(0, b""))))
    original = document(
        id_element(1), element(0x05, b"blob", binary(0, b"\xa5" * (MAX_BSON_SIZE - envelope)))
    )
    assert len(original) == MAX_BSON_SIZE
    with coll.watch(max_await_time_ms=MAX_AWAIT_MS) as stream:
        coll.insert_one(raw(original))
        event = _next_event(stream)
    assert event["fullDocument"].raw == original
    assert coll.find_one({"_id": 1}).raw == original


# -- comparisons never fail ----------------------------------------------------------------------------------
def test_every_type_sorts_in_mongodb_order(sync_db: Any) -> None:
    """The BSON comparison order (manual, "Comparison/Sort Order"): MinKey, undefined-like null, numbers,
    symbol/string, object, array, binData, ObjectId, bool, date, timestamp, regex, DBPointer, code, MaxKey."""
    values: list[tuple[int, bytes]] = [
        (0, element(0xFF, b"v", b"")),
        (1, element(0x0A, b"v", b"")),
        (2, element(0x13, b"v", Decimal128("1.5").bid)),
        (3, element(0x01, b"v", struct.pack("<d", 2.5))),
        (4, element(0x12, b"v", int64(3))),
        (5, element(0x0E, b"v", string(b"a"))),
        (6, element(0x02, b"v", string(b"b"))),
        (7, element(0x03, b"v", document(element(0x10, b"a", int32(1))))),
        (8, element(0x04, b"v", document(element(0x10, b"0", int32(1))))),
        (9, element(0x05, b"v", binary(0x80, b"x"))),
        (10, element(0x07, b"v", OID)),
        (11, element(0x08, b"v", b"\x01")),
        (12, element(0x09, b"v", int64(-62135596800000 - 1))),
        (13, element(0x09, b"v", int64(0))),
        (14, element(0x09, b"v", int64(253402300800000 + 1000))),
        (15, element(0x11, b"v", struct.pack("<II", 1, 1))),
        (16, element(0x0B, b"v", b"a\x00zyx\x00")),
        (17, element(0x0C, b"v", string(b"db.c") + OID)),
        (18, element(0x0D, b"v", string(b"x"))),
        (19, element(0x7F, b"v", b"")),
    ]
    coll = sync_db.get_collection("order", codec_options=RAW)
    for key, value in reversed(values):
        coll.insert_one(raw(document(id_element(key), value)))
    ordered = [bson.decode(doc.raw, LENIENT)["_id"] for doc in coll.find({}).sort("v", 1)]
    assert ordered == [key for key, _ in values]
    descending = [bson.decode(doc.raw, LENIENT)["_id"] for doc in coll.find({}).sort("v", -1)]
    assert descending == ordered[::-1]
    above_two = {bson.decode(doc.raw, LENIENT)["_id"] for doc in coll.find({"v": {"$gt": 2}})}
    assert above_two == {3, 4}


# -- aggregation expressions the connector appends -----------------------------------------------------------
def test_bson_size(sync_db: Any) -> None:
    elements = _combined("dates", "strings", "deprecated", "binaries")
    stored = document(id_element(1), element(0x02, b"name", string(b"n")), *elements)
    sync_db.get_collection("sizes", codec_options=RAW).insert_one(raw(stored))
    coll = sync_db["sizes"]
    projected = list(
        coll.aggregate(
            [
                {
                    "$project": {
                        "_id": 0,
                        "root": {"$bsonSize": "$$ROOT"},
                        "missing": {"$bsonSize": "$nope"},
                        "null": {"$bsonSize": None},
                        "literal": {"$bsonSize": {"$literal": {"a": 1}}},
                    }
                }
            ]
        )
    )
    assert projected == [
        {"root": len(stored), "missing": None, "null": None, "literal": len(bson.encode({"a": 1}))}
    ]
    with pytest.raises(OperationFailure) as excinfo:
        list(coll.aggregate([{"$project": {"s": {"$bsonSize": "$name"}}}]))
    assert excinfo.value.code == BSON_SIZE_NOT_A_DOCUMENT


def test_remove_in_set_add_fields_and_cond_removes_the_field(sync_db: Any) -> None:
    coll = sync_db["remove"]
    coll.insert_one({"_id": 1, "a": 1, "b": 2, "c": 3})
    out = list(
        coll.aggregate(
            [
                {"$set": {"a": "$$REMOVE"}},
                {"$addFields": {"b": {"$cond": [{"$gt": ["$c", 2]}, "$$REMOVE", "$b"]}}},
                {
                    "$set": {
                        "c": {"$cond": [{"$gt": ["$c", 5]}, "$$REMOVE", "$c"]},
                        "d": {"$ifNull": ["$x", "$$REMOVE"]},
                    }
                },
            ]
        )
    )
    assert out == [{"_id": 1, "c": 3}]


#: What the connector appends on a server without $changeStreamSplitLargeEvent (threshold 1000 bytes here).
IMAGES_LIMIT = 1000
_BODIES = ("fullDocument", "fullDocumentBeforeChange", "updateDescription")
DROP_LARGE_IMAGES: list[dict[str, Any]] = [
    {"$set": {"_livesyncImages": {"$add": [{"$bsonSize": {"$ifNull": [f"${f}", {}]}} for f in _BODIES]}}},
    {
        "$set": {
            **{
                f: {"$cond": [{"$gt": ["$_livesyncImages", IMAGES_LIMIT]}, "$$REMOVE", f"${f}"]}
                for f in _BODIES
            },
            "_livesyncImages": {
                "$cond": [{"$gt": ["$_livesyncImages", IMAGES_LIMIT]}, "$_livesyncImages", "$$REMOVE"]
            },
        }
    },
]


def _images_size(event: dict[str, Any]) -> int:
    return sum(len(bson.encode(event[f])) if event.get(f) is not None else 5 for f in _BODIES)


def test_connector_stages_drop_the_images_of_large_events_only(sync_db: Any) -> None:
    sync_db.create_collection("images", changeStreamPreAndPostImages={"enabled": True})
    coll = sync_db["images"]
    options: dict[str, Any] = {"full_document": "required", "full_document_before_change": "whenAvailable"}
    with coll.watch(max_await_time_ms=MAX_AWAIT_MS, **options) as plain:
        with coll.watch(DROP_LARGE_IMAGES, max_await_time_ms=MAX_AWAIT_MS, **options) as stream:
            coll.insert_one({"_id": 1, "s": "small"})
            coll.update_one({"_id": 1}, {"$set": {"s": "x" * 600}})
            small_insert, large_update = _next_event(stream), _next_event(stream)
        whole_insert, whole_update = _next_event(plain), _next_event(plain)
    assert small_insert == whole_insert
    assert "_livesyncImages" not in small_insert
    assert large_update["_livesyncImages"] == _images_size(whole_update) > IMAGES_LIMIT
    assert not {*_BODIES} & set(large_update)
    assert {k: v for k, v in large_update.items() if k != "_livesyncImages"} == {
        k: v for k, v in whole_update.items() if k not in _BODIES
    }


def test_connector_stages_shrink_an_event_over_16_mib_before_its_size_is_checked(sync_db: Any) -> None:
    """An update with both images of a 9 MiB document is ~18 MiB: alone it fails with 10334; the stages
    remove the images first, and mongod checks the size of the event the pipeline outputs
    (PlanExecutorPipeline::_trySerializeToBson)."""
    sync_db.create_collection("huge", changeStreamPreAndPostImages={"enabled": True})
    coll = sync_db["huge"]
    blob = "x" * (9 * 1024 * 1024)
    coll.insert_one({"_id": 1, "blob": blob})
    options: dict[str, Any] = {"full_document": "required", "full_document_before_change": "required"}
    with coll.watch(DROP_LARGE_IMAGES, max_await_time_ms=MAX_AWAIT_MS, **options) as stream:
        coll.update_one({"_id": 1}, {"$set": {"small": 1}})
        event = _next_event(stream)
    post, pre = {"_id": 1, "blob": blob, "small": 1}, {"_id": 1, "blob": blob}
    update_description = {"updatedFields": {"small": 1}, "removedFields": [], "truncatedArrays": []}
    expected = len(bson.encode(post)) + len(bson.encode(pre)) + len(bson.encode(update_description))
    assert event["operationType"] == "update"
    assert event["_livesyncImages"] == expected
    assert not {*_BODIES} & set(event)


def test_types_of_special_values(sync_db: Any) -> None:
    coll = sync_db["types"]
    stored = document(
        id_element(1),
        element(0x06, b"u", b""),
        element(0x0E, b"s", string(b"x")),
        element(0x0C, b"p", string(b"d.c") + OID),
        element(0x09, b"d", int64(2**62)),
        element(0x0D, b"c", string(b"x")),
        element(0xFF, b"lo", b""),
        element(0x7F, b"hi", b""),
        element(0x12, b"l", int64(1)),
        element(0x13, b"n", Decimal128("NaN").bid),
    )
    sync_db.get_collection("types", codec_options=RAW).insert_one(raw(stored))
    names = ("u", "s", "p", "d", "c", "lo", "hi", "l", "n")
    out = list(coll.aggregate([{"$project": {"_id": 0, **{k: {"$type": f"${k}"} for k in names}}}]))
    assert out == [
        {
            "u": "undefined",
            "s": "symbol",
            "p": "dbPointer",
            "d": "date",
            "c": "javascript",
            "lo": "minKey",
            "hi": "maxKey",
            "l": "long",
            "n": "decimal",
        }
    ]


def test_set_keeps_numeric_types_exactly(sync_db: Any) -> None:
    """mongod compares an element's new value with the old one binarily: 1 -> 1.0 and 0.0 -> -0.0 are
    changes (written, and an update event); $inc of a long stays a long."""
    coll = sync_db.get_collection("numbers", codec_options=LENIENT)
    coll.insert_one({"_id": 1, "i": 1, "z": 0.0, "l": Int64(5)})
    with coll.watch(max_await_time_ms=MAX_AWAIT_MS) as stream:
        assert coll.update_one({"_id": 1}, {"$set": {"i": 1.0}}).modified_count == 1
        assert coll.update_one({"_id": 1}, {"$set": {"z": -0.0}}).modified_count == 1
        assert coll.update_one({"_id": 1}, {"$set": {"z": -0.0}}).modified_count == 0
        assert coll.update_one({"_id": 1}, {"$inc": {"l": 1}}).modified_count == 1
        changed = [_next_event(stream)["updateDescription"]["updatedFields"] for _ in range(3)]
    doc = coll.find_one({"_id": 1})
    assert doc is not None
    assert isinstance(doc["i"], float) and math.copysign(1.0, doc["z"]) == -1.0
    assert doc["l"] == 6 and isinstance(doc["l"], Int64)
    assert isinstance(changed[0]["i"], float) and math.copysign(1.0, changed[1]["z"]) == -1.0


def test_binary_code_and_regex_values_through_a_normal_client(sync_db: Any) -> None:
    coll = sync_db["normal"]
    doc = {
        "_id": 1,
        "b": Binary(b"\x00" * 4, 0x80),
        "code": Code("x", {"y": 1}),
        "re": Regex("^a", "i"),
        "ts": Timestamp(2**32 - 1, 7),
        "lo": MinKey(),
        "hi": MaxKey(),
        "oid": ObjectId(OID),
    }
    coll.insert_one(doc)
    assert coll.find_one({"_id": 1}) == doc
