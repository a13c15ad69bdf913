"""The emulator's fast $match path decides exactly what mongomock's full filter decides."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mongomock import filtering as mm_filtering

from emulators.mongodb.aggregation import _simple_tests, run_pipeline

KEYS = st.sampled_from(["a", "b", "coll"])
STRINGS = st.sampled_from(["x", "y", "ably", ""])
SCALARS = st.one_of(STRINGS, st.integers(-1, 1), st.none(), st.booleans())
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(KEYS, inner, max_size=3)),
    max_leaves=8,
)
DOCS = st.dictionaries(KEYS, VALUES, max_size=3)
PATHS = st.lists(KEYS, min_size=1, max_size=3).map(".".join)
CONDITIONS = st.one_of(
    STRINGS,
    st.builds(lambda op, v: {op: v}, st.sampled_from(["$eq", "$ne"]), STRINGS),
    st.builds(lambda op, v: {op: v}, st.sampled_from(["$in", "$nin"]), st.lists(STRINGS, max_size=3)),
)
SPECS = st.dictionaries(PATHS, CONDITIONS, min_size=1, max_size=2)


@settings(max_examples=1500, deadline=None)
@given(doc=DOCS, spec=SPECS)
def test_the_fast_path_agrees_with_mongomock(doc: dict[str, Any], spec: dict[str, Any]) -> None:
    assert _simple_tests(spec) is not None  # every generated filter takes the fast path
    expected = bool(mm_filtering.filter_applies(spec, doc))
    assert bool(run_pipeline([doc], [{"$match": spec}])) is expected


def test_other_filters_keep_the_full_path() -> None:
    for spec in (
        {"a": 1},
        {"a": {"$gt": "x"}},
        {"a.0": "x"},
        {"$or": [{"a": "x"}]},
        {"a": {"$in": ["x", 1]}},
        {"a": {"$eq": "x", "$ne": "y"}},
    ):
        assert _simple_tests(spec) is None, spec


def test_the_connectors_exclusion_is_decided_without_mongomock(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_called(*args: Any) -> bool:
        raise AssertionError("mongomock was asked")

    monkeypatch.setattr(mm_filtering, "filter_applies", not_called)
    event = {"operationType": "insert", "ns": {"db": "d", "coll": "orders"}, "fullDocument": {"x": [1, 2]}}
    stage = {"$match": {"ns.coll": {"$nin": ["ably", "ably_deadletter"]}}}
    assert run_pipeline([event], [stage]) == [event]
    assert run_pipeline([{**event, "ns": {"db": "d", "coll": "ably"}}], [stage]) == []
    assert run_pipeline([{"operationType": "dropDatabase", "ns": {"db": "d"}}], [stage])  # no coll: passes
