"""Aggregation expression evaluation: the operators mongomock lacks or gets wrong, then mongomock.

Missing fields evaluate to ``REMOVE`` (the same as ``$$REMOVE``): a computed field that evaluates to it
is not written, as on the server.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime
import operator
import re
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from bson import Binary, Code, Decimal128, Int64, MaxKey, MinKey, ObjectId, Regex, Timestamp
from bson.datetime_ms import DatetimeMS
from mongomock import aggregate as mm_aggregate
from mongomock import filtering as mm_filtering

from .bsonvalues import UNDEFINED, RawValue, bson_size, compare
from .errors import CommandError
from .hashing import hash64
from .numeric_ops import integer_sum, op_abs, op_mod, op_to_long


class _Remove:
    __slots__ = ()

    def __repr__(self) -> str:
        return "$$REMOVE"


REMOVE: Any = _Remove()

_SYSTEM_VARIABLES = {"$$KEEP": "$$KEEP", "$$PRUNE": "$$PRUNE", "$$DESCEND": "$$DESCEND"}


def _lookup(value: Any, parts: list[str]) -> Any:
    cur = value
    for n, part in enumerate(parts):
        if isinstance(cur, dict):
            if part not in cur:
                return REMOVE
            cur = cur[part]
        elif isinstance(cur, list):
            # Field paths through arrays collect the field from each element.
            rest = parts[n:]
            items = [_lookup(item, rest) for item in cur if isinstance(item, dict)]
            return [item for item in items if item is not REMOVE]
        else:
            return REMOVE
    return cur


def _variable(name: str, doc: Any, variables: dict[str, Any]) -> Any:
    if name in _SYSTEM_VARIABLES:
        return _SYSTEM_VARIABLES[name]
    head, _, rest = name[2:].partition(".")
    if head in ("ROOT", "CURRENT"):
        base = doc
    elif head == "REMOVE":
        return REMOVE
    elif head == "NOW" and head not in variables:
        return now()
    elif head in variables:
        base = variables[head]
    else:
        raise CommandError(17276, f"Use of undefined variable: {head}")
    return _lookup(base, rest.split(".")) if rest else base


# One reading of the clock per command: mongod's `$$NOW` is the same for the whole operation, so
# `{$subtract: [{$add: ["$$NOW", 1500]}, "$$NOW"]}` is exactly 1500 however long the command runs.
_command_now: contextvars.ContextVar[list[datetime.datetime]] = contextvars.ContextVar("command_now")


@contextlib.contextmanager
def one_clock_per_command() -> Iterator[None]:
    """Within this block every `$$NOW` is the first one read (taken lazily, so a command that never
    asks never reads the clock)."""
    token = _command_now.set([])
    try:
        yield
    finally:
        _command_now.reset(token)


def now() -> datetime.datetime:
    """`$$NOW`: the server's clock as a BSON date (millisecond precision, naive UTC like stored dates)."""
    reading = _command_now.get(None)
    if reading:
        return reading[0]
    moment = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    moment = moment.replace(microsecond=moment.microsecond // 1000 * 1000)
    if reading is not None:
        reading.append(moment)
    return moment


def _null(value: Any) -> Any:
    return None if value is REMOVE else value


def truthy(value: Any) -> bool:
    return value not in (None, False, 0) and value is not REMOVE


def _comparable(value: Any) -> Any:
    # A missing value compares as undefined: below null (`{$eq: ["$missing", null]}` is false).
    return UNDEFINED if value is REMOVE else value


def _compare(op: Callable[[Any, Any], bool]) -> Callable[[list[Any]], Any]:
    """Comparison expressions: MongoDB's order of all BSON values (bsonvalues.compare)."""

    def run(args: list[Any]) -> Any:
        if len(args) != 2:
            raise CommandError(16020, "Comparison expressions take exactly 2 arguments")
        return op(compare(_comparable(args[0]), _comparable(args[1])), 0)

    return run


def _cmp3(args: list[Any]) -> int:
    if len(args) != 2:
        raise CommandError(16020, "Expression $cmp takes exactly 2 arguments.")
    return compare(_comparable(args[0]), _comparable(args[1]))


_TYPE_NAMES: list[tuple[type | tuple[type, ...], str]] = [
    (bool, "bool"),
    (Int64, "long"),
    (int, "int"),
    (float, "double"),
    (Decimal128, "decimal"),
    (RawValue, "binData"),  # replaced by the wrapper's own type_name below
    (str, "string"),
    (dict, "object"),
    ((list, tuple), "array"),
    ((bytes, Binary, uuid.UUID), "binData"),
    (ObjectId, "objectId"),
    ((datetime.datetime, DatetimeMS), "date"),
    ((re.Pattern, Regex), "regex"),
    (Timestamp, "timestamp"),
    (MinKey, "minKey"),
    (MaxKey, "maxKey"),
]


#: Exact types whose name needs no walk of _TYPE_NAMES (bool before int, Int64 before int there).
_EXACT_TYPE_NAMES: dict[type, str] = {
    str: "string",
    bool: "bool",
    Int64: "long",
    float: "double",
    dict: "object",
    list: "array",
    type(None): "null",
}


def bson_type_name(value: Any) -> str:
    name = _EXACT_TYPE_NAMES.get(type(value))
    if name is not None:
        return name
    if value is REMOVE:
        return "missing"
    if value is None:
        return "null"
    if isinstance(value, int) and not isinstance(value, bool | Int64):
        return "int" if -(2**31) <= value < 2**31 else "long"
    if isinstance(value, RawValue):
        return value.type_name
    if isinstance(value, Code):
        return "javascript" if value.scope is None else "javascriptWithScope"
    for kind, name in _TYPE_NAMES:
        if isinstance(value, kind):
            return name
    return "object"


def _arg_list(spec: Any) -> list[Any]:
    return spec if isinstance(spec, list) else [spec]


def _op_get_field(spec: Any, doc: Any, variables: dict[str, Any]) -> Any:
    if isinstance(spec, dict):
        field = evaluate(spec.get("field"), doc, variables)
        source = evaluate(spec.get("input", "$$CURRENT"), doc, variables)
    else:
        field, source = evaluate(spec, doc, variables), doc
    if not isinstance(field, str):
        raise CommandError(5654602, "$getField requires 'field' to evaluate to type String")
    if not isinstance(source, dict):
        return REMOVE if source is REMOVE or source is None else None
    return source.get(field, REMOVE)


def _op_set_field(spec: Any, doc: Any, variables: dict[str, Any], unset: bool = False) -> Any:
    field = evaluate(spec.get("field"), doc, variables)
    source = evaluate(spec.get("input"), doc, variables)
    if source is None or source is REMOVE:
        return None
    if not isinstance(source, dict):
        raise CommandError(4161105, "$setField requires 'input' to evaluate to type Object")
    out = dict(source)
    value = REMOVE if unset else evaluate(spec.get("value"), doc, variables)
    if value is REMOVE:
        out.pop(field, None)
    else:
        out[field] = value
    return out


def _op_merge_objects(spec: Any, doc: Any, variables: dict[str, Any]) -> Any:
    out: dict[str, Any] = {}
    for item in _arg_list(spec):
        value = evaluate(item, doc, variables)
        if value is None or value is REMOVE:
            continue
        if not isinstance(value, dict):
            raise CommandError(
                40400, f"$mergeObjects requires object inputs, but input {value!r} is of another type"
            )
        out.update(value)
    return out


def _op_cond(spec: Any, doc: Any, variables: dict[str, Any]) -> Any:
    if isinstance(spec, list):
        if_, then, else_ = spec
    else:
        if_, then, else_ = spec.get("if"), spec.get("then"), spec.get("else")
    return evaluate(then if truthy(evaluate(if_, doc, variables)) else else_, doc, variables)


def _op_if_null(spec: Any, doc: Any, variables: dict[str, Any]) -> Any:
    return if_null_values([evaluate(item, doc, variables) for item in spec])


def if_null_values(values: list[Any]) -> Any:
    """`$ifNull` of its evaluated arguments."""
    for value in values[:-1]:
        if value is not None and value is not REMOVE and value is not UNDEFINED:
            return value
    return values[-1]  # all nullish: the last value as it is (missing stays missing, as in mongod)


def _op_switch(spec: Any, doc: Any, variables: dict[str, Any]) -> Any:
    for branch in spec.get("branches", []):
        if truthy(evaluate(branch.get("case"), doc, variables)):
            return evaluate(branch.get("then"), doc, variables)
    if "default" not in spec:
        raise CommandError(
            40066, "$switch could not find a matching branch for an input, and no default was specified."
        )
    return evaluate(spec["default"], doc, variables)


def _op_let(spec: Any, doc: Any, variables: dict[str, Any]) -> Any:
    scope = dict(variables)
    for name, expr in spec.get("vars", {}).items():
        scope[name] = evaluate(expr, doc, variables)
    return evaluate(spec.get("in"), doc, scope)


def _op_and(spec: Any, doc: Any, variables: dict[str, Any]) -> Any:
    return all(truthy(evaluate(item, doc, variables)) for item in _arg_list(spec))


def _op_or(spec: Any, doc: Any, variables: dict[str, Any]) -> Any:
    return any(truthy(evaluate(item, doc, variables)) for item in _arg_list(spec))


def _op_not(spec: Any, doc: Any, variables: dict[str, Any]) -> Any:
    args = _arg_list(spec)
    if len(args) != 1:
        raise CommandError(16020, "Expression $not takes exactly 1 arguments.")
    return not truthy(evaluate(args[0], doc, variables))


def _op_in(spec: Any, doc: Any, variables: dict[str, Any]) -> Any:
    needle, haystack = (evaluate(item, doc, variables) for item in spec)
    return in_values(needle, haystack)


def in_values(needle: Any, haystack: Any) -> bool:
    """`$in` of its evaluated arguments."""
    if not isinstance(haystack, list):
        raise CommandError(40081, "$in requires an array as a second argument")
    return any(_cmp3([needle, item]) == 0 for item in haystack)


def _op_concat(spec: Any, doc: Any, variables: dict[str, Any]) -> Any:
    return concat_values([evaluate(item, doc, variables) for item in _arg_list(spec)])


def concat_values(parts: list[Any]) -> Any:
    """`$concat` of its evaluated arguments."""
    if any(p is None or p is REMOVE for p in parts):
        return None
    if not all(isinstance(p, str) for p in parts):
        raise CommandError(16702, "$concat only supports strings")
    return "".join(parts)


def _op_to_string(spec: Any, doc: Any, variables: dict[str, Any]) -> Any:
    return to_string_value(evaluate(spec[0] if isinstance(spec, list) else spec, doc, variables))


def to_string_value(value: Any) -> Any:
    """`$toString` of its evaluated argument."""
    if value is None or value is REMOVE:
        return None
    if isinstance(value, datetime.datetime):
        return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _op_type(spec: Any, doc: Any, variables: dict[str, Any]) -> Any:
    args = _arg_list(spec)
    return bson_type_name(evaluate(args[0], doc, variables))


def _op_bson_size(spec: Any, doc: Any, variables: dict[str, Any]) -> Any:
    """`$bsonSize`: the BSON size in bytes of a document (an int); null for null or missing
    (ExpressionBsonSize)."""
    args = _arg_list(spec)
    if len(args) != 1:
        raise CommandError(
            16020, f"Expression $bsonSize takes exactly 1 arguments. {len(args)} were passed in."
        )
    value = evaluate(args[0], doc, variables)
    if value is None or value is REMOVE or value is UNDEFINED:
        return None
    if not isinstance(value, dict):
        raise CommandError(31393, f"$bsonSize requires a document input, found: {bson_type_name(value)}")
    return bson_size(value)


def _op_add(spec: Any, doc: Any, variables: dict[str, Any]) -> Any:
    """`$add` of numbers and at most one date (milliseconds are added to the date), as mongod does."""
    return add_values([evaluate(item, doc, variables) for item in _arg_list(spec)], spec, doc, variables)


def add_values(values: list[Any], spec: Any, doc: Any, variables: dict[str, Any]) -> Any:
    """`$add` of its evaluated arguments (`spec`, `doc` and `variables` for the decimal case, which
    mongomock evaluates)."""
    if all(type(v) is int or type(v) is Int64 for v in values):
        return integer_sum(values)  # what the checks below come to for ints and longs
    if any(v is None or v is REMOVE for v in values):
        return None
    dates = [v for v in values if isinstance(v, datetime.datetime)]
    numbers = [v for v in values if not isinstance(v, datetime.datetime)]
    if len(dates) > 1:
        raise CommandError(16612, "only one date allowed in an $add expression")
    if not all(isinstance(v, int | float | Int64 | Decimal128) and not isinstance(v, bool) for v in numbers):
        bad = next(
            v for v in numbers if not isinstance(v, int | float | Int64 | Decimal128) or isinstance(v, bool)
        )
        raise CommandError(16554, f"$add only supports numeric or date types, not {bson_type_name(bad)}")
    if any(isinstance(v, Decimal128) for v in numbers):
        return _op_fallback("$add", spec, doc, variables)
    total = sum(numbers) if any(isinstance(v, float) for v in numbers) else integer_sum(numbers)
    if dates:
        return dates[0] + datetime.timedelta(milliseconds=round(total))
    return total


def _op_to_hashed_index_key(spec: Any, doc: Any, variables: dict[str, Any]) -> Any:
    """`$toHashedIndexKey`: the hashed-index hash of any value as a long; missing hashes as null."""
    args = _arg_list(spec)
    if len(args) != 1:
        raise CommandError(
            16020, f"Expression $toHashedIndexKey takes exactly 1 arguments. {len(args)} were passed in."
        )
    return hash64(_null(evaluate(args[0], doc, variables)))


def _numeric(op: Callable[[list[Any], Any], Any]) -> Callable[[Any, Any, dict[str, Any]], Any]:
    """An operator of numeric_ops, given its evaluated arguments (missing as null)."""

    def run(spec: Any, doc: Any, variables: dict[str, Any]) -> Any:
        return op([_null(evaluate(item, doc, variables)) for item in _arg_list(spec)], bson_type_name)

    return run


_SPECIAL: dict[str, Callable[[Any, Any, dict[str, Any]], Any]] = {
    "$getField": _op_get_field,
    "$setField": _op_set_field,
    "$unsetField": lambda spec, doc, v: _op_set_field(spec, doc, v, unset=True),
    "$mergeObjects": _op_merge_objects,
    "$cond": _op_cond,
    "$ifNull": _op_if_null,
    "$switch": _op_switch,
    "$let": _op_let,
    "$and": _op_and,
    "$or": _op_or,
    "$not": _op_not,
    "$in": _op_in,
    "$concat": _op_concat,
    "$toString": _op_to_string,
    "$type": _op_type,
    "$literal": lambda spec, doc, v: spec,
    "$add": _op_add,
    "$bsonSize": _op_bson_size,
    "$toHashedIndexKey": _op_to_hashed_index_key,
    "$abs": _numeric(op_abs),
    "$mod": _numeric(op_mod),
    "$toLong": _numeric(op_to_long),
}

_COMPARISONS: dict[str, Callable[[list[Any]], Any]] = {
    "$eq": _compare(operator.eq),
    "$ne": _compare(operator.ne),
    "$gt": _compare(operator.gt),
    "$gte": _compare(operator.ge),
    "$lt": _compare(operator.lt),
    "$lte": _compare(operator.le),
    "$cmp": _cmp3,
}


def _to_mongomock(value: Any) -> Any:
    """Literalise already-evaluated arguments so mongomock does not re-interpret them."""
    if isinstance(value, str) and value.startswith("$"):
        return {"$literal": value}
    if value is REMOVE:
        return "$__emulator_missing_field__"
    if isinstance(value, dict):
        return {"$literal": value}
    if isinstance(value, list):
        return {"$literal": value}
    return value


def _op_fallback(name: str, spec: Any, doc: Any, variables: dict[str, Any]) -> Any:
    args = spec if isinstance(spec, list) else [spec]
    if isinstance(spec, dict):
        expr: Any = {name: spec}
        context = doc
    else:
        evaluated = [_to_mongomock(evaluate(item, doc, variables)) for item in args]
        expr = {name: evaluated if isinstance(spec, list) else evaluated[0]}
        context = {}
    try:
        return mm_aggregate._parse_expression(expr, context, ignore_missing_keys=True)
    except KeyError:
        return REMOVE
    except NotImplementedError as exc:
        raise CommandError(168, f"expression {name} is not supported by the emulator: {exc}") from exc
    except CommandError:
        raise
    except Exception as exc:
        raise CommandError(2, f"{name}: {exc}") from exc


def evaluate(expr: Any, doc: Any, variables: dict[str, Any] | None = None) -> Any:
    """Evaluate an aggregation expression against ``doc``."""
    variables = variables if variables is not None else {}
    if isinstance(expr, str):
        if expr.startswith("$$"):
            return _variable(expr, doc, variables)
        if expr.startswith("$"):
            return _lookup(doc, expr[1:].split("."))
        return expr
    if isinstance(expr, dict):
        if len(expr) == 1:
            ((name, spec),) = expr.items()
            if name.startswith("$"):
                special = _SPECIAL.get(name)
                if special is not None:
                    return special(spec, doc, variables)
                comparison = _COMPARISONS.get(name)
                if comparison is not None:
                    return comparison([evaluate(item, doc, variables) for item in _arg_list(spec)])
                return _op_fallback(name, spec, doc, variables)
        out = {}
        for key, value in expr.items():
            result = evaluate(value, doc, variables)
            if result is not REMOVE:
                out[key] = result
        return out
    if isinstance(expr, list):
        return [_null(evaluate(item, doc, variables)) for item in expr]
    return expr


def _query_expr(expression: Any, doc: Any, ignore_missing_keys: bool = False) -> bool:
    """`$expr` inside a query filter (find, update, findAndModify, delete), evaluated like any other
    expression here: mongomock's own evaluator lacks `$type`, `$$NOW` and the rest of this module."""
    return truthy(evaluate(expression, doc))


# mongomock's filter calls the one registered expression evaluator for `$expr` (its aggregate module
# registers its own on import, which happened above).
mm_filtering.register_parse_expression(_query_expr)
