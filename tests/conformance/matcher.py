"""Value matching for the unified test format ("Evaluating Matches" in the unified-test-format spec).

Only what the change-stream spec files need is interpreted: the special operators `$$exists`,
`$$unsetOrMatches` and `$$type`, extra keys allowed only in root-level documents, arrays of equal length,
and numeric comparison across int32/int64/double. A mismatch raises `MatchError` naming the path, so a
failing conformance test says *where* the emulator's answer differs, not just that it does.
"""

from __future__ import annotations

import datetime
import re
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Final

from bson import Binary, Code, Decimal128, Int64, MaxKey, MinKey, ObjectId, Regex, Timestamp
from bson.dbref import DBRef

__all__ = ["MatchError", "bson_type_name", "match"]

#: Largest/smallest value an int32 holds; Python ints outside it are BSON longs on the wire.
_INT32_MIN: Final = -(2**31)
_INT32_MAX: Final = 2**31 - 1

#: `$$type` aliases: "number" is the query language's umbrella alias for the numeric types.
_TYPE_ALIASES: Final = {"number": frozenset({"int", "long", "double", "decimal"})}

#: Type names the `$type` query operator documents; anything else in a test file is a test bug.
_KNOWN_TYPES: Final = frozenset(
    {
        "double",
        "string",
        "object",
        "array",
        "binData",
        "undefined",
        "objectId",
        "bool",
        "date",
        "null",
        "regex",
        "dbPointer",
        "javascript",
        "symbol",
        "javascriptWithScope",
        "int",
        "timestamp",
        "long",
        "decimal",
        "minKey",
        "maxKey",
        "number",
    }
)


class _Missing:
    """Marks an absent key, distinct from a key whose value is null."""

    def __repr__(self) -> str:
        return "<missing>"


MISSING: Final = _Missing()


class MatchError(AssertionError):
    """Raised when an actual value does not match the expected one; `path` locates the difference."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path


#: Decoded Python type -> `$type` alias, checked in order after the special cases in `bson_type_name`.
_TYPE_TABLE: Final[tuple[tuple[type | tuple[type, ...], str], ...]] = (
    (float, "double"),
    (str, "string"),
    (Decimal128, "decimal"),
    ((DBRef, Mapping), "object"),
    ((list, tuple), "array"),
    ((Binary, bytes, uuid.UUID), "binData"),
    (ObjectId, "objectId"),
    (datetime.datetime, "date"),
    (Timestamp, "timestamp"),
    ((Regex, re.Pattern), "regex"),
    (MinKey, "minKey"),
    (MaxKey, "maxKey"),
)


def bson_type_name(value: Any) -> str:
    """Return the `$type` alias of a decoded BSON value (bool before int, Int64 before int: subclasses)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, Int64):
        return "long"
    if isinstance(value, int):
        return "int" if _INT32_MIN <= value <= _INT32_MAX else "long"
    if isinstance(value, Code):
        return "javascriptWithScope" if value.scope is not None else "javascript"
    for types, name in _TYPE_TABLE:
        if isinstance(value, types):
            return name
    raise TypeError(f"no BSON type name for {type(value).__name__}")


def _operator(expected: Any) -> tuple[str, Any] | None:
    """Return (name, argument) if `expected` is a special-operator document (its only key starts with $$)."""
    if isinstance(expected, Mapping) and len(expected) == 1:
        key = next(iter(expected))
        if isinstance(key, str) and key.startswith("$$"):
            return key, expected[key]
    return None


def _is_number(value: Any) -> bool:
    """Flexible numerics cover int32, int64 and double; Decimal128 is compared only with itself."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_type(spec: Any, actual: Any, path: str) -> None:
    names = [spec] if isinstance(spec, str) else list(spec)
    allowed: set[str] = set()
    for name in names:
        if name not in _KNOWN_TYPES:
            raise ValueError(f"{path}: unknown $$type {name!r} in test file")
        allowed |= _TYPE_ALIASES.get(name, {name})
    if actual is MISSING:
        raise MatchError(path, f"expected a value of type {names}, key is missing")
    actual_type = bson_type_name(actual)
    if actual_type not in allowed:
        raise MatchError(path, f"expected type {names}, got {actual_type} ({actual!r})")


def _match_operator(name: str, argument: Any, actual: Any, path: str) -> None:
    """Evaluate an operator used as a value (not keyed): `$$type` and `$$unsetOrMatches`."""
    if name == "$$type":
        _check_type(argument, actual, path)
    elif name == "$$unsetOrMatches":
        if actual is not MISSING:
            match(argument, actual, root=False, path=path)
    elif name == "$$exists":
        raise ValueError(f"{path}: $$exists is only valid as the value of a document key")
    else:
        raise ValueError(f"{path}: special operator {name} is not supported by this runner")


def _match_document(expected: Mapping[str, Any], actual: Any, root: bool, path: str) -> None:
    if not isinstance(actual, Mapping):
        raise MatchError(path, f"expected a document, got {bson_type_name(actual)} ({actual!r})")
    for key, value in expected.items():
        child = f"{path}.{key}"
        present = key in actual
        operator = _operator(value)
        if operator is not None and operator[0] == "$$unsetOrMatches":
            if not present:
                continue
            # Present: the inner value applies to this same key (it may itself be keyed, like $$exists).
            value = operator[1]
            operator = _operator(value)
        if operator is not None and operator[0] == "$$exists":
            if bool(operator[1]) != present:
                detail = "key should exist" if operator[1] else f"key should be absent, got {actual[key]!r}"
                raise MatchError(child, detail)
            continue
        if not present:
            raise MatchError(child, f"key is missing (expected {value!r})")
        match(value, actual[key], root=False, path=child)
    if not root:
        extra = [key for key in actual if key not in expected]
        if extra:
            raise MatchError(path, f"unexpected keys {extra} in a nested document")


def match(expected: Any, actual: Any, *, root: bool = True, path: str = "$") -> None:
    """Assert that `actual` matches `expected`; raise `MatchError` at the first difference.

    `root` is true for root-level documents (change events, commands), which may carry keys the test does
    not mention; nested documents must not.
    """
    operator = _operator(expected)
    if operator is not None:
        _match_operator(operator[0], operator[1], actual, path)
        return
    if isinstance(expected, Mapping):
        _match_document(expected, actual, root, path)
        return
    if isinstance(expected, Sequence) and not isinstance(expected, str | bytes):
        if not isinstance(actual, list | tuple):
            raise MatchError(path, f"expected an array, got {bson_type_name(actual)} ({actual!r})")
        if len(actual) != len(expected):
            raise MatchError(path, f"expected {len(expected)} elements, got {len(actual)}: {actual!r}")
        for index, (want, got) in enumerate(zip(expected, actual, strict=True)):
            match(want, got, root=False, path=f"{path}[{index}]")
        return
    _match_scalar(expected, actual, path)


def _match_scalar(expected: Any, actual: Any, path: str) -> None:
    if _is_number(expected) and _is_number(actual):
        # Flexible numerics: 1 (int32) matches 1 (int64) and 1.0 (double), never 1.5 nor true.
        if expected != actual:
            raise MatchError(path, f"expected {expected!r}, got {actual!r}")
        return
    if actual is MISSING:
        raise MatchError(path, f"expected {expected!r}, key is missing")
    expected_type, actual_type = bson_type_name(expected), bson_type_name(actual)
    if expected_type != actual_type:
        raise MatchError(path, f"expected {expected_type} {expected!r}, got {actual_type} {actual!r}")
    if expected != actual:
        raise MatchError(path, f"expected {expected!r}, got {actual!r}")
