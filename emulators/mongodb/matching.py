"""Query filters over values mongomock cannot order: Timestamps, decimals, out-of-range dates, MinKey and
MaxKey, the deprecated types (bsonvalues). mongomock raises on them; this matcher decides the common
operators with MongoDB's comparison order (bsonvalues.compare) and type bracketing, and raises
``Unsupported`` for any other operator (the caller then falls back to an approximation).
"""

from __future__ import annotations

from typing import Any

from bson import MaxKey, MinKey

from .bsonvalues import Undefined, canonical_type, compare

__all__ = ["Unsupported", "matches"]

_MISSING = object()


class Unsupported(Exception):
    """The filter uses an operator this matcher does not implement."""


def matches(spec: dict[str, Any], doc: Any) -> bool:
    for key, cond in spec.items():
        if key == "$and":
            if not all(matches(part, doc) for part in cond):
                return False
        elif key == "$or":
            if not any(matches(part, doc) for part in cond):
                return False
        elif key == "$nor":
            if any(matches(part, doc) for part in cond):
                return False
        elif key.startswith("$"):
            raise Unsupported(key)
        elif not _field_matches(_values_at(doc, key.split(".")), cond):
            return False
    return True


def _values_at(doc: Any, parts: list[str]) -> list[Any]:
    """The values a path reaches (through arrays, as MongoDB does); [_MISSING] if none."""
    current: list[Any] = [doc]
    for part in parts:
        found: list[Any] = []
        for value in current:
            if isinstance(value, dict):
                if part in value:
                    found.append(value[part])
            elif isinstance(value, list):
                if part.isdigit() and int(part) < len(value):
                    found.append(value[int(part)])
                found.extend(item[part] for item in value if isinstance(item, dict) and part in item)
        current = found
    if not current:
        return [_MISSING]
    out: list[Any] = []
    for value in current:
        out.append(value)
        if isinstance(value, list):
            out.extend(value)  # an array matches when one of its elements does
    return out


def _is_operator_doc(cond: Any) -> bool:
    return isinstance(cond, dict) and bool(cond) and all(k.startswith("$") for k in cond)


def _field_matches(values: list[Any], cond: Any) -> bool:
    if not _is_operator_doc(cond):
        return _equal_any(values, cond)
    return all(_operator(op, arg, values) for op, arg in cond.items())


def _equal_any(values: list[Any], target: Any) -> bool:
    if target is None:  # null matches missing and undefined too
        return any(value is _MISSING or value is None or isinstance(value, Undefined) for value in values)
    return any(value is not _MISSING and compare(value, target) == 0 for value in values)


def _ordered(value: Any, target: Any, accept: Any) -> bool:
    if value is _MISSING:
        return False
    # MinKey and MaxKey compare with every type; otherwise only values of the target's type compare.
    if not isinstance(target, MinKey | MaxKey) and canonical_type(value) != canonical_type(target):
        return False
    return bool(accept(compare(value, target)))


_ORDER_OPERATORS = {
    "$gt": lambda c: c > 0,
    "$gte": lambda c: c >= 0,
    "$lt": lambda c: c < 0,
    "$lte": lambda c: c <= 0,
}


def _operator(op: str, arg: Any, values: list[Any]) -> bool:
    accept = _ORDER_OPERATORS.get(op)
    if accept is not None:
        return any(_ordered(value, arg, accept) for value in values)
    if op == "$eq":
        return _equal_any(values, arg)
    if op == "$ne":
        return not _equal_any(values, arg)
    if op == "$in":
        return any(_equal_any(values, item) for item in arg)
    if op == "$nin":
        return not any(_equal_any(values, item) for item in arg)
    if op == "$exists":
        return (values != [_MISSING]) == bool(arg)
    raise Unsupported(op)
