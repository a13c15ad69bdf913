"""Aggregation expressions compiled once into Python closures, then called per document.

`expressions.evaluate` walks the expression document for every event: a change stream's stage costs
that walk per event and per stream (a partition filter about 20 µs). Here the walk happens once per
stage; the closure `f(doc, variables)` returns exactly what `evaluate(expr, doc, variables)` returns,
raising the same errors at the same point. The common operators are compiled; any other operator, or
an operator whose arguments have a shape the interpreter would reject or treat specially, is compiled
into a call of the interpreter for that sub-expression, so its behaviour is the interpreter's own.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from .bsonvalues import compare
from .expressions import (
    _COMPARISONS,
    REMOVE,
    _comparable,
    _lookup,
    _null,
    _variable,
    add_values,
    bson_type_name,
    concat_values,
    evaluate,
    if_null_values,
    in_values,
    to_string_value,
    truthy,
)
from .hashing import hash64
from .numeric_ops import INTEGERS, add_integers, mod_integers, op_abs, op_mod, op_to_long

__all__ = ["Compiled", "PerSpec", "compile_expression", "compiled_expression"]

_T = TypeVar("_T")

#: A compiled expression: `f(doc, variables)`.
Compiled = Callable[[Any, dict[str, Any]], Any]
_Builder = Callable[[Any], Compiled | None]


class PerSpec(Generic[_T]):
    """An answer computed once per spec object: a stream's stages are the same objects for every event.
    Entries hold the spec itself, so an id is never reused while cached."""

    def __init__(self, compute: Callable[[Any], _T], size: int = 1024) -> None:
        self._compute = compute
        self._size = size
        self._cache: dict[int, tuple[Any, _T]] = {}

    def __call__(self, spec: Any) -> _T:
        hit = self._cache.get(id(spec))
        if hit is not None and hit[0] is spec:
            return hit[1]
        if len(self._cache) >= self._size:
            self._cache.clear()
        result = self._compute(spec)
        self._cache[id(spec)] = (spec, result)
        return result


def compile_expression(expr: Any) -> Compiled:
    """`expr` as a closure equal to `evaluate(expr, doc, variables)`; never raises itself."""
    if isinstance(expr, str):
        return _compile_string(expr)
    if isinstance(expr, dict):
        if len(expr) == 1:
            ((name, spec),) = expr.items()
            if name.startswith("$"):
                builder = _BUILDERS.get(name)
                compiled = builder(spec) if builder is not None else None
                return compiled if compiled is not None else _interpreted(expr)
        return _compile_object(expr)
    if isinstance(expr, list):
        return _compile_list(expr)
    return lambda doc, variables: expr


def _interpreted(expr: Any) -> Compiled:
    return lambda doc, variables: evaluate(expr, doc, variables)


def _compile_string(expr: str) -> Compiled:
    if expr.startswith("$$"):
        if expr in ("$$ROOT", "$$CURRENT"):
            return lambda doc, variables: doc
        if expr == "$$REMOVE":
            return lambda doc, variables: REMOVE
        return lambda doc, variables: _variable(expr, doc, variables)
    if not expr.startswith("$"):
        return lambda doc, variables: expr
    parts = expr[1:].split(".")

    def field(doc: Any, variables: dict[str, Any]) -> Any:
        cur = doc
        for n, part in enumerate(parts):
            if type(cur) is not dict:
                return _lookup(cur, parts[n:])  # arrays, scalars, dict subclasses: the interpreter's walk
            cur = cur.get(part, REMOVE)
            if cur is REMOVE:
                return REMOVE
        return cur

    return field


def _compile_object(expr: dict[str, Any]) -> Compiled:
    fields = [(key, compile_expression(value)) for key, value in expr.items()]

    def build(doc: Any, variables: dict[str, Any]) -> Any:
        out = {}
        for key, value in fields:
            result = value(doc, variables)
            if result is not REMOVE:
                out[key] = result
        return out

    return build


def _compile_list(expr: list[Any]) -> Compiled:
    items = [compile_expression(item) for item in expr]
    return lambda doc, variables: [_null(item(doc, variables)) for item in items]


def _args(spec: Any) -> list[Compiled]:
    """The interpreter's `_arg_list`: a list is the arguments, anything else the one argument."""
    return [compile_expression(item) for item in (spec if isinstance(spec, list) else [spec])]


def _comparison(name: str) -> _Builder:
    compare_op = {
        "$eq": operator.eq,
        "$ne": operator.ne,
        "$gt": operator.gt,
        "$gte": operator.ge,
        "$lt": operator.lt,
        "$lte": operator.le,
    }.get(name)

    def build(spec: Any) -> Compiled | None:
        args = _args(spec)
        if len(args) != 2:
            return None  # the interpreter evaluates the arguments, then raises
        left, right = args
        if compare_op is None:  # $cmp
            return lambda doc, v: compare(_comparable(left(doc, v)), _comparable(right(doc, v)))
        op = compare_op

        def run(doc: Any, v: dict[str, Any]) -> Any:
            a = left(doc, v)
            b = right(doc, v)
            ta, tb = type(a), type(b)
            if (ta is str and tb is str) or (ta in INTEGERS and tb in INTEGERS):
                return op(a, b)  # what compare decides for these, without its call
            return op(compare(_comparable(a), _comparable(b)), 0)

        return run

    return build


def _cond(spec: Any) -> Compiled | None:
    if isinstance(spec, list) and len(spec) == 3:
        if_, then, else_ = (compile_expression(item) for item in spec)
    elif isinstance(spec, dict):
        if_, then, else_ = (compile_expression(spec.get(key)) for key in ("if", "then", "else"))
    else:
        return None
    return lambda doc, v: then(doc, v) if truthy(if_(doc, v)) else else_(doc, v)


def _type(spec: Any) -> Compiled | None:
    args = _args(spec)
    if not args:
        return None
    value = args[0]  # further arguments are ignored, as by the interpreter
    return lambda doc, v: bson_type_name(value(doc, v))


def _to_hashed_index_key(spec: Any) -> Compiled | None:
    args = _args(spec)
    if len(args) != 1:
        return None
    (value,) = args
    return lambda doc, v: hash64(_null(value(doc, v)))


def _mod(spec: Any) -> Compiled | None:
    args = _args(spec)
    if len(args) != 2:
        return _numeric(op_mod)(spec)
    left, right = args

    def run(doc: Any, v: dict[str, Any]) -> Any:
        a = left(doc, v)
        b = right(doc, v)
        if type(a) in INTEGERS and type(b) in INTEGERS and b:
            return mod_integers(a, b)
        return op_mod([_null(a), _null(b)], bson_type_name)

    return run


def _numeric(op: Callable[[list[Any], Any], Any]) -> _Builder:
    def build(spec: Any) -> Compiled | None:
        args = _args(spec)
        if len(args) == 2:
            left, right = args
            return lambda doc, v: op([_null(left(doc, v)), _null(right(doc, v))], bson_type_name)
        return lambda doc, v: op([_null(arg(doc, v)) for arg in args], bson_type_name)

    return build


def _add(spec: Any) -> Compiled | None:
    args = _args(spec)
    if len(args) == 2:
        left, right = args

        def run(doc: Any, v: dict[str, Any]) -> Any:
            a = left(doc, v)
            b = right(doc, v)
            if type(a) in INTEGERS and type(b) in INTEGERS:
                return add_integers(a, b)
            return add_values([a, b], spec, doc, v)

        return run
    return lambda doc, v: add_values([arg(doc, v) for arg in args], spec, doc, v)


def _and(spec: Any) -> Compiled | None:
    args = _args(spec)
    return lambda doc, v: all(truthy(arg(doc, v)) for arg in args)


def _or(spec: Any) -> Compiled | None:
    args = _args(spec)
    return lambda doc, v: any(truthy(arg(doc, v)) for arg in args)


def _not(spec: Any) -> Compiled | None:
    args = _args(spec)
    if len(args) != 1:
        return None
    (value,) = args
    return lambda doc, v: not truthy(value(doc, v))


def _if_null(spec: Any) -> Compiled | None:
    if not (isinstance(spec, list) and spec):
        return None  # the interpreter iterates whatever it is given
    args = [compile_expression(item) for item in spec]
    return lambda doc, v: if_null_values([arg(doc, v) for arg in args])


def _in(spec: Any) -> Compiled | None:
    if not (isinstance(spec, list) and len(spec) == 2):
        return None
    needle, haystack = (compile_expression(item) for item in spec)
    return lambda doc, v: in_values(needle(doc, v), haystack(doc, v))


def _concat(spec: Any) -> Compiled | None:
    args = _args(spec)
    return lambda doc, v: concat_values([arg(doc, v) for arg in args])


def _to_string(spec: Any) -> Compiled | None:
    if isinstance(spec, list) and not spec:
        return None
    value = compile_expression(spec[0] if isinstance(spec, list) else spec)
    return lambda doc, v: to_string_value(value(doc, v))


def _literal(spec: Any) -> Compiled | None:
    return lambda doc, v: spec


_BUILDERS: dict[str, _Builder] = {
    **{name: _comparison(name) for name in _COMPARISONS},
    "$cond": _cond,
    "$type": _type,
    "$toHashedIndexKey": _to_hashed_index_key,
    "$abs": _numeric(op_abs),
    "$mod": _mod,
    "$toLong": _numeric(op_to_long),
    "$add": _add,
    "$and": _and,
    "$or": _or,
    "$not": _not,
    "$ifNull": _if_null,
    "$in": _in,
    "$concat": _concat,
    "$toString": _to_string,
    "$literal": _literal,
}

#: The compiled form of an expression object, compiled the first time it is seen.
compiled_expression: PerSpec[Compiled] = PerSpec(compile_expression)
