"""Compiled expressions and filters decide exactly what the interpreter and mongomock decide.

`compiled.compile_expression` must return what `expressions.evaluate` returns (same value, same BSON
type) or raise what it raises (same error code and message), on every shape: missing fields, arrays on
paths, nulls, every number type, each compiled operator with too few or too many arguments, and operators
left to the interpreter. The compiled `$match` (`$or` / `$and` of equalities and `$expr`) must agree with
mongomock's filter, which decided these before. The integer fast paths of `$mod`, `$add` and the string
fast path of the hash are pinned against their general paths.
"""

from __future__ import annotations

import datetime
import functools
import math
from collections.abc import Callable
from typing import Any

import pytest
from bson import Code, Decimal128, Int64, MaxKey, MinKey, ObjectId, Regex, Timestamp
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from mongomock import filtering as mm_filtering

from connector.sources.mongodb.partitions import Partition, keeps, partition_stage
from emulators.mongodb import hashing
from emulators.mongodb.aggregation import _compiled_filter, run_pipeline
from emulators.mongodb.bsonvalues import encode
from emulators.mongodb.compiled import compile_expression
from emulators.mongodb.errors import CommandError
from emulators.mongodb.expressions import REMOVE, add_values, evaluate
from emulators.mongodb.numeric_ops import add_integers, integer_sum, op_mod

LONG_MIN, LONG_MAX = -(2**63), 2**63 - 1
KEYS = st.sampled_from(["a", "b", "ch"])
NUMBERS = st.one_of(
    st.sampled_from([0, 1, -1, 7, 2**31 - 1, -(2**31), 2**31, 2**40]),
    st.sampled_from([Int64(0), Int64(3), Int64(-5), Int64(LONG_MIN), Int64(LONG_MAX)]),
    st.sampled_from([0.0, -2.5, 3.0, math.inf, math.nan]),
    st.sampled_from([Decimal128("1.5"), Decimal128("-3")]),
)
SCALARS = st.one_of(
    NUMBERS,
    st.sampled_from(["string", "", "ch-1", "$notapath"]),
    st.none(),
    st.booleans(),
    st.just(datetime.datetime(2026, 1, 2, 3, 4, 5)),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(KEYS, inner, max_size=3)),
    max_leaves=6,
)
DOCS = st.dictionaries(KEYS, VALUES, max_size=3)
PATHS = st.sampled_from(
    ["$a", "$b", "$ch", "$a.b", "$a.ch.b", "$missing", "$$ROOT", "$$CURRENT", "$$REMOVE", "$$ROOT.a", "$$x"]
)
#: Compiled operators, then operators the interpreter keeps (their arguments are compiled around them).
OPERATORS = st.sampled_from(
    [
        "$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$cmp", "$cond", "$type", "$toHashedIndexKey",
        "$abs", "$mod", "$toLong", "$add", "$and", "$or", "$not", "$ifNull", "$in", "$concat",
        "$toString", "$literal", "$getField", "$mergeObjects", "$size", "$let", "$multiply",
    ]
)  # fmt: skip


def _node(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.builds(lambda op, args: {op: args}, OPERATORS, st.lists(children, max_size=4)),
        st.builds(lambda op, arg: {op: arg}, OPERATORS, children),
        st.builds(
            lambda c: {"$cond": c},
            st.fixed_dictionaries({}, optional={"if": children, "then": children, "else": children}),
        ),
        st.dictionaries(KEYS, children, min_size=1, max_size=2),  # an object expression
        st.lists(children, max_size=2),  # an array expression
    )


EXPRESSIONS = st.recursive(st.one_of(PATHS, SCALARS), _node, max_leaves=10)


def same(a: Any, b: Any) -> bool:
    """Equal values of the same types all the way down (1 and Int64(1) differ; NaN equals NaN)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[key], b[key]) for key in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return bool(a is b or a == b)


def outcome(run: Callable[[], Any]) -> tuple[Any, ...]:
    try:
        return ("value", run())
    except CommandError as exc:
        return ("CommandError", exc.code, str(exc))
    except Exception as exc:
        return (type(exc).__name__, str(exc))


def assert_same_outcome(got: tuple[Any, ...], expected: tuple[Any, ...]) -> None:
    if expected[0] == "value":
        assert got[0] == "value", (got, expected)
        assert same(got[1], expected[1]), (got, expected)
    else:
        assert got == expected


@settings(max_examples=2000, deadline=None)
@given(expr=EXPRESSIONS, doc=DOCS)
def test_a_compiled_expression_returns_what_the_interpreter_returns(expr: Any, doc: dict[str, Any]) -> None:
    compiled = compile_expression(expr)
    assert_same_outcome(outcome(lambda: compiled(doc, {})), outcome(lambda: evaluate(expr, doc)))


_MISSING = object()
COMPARED = [
    1,
    2,
    -1,
    Int64(1),
    Int64(2),
    2**40,
    Int64(2**40),
    1.0,
    "a",
    "b",
    "",
    True,
    False,
    None,
    [1],
    {"a": 1},
]


@pytest.mark.parametrize("op", ["$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$cmp"])
def test_comparisons_of_every_pair(op: str) -> None:
    expr = {op: ["$x", "$y"]}
    compiled = compile_expression(expr)
    for x in [*COMPARED, _MISSING]:
        for y in [*COMPARED, _MISSING]:
            doc = {key: value for key, value in (("x", x), ("y", y)) if value is not _MISSING}
            assert same(compiled(doc, {}), evaluate(expr, doc)), (x, y)


def _interpreted_stage(stage: str, expr: Any, doc: dict[str, Any]) -> Any:
    """What each stage computes with the interpreter, for one computed field `out`."""
    value = evaluate(expr, doc)
    if stage == "$replaceWith":
        return {"out": value} if value is not REMOVE else {}
    if stage == "$project":
        return {"out": value} if value is not REMOVE else {}
    return {**doc, "out": value} if value is not REMOVE else {k: v for k, v in doc.items() if k != "out"}


@settings(max_examples=1000, deadline=None)
@given(expr=EXPRESSIONS, doc=DOCS, stage=st.sampled_from(["$addFields", "$set", "$project", "$replaceWith"]))
def test_stages_compute_fields_with_the_compiled_expression(
    expr: Any, doc: dict[str, Any], stage: str
) -> None:
    # A plain object nests fields in these stages, and numbers and booleans include or exclude in $project:
    # neither is a computed field.
    assume(not (isinstance(expr, dict) and expr and not any(key.startswith("$") for key in expr)))
    assume(stage != "$project" or not isinstance(expr, int | float))
    spec = {"out": expr}
    if stage == "$project":
        spec["_id"] = 0
    got = outcome(lambda: run_pipeline([doc], [{stage: spec}])[0])
    assert_same_outcome(got, outcome(lambda: _interpreted_stage(stage, expr, doc)))


@pytest.mark.parametrize(
    ("expr", "code"),
    [
        ({"$abs": {"$toLong": "-9223372036854775808"}}, 28680),
        ({"$toLong": "$a"}, 241),
        ({"$toLong": "0x10"}, 241),
        ({"$mod": ["$n", 0]}, 16610),
        ({"$mod": ["$a", 2]}, 16611),
        ({"$mod": [1, 2, 3]}, 16020),
        ({"$add": ["$n", "$a"]}, 16554),
        ({"$eq": [1]}, 16020),
        ({"$eq": [1, 2, 3]}, 16020),
        ({"$cmp": ["$n"]}, 16020),
        ({"$not": [1, 2]}, 16020),
        ({"$toHashedIndexKey": [1, 2]}, 16020),
        ({"$in": ["$n", "$a"]}, 40081),
        ({"$concat": ["$a", "$n"]}, 16702),
        ({"$switch": {"branches": []}}, 40066),
        ({"$eq": ["$$undefined", 1]}, 17276),
    ],
)
def test_errors_are_raised_as_the_interpreter_raises_them(expr: Any, code: int) -> None:
    doc = {"a": "text", "n": Int64(5)}
    compiled = compile_expression(expr)
    expected = outcome(lambda: evaluate(expr, doc))
    assert expected[:2] == ("CommandError", code)
    assert outcome(lambda: compiled(doc, {})) == expected


@pytest.mark.parametrize(
    "expr",
    [{"$cond": [1, 2]}, {"$cond": "x"}, {"$type": []}, {"$toString": []}, {"$ifNull": []}, {"$in": [1]}],
)
def test_malformed_arguments_fail_as_in_the_interpreter(expr: Any) -> None:
    expected = outcome(lambda: evaluate(expr, {}))
    assert expected[0] != "value"
    assert outcome(lambda: compile_expression(expr)({}, {})) == expected


def test_compiling_never_evaluates() -> None:
    compile_expression({"$abs": {"$toLong": "-9223372036854775808"}})  # raises only when called
    compile_expression({"$eq": [1, 2, 3]})


def test_paths_through_arrays_and_missing_fields() -> None:
    doc = {"a": [{"b": 1}, {"c": 2}, 3, {"b": [4]}], "d": {"e": None}}
    for path, expected in [
        ("$a.b", [1, [4]]),
        ("$d.e", None),
        ("$d.e.f", REMOVE),
        ("$d.x", REMOVE),
        ("$x.y", REMOVE),
    ]:
        assert same(compile_expression(path)(doc, {}), expected), path
        assert same(evaluate(path, doc), expected), path


def test_variables_are_looked_up_per_call() -> None:
    expr = {"$add": ["$$x", 1]}
    assert compile_expression(expr)({}, {"x": 41}) == 42
    assert compile_expression({"$let": {"vars": {"y": 2}, "in": {"$add": ["$$y", "$a"]}}})({"a": 1}, {}) == 3


# -- the partition stage ----------------------------------------------------------------------------------

CHANNELS = st.one_of(
    st.text(max_size=12),
    st.none(),
    st.integers(-(2**40), 2**40),
    st.lists(st.text(max_size=3), max_size=2),
    st.just(REMOVE),
)


@settings(max_examples=500, deadline=None)
@given(channel=CHANNELS, count=st.integers(1, 7), operation=st.sampled_from(["insert", "invalidate"]))
def test_the_partition_stage_keeps_what_the_connector_keeps(channel: Any, count: int, operation: str) -> None:
    event: dict[str, Any] = {"operationType": operation, "ns": {"db": "d", "coll": "c"}}
    if channel is not REMOVE:
        event["_ablyChannel"] = channel
    for index in range(count):
        partition = Partition(index, count)
        kept = run_pipeline([event], [partition_stage(partition)])
        assert bool(kept) is keeps(event, partition), (channel, partition)


def test_the_partition_stage_is_decided_without_mongomock(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_called(*args: Any) -> bool:
        raise AssertionError("mongomock was asked")

    monkeypatch.setattr(mm_filtering, "filter_applies", not_called)
    stage = partition_stage(Partition(1, 2))
    assert _compiled_filter(stage["$match"]) is not None
    events = [{"operationType": "insert", "_ablyChannel": f"ch-{i}"} for i in range(50)]
    kept = run_pipeline(events, [stage])
    assert 0 < len(kept) < len(events)
    assert run_pipeline([{"operationType": "invalidate"}], [stage])


# -- compiled filters against mongomock --------------------------------------------------------------------

FILTER_EXPRESSIONS = st.recursive(
    st.one_of(PATHS.filter(lambda p: p != "$$x"), SCALARS.filter(lambda v: not isinstance(v, Decimal128))),
    lambda children: st.builds(
        lambda op, args: {op: args},
        st.sampled_from(["$eq", "$ne", "$gt", "$type", "$cond", "$and", "$or", "$not", "$mod", "$add"]),
        st.lists(children, min_size=1, max_size=3),
    ),
    max_leaves=6,
)
EQUALITIES = st.builds(
    lambda key, value: {key: value},
    st.sampled_from(["operationType", "a", "a.b", "ch"]),
    st.one_of(st.sampled_from(["insert", "x", ""]), st.builds(lambda v: {"$ne": v}, st.just("x"))),
)
CLAUSES = st.recursive(
    st.one_of(EQUALITIES, st.builds(lambda e: {"$expr": e}, FILTER_EXPRESSIONS)),
    lambda inner: st.builds(
        lambda op, parts: {op: parts},
        st.sampled_from(["$or", "$and"]),
        st.lists(inner, min_size=1, max_size=3),
    ),
    max_leaves=5,
)
FILTERS = st.lists(CLAUSES, min_size=1, max_size=2).map(
    lambda parts: {k: v for p in parts for k, v in p.items()}
)
EVENTS = st.fixed_dictionaries(
    {"operationType": st.sampled_from(["insert", "invalidate", "x"])},
    optional={"a": VALUES.filter(lambda v: not isinstance(v, Decimal128)), "ch": st.text(max_size=3)},
)


def _no_decimals(value: Any) -> bool:
    if isinstance(value, Decimal128):
        return False
    if isinstance(value, dict):
        return all(_no_decimals(v) for v in value.values())
    if isinstance(value, list):
        return all(_no_decimals(v) for v in value)
    return True


@settings(max_examples=1200, deadline=None)
@given(spec=FILTERS, doc=EVENTS)
def test_a_compiled_filter_agrees_with_mongomock(spec: dict[str, Any], doc: dict[str, Any]) -> None:
    assume(_no_decimals(doc))  # mongomock cannot order decimals: those take the emulator's own matcher
    assert _compiled_filter(spec) is not None
    got = outcome(lambda: bool(run_pipeline([doc], [{"$match": spec}])))
    assert_same_outcome(got, outcome(lambda: bool(mm_filtering.filter_applies(spec, doc))))


def test_filters_the_compiler_leaves_to_the_full_path() -> None:
    for spec in ({"$or": []}, {"$or": [1]}, {"$nor": [{"a": "x"}]}, {"a": 1}, {"$expr": Decimal128("1")}):
        assert _compiled_filter(spec) is None, spec
    assert _compiled_filter({"$or": [{"a": "x"}, {"$expr": {"$eq": ["$b", 1]}}]}) is not None


# -- integer and string fast paths -------------------------------------------------------------------------


class _SlowInt(int):
    """An int the fast paths do not recognise (their check is on exact types): the general path."""


class _SlowLong(Int64):
    """The same for a long."""


def _slow(value: int) -> int:
    return _SlowLong(value) if type(value) is Int64 else _SlowInt(value)


INTEGERS = st.one_of(
    st.integers(-(2**31), 2**31 - 1),
    st.integers(LONG_MIN, LONG_MAX),
    st.integers(LONG_MIN, LONG_MAX).map(Int64),
    st.sampled_from([0, -1, 2**31, -(2**31) - 1, Int64(LONG_MIN), Int64(LONG_MAX), Int64(0)]),
)


@settings(max_examples=1500, deadline=None)
@given(left=INTEGERS, right=INTEGERS)
def test_integer_mod_takes_the_general_paths_result(left: int, right: int) -> None:
    got = outcome(lambda: op_mod([left, right], str))
    expected = outcome(lambda: op_mod([_slow(left), _slow(right)], str))
    assert_same_outcome(got, expected)


@settings(max_examples=1500, deadline=None)
@given(values=st.lists(INTEGERS, max_size=3))
def test_integer_add_takes_the_general_paths_result(values: list[int]) -> None:
    got = outcome(lambda: add_values(values, values, {}, {}))
    expected = outcome(lambda: add_values([_slow(v) for v in values], values, {}, {}))
    assert_same_outcome(got, expected)


@settings(max_examples=1500, deadline=None)
@given(left=INTEGERS, right=INTEGERS)
def test_adding_two_integers_is_their_integer_sum(left: int, right: int) -> None:
    assert same(add_integers(left, right), integer_sum([left, right]))


ARITHMETIC = [
    0,
    1,
    -7,
    2**31 - 1,
    -(2**31),
    2**31,
    2**62,
    Int64(0),
    Int64(-3),
    Int64(LONG_MIN),
    Int64(LONG_MAX),
]
ARITHMETIC += [True, 2.5, math.nan, Decimal128("4"), None, "x", [1], datetime.datetime(2026, 1, 1)]


@pytest.mark.parametrize("op", ["$add", "$mod", "$eq", "$lt", "$cmp"])
def test_two_argument_arithmetic_of_every_pair(op: str) -> None:
    expr = {op: ["$x", "$y"]}
    compiled = compile_expression(expr)
    for x in [*ARITHMETIC, _MISSING]:
        for y in [*ARITHMETIC, _MISSING]:
            doc = {key: value for key, value in (("x", x), ("y", y)) if value is not _MISSING}
            got = outcome(functools.partial(compiled, doc, {}))
            assert_same_outcome(got, outcome(functools.partial(evaluate, expr, doc)))


@pytest.mark.parametrize(
    ("value", "name"),
    [
        (1, "int"), (2**31, "long"), (Int64(1), "long"), (True, "bool"), (1.5, "double"), ("s", "string"),
        (None, "null"), (_MISSING, "missing"), ({"a": 1}, "object"), ([1], "array"), ((1,), "array"),
        (Decimal128("1"), "decimal"), (datetime.datetime(2026, 1, 1), "date"), (b"x", "binData"),
        (ObjectId("0" * 24), "objectId"), (Timestamp(1, 1), "timestamp"), (Regex("a"), "regex"),
        (MinKey(), "minKey"), (MaxKey(), "maxKey"), (Code("f"), "javascript"),
    ],
)  # fmt: skip
def test_type_names(value: Any, name: str) -> None:
    doc = {} if value is _MISSING else {"x": value}
    assert compile_expression({"$type": "$x"})(doc, {}) == name
    assert evaluate({"$type": "$x"}, doc) == name


def _general_hash(value: Any) -> Int64:
    data = encode({"": value})
    digest = hashing.hashlib.md5(hashing._INT32.pack(0), usedforsecurity=False)
    hashing._hash_element(digest, data, 4, include_name=False)
    return Int64(hashing._INT64.unpack_from(digest.digest())[0])


@settings(max_examples=1000, deadline=None)
@given(text=st.text(max_size=40))
def test_a_strings_hash_is_its_bson_elements_hash(text: str) -> None:
    assert same(hashing.hash64(text), _general_hash(text))


def test_the_documented_string_hash() -> None:
    assert hashing.hash64("string to hash") == Int64(763543691661428748)
