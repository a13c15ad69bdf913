"""Applying update documents (operators, positional paths, arrayFilters) and building upsert seeds.

mongomock's updater lacks several operators and positional forms, so the emulator computes the new
document itself and stores it with a plain replace; mongomock still enforces unique indexes.
"""

from __future__ import annotations

import copy
import datetime
import operator
from collections.abc import Callable
from typing import Any

from bson import Int64, Timestamp
from mongomock import filtering as mm_filtering

from . import matching
from .bsonvalues import compare, same_id
from .errors import CommandError

_MISSING = object()
Target = tuple[Any, Any]  # (container, key): a dict and field name, or a list and index


class UpdateContext:
    """What an update needs beyond the document: the query (for `$`), arrayFilters, clock, upsert."""

    def __init__(
        self,
        query: dict[str, Any],
        array_filters: list[dict[str, Any]] | None,
        now_ts: Callable[[], Timestamp],
        is_insert: bool = False,
    ) -> None:
        self.query = query
        self.array_filters = array_filters or []
        self.now_ts = now_ts
        self.is_insert = is_insert


def _positional_index(ctx: UpdateContext, array_path: str, array: list[Any]) -> int:
    """The first element the query matched through ``array_path`` (the `$` operator)."""
    conditions = {k: v for k, v in ctx.query.items() if k == array_path or k.startswith(array_path + ".")}
    if not conditions:
        raise CommandError(2, "The positional operator did not find the match needed from the query.")
    for index, element in enumerate(array):
        probe: dict[str, Any] = {}
        _plain_set(probe, array_path.split("."), [element])
        if mm_filtering.filter_applies(conditions, probe):
            return index
    raise CommandError(2, "The positional operator did not find the match needed from the query.")


def _plain_set(doc: dict[str, Any], parts: list[str], value: Any) -> None:
    cur = doc
    for part in parts[:-1]:
        cur = cur.setdefault(part, {})
    cur[parts[-1]] = value


def _array_filter_matches(ctx: UpdateContext, ident: str, element: Any) -> bool:
    for spec in ctx.array_filters:
        relevant = {k: v for k, v in spec.items() if k == ident or k.startswith(ident + ".")}
        if not relevant:
            continue
        probe = {ident: element}
        return bool(mm_filtering.filter_applies(relevant, probe))
    raise CommandError(2, f"No array filter found for identifier '{ident}'")


def _child(container: Any, part: str, create: bool) -> Any:
    if isinstance(container, dict):
        if part not in container:
            if not create:
                return _MISSING
            container[part] = {}
        return container[part]
    if isinstance(container, list):
        if not part.isdigit():
            raise CommandError(28, f"Cannot create field '{part}' in element {{...}} of an array")
        index = int(part)
        if index >= len(container):
            if not create:
                return _MISSING
            container.extend([None] * (index + 1 - len(container)))
            container[index] = {}
        elif container[index] is None and create:
            container[index] = {}
        return container[index]
    if create:
        raise CommandError(28, f"Cannot create field '{part}' in element {{{container!r}}}")
    return _MISSING


def is_positional(part: str) -> bool:
    """`$`, `$[]` and `$[id]` address array elements; any other `$`-prefixed part is a field name (5.0+)."""
    return part == "$" or (part.startswith("$[") and part.endswith("]"))


def _targets(doc: Any, parts: list[str], ctx: UpdateContext, create: bool, prefix: str = "") -> list[Target]:
    """Resolve a path (with `$`, `$[]`, `$[id]`) to the (container, key) pairs it addresses."""
    cur = doc
    for n, part in enumerate(parts[:-1]):
        if is_positional(part):
            return _expand_positional(cur, parts, n, ctx, create, prefix)
        nxt = _child(cur, part, create)
        if nxt is _MISSING:
            return []
        prefix = f"{prefix}{part}."
        cur = nxt
    last = parts[-1]
    if is_positional(last):
        if not isinstance(cur, list):
            raise CommandError(2, f"Cannot apply array updates to non-array element {prefix.rstrip('.')}")
        return [(cur, i) for i in _positional_indexes(cur, last, prefix.rstrip("."), ctx)]
    if isinstance(cur, list):
        if not last.isdigit():
            raise CommandError(28, f"Cannot create field '{last}' in element of an array")
        return [(cur, int(last))]
    if not isinstance(cur, dict):
        if create:
            raise CommandError(
                28, f"Cannot create field '{last}' in element {{{prefix.rstrip('.')}: {cur!r}}}"
            )
        return []
    return [(cur, last)]


def _positional_indexes(array: list[Any], part: str, array_path: str, ctx: UpdateContext) -> list[int]:
    if part == "$":
        return [_positional_index(ctx, array_path, array)]
    if part == "$[]":
        return list(range(len(array)))
    if part.startswith("$[") and part.endswith("]"):
        ident = part[2:-1]
        return [i for i, e in enumerate(array) if _array_filter_matches(ctx, ident, e)]
    raise CommandError(2, f"unknown positional operator {part}")


def _expand_positional(
    cur: Any, parts: list[str], n: int, ctx: UpdateContext, create: bool, prefix: str
) -> list[Target]:
    if not isinstance(cur, list):
        raise CommandError(2, f"The positional operator needs an array at {prefix.rstrip('.')}")
    out: list[Target] = []
    for index in _positional_indexes(cur, parts[n], prefix.rstrip("."), ctx):
        out.extend(_targets(cur[index], parts[n + 1 :], ctx, create, f"{prefix}{index}."))
    return out


def _get(container: Any, key: Any) -> Any:
    if isinstance(container, dict):
        return container.get(key, _MISSING)
    return container[key] if key < len(container) else _MISSING


def _put(container: Any, key: Any, value: Any) -> None:
    if isinstance(container, list) and key >= len(container):
        container.extend([None] * (key + 1 - len(container)))
    container[key] = value


def _number(value: Any, op: str, path: str) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float | Int64):
        raise CommandError(14, f"Cannot apply {op} to a value of non-numeric type. {{{path}: {value!r}}}")
    return value


def _typed(current: Any, arg: Any, result: Any, op: str, path: str) -> Any:
    """The result type of integer arithmetic as mongod has it: a long if either operand is a long (an
    int's overflow also gives a long); a long's overflow is an error (BadValue)."""
    if isinstance(result, float):
        return result
    if isinstance(current, Int64) or isinstance(arg, Int64) or not -(2**31) <= result < 2**31:
        if not -(2**63) <= result < 2**63:
            raise CommandError(
                2,
                f"Failed to apply {op} operations to current value ((NumberLong){current}) for document "
                f"at path '{path}'",
            )
        return Int64(result)
    return result


def _arith(op: str, fn: Callable[[Any, Any], Any]) -> Callable[..., None]:
    def apply(container: Any, key: Any, arg: Any, ctx: UpdateContext, path: str) -> None:
        _number(arg, op, path)
        current = _get(container, key)
        if current is _MISSING or (current is None and op == "$mul"):
            _put(container, key, fn(0, arg) if op == "$mul" else arg)
            return
        _put(container, key, _typed(current, arg, fn(_number(current, op, path), arg), op, path))

    return apply


def _op_set(container: Any, key: Any, arg: Any, ctx: UpdateContext, path: str) -> None:
    _put(container, key, copy.deepcopy(arg))


def _op_set_on_insert(container: Any, key: Any, arg: Any, ctx: UpdateContext, path: str) -> None:
    if ctx.is_insert:
        _put(container, key, copy.deepcopy(arg))


def _op_unset(container: Any, key: Any, arg: Any, ctx: UpdateContext, path: str) -> None:
    if isinstance(container, dict):
        container.pop(key, None)
    elif key < len(container):
        container[key] = None


def _minmax(op: Callable[[Any, Any], bool]) -> Callable[..., None]:
    def apply(container: Any, key: Any, arg: Any, ctx: UpdateContext, path: str) -> None:
        current = _get(container, key)
        if current is _MISSING or op(compare(arg, current), 0):
            _put(container, key, copy.deepcopy(arg))

    return apply


def _op_current_date(container: Any, key: Any, arg: Any, ctx: UpdateContext, path: str) -> None:
    if isinstance(arg, dict) and arg.get("$type") == "timestamp":
        _put(container, key, ctx.now_ts())
        return
    now = datetime.datetime.now(datetime.UTC)
    _put(container, key, now.replace(microsecond=now.microsecond // 1000 * 1000))


def _array_at(container: Any, key: Any, op: str, path: str, create: bool = True) -> list[Any] | None:
    current = _get(container, key)
    if current is _MISSING:
        if not create:
            return None
        current = []
        _put(container, key, current)
    if not isinstance(current, list):
        raise CommandError(2, f"The field '{path}' must be an array but is of type {type(current).__name__}")
    return current


def _sort_key(spec: Any) -> Callable[[Any], Any]:
    import functools

    def order(a: Any, b: Any) -> int:
        if isinstance(spec, dict):
            for field, direction in spec.items():
                va, vb = (x.get(field) if isinstance(x, dict) else None for x in (a, b))
                result = compare(va, vb)
                if result:
                    return result * direction
            return 0
        return compare(a, b) * spec

    return functools.cmp_to_key(order)


def _op_push(container: Any, key: Any, arg: Any, ctx: UpdateContext, path: str) -> None:
    array = _array_at(container, key, "$push", path)
    assert array is not None
    if isinstance(arg, dict) and "$each" in arg:
        items = copy.deepcopy(list(arg["$each"]))
        position = arg.get("$position")
        if position is None:
            array.extend(items)
        else:
            position = position if position >= 0 else max(0, len(array) + position)
            array[position:position] = items
        if "$sort" in arg:
            array.sort(key=_sort_key(arg["$sort"]))
        if "$slice" in arg:
            limit = int(arg["$slice"])
            array[:] = array[:limit] if limit >= 0 else array[limit:] if limit else []
        return
    array.append(copy.deepcopy(arg))


def _op_add_to_set(container: Any, key: Any, arg: Any, ctx: UpdateContext, path: str) -> None:
    array = _array_at(container, key, "$addToSet", path)
    assert array is not None
    items = list(arg["$each"]) if isinstance(arg, dict) and "$each" in arg else [arg]
    for item in items:
        if not any(_same(item, existing) for existing in array):
            array.append(copy.deepcopy(item))


def _same(a: Any, b: Any) -> bool:
    return (type(a) is type(b) and a == b) or (
        isinstance(a, int | float)
        and isinstance(b, int | float)
        and not isinstance(a, bool)
        and not isinstance(b, bool)
        and a == b
    )


def _pull_matches(cond: Any, element: Any) -> bool:
    if isinstance(cond, dict) and cond:
        if all(k.startswith("$") for k in cond):
            return _filter_applies({"v": cond}, {"v": element})
        if isinstance(element, dict):
            return _filter_applies(cond, element)
        return False
    return _same(cond, element)


def _filter_applies(spec: dict[str, Any], doc: Any) -> bool:
    """mongomock's filter, or the emulator's matcher for values mongomock cannot order."""
    try:
        return bool(mm_filtering.filter_applies(spec, doc))
    except NotImplementedError:
        try:
            return matching.matches(spec, doc)
        except matching.Unsupported as exc:
            raise CommandError(2, f"the emulator cannot evaluate this filter on these values: {exc}") from exc


def _op_pull(container: Any, key: Any, arg: Any, ctx: UpdateContext, path: str) -> None:
    array = _array_at(container, key, "$pull", path, create=False)
    if array is not None:
        array[:] = [e for e in array if not _pull_matches(arg, e)]


def _op_pull_all(container: Any, key: Any, arg: Any, ctx: UpdateContext, path: str) -> None:
    array = _array_at(container, key, "$pullAll", path, create=False)
    if array is not None:
        array[:] = [e for e in array if not any(_same(v, e) for v in arg)]


def _op_pop(container: Any, key: Any, arg: Any, ctx: UpdateContext, path: str) -> None:
    array = _array_at(container, key, "$pop", path, create=False)
    if array:
        array.pop(0 if arg == -1 else -1)


def _op_bit(container: Any, key: Any, arg: Any, ctx: UpdateContext, path: str) -> None:
    current = _get(container, key)
    value = 0 if current is _MISSING else _number(current, "$bit", path)
    for name, operand in arg.items():
        fn = {"and": operator.and_, "or": operator.or_, "xor": operator.xor}.get(name)
        if fn is None:
            raise CommandError(2, f"The $bit modifier only supports 'and', 'or', and 'xor', not '{name}'")
        value = fn(int(value), int(operand))
    _put(container, key, value)


OPERATORS: dict[str, Callable[..., None]] = {
    "$set": _op_set,
    "$setOnInsert": _op_set_on_insert,
    "$unset": _op_unset,
    "$inc": _arith("$inc", operator.add),
    "$mul": _arith("$mul", operator.mul),
    "$min": _minmax(operator.lt),
    "$max": _minmax(operator.gt),
    "$currentDate": _op_current_date,
    "$push": _op_push,
    "$addToSet": _op_add_to_set,
    "$pull": _op_pull,
    "$pullAll": _op_pull_all,
    "$pop": _op_pop,
    "$bit": _op_bit,
}
# Operators that never create missing parents.
_NON_CREATING = frozenset({"$unset", "$pull", "$pullAll", "$pop"})


def _check_conflicts(paths: list[str]) -> None:
    seen: list[str] = []
    for path in paths:
        for other in seen:
            if path == other or path.startswith(other + ".") or other.startswith(path + "."):
                raise CommandError(40, f"Updating the path '{path}' would create a conflict at '{other}'")
        seen.append(path)


def _apply_rename(doc: dict[str, Any], spec: dict[str, Any], ctx: UpdateContext) -> None:
    for src, dst in spec.items():
        if not isinstance(dst, str):
            raise CommandError(2, "The 'to' field for $rename must be a string")
        found = _targets(doc, src.split("."), ctx, create=False)
        if not found or _get(*found[0]) is _MISSING:
            continue
        container, key = found[0]
        value = container.pop(key)
        for target in _targets(doc, dst.split("."), ctx, create=True):
            _put(*target, value)


def validate_update(update: dict[str, Any]) -> None:
    """Parse-time checks of an operator update, made before any document is matched (mongod's
    UpdateDriver::parse): an unknown operator is FailedToParse even when nothing would match.

    An empty operand (``{$set: {}}``) is a no-op since MongoDB 5.0, not an error.
    """
    for op, spec in update.items():
        if op not in OPERATORS and op != "$rename":
            raise CommandError(
                9,
                f"Unknown modifier: {op}. Expected a valid update modifier or pipeline-style update "
                "specified as an array",
            )
        if not isinstance(spec, dict):
            raise CommandError(
                9,
                f"Modifiers operate on fields but we found type {type(spec).__name__} instead. "
                f"For example: {{$mod: {{<field>: ...}}}} not {{{op}: {spec!r}}}",
            )


def check_replacement_fields(replacement: dict[str, Any]) -> None:
    """A replacement document may not have top-level `$`-prefixed fields (nested ones are allowed since
    5.0); mongod checks this when it stores the result (storage_validation::scanDocument)."""
    for name in replacement:
        if isinstance(name, str) and name.startswith("$"):
            raise CommandError(
                52,
                f"The dollar ($) prefixed field '{name}' in '{name}' is not allowed in the context of an "
                "update's replacement document. Consider using an aggregation pipeline with $replaceWith.",
            )


def apply_update(doc: dict[str, Any], update: dict[str, Any], ctx: UpdateContext) -> dict[str, Any]:
    """Return a new document: ``update`` (operator form) applied to ``doc``."""
    validate_update(update)
    new = copy.deepcopy(doc)
    paths: list[str] = []
    for op, spec in update.items():
        paths.extend(spec)
        if op == "$rename":
            paths.extend(str(v) for v in spec.values())
    _check_conflicts(paths)
    for op, spec in update.items():
        if op == "$rename":
            _apply_rename(new, spec, ctx)
            continue
        fn = OPERATORS[op]
        if op == "$setOnInsert" and not ctx.is_insert:
            continue
        for path, arg in spec.items():
            if path == "" or path.endswith("."):
                raise CommandError(56, f"An empty update path is not valid: '{path}'")
            for container, key in _targets(new, path.split("."), ctx, create=op not in _NON_CREATING):
                fn(container, key, arg, ctx, path)
    if "_id" in doc and not same_id(new.get("_id", _MISSING), doc["_id"]):
        raise CommandError(
            66, "Performing an update on the path '_id' would modify the immutable field '_id'"
        )
    if not ctx.is_insert:
        _check_dollar_fields(update)
    return new


def _check_dollar_fields(update: dict[str, Any]) -> None:
    """An update of an existing document may not create a top-level `$`-prefixed field (nested ones are
    fine): storage_validation::scanDocument's check of the updated paths, DollarPrefixedFieldName 52. An
    upsert's insert may (it is validated as an insert)."""
    for op, spec in update.items():
        if op in _NON_CREATING:
            continue
        paths = spec.values() if op == "$rename" else spec
        for path in paths:
            first = str(path).split(".", 1)[0]
            if first.startswith("$") and not is_positional(first):
                raise CommandError(
                    52,
                    f"The dollar ($) prefixed field '{first}' in '{path}' is not allowed in the context "
                    "of an update's replacement document. Consider using an aggregation pipeline with "
                    "$replaceWith.",
                )


def upsert_seed(query: dict[str, Any]) -> dict[str, Any]:
    """The fields an upsert copies from the query: equality conditions (incl. inside $and)."""
    seed: dict[str, Any] = {}
    for key, value in query.items():
        if key == "$and" and isinstance(value, list):
            for part in value:
                if isinstance(part, dict):
                    _merge_seed(seed, upsert_seed(part))
            continue
        if key.startswith("$"):
            continue
        if isinstance(value, dict) and value and next(iter(value)).startswith("$"):
            if "$eq" in value:
                _plain_set(seed, key.split("."), copy.deepcopy(value["$eq"]))
            continue
        _plain_set(seed, key.split("."), copy.deepcopy(value))
    return seed


def _merge_seed(seed: dict[str, Any], more: dict[str, Any]) -> None:
    for key, value in more.items():
        seed[key] = value
