"""Aggregation pipelines over in-memory documents: mongomock's stages plus the ones it lacks or gets wrong.

Used for the user pipeline of change streams (run over rendered events) and for ``aggregate`` on
collections. Stages mongomock lacks ($unset, $replaceWith, $redact) and expressions it lacks or
mis-evaluates ($getField, $mergeObjects, $type, $setField, ``{$not: [x]}``, ``$$REMOVE``, Timestamp
comparisons) are handled here before anything reaches mongomock.
"""

from __future__ import annotations

import copy
import datetime
import functools
from collections.abc import Callable
from typing import Any

from bson import Decimal128, MaxKey, MinKey, Timestamp
from bson.datetime_ms import DatetimeMS
from mongomock import aggregate as mm_aggregate
from mongomock import filtering as mm_filtering

from . import matching
from .bsonvalues import RawRegex, RawValue, Symbol, compare
from .compiled import Compiled, PerSpec, compile_expression, compiled_expression
from .errors import CommandError
from .expressions import REMOVE, truthy

Stage = Callable[[list[dict[str, Any]], Any, Any], list[dict[str, Any]]]

_REMOVED = REMOVE


def _set_path(doc: dict[str, Any], path: str, value: Any) -> None:
    """Set a dotted path in a shallow copy: embedded documents on the path are copied, never mutated
    (they are shared with the input document, e.g. an update's pre-image)."""
    parts = path.split(".")
    cur = doc
    for part in parts[:-1]:
        nxt = cur.get(part)
        nxt = dict(nxt) if isinstance(nxt, dict) else {}
        cur[part] = nxt
        cur = nxt
    cur[parts[-1]] = value


def _unset_path(doc: dict[str, Any], path: str) -> None:
    """Remove a dotted path, copying what it changes (see ``_set_path``)."""
    parts = path.split(".")
    cur: Any = doc
    for part in parts[:-1]:
        nxt = cur.get(part) if isinstance(cur, dict) else None
        if isinstance(nxt, dict):
            nxt = dict(nxt)
        elif isinstance(nxt, list):
            nxt = [dict(item) if isinstance(item, dict) else item for item in nxt]
        else:
            return
        cur[part] = nxt
        cur = nxt
    if isinstance(cur, dict):
        cur.pop(parts[-1], None)
    elif isinstance(cur, list):
        for item in cur:
            if isinstance(item, dict):
                item.pop(parts[-1], None)


def _flatten_spec(spec: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} in $addFields means field a.b (unless the value is an expression object)."""
    out: dict[str, Any] = {}
    for key, value in spec.items():
        path = prefix + key
        if isinstance(value, dict) and value and not any(k.startswith("$") for k in value):
            out.update(_flatten_spec(value, path + "."))
        else:
            out[path] = value
    return out


def _add_fields(docs: list[dict[str, Any]], spec: Any, _db: Any) -> list[dict[str, Any]]:
    if not isinstance(spec, dict):
        raise CommandError(40272, "$addFields specification stage must be an object")
    fields = _compiled_fields(spec)
    out = []
    for doc in docs:
        new = dict(doc)
        for path, expr in fields:
            value = expr(doc, {})
            if value is _REMOVED:
                _unset_path(new, path)
            else:
                _set_path(new, path, value)
        out.append(new)
    return out


def _compile_fields(spec: dict[str, Any]) -> list[tuple[str, Compiled]]:
    return [(path, compile_expression(expr)) for path, expr in _flatten_spec(spec).items()]


_compiled_fields = PerSpec(_compile_fields)
_compiled_projection = PerSpec(lambda spec: dict(_compile_fields(spec)))


def _unset(docs: list[dict[str, Any]], spec: Any, _db: Any) -> list[dict[str, Any]]:
    paths = [spec] if isinstance(spec, str) else list(spec)
    out = []
    for doc in docs:
        new = copy.deepcopy(doc)
        for path in paths:
            _unset_path(new, path)
        out.append(new)
    return out


def _replace_with(docs: list[dict[str, Any]], spec: Any, _db: Any) -> list[dict[str, Any]]:
    out = []
    expr = compiled_expression(spec)
    for doc in docs:
        value = expr(doc, {})
        if not isinstance(value, dict):
            raise CommandError(
                40228,
                f"'replacement document' must evaluate to an object, but resulting value was: {value!r}",
            )
        out.append(value)
    return out


def _replace_root(docs: list[dict[str, Any]], spec: Any, db: Any) -> list[dict[str, Any]]:
    if not isinstance(spec, dict) or "newRoot" not in spec:
        raise CommandError(40231, "no newRoot specified for the $replaceRoot stage")
    return _replace_with(docs, spec["newRoot"], db)


def _redact_value(value: Any, expr: Compiled) -> Any:
    if isinstance(value, dict):
        return _redact_doc(value, expr)
    if isinstance(value, list):
        items = [_redact_value(item, expr) for item in value]
        return [item for item in items if item is not _REMOVED]
    return value


def _redact_doc(doc: dict[str, Any], expr: Compiled) -> Any:
    decision = expr(doc, {})
    if decision == "$$KEEP":
        return doc
    if decision == "$$PRUNE":
        return _REMOVED
    if decision != "$$DESCEND":
        raise CommandError(
            17053,
            f"$redact's expression should not return anything aside from the variables "
            f"$$KEEP, $$DESCEND, and $$PRUNE, but returned {decision!r}",
        )
    out = {}
    for key, value in doc.items():
        new = _redact_value(value, expr) if isinstance(value, dict | list) else value
        if new is not _REMOVED:
            out[key] = new
    return out


def _redact(docs: list[dict[str, Any]], spec: Any, _db: Any) -> list[dict[str, Any]]:
    out = []
    expr = compiled_expression(spec)
    for doc in docs:
        new = _redact_doc(doc, expr)
        if new is not _REMOVED:
            out.append(new)
    return out


def _project(docs: list[dict[str, Any]], spec: Any, db: Any) -> list[dict[str, Any]]:
    if not isinstance(spec, dict) or not spec:
        raise CommandError(51272, "$project specification must be a non-empty object")
    fields = _flatten_spec(spec)
    inclusion = [p for p, v in fields.items() if not _is_exclusion(v)]
    exclusion = [p for p, v in fields.items() if _is_exclusion(v)]
    if inclusion and any(p != "_id" for p in exclusion):
        raise CommandError(31254, "Cannot do exclusion on field in inclusion projection")
    out = []
    compiled = _compiled_projection(spec) if inclusion else {}
    for doc in docs:
        if not inclusion:
            new = copy.deepcopy(doc)
            for path in exclusion:
                _unset_path(new, path)
            out.append(new)
            continue
        new = {}
        if "_id" not in fields and "_id" in doc:
            new["_id"] = doc["_id"]
        for path in inclusion:
            expr = fields[path]
            if expr is True or (isinstance(expr, int | float) and not isinstance(expr, bool) and expr):
                value = _get_path(doc, path)
                if value is not _MISSING:
                    _set_path(new, path, copy.deepcopy(value))
            else:
                value = compiled[path](doc, {})
                if value is not _REMOVED:
                    _set_path(new, path, value)
        if "_id" in exclusion:
            new.pop("_id", None)
        out.append(new)
    return out


def _is_exclusion(value: Any) -> bool:
    return value is False or (isinstance(value, int | float) and not isinstance(value, bool) and value == 0)


_MISSING = object()


def _get_path(doc: Any, path: str) -> Any:
    cur = doc
    for part in path.split("."):
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        else:
            return _MISSING
    return cur


def _match(docs: list[dict[str, Any]], spec: Any, _db: Any) -> list[dict[str, Any]]:
    if not isinstance(spec, dict):
        raise CommandError(15959, "the match filter must be an expression in an object")
    if "$expr" in spec and len(spec) == 1:
        expr = compiled_expression(spec["$expr"])
        return [doc for doc in docs if _truthy(expr(doc, {}))]
    simple = _compiled_filter_cached(spec)
    if simple is None:
        return _full_match(docs, spec)
    out = []
    for doc in docs:
        decided = simple(doc)
        if decided is None:  # an array on a path: MongoDB's array rules, mongomock's job
            decided = bool(_full_match([doc], spec))
        if decided:
            out.append(doc)
    return out


def _full_match(docs: list[dict[str, Any]], spec: dict[str, Any]) -> list[dict[str, Any]]:
    """mongomock's filter over `docs`; for values it cannot order (Timestamps, decimals, out-of-range
    dates, MinKey/MaxKey, deprecated types) the emulator's own matcher, in MongoDB's order."""
    if not _contains_timestamp_cached(spec):
        try:
            return [doc for doc in docs if mm_filtering.filter_applies(spec, doc)]
        except NotImplementedError:
            pass  # a value mongomock cannot order met a comparison
    try:
        return [doc for doc in docs if matching.matches(spec, doc)]
    except matching.Unsupported:
        pass  # an operator the matcher lacks: mongomock on approximated values
    filt = _encode_timestamps(spec)
    try:
        return [doc for doc in docs if mm_filtering.filter_applies(filt, _encode_timestamps(doc))]
    except (NotImplementedError, TypeError) as exc:
        # A value mongomock cannot order at all (a Decimal128 NaN, a deprecated type): an error reply,
        # never a failed connection.
        raise CommandError(2, f"the emulator cannot evaluate this filter on these values: {exc}") from exc


# -- a fast path for the filters change streams run on every event ------------------------------------
# Equality, $eq, $ne, $in and $nin on string values of dotted paths (the connector's own `ns.coll` $nin,
# a user's `operationType` or `ns.coll` filter) are decided here; mongomock walks a filter per document
# at about 5 µs. A path that meets an array is left to mongomock, which implements MongoDB's array rules.
_SimpleTest = tuple[list[str], str, Any]


_Decide = Callable[[dict[str, Any]], bool | None]


def _compiled_filter(spec: dict[str, Any]) -> _Decide | None:
    """The filter as one function deciding True, False or None (an array on a path), or None when it
    uses anything else. Clauses are decided in the filter's order and short-circuit as mongomock's do
    (`$and`/`$or` lists in order, keys in order), so an `$expr` that raises raises for the same
    documents; a filter holding values mongomock cannot order keeps the full path."""
    if _contains_timestamp(spec):
        return None
    clauses: list[_Decide] = []
    for key, cond in spec.items():
        if key in ("$and", "$or"):
            if not (isinstance(cond, list) and cond and all(isinstance(part, dict) for part in cond)):
                return None
            parts = [_compiled_filter(part) for part in cond]
            if any(part is None for part in parts):
                return None
            decided = [part for part in parts if part is not None]
            if len(decided) == 1:
                clauses.append(decided[0])
            else:
                clauses.append(functools.partial(_any if key == "$or" else _all, decided))
        elif key == "$expr":
            clauses.append(functools.partial(_expr_holds, compile_expression(cond)))
        else:
            tests = _simple_tests({key: cond})
            if tests is None:
                return None
            clauses.append(functools.partial(_simple_match, tests))
    return clauses[0] if len(clauses) == 1 else functools.partial(_all, clauses)


def _all(clauses: list[_Decide], doc: dict[str, Any]) -> bool | None:
    for clause in clauses:
        decided = clause(doc)
        if decided is None:
            return None
        if not decided:
            return False
    return True


def _any(clauses: list[_Decide], doc: dict[str, Any]) -> bool | None:
    for clause in clauses:
        decided = clause(doc)
        if decided is None:
            return None
        if decided:
            return True
    return False


def _expr_holds(expr: Compiled, doc: dict[str, Any]) -> bool:
    """`$expr` in a filter, as mongomock asks `expressions._query_expr`."""
    return truthy(expr(doc, {}))


def _simple_tests(spec: dict[str, Any]) -> list[_SimpleTest] | None:
    tests: list[_SimpleTest] = []
    for path, cond in spec.items():
        parts = path.split(".")
        if path.startswith("$") or any(not part or part.isdigit() for part in parts):
            return None  # an operator, or a path that indexes an array
        if isinstance(cond, str):
            tests.append((parts, "$eq", cond))
            continue
        if not (isinstance(cond, dict) and len(cond) == 1):
            return None
        ((op, arg),) = cond.items()
        if op in ("$eq", "$ne") and isinstance(arg, str):
            tests.append((parts, op, arg))
        elif op in ("$in", "$nin") and isinstance(arg, list) and all(isinstance(a, str) for a in arg):
            tests.append((parts, op, frozenset(arg)))
        else:
            return None
    return tests


def _simple_match(tests: list[_SimpleTest], doc: dict[str, Any]) -> bool | None:
    """True or False, or None when a path meets an array."""
    for parts, op, arg in tests:
        value: Any = doc
        for part in parts:
            if isinstance(value, dict):
                value = value.get(part, _MISSING)
            elif isinstance(value, list):
                return None
            else:
                value = _MISSING  # a scalar (or nothing) on the way: the field is missing
                break
        if isinstance(value, list):
            return None
        is_str = type(value) is str
        if op == "$eq":
            ok = is_str and value == arg
        elif op == "$ne":
            ok = not (is_str and value == arg)
        elif op == "$in":
            ok = is_str and value in arg
        else:
            ok = not (is_str and value in arg)
        if not ok:
            return False
    return True


def _contains_timestamp(value: Any) -> bool:
    if isinstance(value, _UNORDERED):
        return True
    if isinstance(value, dict):
        return any(_contains_timestamp(v) for v in value.values())
    if isinstance(value, list):
        return any(_contains_timestamp(v) for v in value)
    return False


_contains_timestamp_cached = PerSpec(_contains_timestamp)
_compiled_filter_cached = PerSpec(_compiled_filter)


def _truthy(value: Any) -> bool:
    return value not in (None, False, 0, _REMOVED) and value is not _MISSING


class _TsKey(int):
    """A Timestamp as an ordered integer so mongomock's comparisons work (it raises on Timestamps)."""


_UNORDERED = Timestamp | DatetimeMS | Decimal128 | RawValue | MinKey | MaxKey


def _encode_timestamps(value: Any) -> Any:
    """Values mongomock cannot order, as values it can (approximately: it is the fallback): Timestamps as
    ordered integers, out-of-range dates clamped, decimals as floats, deprecated types as their text."""
    if isinstance(value, _UNORDERED):
        return _orderable(value)
    if isinstance(value, dict):
        if not any(isinstance(v, _UNORDERED | dict | list) for v in value.values()):
            return value
        return {k: _encode_timestamps(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_encode_timestamps(v) for v in value]
    return value


def _orderable(value: Any) -> Any:
    if isinstance(value, Timestamp):
        return _TsKey((value.time << 32) | value.inc)
    if isinstance(value, DatetimeMS):
        return datetime.datetime.max if int(value) > 0 else datetime.datetime.min
    if isinstance(value, Decimal128):
        number = value.to_decimal()
        return float("nan") if number.is_nan() else float(number)
    if isinstance(value, Symbol):
        return value.value
    if isinstance(value, RawRegex):
        return value.pattern
    if isinstance(value, MinKey | MaxKey):
        return float("-inf") if isinstance(value, MinKey) else float("inf")
    return None  # undefined, DBPointer, raw binary: no order mongomock knows


def _sort_value(doc: dict[str, Any], path: str) -> Any:
    value = _get_path(doc, path)
    return None if value is _MISSING else value


def _sort(docs: list[dict[str, Any]], spec: Any, _db: Any) -> list[dict[str, Any]]:
    """A stable multi-key sort in BSON order, for every BSON type (mongomock's cannot order Timestamps,
    decimals, out-of-range dates or MinKey/MaxKey)."""
    if not isinstance(spec, dict) or not spec:
        raise CommandError(15976, "$sort stage must have at least one sort key")
    keys = list(spec.items())
    for _, direction in keys:
        if not isinstance(direction, int) or direction not in (1, -1):
            raise CommandError(15975, "$sort key ordering must be 1 (for ascending) or -1 (for descending)")

    def order(a: dict[str, Any], b: dict[str, Any]) -> int:
        for path, direction in keys:
            result = compare(_sort_value(a, path), _sort_value(b, path))
            if result:
                return result * direction
        return 0

    return sorted(docs, key=functools.cmp_to_key(order))


STAGES: dict[str, Stage] = {
    "$addFields": _add_fields,
    "$set": _add_fields,
    "$unset": _unset,
    "$replaceWith": _replace_with,
    "$replaceRoot": _replace_root,
    "$redact": _redact,
    "$project": _project,
    "$match": _match,
    "$sort": _sort,
}


def run_pipeline(
    docs: list[dict[str, Any]], pipeline: list[dict[str, Any]], database: Any = None
) -> list[dict]:
    """Run ``pipeline`` over ``docs`` (not modified in place)."""
    for stage in pipeline:
        if not isinstance(stage, dict) or len(stage) != 1:
            raise CommandError(40323, "A pipeline stage specification object must contain exactly one field.")
        ((name, spec),) = stage.items()
        handler = STAGES.get(name)
        if handler is not None:
            docs = handler(docs, spec, database)
            continue
        if name not in mm_aggregate._PIPELINE_HANDLERS:
            raise CommandError(40324, f"Unrecognized pipeline stage name: '{name}'")
        mm_handler = mm_aggregate._PIPELINE_HANDLERS[name]
        if mm_handler is None:
            raise CommandError(2, f"stage {name} is not supported by the emulator")
        try:
            docs = list(mm_handler(docs, database, spec))
        except NotImplementedError as exc:
            raise CommandError(2, f"not supported by the emulator: {exc}") from exc
    return docs


__all__ = ["STAGES", "run_pipeline"]
