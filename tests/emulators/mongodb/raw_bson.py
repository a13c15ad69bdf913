"""Raw BSON built byte by byte, for tests that must send what a driver would never write (or write
differently): element types, exact double and decimal bits, code with scope."""

from __future__ import annotations

import struct


def int32(value: int) -> bytes:
    return struct.pack("<i", value)


def int64(value: int) -> bytes:
    return struct.pack("<q", value)


def double(value: float) -> bytes:
    return struct.pack("<d", value)


def double_bits(bits: int) -> bytes:
    return struct.pack("<Q", bits)


def decimal_bits(high: int, low: int) -> bytes:
    return struct.pack("<QQ", low, high)


def string(data: bytes) -> bytes:
    return int32(len(data) + 1) + data + b"\x00"


def document(*elements: bytes) -> bytes:
    body = b"".join(elements)
    return int32(len(body) + 5) + body + b"\x00"


def element(type_byte: int, name: bytes, payload: bytes) -> bytes:
    return bytes((type_byte,)) + name + b"\x00" + payload


def binary(subtype: int, data: bytes) -> bytes:
    return int32(len(data)) + bytes((subtype,)) + data


def code_with_scope(code: bytes, scope: bytes) -> bytes:
    return int32(4 + len(string(code)) + len(scope)) + string(code) + scope
