"""The unified-format matcher: the conformance verdicts are only as good as these rules."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from bson import Int64, ObjectId, Timestamp

from tests.conformance.matcher import MatchError, bson_type_name, match


def test_root_document_allows_extra_keys() -> None:
    match({"x": 1}, {"x": 1, "y": 2})


def test_nested_document_rejects_extra_keys() -> None:
    with pytest.raises(MatchError, match=r"\$\.x: unexpected keys \['z'\]"):
        match({"x": {"y": 1}}, {"x": {"y": 1, "z": 1}})


def test_documents_nested_in_arrays_are_not_root() -> None:
    with pytest.raises(MatchError, match=r"\$\.pipeline\[0\]"):
        match({"pipeline": [{"$changeStream": {}}]}, {"pipeline": [{"$changeStream": {}, "extra": 1}]})


def test_missing_key_fails_and_names_the_path() -> None:
    with pytest.raises(MatchError, match=r"\$\.ns\.coll: key is missing"):
        match({"ns": {"db": "d", "coll": "c"}}, {"ns": {"db": "d"}})


def test_key_order_does_not_matter() -> None:
    match({"a": {"x": 1, "y": 2}}, {"a": {"y": 2, "x": 1}})


@pytest.mark.parametrize(
    ("expected", "actual"),
    [(1, 1.0), (1, Int64(1)), (Int64(5), 5), (2.0, 2), (0, 0.0)],
)
def test_numbers_compare_across_int_long_double(expected: Any, actual: Any) -> None:
    match({"n": expected}, {"n": actual})


@pytest.mark.parametrize(("expected", "actual"), [(1, 1.5), (1, True), (True, 1), (0, False), (1, "1")])
def test_numbers_do_not_match_other_values_or_bools(expected: Any, actual: Any) -> None:
    with pytest.raises(MatchError):
        match({"n": expected}, {"n": actual})


def test_exists_true_accepts_null_value() -> None:
    match({"a": {"$$exists": True}}, {"a": None})


def test_exists_true_rejects_absent_key() -> None:
    with pytest.raises(MatchError, match="key should exist"):
        match({"a": {"$$exists": True}}, {"b": 1})


def test_exists_false_rejects_present_key() -> None:
    with pytest.raises(MatchError, match="key should be absent"):
        match({"comment": {"$$exists": False}}, {"comment": "x"})
    match({"comment": {"$$exists": False}}, {"getMore": 1})


def test_exists_outside_a_key_is_a_test_file_error() -> None:
    with pytest.raises(ValueError, match=r"\$\$exists is only valid"):
        match({"$$exists": True}, {"a": 1})


def test_unset_or_matches_accepts_absent_key() -> None:
    match({"a": {"$$unsetOrMatches": {"$$exists": True}}}, {})


def test_unset_or_matches_checks_a_present_key() -> None:
    match({"a": {"$$unsetOrMatches": 2}}, {"a": 2})
    with pytest.raises(MatchError):
        match({"a": {"$$unsetOrMatches": 2}}, {"a": 3})


def test_unset_or_matches_does_not_make_the_value_root() -> None:
    with pytest.raises(MatchError, match="unexpected keys"):
        match({"a": {"$$unsetOrMatches": {"x": 1}}}, {"a": {"x": 1, "y": 2}})


def test_unset_or_matches_nested_exists_on_resume_token() -> None:
    expected = {"pipeline": [{"$changeStream": {"resumeAfter": {"$$unsetOrMatches": {"$$exists": True}}}}]}
    match(expected, {"pipeline": [{"$changeStream": {"resumeAfter": {"_data": "82"}}}]})
    match(expected, {"pipeline": [{"$changeStream": {}}]})
    with pytest.raises(MatchError, match="unexpected keys"):
        match(expected, {"pipeline": [{"$changeStream": {"startAfter": {"_data": "82"}}}]})


@pytest.mark.parametrize(
    ("type_spec", "value"),
    [
        (["int", "long"], Int64(12345678901)),
        (["int", "long"], 7),
        ("int", 2**31 - 1),
        ("long", 2**31),
        ("object", {"a": 1}),
        ("array", [1]),
        ("string", "s"),
        ("double", 1.5),
        ("bool", False),
        ("null", None),
        ("objectId", ObjectId()),
        ("timestamp", Timestamp(1, 1)),
        ("date", datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)),
        ("number", 3.0),
    ],
)
def test_type_operator_accepts_matching_types(type_spec: str | list[str], value: Any) -> None:
    match({"v": {"$$type": type_spec}}, {"v": value})


def test_type_operator_rejects_wrong_type_and_missing_key() -> None:
    with pytest.raises(MatchError, match="expected type"):
        match({"v": {"$$type": "int"}}, {"v": "1"})
    with pytest.raises(MatchError, match="missing"):
        match({"v": {"$$type": "int"}}, {})
    with pytest.raises(MatchError, match="expected type"):
        match({"v": {"$$type": "int"}}, {"v": True})


def test_type_operator_inside_array_element() -> None:
    match({"p": ["a", {"$$type": "int"}, "1"]}, {"p": ["a", 0, "1"]})
    with pytest.raises(MatchError, match=r"\$\.p\[1\]"):
        match({"p": ["a", {"$$type": "int"}, "1"]}, {"p": ["a", "0", "1"]})


def test_type_operator_does_not_inspect_array_elements() -> None:
    match({"v": {"$$type": "array"}}, {"v": ["x", 1]})


def test_unknown_type_name_is_a_test_file_error() -> None:
    with pytest.raises(ValueError, match="unknown"):
        match({"v": {"$$type": "integer"}}, {"v": 1})


def test_arrays_must_have_equal_length() -> None:
    with pytest.raises(MatchError, match="expected 2 elements, got 3"):
        match({"a": [1, 2]}, {"a": [1, 2, 3]})
    with pytest.raises(MatchError, match="expected an array"):
        match({"a": []}, {"a": {}})


def test_null_expected_requires_key_with_null_value() -> None:
    match({"fullDocument": None}, {"fullDocument": None})
    with pytest.raises(MatchError, match="missing"):
        match({"fullDocument": None}, {})
    with pytest.raises(MatchError):
        match({"fullDocument": None}, {"fullDocument": {"_id": 1}})


def test_empty_nested_document_matches_only_empty() -> None:
    match({"cursor": {}}, {"cursor": {}})
    with pytest.raises(MatchError, match="unexpected keys"):
        match({"cursor": {}}, {"cursor": {"batchSize": 1}})


def test_expected_document_against_scalar_fails() -> None:
    with pytest.raises(MatchError, match="expected a document"):
        match({"ns": {"db": "x"}}, {"ns": "x"})


def test_top_level_type_operator_matches_whole_value() -> None:
    match({"$$type": "object"}, {"anything": 1})
    with pytest.raises(MatchError):
        match({"$$type": "object"}, [1])


def test_change_event_example_from_spec() -> None:
    expected = {
        "_id": {"$$exists": True},
        "operationType": "update",
        "ns": {"db": "database0", "coll": "collection0"},
        "updateDescription": {
            "updatedFields": {"x": 2},
            "removedFields": [],
            "truncatedArrays": {"$$unsetOrMatches": {"$$exists": True}},
            "disambiguatedPaths": {"$$unsetOrMatches": {"$$exists": True}},
        },
    }
    actual: dict[str, Any] = {
        "_id": {"_data": "8263"},
        "operationType": "update",
        "clusterTime": Timestamp(5, 1),
        "ns": {"db": "database0", "coll": "collection0"},
        "documentKey": {"_id": ObjectId()},
        "updateDescription": {"updatedFields": {"x": 2}, "removedFields": [], "truncatedArrays": []},
    }
    match(expected, actual)
    actual["updateDescription"]["updatedFields"] = {"x": 2, "y": 1}
    with pytest.raises(MatchError, match=r"\$\.updateDescription\.updatedFields: unexpected keys \['y'\]"):
        match(expected, actual)


def test_bson_type_names_of_int_boundaries() -> None:
    assert bson_type_name(-(2**31)) == "int"
    assert bson_type_name(-(2**31) - 1) == "long"
    assert bson_type_name(Int64(1)) == "long"
    assert bson_type_name(True) == "bool"
