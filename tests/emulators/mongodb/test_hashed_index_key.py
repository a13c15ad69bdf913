"""`$toHashedIndexKey` and the Long arithmetic of a hash-partition filter, as mongod computes them.

The expected hashes come from three places, named on each vector:
- `docs`: the server's documentation (`{$toHashedIndexKey: "string to hash"}` → 763543691661428748);
- `hasher_test`: mongod's hashed-index test vectors (src/mongo/db/hasher_test.cpp, BSONElementHasher
  with seed 0, "consistent across platforms and server versions");
- `expression_test`: mongod's unit tests of the expression (ExpressionToHashedIndexKeyTest in
  src/mongo/db/pipeline/expression_*_test.cpp, 2025);
- `hasher.cpp`: a value the vectors do not cover, computed here step by step as hasher.cpp does (MD5 of
  the 4-byte seed 0, the 4-byte canonical type, the value bytes) or equal to a vector by the rules of
  safeNumberLongForHash (bsonelement.h) and Decimal128::toLong (ties to even).
Every value is sent as raw BSON and hashed by the server, so the file also runs against MONGODB_TEST_URI.
"""

from __future__ import annotations

import asyncio
import hashlib
import struct
from typing import Any

import pytest
from bson import Decimal128, Int64, Timestamp
from bson.raw_bson import RawBSONDocument
from pymongo.errors import OperationFailure

from tests.emulators.mongodb.raw_bson import (
    code_with_scope,
    document,
    double,
    double_bits,
    element,
    int32,
    int64,
    string,
)

#: Needs a MongoDB server: the emulator, or MONGODB_TEST_URI.
pytestmark = pytest.mark.integration

EVENT_WAIT_S = 10.0
MAX_AWAIT_MS = 200


def decimal(text: str) -> bytes:
    return Decimal128(text).bid


def reference_hash(canonical_type: int, value_bytes: bytes) -> int:
    """hasher.cpp for a scalar: MD5(seed 0, canonical type, value bytes), first 8 bytes little-endian."""
    digest = hashlib.md5(int32(0) + int32(canonical_type) + value_bytes, usedforsecurity=False).digest()
    return int(struct.unpack("<q", digest[:8])[0])


OID = bytes.fromhex("010203040506070809101112")
H42, H0, H1, HM1 = -944302157085130861, 4854801880128277513, 5902408780260971510, 1140205862565771219
H_INT_MIN, H_INT_MAX = 6165898260261354870, 1143184177162245883
H_LONG_MAX, H_LONG_MIN, H_NULL = 921523596458303250, 4532067210535695462, 2338878944348059895
TS_BYTES = int64(0x5566778811223344)

#: (name, BSON type byte, value bytes, expected hash, source)
VECTORS: list[tuple[str, int, bytes, int, str]] = [
    ("docs_string", 0x02, string(b"string to hash"), 763543691661428748, "docs"),
    ("int_42", 0x10, int32(42), H42, "hasher_test"),
    ("double_42_123", 0x01, double(42.123), H42, "hasher_test"),
    ("long_42", 0x12, int64(42), H42, "hasher_test"),
    ("int_0", 0x10, int32(0), H0, "hasher_test"),
    ("double_0_456", 0x01, double(0.456), H0, "hasher_test"),
    ("long_0", 0x12, int64(0), H0, "hasher_test"),
    ("double_quiet_nan", 0x01, double_bits(0x7FF8000000000000), H0, "hasher_test"),
    ("double_signaling_nan", 0x01, double_bits(0x7FF0000000000001), H0, "hasher_test"),
    ("int_1", 0x10, int32(1), H1, "hasher_test"),
    ("double_1_987", 0x01, double(1.987), H1, "hasher_test"),
    ("long_1", 0x12, int64(1), H1, "hasher_test"),
    ("int_minus_1", 0x10, int32(-1), HM1, "hasher_test"),
    ("double_minus_1_789", 0x01, double(-1.789), HM1, "hasher_test"),
    ("long_minus_1", 0x12, int64(-1), HM1, "hasher_test"),
    ("int_min", 0x10, int32(-(2**31)), H_INT_MIN, "hasher_test"),
    ("double_int_min", 0x01, double(-(2.0**31)), H_INT_MIN, "hasher_test"),
    ("long_int_min", 0x12, int64(-(2**31)), H_INT_MIN, "hasher_test"),
    ("int_max", 0x10, int32(2**31 - 1), H_INT_MAX, "hasher_test"),
    ("double_int_max", 0x01, double(2.0**31 - 1), H_INT_MAX, "hasher_test"),
    ("long_int_max", 0x12, int64(2**31 - 1), H_INT_MAX, "hasher_test"),
    ("double_max", 0x01, double(1.7976931348623157e308), H_LONG_MAX, "hasher_test"),
    ("long_max", 0x12, int64(2**63 - 1), H_LONG_MAX, "hasher_test"),
    ("double_lowest", 0x01, double(-1.7976931348623157e308), H_LONG_MIN, "hasher_test"),
    ("long_min", 0x12, int64(-(2**63)), H_LONG_MIN, "hasher_test"),
    ("min_key", 0xFF, b"", 7961148599568647290, "hasher_test"),
    ("max_key", 0x7F, b"", 5504842513779440750, "hasher_test"),
    ("undefined", 0x06, b"", 40158834000849533, "hasher_test"),
    ("null", 0x0A, b"", H_NULL, "hasher_test"),
    ("string_abc", 0x02, string(b"abc"), 8478485326885698097, "hasher_test"),
    ("symbol_abc", 0x0E, string(b"abc"), 8478485326885698097, "hasher_test"),
    ("string_empty", 0x02, string(b""), 2049396243249673340, "hasher_test"),
    ("symbol_empty", 0x0E, string(b""), 2049396243249673340, "hasher_test"),
    (
        "object",
        0x03,
        document(element(0x02, b"a", string(b"abc")), element(0x12, b"b", int64(123))),
        4771603801758380216,
        "hasher_test",
    ),
    ("object_empty", 0x03, document(), 7980500913326740417, "hasher_test"),
    (
        "array",
        0x04,
        document(
            *(element(0x02, str(i).encode(), string(s)) for i, s in enumerate([b"bar", b"baz", b"qux"]))
        ),
        -2938911267422831539,
        "hasher_test",
    ),
    ("array_empty", 0x04, document(), 8849948234993459283, "hasher_test"),
    (
        "bindata_general",
        0x05,
        int32(6) + b"\x00" + bytes([0, 1, 2, 3, 4, 6]),
        7252465090394235301,
        "hasher_test",
    ),
    (
        "bindata_custom",
        0x05,
        int32(6) + b"\x80" + bytes([0, 1, 2, 3, 4, 6]),
        5736670452907618262,
        "hasher_test",
    ),
    ("bindata_uuid", 0x05, int32(16) + b"\x04" + bytes(range(16)), 6084661258071355978, "hasher_test"),
    ("object_id", 0x07, OID, -5588663249627035708, "hasher_test"),
    ("object_id_zero", 0x07, bytes(12), -4293118519463489418, "hasher_test"),
    ("true", 0x08, b"\x01", 6405873908747105701, "hasher_test"),
    ("false", 0x08, b"\x00", 6289544573401934092, "hasher_test"),
    ("date", 0x09, TS_BYTES, 4476222765095560467, "hasher_test"),
    ("date_epoch", 0x09, int64(0), -1178696894582842035, "hasher_test"),
    ("regex", 0x0B, b"mongodb\x00\x00", -7275792090268217043, "hasher_test"),
    ("regex_flags", 0x0B, b".*\x00i\x00", 7095855029187981886, "hasher_test"),
    ("dbpointer", 0x0C, string(b"c") + OID, 940175826736461384, "hasher_test"),
    ("dbpointer_db", 0x0C, string(b"db.c") + OID, 2426768198104018194, "hasher_test"),
    ("code", 0x0D, string(b"func f() { return 1; }"), 6861638109178014270, "hasher_test"),
    (
        "code_with_scope",
        0x0F,
        code_with_scope(b"func f() { return 1; }", document(element(0x08, b"c", b"\x01"))),
        501342939894575968,
        "hasher_test",
    ),
    ("expression_string", 0x02, string(b"hashThisStringLiteral"), -5776344739422278694, "expression_test"),
    ("expression_int_123", 0x10, int32(123), -6548868637522515075, "expression_test"),
    (
        "expression_object_id",
        0x07,
        bytes.fromhex("47cc67093475061e3d95369d"),
        1576265281381834298,
        "expression_test",
    ),
    ("expression_date_epoch", 0x09, int64(0), -1178696894582842035, "expression_test"),
    ("expression_undefined", 0x06, b"", 40158834000849533, "expression_test"),
    ("expression_null", 0x0A, b"", H_NULL, "expression_test"),
    # safeNumberLongForHash: a double of exactly 2^63 hashes as -2^63 (older servers' overflowing cast),
    # larger doubles and +inf as the maximum long, -inf as the minimum.
    ("double_two_pow_63", 0x01, double(2.0**63), H_LONG_MIN, "hasher.cpp"),
    ("double_inf", 0x01, double(float("inf")), H_LONG_MAX, "hasher.cpp"),
    ("double_minus_inf", 0x01, double(float("-inf")), H_LONG_MIN, "hasher.cpp"),
    # Decimals are numbers: NaN → 0, beyond the long range clamped, else rounded ties-to-even.
    ("decimal_42", 0x13, decimal("42"), H42, "hasher.cpp"),
    ("decimal_42_5", 0x13, decimal("42.5"), H42, "hasher.cpp"),
    ("decimal_minus_1_5", 0x13, decimal("-1.5"), reference_hash(10, int64(-2)), "hasher.cpp"),
    ("decimal_0_5", 0x13, decimal("0.5"), H0, "hasher.cpp"),
    ("decimal_1_5", 0x13, decimal("1.5"), reference_hash(10, int64(2)), "hasher.cpp"),
    ("decimal_nan", 0x13, decimal("NaN"), H0, "hasher.cpp"),
    ("decimal_inf", 0x13, decimal("Infinity"), H_LONG_MAX, "hasher.cpp"),
    ("decimal_minus_inf", 0x13, decimal("-Infinity"), H_LONG_MIN, "hasher.cpp"),
    ("decimal_above_long", 0x13, decimal("9223372036854775808"), H_LONG_MAX, "hasher.cpp"),
    ("decimal_below_long", 0x13, decimal("-9223372036854775809"), H_LONG_MIN, "hasher.cpp"),
    # A timestamp's canonical type is 47 (a date's is 45), so it no longer hashes like the date with the
    # same bytes, as it did when hasher_test.cpp's timestamp vectors were recorded.
    ("timestamp", 0x11, TS_BYTES, reference_hash(47, TS_BYTES), "hasher.cpp"),
    # (Timestamp(0, 1): a top-level Timestamp(0, 0) is replaced by the server's time on insert.)
    ("timestamp_small", 0x11, int64(1), reference_hash(47, int64(1)), "hasher.cpp"),
    # Strings hash their bytes as stored, valid UTF-8 or not.
    ("string_invalid_utf8", 0x02, string(b"a\xffc"), reference_hash(15, string(b"a\xffc")), "hasher.cpp"),
    ("int_3", 0x10, int32(3), reference_hash(10, int64(3)), "hasher.cpp"),
]


async def hashes_of(coll: Any, values: list[bytes]) -> list[Any]:
    """Insert one document per raw `v` element; return `$toHashedIndexKey: "$v"` for each, in order."""
    docs = [RawBSONDocument(document(element(0x10, b"_id", int32(i)), v)) for i, v in enumerate(values)]
    await coll.insert_many(docs)
    pipeline = [{"$sort": {"_id": 1}}, {"$project": {"h": {"$toHashedIndexKey": "$v"}}}]
    return [doc["h"] for doc in await (await coll.aggregate(pipeline)).to_list()]


@pytest.mark.parametrize(
    ("type_byte", "value", "expected"), [v[1:4] for v in VECTORS], ids=[f"{v[0]}-{v[4]}" for v in VECTORS]
)
async def test_hash_matches_mongod(async_db: Any, type_byte: int, value: bytes, expected: int) -> None:
    (hashed,) = await hashes_of(async_db["values"], [element(type_byte, b"v", value)])
    assert type(hashed) is Int64
    assert hashed == expected


async def test_expression_test_vectors_given_as_expressions(async_db: Any) -> None:
    """ExpressionToHashedIndexKeyTest's operands that are not stored values: a literal Timestamp(0, 0)
    (a stored top-level one would get the server's time) and the result of `{$pow: [2, 4]}`."""
    coll = async_db["values"]
    await coll.insert_one({"_id": 1})
    pipeline = [
        {
            "$project": {
                "ts": {"$toHashedIndexKey": {"$literal": Timestamp(0, 0)}},
                "pow": {"$toHashedIndexKey": {"$pow": [2, 4]}},
            }
        }
    ]
    (doc,) = await (await coll.aggregate(pipeline)).to_list()
    assert doc["ts"] == -7867208682377458672
    assert doc["pow"] == 2598032665634823220


async def test_missing_hashes_as_null(async_db: Any) -> None:
    coll = async_db["values"]
    await coll.insert_one({"_id": 1})
    pipeline = [{"$project": {"h": {"$toHashedIndexKey": "$absent"}, "n": {"$toHashedIndexKey": None}}}]
    (doc,) = await (await coll.aggregate(pipeline)).to_list()
    assert doc["h"] == doc["n"] == H_NULL


async def test_numbers_hash_alike_inside_documents_and_arrays(async_db: Any) -> None:
    """hasher_test.cpp's RecursiveSquashingIntsAndDoubles: {a: 3, b: [3.1, {c: 3}]} hashes as
    {a: 3.1, b: [3, {c: 3.0}]}."""
    first = document(
        element(0x10, b"a", int32(3)),
        element(
            0x04,
            b"b",
            document(
                element(0x01, b"0", double(3.1)), element(0x03, b"1", document(element(0x10, b"c", int32(3))))
            ),
        ),
    )
    second = document(
        element(0x01, b"a", double(3.1)),
        element(
            0x04,
            b"b",
            document(
                element(0x12, b"0", int64(3)), element(0x03, b"1", document(element(0x01, b"c", double(3.0))))
            ),
        ),
    )
    as_object = document(element(0x10, b"0", int32(0)), element(0x10, b"1", int32(1)))
    h1, h2, h_obj, h_arr = await hashes_of(
        async_db["values"],
        [
            element(0x03, b"v", first),
            element(0x03, b"v", second),
            element(0x03, b"v", as_object),
            element(0x04, b"v", as_object),
        ],
    )
    assert h1 == h2
    assert h_obj != h_arr  # ArrayAndSubobjectHashesDiffer


async def test_a_one_element_array_argument_is_the_operand(async_db: Any) -> None:
    coll = async_db["values"]
    await coll.insert_one({"_id": 1, "v": "abc"})
    pipeline = [{"$project": {"a": {"$toHashedIndexKey": ["$v"]}, "b": {"$toHashedIndexKey": [["$v"]]}}}]
    (doc,) = await (await coll.aggregate(pipeline)).to_list()
    assert doc["a"] == 8478485326885698097
    assert doc["b"] != doc["a"]  # an array holding the string


@pytest.mark.parametrize("args", [[], [1, 2]])
async def test_wrong_number_of_arguments_is_refused(async_db: Any, args: list[Any]) -> None:
    coll = async_db["values"]
    await coll.insert_one({"_id": 1})
    with pytest.raises(OperationFailure) as info:
        await (await coll.aggregate([{"$project": {"h": {"$toHashedIndexKey": args}}}])).to_list()
    assert info.value.code == 16020


# -- the Long arithmetic of a partition filter ----------------------------------------------------------
async def evaluate(coll: Any, expression: Any) -> Any:
    await coll.delete_many({})
    await coll.insert_one({"_id": 1})
    (doc,) = await (await coll.aggregate([{"$project": {"_id": 0, "r": expression}}])).to_list()
    return doc.get("r", "missing")


@pytest.mark.parametrize(
    ("expression", "expected", "kind"),
    [
        ({"$mod": [Int64(-7), 3]}, -1, Int64),  # the dividend's sign (C++ %), a long
        ({"$mod": [7, Int64(-3)]}, 1, Int64),
        ({"$mod": [-7, 3]}, -1, int),  # two ints give an int
        ({"$mod": [Int64(-(2**63)), -1]}, 0, Int64),  # no overflow trap
        ({"$mod": [-7.5, 2]}, -1.5, float),
        ({"$mod": [Decimal128("-7.5"), 2]}, Decimal128("-1.5"), Decimal128),
        ({"$mod": [None, "x"]}, None, type(None)),  # null wins over the type error
        ({"$mod": ["$absent", 2]}, None, type(None)),
        ({"$abs": Int64(-5)}, 5, Int64),
        ({"$abs": -5}, 5, int),
        ({"$abs": -(2**31)}, 2**31, Int64),  # |int min| needs a long
        ({"$abs": -2.5}, 2.5, float),
        ({"$abs": Decimal128("-2.5")}, Decimal128("2.5"), Decimal128),
        ({"$abs": "$absent"}, None, type(None)),
        ({"$toLong": "-123"}, -123, Int64),
        ({"$toLong": 7}, 7, Int64),
        ({"$toLong": -1.9}, -1, Int64),  # toward zero
        ({"$toLong": Decimal128("2.9")}, 2, Int64),
        ({"$toLong": True}, 1, Int64),
        ({"$toLong": "$absent"}, None, type(None)),
        ({"$add": [Int64(-2), 5]}, 3, Int64),  # a long operand makes a long
        ({"$add": [2**31 - 1, 1]}, 2**31, Int64),  # an int sum past 32 bits becomes a long
        ({"$add": [1, 2]}, 3, int),
        ({"$add": [Int64(2**63 - 1), 1]}, 2.0**63, float),  # past the long range: a double
        ({"$mod": [{"$add": [{"$mod": [Int64(-7), 3]}, 3]}, 3]}, 2, Int64),  # ((h mod N) + N) mod N
        ({"$eq": [Int64(3), 3.0]}, True, bool),
        ({"$lt": [Int64(-(2**63)), -(2.0**62)]}, True, bool),
        ({"$cond": [{"$eq": [{"$mod": [Int64(10), 4]}, 2]}, "yes", "no"]}, "yes", str),
    ],
)
async def test_partition_arithmetic_keeps_mongod_types(
    async_db: Any, expression: Any, expected: Any, kind: type
) -> None:
    result = await evaluate(async_db["values"], expression)
    assert result == expected
    assert type(result) is kind


@pytest.mark.parametrize(
    ("expression", "code"),
    [
        ({"$abs": Int64(-(2**63))}, 28680),
        ({"$abs": "x"}, 28765),
        ({"$abs": [1, 2]}, 16020),
        ({"$mod": [1, 0]}, 16610),
        ({"$mod": [1, 0.0]}, 16610),
        ({"$mod": [Decimal128("1"), 0]}, 5733415),
        ({"$mod": ["a", 1]}, 16611),
        ({"$mod": [1]}, 16020),
        ({"$toLong": "1.5"}, 241),
        ({"$toLong": " 1"}, 241),
        ({"$toLong": "9223372036854775808"}, 241),
        ({"$toLong": float("nan")}, 241),
        ({"$toLong": 2.0**63}, 241),
        ({"$toLong": Decimal128("Infinity")}, 241),
        ({"$toLong": {"$literal": {"a": 1}}}, 241),
    ],
)
async def test_partition_arithmetic_refuses_what_mongod_refuses(
    async_db: Any, expression: Any, code: int
) -> None:
    with pytest.raises(OperationFailure) as info:
        await evaluate(async_db["values"], expression)
    assert info.value.code == code
    assert info.value.details is not None
    assert info.value.details["codeName"] == ("ConversionFailure" if code == 241 else f"Location{code}")


PARTITIONS = 3
HASHED_CHANNEL = {"$toHashedIndexKey": "$_ablyChannel"}


def abs_of_mod_filter(k: int) -> list[dict[str, Any]]:
    """`$abs` of `$mod`, computed in a `$set`, then compared in `$expr`."""
    return [
        {"$set": {"_bucket": {"$abs": {"$mod": [HASHED_CHANNEL, PARTITIONS]}}}},
        {"$match": {"$expr": {"$eq": ["$_bucket", {"$toLong": k}]}}},
    ]


def folded_mod_filter(k: int) -> list[dict[str, Any]]:
    """((h mod N) + N) mod N for string channels, in an `$or` that also keeps invalidates."""
    bucket = {"$mod": [{"$add": [{"$mod": [HASHED_CHANNEL, PARTITIONS]}, PARTITIONS]}, PARTITIONS]}
    is_string = {"$eq": [{"$type": "$_ablyChannel"}, "string"]}
    return [
        {
            "$match": {
                "$or": [
                    {"operationType": "invalidate"},
                    {"$expr": {"$eq": [{"$cond": [is_string, bucket, 0]}, k]}},
                ]
            }
        }
    ]


@pytest.mark.parametrize("bucket_filter", [abs_of_mod_filter, folded_mod_filter])
async def test_hash_partitions_split_a_change_stream(async_db: Any, bucket_filter: Any) -> None:
    """Three streams, each keeping the channels whose hash falls in its bucket (the filter a partitioned
    connector appends after `$set` stages): every event reaches exactly one, the one the same filter
    picks when the server runs it in an aggregate, and all three buckets get some."""
    coll = async_db["orders"]
    partitions = PARTITIONS

    def pipeline(k: int) -> list[dict[str, Any]]:
        channel = {"$concat": ["orders:", {"$toString": "$documentKey._id"}]}
        return [{"$set": {"_ablyChannel": channel}}, *bucket_filter(k)]

    ids = [f"order-{i}" for i in range(30)]
    received: dict[int, list[str]] = {}
    streams = [await coll.watch(pipeline(k), max_await_time_ms=MAX_AWAIT_MS) for k in range(partitions)]
    try:
        await coll.insert_many([{"_id": i} for i in ids])
        expected = {k: await _bucket_ids(coll, ids, bucket_filter, k) for k in range(partitions)}
        for k, stream in enumerate(streams):
            received[k] = []
            async with asyncio.timeout(EVENT_WAIT_S):
                while len(received[k]) < len(expected[k]):
                    event = await stream.try_next()
                    if event is not None:
                        received[k].append(event["documentKey"]["_id"])
    finally:
        for stream in streams:
            await stream.close()
    assert received == expected
    assert all(expected.values())  # 30 channels fill all three buckets
    assert sorted(i for share in received.values() for i in share) == sorted(ids)


async def _bucket_ids(coll: Any, ids: list[str], bucket_filter: Any, k: int) -> list[str]:
    """The ids the same filter keeps when the server runs it over the documents in an aggregate."""
    channel = {"$concat": ["orders:", "$_id"]}
    pipeline = [{"$match": {"_id": {"$in": ids}}}, {"$set": {"_ablyChannel": channel}}, *bucket_filter(k)]
    found = {doc["_id"] for doc in await (await coll.aggregate(pipeline)).to_list()}
    return [i for i in ids if i in found]
