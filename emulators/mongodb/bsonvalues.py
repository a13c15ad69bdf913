"""BSON values exactly as mongod stores them: decoded without loss, encoded back byte for byte.

mongod validates incoming BSON structurally only (``validateBSON`` in its default mode,
src/mongo/bson/bson_validate.cpp): lengths and NUL terminators, bool bytes 0/1, known type bytes, at most
200 levels of nesting (``BSONDepth::kDefaultMaxAllowableDepth``, else Overflow 45), and the content of
BinData subtype 7 (a BSON column, else NonConformantBSON 378). It does *not* check UTF-8 (neither in
values nor in field names), date ranges, deprecated types, UUID lengths or regex flags: those are checks
of the extended and full modes, which only the ``validate`` command uses. So it stores, and returns as
they were, invalid UTF-8, dates over the whole int64 millisecond range, undefined, DBPointer, Symbol,
regexes with any flags, duplicate-free documents of every type.

PyMongo's C codec is fast and handles nearly all of that (``datetime_conversion=DATETIME_AUTO`` keeps
out-of-range dates as ``DatetimeMS``, ``surrogateescape`` keeps invalid UTF-8 as lone surrogates), but it
loses a few things: undefined decodes to None, DBPointer to a DBRef, Symbol to str, regex flags are
normalised, and a sub-document shaped like a DBRef is reordered. ``decode_documents`` therefore checks a
document the C decoder produced only when it could hold one of those (decoder hooks saw a DBRef or a
Regex, or its bytes hold a 0x06/0x0E byte that can be an element's type byte), by encoding it again; a
document that does not come back identical (or that the C decoder refuses) is decoded here in Python
into the wrappers below. ``encode`` uses the C encoder and falls back to the Python encoder only for
documents it refuses (lone surrogates, the wrappers).

Not kept: duplicate field names in one document (a dict keeps the last) and array keys other than
"0", "1", ... (arrays are lists); mongod stores both as sent.
"""

from __future__ import annotations

import bisect
import datetime
import decimal
import math
import re
import struct
import threading
import uuid
from collections.abc import Mapping
from typing import Any

import bson
from bson import Binary, Code, Decimal128, Int64, MaxKey, MinKey, ObjectId, Regex, Timestamp
from bson.codec_options import CodecOptions, DatetimeConversion, TypeDecoder, TypeRegistry
from bson.datetime_ms import DatetimeMS, _datetime_to_millis, _millis_to_datetime
from bson.dbref import DBRef
from bson.errors import InvalidBSON, InvalidDocument
from bson.raw_bson import RawBSONDocument

from .errors import CommandError

__all__ = [
    "DECODE_OPTIONS",
    "ENCODE_OPTIONS",
    "MAX_STORAGE_DEPTH",
    "MAX_WIRE_DEPTH",
    "UNDEFINED",
    "DBPointer",
    "RawRegex",
    "RawValue",
    "Symbol",
    "Undefined",
    "WireError",
    "bson_size",
    "canonical_type",
    "compare",
    "decode",
    "decode_documents",
    "decode_exact",
    "encode",
    "encode_exact",
    "same",
    "same_id",
    "too_deep",
    "too_deep_error",
    "validate_column",
]

# Incoming messages: never fail on a value mongod accepts (out-of-range dates, invalid UTF-8); tz_aware so
# dates round-trip exactly; dict keeps decoding in C.
DECODE_OPTIONS: CodecOptions[dict[str, Any]] = CodecOptions(
    tz_aware=True,
    uuid_representation=4,
    datetime_conversion=DatetimeConversion.DATETIME_AUTO,
    unicode_decode_error_handler="surrogateescape",
)
ENCODE_OPTIONS: CodecOptions[dict[str, Any]] = CodecOptions(tz_aware=True, uuid_representation=4)

# BSONDepth::kDefaultMaxAllowableDepth: nesting accepted on the wire (the top-level document is level 0).
MAX_WIRE_DEPTH = 200
# BSONDepth::getMaxDepthForUserStorage() (200 - kExtraSystemDepthLevels): a stored document may nest
# non-empty documents/arrays down to level 179, i.e. 180 levels counting the top-level document.
MAX_STORAGE_DEPTH = 180

INVALID_BSON = 22
OVERFLOW = 45
NON_CONFORMANT_BSON = 378

_INT32 = struct.Struct("<i")
_UINT32 = struct.Struct("<I")
_INT64 = struct.Struct("<q")
_UINT64 = struct.Struct("<Q")
_DOUBLE = struct.Struct("<d")


# -- values the C codec cannot represent -------------------------------------------------------------
class RawValue:
    """A BSON value kept as its type byte and value bytes (encoded verbatim; immutable)."""

    __slots__ = ("payload", "type")

    type_name = "binData"

    def __init__(self, type_byte: int, payload: bytes) -> None:
        self.type = type_byte
        self.payload = bytes(payload)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RawValue) and self.type == other.type and self.payload == other.payload

    def __hash__(self) -> int:
        return hash((self.type, self.payload))

    def __copy__(self) -> RawValue:
        return self

    def __deepcopy__(self, memo: Any) -> RawValue:
        return self

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.type:#04x}, {self.payload!r})"


class Undefined(RawValue):
    """BSON undefined (0x06, deprecated; PyMongo decodes it to None)."""

    __slots__ = ()
    type_name = "undefined"

    def __init__(self) -> None:
        super().__init__(0x06, b"")

    def __repr__(self) -> str:
        return "Undefined()"


UNDEFINED = Undefined()


def _string_payload(value: str) -> bytes:
    data = value.encode("utf-8", "surrogateescape")
    return _INT32.pack(len(data) + 1) + data + b"\x00"


class Symbol(RawValue):
    """BSON symbol (0x0E, deprecated; PyMongo decodes it to str). Compares like a string."""

    __slots__ = ("value",)
    type_name = "symbol"

    def __init__(self, value: str) -> None:
        super().__init__(0x0E, _string_payload(value))
        self.value = value

    def __repr__(self) -> str:
        return f"Symbol({self.value!r})"


class DBPointer(RawValue):
    """BSON DBPointer (0x0C, deprecated; PyMongo decodes it to a DBRef, which encodes as a document)."""

    __slots__ = ("namespace", "oid")
    type_name = "dbPointer"

    def __init__(self, namespace: str, oid: ObjectId) -> None:
        super().__init__(0x0C, _string_payload(namespace) + oid.binary)
        self.namespace = namespace
        self.oid = oid

    def __repr__(self) -> str:
        return f"DBPointer({self.namespace!r}, {self.oid!r})"


class RawRegex(RawValue):
    """A regex whose pattern or flags PyMongo's Regex would change (unknown or unsorted flags)."""

    __slots__ = ("flags", "pattern")
    type_name = "regex"

    def __init__(self, pattern: str, flags: str) -> None:
        payload = pattern.encode("utf-8", "surrogateescape") + b"\x00"
        super().__init__(0x0B, payload + flags.encode("utf-8", "surrogateescape") + b"\x00")
        self.pattern = pattern
        self.flags = flags

    def __repr__(self) -> str:
        return f"RawRegex({self.pattern!r}, {self.flags!r})"


# -- decoding -----------------------------------------------------------------------------------------
# What the C decoder loses is found cheaply: DBPointer and DBRef-shaped documents decode to DBRef and
# regexes to Regex, and decoder hooks on those two types flag the decode (a dictionary lookup per value in
# C); undefined and symbol decode to None and str, so their type bytes (0x06, 0x0E) are looked for with
# memchr. Only documents flagged either way are encoded again and compared with their bytes.
_SEEN = threading.local()


def _flag(value: Any) -> Any:
    _SEEN.lossy = True
    return value


class _FlagDecoder(TypeDecoder):
    def __init__(self, python_type: type) -> None:
        self._type = python_type

    @property
    def bson_type(self) -> Any:
        return self._type

    def transform_bson(self, value: Any) -> Any:
        return _flag(value)


_WIRE_OPTIONS: CodecOptions[dict[str, Any]] = DECODE_OPTIONS.with_options(
    type_registry=TypeRegistry([_FlagDecoder(DBRef), _FlagDecoder(Regex)])
)
_UNKNOWN_TYPE_BYTES = (b"\x06", b"\x0e")  # undefined, symbol
_C_DECODE_ERRORS = (InvalidBSON, ValueError, OverflowError, RecursionError, TypeError)


class WireError(CommandError):
    """BSON mongod refuses while parsing the message (validateBSON): the whole command fails, before it
    does anything."""


def _invalid(message: str) -> CommandError:
    return WireError(INVALID_BSON, message)


def too_deep_error(key: str = "?") -> WireError:
    return WireError(
        OVERFLOW, f"BSONObj exceeds maximum nested object depth in element with field name '{key}'"
    )


def decode(raw: bytes) -> dict[str, Any]:
    """One document (``raw`` is exactly its bytes), as mongod would accept it; CommandError otherwise."""
    return decode_documents(raw, 0, len(raw))[0]


def decode_documents(data: bytes, start: int, end: int, *, wire_checks: bool = True) -> list[dict[str, Any]]:
    """The documents in ``data[start:end]`` (a message's body, or a kind-1 section) as mongod stores them:
    PyMongo's C decoder, then exact decoding of the few documents it could have changed. CommandError
    for what mongod refuses. The nesting limit of the wire is checked here unless ``wire_checks`` is
    false (an insert's documents get it with their stored form, which walks them anyway); BSON columns
    (BinData subtype 7) are validated when stored (docstore.storable)."""
    size = end - start
    try:
        if size >= 5 and _INT32.unpack_from(data, start)[0] == size:  # the body, or one document
            raw = data[start:end] if start or end != len(data) else data
            _SEEN.lossy = False
            doc: dict[str, Any] = bson.decode(raw, _WIRE_OPTIONS)
            if (_SEEN.lossy or _suspect(raw, 0, size)) and not _round_trips(doc, raw):
                doc = decode_exact(raw)
            docs = [doc]
        else:
            docs = _decode_many(data, start, end)
    except _C_DECODE_ERRORS:
        docs = [decode_exact(data[a:b]) for a, b in _bounds(data, start, end)]
    if (
        wire_checks
        and size > _MIN_TOO_DEEP_BYTES
        and data.count(b"\x03", start, end) + data.count(b"\x04", start, end) > MAX_WIRE_DEPTH
    ):
        for item in docs:
            if too_deep(item, MAX_WIRE_DEPTH):
                raise too_deep_error()
    return docs


# A document nesting MAX_WIRE_DEPTH + 1 levels has at least that many documents of 7 bytes or more.
_MIN_TOO_DEEP_BYTES = 7 * MAX_WIRE_DEPTH


# Bytes that can start an element (BSON types 0x01-0x13, MaxKey, MinKey).
_TYPE_BYTES = frozenset({*range(0x01, 0x14), 0x7F, 0xFF})


# An undefined element: its type byte, a field name, then the next element's type byte or the end of its
# document (and of the documents around it).
_UNDEFINED_AT = re.compile(rb"\x06[^\x00]*\x00\x00*(?:[\x01-\x13\x7f\xff]|\Z)")


def _plausible(data: bytes, pos: int, end: int) -> bool:
    """Whether the 0x06 (undefined) or 0x0E (symbol) byte at ``pos`` can be an element's type byte: it is
    followed by a field name, then (symbol) a string that fits, or (undefined) the next element's type
    byte or the end of the document. Most such bytes are inside other values (a string of 5 or 13
    characters has the length 6 or 14, followed by three NULs and a character that is no type byte)."""
    if data[pos] == 0x06:
        return _UNDEFINED_AT.match(data, pos, end) is not None
    key_end = data.find(b"\x00", pos + 1, end)
    if key_end < 0 or key_end + 5 > end:
        return False
    (size,) = _INT32.unpack_from(data, key_end + 1)
    return size >= 1 and key_end + 5 + size <= end and data[key_end + 4 + size] == 0


def _suspect(data: bytes, start: int, end: int) -> bool:
    for needle in _UNKNOWN_TYPE_BYTES:
        pos = data.find(needle, start, end)
        while pos >= 0:
            if _plausible(data, pos, end):
                return True
            pos = data.find(needle, pos + 1, end)
    return False


def _decode_many(data: bytes, start: int, end: int) -> list[dict[str, Any]]:
    _SEEN.lossy = False
    docs: list[dict[str, Any]] = bson.decode_all(data[start:end], _WIRE_OPTIONS)
    if _SEEN.lossy:
        suspects = set(range(len(docs)))
        bounds = _bounds(data, start, end)
    else:
        suspects = set()
        bounds = []
        for needle in _UNKNOWN_TYPE_BYTES:
            pos = data.find(needle, start, end)
            while pos >= 0:
                bounds = bounds or _bounds(data, start, end)
                index = bisect.bisect_right(bounds, (pos, end)) - 1
                if _plausible(data, pos, bounds[index][1]):
                    suspects.add(index)
                    pos = data.find(needle, bounds[index][1], end)
                else:
                    pos = data.find(needle, pos + 1, end)
    for index in suspects:
        a, b = bounds[index]
        if not _round_trips(docs[index], data[a:b]):
            docs[index] = decode_exact(data[a:b])
    return docs


def _bounds(data: bytes, start: int, end: int) -> list[tuple[int, int]]:
    out = []
    pos = start
    while pos < end:
        if pos + 4 > end:
            raise _invalid("BSON document length exceeds its message section")
        (size,) = _INT32.unpack_from(data, pos)
        if size < 5 or pos + size > end:
            raise _invalid("BSON document length exceeds its message section")
        out.append((pos, pos + size))
        pos += size
    return out


def _round_trips(doc: dict[str, Any], raw: bytes) -> bool:
    try:
        return bson.encode(doc, codec_options=ENCODE_OPTIONS) == raw
    except (InvalidDocument, UnicodeEncodeError, OverflowError, ValueError, TypeError):
        return False


def too_deep(doc: Any, limit: int) -> bool:
    """Whether a document or array nests containers (empty or not) deeper than ``limit`` levels."""
    stack: list[tuple[Any, int]] = [(doc, 0)]
    while stack:
        value, level = stack.pop()
        for item in value.values() if isinstance(value, dict) else value:
            if type(item) is dict or type(item) is list:
                if level + 1 > limit:
                    return True
                stack.append((item, level + 1))
    return False


def decode_exact(raw: bytes, max_depth: int = MAX_WIRE_DEPTH) -> dict[str, Any]:
    """Decode one document in Python, keeping every value as mongod stores it, with mongod's structural
    checks (InvalidBSON 22, Overflow 45, NonConformantBSON 378)."""
    data = bytes(raw)
    if len(data) < 5:
        raise _invalid("BSON data has to be at least 5 bytes")
    (length,) = _INT32.unpack_from(data, 0)
    if length < 5 or length > len(data):
        raise _invalid("Incorrect BSON length")
    if data[length - 1] != 0:
        raise _invalid("BSON object not terminated with EOO")
    doc = _Decoder(data, max_depth).document(0, length, 0, array=False)
    assert isinstance(doc, dict)
    return doc


class _Decoder:
    __slots__ = ("data", "max_depth")

    def __init__(self, data: bytes, max_depth: int) -> None:
        self.data = data
        self.max_depth = max_depth

    def document(self, start: int, end: int, depth: int, *, array: bool) -> dict[str, Any] | list[Any]:
        data = self.data
        out_doc: dict[str, Any] = {}
        out_list: list[Any] = []
        pos = start + 4
        while True:
            if pos >= end:
                raise _invalid("BSON size is larger than buffer size")
            type_byte = data[pos]
            if type_byte == 0:
                if pos + 1 != end:
                    raise _invalid("incorrect BSON length")
                break
            key_end = data.find(b"\x00", pos + 1, end)
            if key_end < 0:
                raise _invalid("BSON size is larger than buffer size")
            key = data[pos + 1 : key_end].decode("utf-8", "surrogateescape")
            value, pos = self.value(type_byte, key_end + 1, end, depth, key)
            if array:
                out_list.append(value)
            else:
                out_doc[key] = value
        return out_list if array else out_doc

    def _need(self, pos: int, size: int, end: int) -> int:
        # mongod's Cursor::skip: a value must end before its container's terminating EOO.
        if pos + size >= end:
            raise _invalid("BSON size is larger than buffer size")
        return pos + size

    def _string(self, pos: int, end: int) -> tuple[str, int]:
        after = self._need(pos, 4, end)
        (size,) = _UINT32.unpack_from(self.data, pos)
        stop = self._need(after, size, end)
        if size == 0 or self.data[stop - 1] != 0:
            raise _invalid("Not null terminated string")
        return self.data[after : stop - 1].decode("utf-8", "surrogateescape"), stop

    def _cstring(self, pos: int, end: int) -> tuple[str, int]:
        stop = self.data.find(b"\x00", pos, end)
        if stop < 0 or stop + 1 >= end:
            raise _invalid("BSON size is larger than buffer size")
        return self.data[pos:stop].decode("utf-8", "surrogateescape"), stop + 1

    def _nested(self, pos: int, end: int, depth: int, key: str, *, array: bool) -> tuple[Any, int]:
        if depth + 1 > self.max_depth:
            raise too_deep_error(key)
        self._need(pos, 4, end)
        (size,) = _INT32.unpack_from(self.data, pos)
        if size < 5:
            raise _invalid("Nested BSON object has to be at least 5 bytes")
        stop = self._need(pos, size, end)
        if self.data[stop - 1] != 0:
            raise _invalid("incorrect BSON length")
        return self.document(pos, stop, depth + 1, array=array), stop

    def value(self, type_byte: int, pos: int, end: int, depth: int, key: str) -> tuple[Any, int]:
        fixed = _FIXED_SIZE.get(type_byte)
        if fixed is not None:
            size, read = fixed
            stop = self._need(pos, size, end)
            return read(self.data, pos), stop
        if type_byte in _NO_PAYLOAD:
            self._need(pos, 0, end)
            return _NO_PAYLOAD[type_byte], pos
        if type_byte == 0x03 or type_byte == 0x04:
            return self._nested(pos, end, depth, key, array=type_byte == 0x04)
        if type_byte == 0x0F:
            return self._code_with_scope(pos, end, depth, key)
        if type_byte in _STRINGS:
            text, stop = self._string(pos, end)
            return _STRINGS[type_byte](text), stop
        if type_byte == 0x05:
            return self._binary(pos, end)
        if type_byte == 0x08:
            stop = self._need(pos, 1, end)
            if self.data[pos] > 1:
                raise _invalid("BSON bool is neither false nor true")
            return self.data[pos] == 1, stop
        if type_byte == 0x0B:
            pattern, pos = self._cstring(pos, end)
            flags, pos = self._cstring(pos, end)
            return _regex(pattern, flags), pos
        if type_byte == 0x0C:
            namespace, after = self._string(pos, end)
            stop = self._need(after, 12, end)
            return DBPointer(namespace, ObjectId(self.data[after:stop])), stop
        raise _invalid(f"Unrecognized BSON type {type_byte}")

    def _binary(self, pos: int, end: int) -> tuple[Any, int]:
        data = self.data
        after = self._need(pos, 5, end)
        (size,) = _UINT32.unpack_from(data, pos)
        subtype = data[pos + 4]
        stop = self._need(after, size, end)
        payload = data[after:stop]
        if subtype == 0:
            return payload, stop
        if subtype == 2:
            inner = _INT32.unpack_from(payload, 0)[0] if size >= 4 else -1
            if inner != size - 4:
                return RawValue(0x05, data[pos:stop]), stop  # inconsistent lengths, kept as sent
            return Binary(payload[4:], 2), stop
        if subtype == 4 and size == 16:
            return uuid.UUID(bytes=payload), stop
        if subtype == 7:
            validate_column(payload)
        return Binary(payload, subtype), stop

    def _code_with_scope(self, pos: int, end: int, depth: int, key: str) -> tuple[Any, int]:
        self._need(pos, 4, end)
        (total,) = _INT32.unpack_from(self.data, pos)
        stop = self._need(pos, total, end) if total >= 14 else -1
        if stop < 0:
            raise _invalid("incorrect BSON length")
        code, after = self._string(pos + 4, stop + 1)
        # mongod pushes a frame for the code-with-scope and one for its scope document.
        scope, after = self._nested(after, stop + 1, depth + 1, key, array=False)
        if after != stop:
            raise _invalid("incorrect BSON length")
        return Code(code, scope), stop


def _timestamp(data: bytes, pos: int) -> Timestamp:
    (packed,) = _UINT64.unpack_from(data, pos)
    return Timestamp(packed >> 32, packed & 0xFFFFFFFF)


# Values of a fixed size: (size, reader).
_FIXED_SIZE: dict[int, tuple[int, Any]] = {
    0x01: (8, lambda data, pos: _DOUBLE.unpack_from(data, pos)[0]),
    0x07: (12, lambda data, pos: ObjectId(data[pos : pos + 12])),
    0x09: (8, lambda data, pos: _millis_to_datetime(_INT64.unpack_from(data, pos)[0], DECODE_OPTIONS)),
    0x10: (4, lambda data, pos: _INT32.unpack_from(data, pos)[0]),
    0x11: (8, _timestamp),
    0x12: (8, lambda data, pos: Int64(_INT64.unpack_from(data, pos)[0])),
    0x13: (16, lambda data, pos: Decimal128.from_bid(data[pos : pos + 16])),
}
_NO_PAYLOAD: dict[int, Any] = {0x06: UNDEFINED, 0x0A: None, 0xFF: MinKey(), 0x7F: MaxKey()}
_STRINGS: dict[int, Any] = {0x02: str, 0x0D: Code, 0x0E: Symbol}


_REGEX_FLAGS = "ilmsux"


def _regex(pattern: str, flags: str) -> Any:
    canonical = "".join(sorted(set(flags))) == flags and all(f in _REGEX_FLAGS for f in flags)
    if canonical and not _has_surrogates(pattern):
        return Regex(pattern, flags)
    return RawRegex(pattern, flags)


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


# BSON column (BinData subtype 7) control bytes: src/mongo/bson/util/bsoncolumn_util.h.
_INTERLEAVED_START = frozenset({0xF0, 0xF1})


def validate_column(data: bytes) -> None:
    """mongod's ColumnValidator (bson_validate.cpp), which its default validation runs on subtype 7."""

    def fail(message: str) -> CommandError:
        return WireError(NON_CONFORMANT_BSON, f"Invalid BSON column: {message}")

    end = len(data)
    if not end or data[-1] != 0:
        raise fail("BSON column is missing EOO termination")
    pos = 0
    interleaved = False
    while pos < end:
        control = data[pos]
        if control == 0:
            pos += 1
            if interleaved:
                interleaved = False
            elif pos != end:
                raise fail("BSONColumn EOO does not fully consume buffer")
            else:
                return
        elif control & 0xE0 == 0:  # a literal element: type byte, empty field name, value
            try:
                name_end = data.index(b"\x00", pos + 1)
                _, pos = _Decoder(data, MAX_WIRE_DEPTH).value(control, name_end + 1, end, 0, "")
            except (CommandError, ValueError, struct.error) as exc:
                raise fail("invalid literal") from exc
        elif control in _INTERLEAVED_START:
            pos += 1
            try:
                (size,) = _INT32.unpack_from(data, pos)
                decode_exact(data[pos : pos + size])
            except (CommandError, struct.error) as exc:
                raise fail("Invalid reference object for interleaved mode") from exc
            pos += size
            interleaved = True
        else:
            size = 8 * ((control & 0x0F) + 1)
            if pos + size + 1 > end:
                raise fail("BSONColumn blocks exceed buffer size")
            pos += 1 + size
    raise fail("Missing terminating EOO")


# -- encoding -----------------------------------------------------------------------------------------
_ENCODE_FALLBACK = (InvalidDocument, UnicodeEncodeError)


def encode(doc: Any) -> bytes:
    """BSON of a document: PyMongo's C encoder, or the exact encoder for what it refuses."""
    try:
        return bson.encode(doc, codec_options=ENCODE_OPTIONS)
    except _ENCODE_FALLBACK:
        return encode_exact(doc)


def bson_size(doc: Any) -> int:
    return len(encode(doc))


def _key(name: Any) -> bytes:
    if not isinstance(name, str):
        raise InvalidDocument(f"documents must have only string keys, key was {name!r}")
    data = name.encode("utf-8", "surrogateescape")
    if b"\x00" in data:
        raise InvalidDocument("Key names must not contain the NULL byte")
    return data + b"\x00"


def encode_exact(doc: Any) -> bytes:
    """Encode in Python what the C encoder refuses; every other value is encoded by the C encoder."""
    if isinstance(doc, RawBSONDocument):
        return bytes(doc.raw)
    items = doc.items() if isinstance(doc, Mapping) else ((str(i), v) for i, v in enumerate(doc))
    body = b"".join(_element(_key(name), value) for name, value in items)
    return _INT32.pack(len(body) + 5) + body + b"\x00"


def _element(key: bytes, value: Any) -> bytes:
    if isinstance(value, RawValue):
        return bytes((value.type,)) + key + value.payload
    try:
        element = bson.encode({"": value}, codec_options=ENCODE_OPTIONS)
        return element[4:5] + key + element[6:-1]
    except _ENCODE_FALLBACK:
        pass
    if isinstance(value, Code):
        if value.scope is None:
            return b"\x0d" + key + _string_payload(str(value))
        code = _string_payload(str(value))
        scope = encode_exact(value.scope)
        return b"\x0f" + key + _INT32.pack(4 + len(code) + len(scope)) + code + scope
    if isinstance(value, str):
        return b"\x02" + key + _string_payload(value)
    if isinstance(value, Mapping):
        return b"\x03" + key + encode_exact(value)
    if isinstance(value, list | tuple):
        return b"\x04" + key + encode_exact(value)
    if isinstance(value, Regex) and isinstance(value.pattern, str):
        flags = "".join(f for f, bit in zip(_REGEX_FLAGS, _FLAG_BITS, strict=True) if value.flags & bit)
        return b"\x0b" + key + RawRegex(value.pattern, flags).payload
    bson.encode({"": value}, codec_options=ENCODE_OPTIONS)  # raises the encoder's own error
    raise InvalidDocument(f"cannot encode object: {value!r}")


_FLAG_BITS = (re.I, re.L, re.M, re.S, re.U, re.X)


# -- equality and order -------------------------------------------------------------------------------
def same(a: Any, b: Any) -> bool:
    """Binary equality of two values (1, 1.0 and Int64(1) differ; so do 0.0 and -0.0; NaN equals a NaN
    with the same bits), as mongod compares an element with its new value before writing it."""
    if type(a) is not type(b):
        return False
    if type(a) is dict:
        return len(a) == len(b) and list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if type(a) is list:
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if type(a) is float:
        return _DOUBLE.pack(a) == _DOUBLE.pack(b)
    if isinstance(a, Binary):
        return a.subtype == b.subtype and bytes(a) == bytes(b)
    if isinstance(a, Regex):
        return bool(a.pattern == b.pattern and a.flags == b.flags)
    if isinstance(a, Code):
        return str(a) == str(b) and same(a.scope, b.scope)
    try:
        return bool(a == b)
    except Exception:  # values with odd __eq__: fall back to their bytes
        return encode({"": a}) == encode({"": b})


def same_id(a: Any, b: Any) -> bool:
    """Whether an update left `_id` as it was: equal (1 and 1.0 alike), or the same bytes (a NaN)."""
    try:
        if a == b:
            return True
    except Exception:  # values with odd __eq__: their bytes decide
        pass
    return same(a, b)


# Canonical type order (bsontypes.h canonicalizeBSONType).
_MIN_KEY, _UNDEFINED, _NULL, _NUMBER, _STRING, _OBJECT, _ARRAY, _BINDATA = -1, 0, 5, 10, 15, 20, 25, 30
_OID, _BOOL, _DATE, _TIMESTAMP, _REGEX, _DBPOINTER, _CODE, _CODE_SCOPE, _MAX_KEY = (
    35,
    40,
    45,
    47,
    50,
    55,
    60,
    65,
    127,
)


_CANONICAL_EXACT: dict[type, int] = {
    str: _STRING,
    int: _NUMBER,
    float: _NUMBER,
    Int64: _NUMBER,
    Decimal128: _NUMBER,
    bool: _BOOL,
    type(None): _NULL,
    dict: _OBJECT,
    list: _ARRAY,
    bytes: _BINDATA,
    Binary: _BINDATA,
    uuid.UUID: _BINDATA,
    ObjectId: _OID,
    datetime.datetime: _DATE,
    DatetimeMS: _DATE,
    Timestamp: _TIMESTAMP,
    Regex: _REGEX,
    RawRegex: _REGEX,
    Symbol: _STRING,
    DBPointer: _DBPOINTER,
    Undefined: _UNDEFINED,
    MinKey: _MIN_KEY,
    MaxKey: _MAX_KEY,
    RawValue: _BINDATA,
}
# Subclasses (Code is a str, SON a dict, ...), in the order they must be tried.
_CANONICAL_BASES: tuple[tuple[Any, int], ...] = (
    (Mapping, _OBJECT),
    (list | tuple, _ARRAY),
    (bool, _BOOL),
    (str, _STRING),
    (int | float, _NUMBER),
    (bytes, _BINDATA),
    (datetime.datetime, _DATE),
    (re.Pattern, _REGEX),
    (RawValue, _BINDATA),
)


def canonical_type(value: Any) -> int:
    found = _CANONICAL_EXACT.get(type(value))
    if found is not None:
        return found
    if isinstance(value, Code):
        return _CODE if value.scope is None else _CODE_SCOPE
    for base, order in _CANONICAL_BASES:
        if isinstance(value, base):
            return order
    return _OBJECT


def _cmp(a: Any, b: Any) -> int:
    return (a > b) - (a < b)


def _decimal(value: Any) -> decimal.Decimal | float:
    if isinstance(value, Decimal128):
        return value.to_decimal()
    return decimal.Decimal(value) if not isinstance(value, float) or math.isfinite(value) else value


def _is_nan(value: Any) -> bool:
    if isinstance(value, float):
        return value != value
    return isinstance(value, Decimal128) and value.to_decimal().is_nan()


def _compare_numbers(a: Any, b: Any) -> int:
    a_nan, b_nan = _is_nan(a), _is_nan(b)
    if a_nan or b_nan:
        return 0 if a_nan and b_nan else (-1 if a_nan else 1)  # NaN sorts below every number
    if isinstance(a, Decimal128) or isinstance(b, Decimal128):
        return _cmp(_decimal(a), _decimal(b))
    return _cmp(a, b)


def _compare_strings(a: Any, b: Any) -> int:
    sa = a.value if isinstance(a, Symbol) else a
    sb = b.value if isinstance(b, Symbol) else b
    return _cmp(sa.encode("utf-8", "surrogateescape"), sb.encode("utf-8", "surrogateescape"))


def _compare_objects(a: Any, b: Any) -> int:
    for (ka, va), (kb, vb) in zip(a.items(), b.items(), strict=False):
        result = _cmp(canonical_type(va), canonical_type(vb)) or _cmp(ka, kb) or compare(va, vb)
        if result:
            return result
    return _cmp(len(a), len(b))


def _compare_arrays(a: Any, b: Any) -> int:
    for va, vb in zip(a, b, strict=False):
        result = compare(va, vb)
        if result:
            return result
    return _cmp(len(a), len(b))


def _millis(value: datetime.datetime | DatetimeMS) -> int:
    return int(value) if isinstance(value, DatetimeMS) else _datetime_to_millis(value)  # naive = UTC


def _binary_key(value: Any) -> tuple[int, int, bytes]:
    if isinstance(value, uuid.UUID):
        return 16, 4, value.bytes
    if isinstance(value, RawValue):
        (size,) = _UINT32.unpack_from(value.payload, 0)
        return size, value.payload[4], value.payload[5:]
    subtype = value.subtype if isinstance(value, Binary) else 0
    return len(value), subtype, bytes(value)


_COMPARE_SAME_TYPE: dict[int, Any] = {
    _NUMBER: _compare_numbers,
    _STRING: _compare_strings,
    _OBJECT: _compare_objects,
    _ARRAY: _compare_arrays,
    _BINDATA: lambda a, b: _cmp(_binary_key(a), _binary_key(b)),
    _OID: _cmp,
    _BOOL: _cmp,
    _DATE: lambda a, b: _cmp(_millis(a), _millis(b)),
    _TIMESTAMP: lambda a, b: _cmp((a.time, a.inc), (b.time, b.inc)),
    _REGEX: lambda a, b: _cmp(_regex_key(a), _regex_key(b)),
    _DBPOINTER: lambda a, b: _cmp((a.namespace, a.oid), (b.namespace, b.oid)),
    _CODE: lambda a, b: _cmp(str(a), str(b)),
    _CODE_SCOPE: lambda a, b: _cmp(str(a), str(b)) or compare(a.scope, b.scope),
}


def compare(a: Any, b: Any) -> int:
    """-1, 0 or 1: MongoDB's order of BSON values (type order first, then the value), for every type."""
    ta = type(a)
    if ta is type(b) and (ta is int or ta is str or ta is Int64):
        return _cmp(a, b)
    ca, cb = canonical_type(a), canonical_type(b)
    if ca != cb:
        return _cmp(ca, cb)
    same_type = _COMPARE_SAME_TYPE.get(ca)
    return 0 if same_type is None else int(same_type(a, b))  # null, undefined, MinKey, MaxKey: equal


def _regex_key(value: Any) -> tuple[str, str]:
    if isinstance(value, RawRegex):
        return value.pattern, value.flags
    if isinstance(value, re.Pattern):
        value = Regex.from_native(value)
    flags = value.flags if isinstance(value.flags, int) else 0
    return str(value.pattern), "".join(
        f for f, bit in zip(_REGEX_FLAGS, _FLAG_BITS, strict=True) if flags & bit
    )
