"""`$toHashedIndexKey`: the hash mongod's hashed indexes use (BSONElementHasher::hash64, hasher.cpp).

The hash is MD5 over a 4-byte little-endian seed (0 for `$toHashedIndexKey` and hashed indexes) followed
by the element: its *canonical* type (bsontypes.h canonicalizeBSONType) as a 4-byte little-endian int,
then, for every type but documents, arrays and code with scope, its value bytes as BSON stores them;
numbers instead give one little-endian int64 (safeNumberLongForHash), so 1, 1.0, Long(1) and
Decimal("1") hash alike. Documents and arrays hash each element (canonical type, field name with its NUL,
value) and then the terminating EOO (a canonical type 0, nothing else); code with scope hashes its code
string (with its NUL, without its length) before the scope's elements. The result is the digest's first
8 bytes read as a little-endian signed int64. A missing input hashes as null (ExpressionToHashedIndexKey).

The value is hashed from its BSON encoding (`bsonvalues.encode`), so every type the emulator stores
byte for byte (invalid UTF-8, symbols, DBPointers, odd regex flags, ...) hashes as mongod hashes it.
"""

from __future__ import annotations

import decimal
import functools
import hashlib
import math
import struct
from typing import Any

from bson import Decimal128, Int64

from .bsonvalues import encode

__all__ = ["hash64"]

_INT32 = struct.Struct("<i")
_INT64 = struct.Struct("<q")
_DOUBLE = struct.Struct("<d")
_LONG_MIN, _LONG_MAX = -(2**63), 2**63 - 1
_TWO_POW_63 = 2.0**63
#: Wide enough for every Decimal128 (34 digits, exponents to 6111) compared with int64 bounds.
_DECIMAL_CONTEXT = decimal.Context(prec=80, Emin=-7000, Emax=7000)

# canonicalizeBSONType by BSON type byte (0x00 is the EOO that ends a document).
_CANONICAL: dict[int, int] = {
    0x00: 0,  # EOO
    0x01: 10,  # double
    0x02: 15,  # string
    0x03: 20,  # document
    0x04: 25,  # array
    0x05: 30,  # binData
    0x06: 0,  # undefined
    0x07: 35,  # objectId
    0x08: 40,  # bool
    0x09: 45,  # date
    0x0A: 5,  # null
    0x0B: 50,  # regex
    0x0C: 55,  # DBPointer
    0x0D: 60,  # code
    0x0E: 15,  # symbol (hashes like the string)
    0x0F: 65,  # code with scope
    0x10: 10,  # int
    0x11: 47,  # timestamp
    0x12: 10,  # long
    0x13: 10,  # decimal
    0xFF: -1,  # minKey
    0x7F: 127,  # maxKey
}
_FIXED_SIZE = {0x06: 0, 0x07: 12, 0x08: 1, 0x09: 8, 0x0A: 0, 0x11: 8, 0xFF: 0, 0x7F: 0}
_STRING_TYPES = (0x02, 0x0D, 0x0E)


def hash64(value: Any) -> Int64:
    """The hashed-index key of ``value`` with seed 0, as `$toHashedIndexKey` returns it."""
    if type(value) is str:
        try:
            return _string_hash(value)
        except UnicodeEncodeError:
            pass  # lone surrogates: the BSON encoder's own handling, below
    data = encode({"": value})
    digest = hashlib.md5(_INT32.pack(0), usedforsecurity=False)
    # The top-level element: type byte at 4, empty field name (one NUL) at 5, value from 6.
    _hash_element(digest, data, 4, include_name=False)
    return Int64(_INT64.unpack_from(digest.digest())[0])


@functools.lru_cache(maxsize=4096)
def _string_hash(text: str) -> Int64:
    """A string's hash without encoding a document: a partition filter hashes every event's channel,
    and channels repeat. The same bytes `_hash_element` feeds for a BSON string (type 0x02)."""
    data = text.encode("utf-8")
    digest = hashlib.md5(_INT32.pack(0), usedforsecurity=False)
    digest.update(_INT32.pack(_CANONICAL[0x02]) + _INT32.pack(len(data) + 1) + data + b"\0")
    return Int64(_INT64.unpack_from(digest.digest())[0])


def _hash_element(digest: Any, data: bytes, pos: int, *, include_name: bool) -> int:
    """Feed the element at ``pos`` into ``digest``; return the position after it."""
    type_byte = data[pos]
    digest.update(_INT32.pack(_CANONICAL[type_byte]))
    if type_byte == 0x00:
        return pos + 1  # EOO: no field name (its size is 0) and no value
    name_end = data.index(b"\x00", pos + 1) + 1
    if include_name:
        digest.update(data[pos + 1 : name_end])
    start = name_end
    if type_byte in (0x03, 0x04):
        end = start + _INT32.unpack_from(data, start)[0]
        _hash_elements(digest, data, start + 4)
        return end
    if type_byte == 0x0F:
        end = start + _INT32.unpack_from(data, start)[0]
        code_size = _INT32.unpack_from(data, start + 4)[0]
        digest.update(data[start + 8 : start + 8 + code_size])
        _hash_elements(digest, data, start + 8 + code_size + 4)
        return end
    end = start + _value_size(type_byte, data, start)
    if type_byte in (0x01, 0x10, 0x12, 0x13):
        digest.update(_INT64.pack(_number_for_hash(type_byte, data[start:end])))
    else:
        digest.update(data[start:end])
    return end


def _hash_elements(digest: Any, data: bytes, pos: int) -> None:
    """Every element of the document whose first element is at ``pos``, then its EOO."""
    while data[pos] != 0x00:
        pos = _hash_element(digest, data, pos, include_name=True)
    _hash_element(digest, data, pos, include_name=True)


def _value_size(type_byte: int, data: bytes, start: int) -> int:
    fixed = _FIXED_SIZE.get(type_byte)
    if fixed is not None:
        return fixed
    if type_byte in _STRING_TYPES:
        return 4 + int(_INT32.unpack_from(data, start)[0])
    if type_byte == 0x05:
        return 5 + int(_INT32.unpack_from(data, start)[0])
    if type_byte == 0x0B:
        flags_start = data.index(b"\x00", start) + 1
        return data.index(b"\x00", flags_start) + 1 - start
    if type_byte == 0x0C:
        return 4 + int(_INT32.unpack_from(data, start)[0]) + 12
    return {0x01: 8, 0x10: 4, 0x12: 8, 0x13: 16}[type_byte]


def _number_for_hash(type_byte: int, raw: bytes) -> int:
    """BSONElement::safeNumberLongForHash: numbers squashed to int64."""
    if type_byte == 0x10:
        return int(_INT32.unpack(raw)[0])
    if type_byte == 0x12:
        return int(_INT64.unpack(raw)[0])
    if type_byte == 0x01:
        return _double_for_hash(_DOUBLE.unpack(raw)[0])
    return _decimal_for_hash(Decimal128.from_bid(raw).to_decimal())


def _double_for_hash(value: float) -> int:
    if math.isnan(value):
        return 0
    if value == _TWO_POW_63:
        # Kept from old servers, where the cast of 2^63 overflowed to -2^63 (safeNumberLongForHash).
        return _LONG_MIN
    if value > _TWO_POW_63:
        return _LONG_MAX
    if value < -_TWO_POW_63:
        return _LONG_MIN
    return int(value)  # truncates toward zero, as the C++ cast does


def _decimal_for_hash(value: decimal.Decimal) -> int:
    if value.is_nan():
        return 0
    if value > _LONG_MAX:
        return _LONG_MAX
    if value < _LONG_MIN:
        return _LONG_MIN
    # Decimal128::toLong's default rounding: to nearest, ties to even.
    rounded = value.quantize(decimal.Decimal(1), rounding=decimal.ROUND_HALF_EVEN, context=_DECIMAL_CONTEXT)
    return int(rounded)
