"""Pipeline parsing and validation, the routing check, the hash, the exclusion stage, shipped pipelines."""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mongomock
import pytest
from bson import ObjectId, Timestamp

from connector.errors import PipelineError, UnpublishableEvent
from connector.sources.mongodb.messages import to_message
from connector.sources.mongodb.pipeline import (
    ALLOWED_STAGES,
    exclusion_stage,
    parse_pipeline,
    pipeline_hash,
    sets_channel,
    validate_stages,
)
from emulators.mongodb.aggregation import run_pipeline

PIPELINES = Path(__file__).resolve().parents[2] / "pipelines"
SHIPPED = sorted(PIPELINES.glob("*.json"))


def problems_of(text: str, source: str = "PIPELINE") -> list[str]:
    with pytest.raises(PipelineError) as info:
        parse_pipeline(text, source=source)
    assert info.value.code == 72005
    return info.value.problems


def test_parses_plain_json() -> None:
    stages = parse_pipeline('[{"$match": {"operationType": "insert"}}, {"$set": {"_ablyChannel": "c"}}]')
    assert stages == [{"$match": {"operationType": "insert"}}, {"$set": {"_ablyChannel": "c"}}]


def test_parses_extended_json_values() -> None:
    text = """[{"$match": {
        "wallTime": {"$gte": {"$date": "2024-01-01T00:00:00Z"}},
        "documentKey._id": {"$oid": "65a1b2c3d4e5f60718293a4b"},
        "clusterTime": {"$gt": {"$timestamp": {"t": 1700000000, "i": 3}}}
    }}]"""
    match = parse_pipeline(text)[0]["$match"]
    assert match["wallTime"]["$gte"] == datetime.datetime(2024, 1, 1)
    assert match["documentKey._id"] == ObjectId("65a1b2c3d4e5f60718293a4b")
    assert match["clusterTime"]["$gt"] == Timestamp(1700000000, 3)


def test_empty_pipeline_is_valid_but_routes_nothing() -> None:
    assert parse_pipeline("[]") == []
    assert sets_channel([]) is False


@pytest.mark.parametrize("stage", ALLOWED_STAGES)
def test_every_allowed_stage_is_accepted(stage: str) -> None:
    args: dict[str, Any] = {
        "$unset": "x",
        "$replaceRoot": {"newRoot": "$$ROOT"},
        "$replaceWith": "$$ROOT",
        "$redact": "$$KEEP",
        "$changeStreamSplitLargeEvent": {},
    }
    stages = [{stage: args.get(stage, {"a": 1})}]
    assert validate_stages(stages) == stages


def test_not_json() -> None:
    (line,) = problems_of("[{'$match': {}}]")
    assert line.startswith("PIPELINE: not valid JSON or Extended JSON: Expecting property name")


@pytest.mark.parametrize(
    "value",
    ['{"$oid": "nothex"}', '{"$numberDecimal": "one"}', '{"$date": []}', '{"$timestamp": {"t": 1}}'],
)
def test_bad_extended_json(value: str) -> None:
    (line,) = problems_of('[{"$match": {"x": ' + value + "}}]")
    assert line.startswith("PIPELINE: not valid JSON or Extended JSON: ")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"$match": {}}', "PIPELINE: must be a JSON array of stages (got object)"),
        ('"x"', "PIPELINE: must be a JSON array of stages (got string)"),
        ("[3]", 'PIPELINE: stage 0: must be a document like {"$match": {...}} (got number)'),
        ("[[]]", 'PIPELINE: stage 0: must be a document like {"$match": {...}} (got array)'),
        ("[{}]", "PIPELINE: stage 0: must have exactly one key, the stage name (got 0: none)"),
        (
            '[{"$match": {}, "$set": {}}]',
            "PIPELINE: stage 0: must have exactly one key, the stage name (got 2: $match, $set)",
        ),
        (
            '[{"$match": {}}, {"$lookup": {}}]',
            "PIPELINE: stage 1: $lookup is not allowed in a change stream pipeline (allowed: $addFields, "
            "$changeStreamSplitLargeEvent, $match, $project, $redact, $replaceRoot, $replaceWith, $set, "
            "$unset)",
        ),
        ('[{"$match": []}]', "PIPELINE: stage 0: $match takes a document (got array)"),
        ('[{"$set": "x"}]', "PIPELINE: stage 0: $set takes a document (got string)"),
        ('[{"$project": {"_id": 0}}]', "PIPELINE: stage 0: $project must not exclude _id (the resume token)"),
        ('[{"$set": {"_id": 1}}]', "PIPELINE: stage 0: $set must not modify _id (the resume token)"),
        (
            '[{"$addFields": {"_id": "$x"}}]',
            "PIPELINE: stage 0: $addFields must not modify _id (the resume token)",
        ),
        ('[{"$unset": ["a", "_id"]}]', "PIPELINE: stage 0: $unset must not remove _id (the resume token)"),
        (
            '[{"$unset": 3}]',
            "PIPELINE: stage 0: $unset takes a field name or a non-empty array of field names",
        ),
        (
            '[{"$unset": []}]',
            "PIPELINE: stage 0: $unset takes a field name or a non-empty array of field names",
        ),
        (
            '[{"$replaceRoot": {"root": "$x"}}]',
            "PIPELINE: stage 0: $replaceRoot takes a document with exactly one key, newRoot",
        ),
        (
            '[{"$changeStreamSplitLargeEvent": {}}, {"$match": {}}]',
            "PIPELINE: stage 0: $changeStreamSplitLargeEvent must be the last stage",
        ),
        (
            '[{"$changeStreamSplitLargeEvent": {"x": 1}}]',
            "PIPELINE: stage 0: $changeStreamSplitLargeEvent takes an empty document {}",
        ),
    ],
)
def test_each_rule_one_line(text: str, message: str) -> None:
    assert problems_of(text) == [message]


KEEP = 'keep _id, e.g. {"$mergeObjects": ["$$ROOT", {...}]}'


@pytest.mark.parametrize(
    ("stage", "message"),
    [
        ('{"$set": {"_id._data": "x"}}', "$set must not modify _id (the resume token)"),
        ('{"$unset": "_id._data"}', "$unset must not remove _id (the resume token)"),
        ('{"$project": {"_id": "$documentKey"}}', "$project must not modify _id (the resume token)"),
        (
            '{"$replaceRoot": {"newRoot": "$fullDocument"}}',
            f"$replaceRoot with '$fullDocument' drops _id (the resume token); {KEEP}",
        ),
        (
            '{"$replaceWith": "$fullDocument"}',
            f"$replaceWith with '$fullDocument' drops _id (the resume token); {KEEP}",
        ),
        ('{"$replaceWith": 5}', "$replaceWith takes a document or an expression (got number)"),
        (
            '{"$replaceWith": {"_ablyChannel": "c", "doc": "$fullDocument"}}',
            f"$replaceWith document has no _id (the resume token); {KEEP}",
        ),
        (
            '{"$replaceWith": {"$mergeObjects": ["$fullDocument", {"_ablyChannel": "c"}]}}',
            "$replaceWith $mergeObjects has no $$ROOT or _id part, so _id (the resume token) is lost; "
            + KEEP,
        ),
        (
            '{"$replaceWith": {"$mergeObjects": ["$$ROOT", "$fullDocument"]}}',
            "$replaceWith merges $fullDocument after the root, replacing _id (the resume token); "
            "merge it first",
        ),
    ],
)
def test_rules_protecting_the_resume_token(stage: str, message: str) -> None:
    assert problems_of(f"[{stage}]") == [f"PIPELINE: stage 0: {message}"]


@pytest.mark.parametrize(
    "stage",
    [
        {"$project": {"_id": 1, "ns": 1}},
        {"$replaceWith": {"_id": "$_id", "_ablyChannel": "c", "doc": "$fullDocument"}},
        {"$replaceWith": {"$mergeObjects": ["$fullDocument", "$$ROOT", {"_ablyChannel": "c"}]}},
        {"$replaceWith": {"$mergeObjects": [{"_id": "$_id"}, {"_ablyChannel": "c"}]}},
        {"$replaceRoot": {"newRoot": {"$cond": [True, "$$ROOT", "$$ROOT"]}}},
    ],
)
def test_new_roots_that_keep_the_token_are_accepted(stage: dict[str, Any]) -> None:
    assert validate_stages([stage]) == [stage]


def test_every_bad_stage_reported_with_its_index_and_source() -> None:
    lines = problems_of('[{"$group": {}}, {"$match": {}}, {"$set": {"_id": 1}}]', source="PIPELINE_FILE")
    assert [line.split(":", 2)[1].strip() for line in lines] == ["stage 0", "stage 2"]
    assert all(line.startswith("PIPELINE_FILE: ") for line in lines)


@pytest.mark.parametrize(
    ("stages", "expected"),
    [
        ([{"$addFields": {"_ablyChannel": "x"}}], True),
        ([{"$set": {"_ablyChannel": {"$concat": ["a", "$ns.coll"]}}}], True),
        ([{"$project": {"_ablyChannel": "$ns.coll", "ns": 1}}], True),
        ([{"$project": {"_ablyChannel": 1}}], False),
        ([{"$replaceRoot": {"newRoot": {"_id": "$_id", "_ablyChannel": "c"}}}], True),
        ([{"$replaceRoot": {"newRoot": "$fullDocument"}}], False),
        ([{"$replaceWith": {"$mergeObjects": ["$$ROOT", {"_ablyChannel": "c"}]}}], True),
        ([{"$replaceWith": {"$mergeObjects": ["$$ROOT", "$fullDocument"]}}], False),
        ([{"$set": {"_ablyChannel": "c"}}, {"$unset": "_ablyChannel"}], False),
        ([{"$set": {"_ablyChannel": "c"}}, {"$unset": ["a", "b"]}], True),
        ([{"$set": {"_ablyChannel": "c"}}, {"$project": {"_ablyChannel": 0}}], False),
        ([{"$set": {"_ablyChannel": "c"}}, {"$project": {"fullDocument": 0}}], True),
        ([{"$set": {"_ablyChannel": "c"}}, {"$project": {"fullDocument": 1}}], False),
        ([{"$set": {"_ablyChannel": "c"}}, {"$project": {"fullDocument": 1, "_ablyChannel": 1}}], True),
        ([{"$set": {"_ablyChannel": "c"}}, {"$replaceWith": "$fullDocument"}], False),
        ([{"$set": {"_ablyChannel": "c"}}, {"$match": {"x": 1}}, {"$redact": "$$KEEP"}], True),
        ([{"$match": {"_ablyChannel": "c"}}], False),
        ([{"$set": {"_ablyMsgName": "c"}}], False),
    ],
)
def test_sets_channel(stages: list[dict[str, Any]], expected: bool) -> None:
    assert sets_channel(stages) is expected


def test_pipeline_hash_is_stable_and_sensitive() -> None:
    a = parse_pipeline('[{"$match": {"a": 1, "b": {"$oid": "65a1b2c3d4e5f60718293a4b"}}}]')
    same = parse_pipeline('[ {"$match" : {"a":1,\n "b":{"$oid":"65a1b2c3d4e5f60718293a4b"}}} ]')
    reordered = parse_pipeline('[{"$match": {"b": {"$oid": "65a1b2c3d4e5f60718293a4b"}, "a": 1}}]')
    as_string = parse_pipeline('[{"$match": {"a": 1, "b": "65a1b2c3d4e5f60718293a4b"}}]')
    digest = pipeline_hash(a)
    assert len(digest) == 64 and int(digest, 16) >= 0
    assert pipeline_hash(same) == digest
    assert pipeline_hash(reordered) != digest
    assert pipeline_hash(as_string) != digest
    assert pipeline_hash(parse_pipeline('[{"$match": {"a": 1.0}}]')) != pipeline_hash(
        parse_pipeline('[{"$match": {"a": 1}}]')
    )


# ---- evaluated with mongomock's aggregation engine on sample change events ----

OID = ObjectId("65a1b2c3d4e5f60718293a4b")


def sample_events() -> list[dict[str, Any]]:
    def event(data: str, op: str, coll: str | None, **rest: Any) -> dict[str, Any]:
        ns = {"db": "shop", **({"coll": coll} if coll else {})}
        return {"_id": {"_data": data}, "operationType": op, "ns": ns, **rest}

    return [
        event("01", "insert", "orders", documentKey={"_id": OID},
              fullDocument={"_id": OID, "channel": "room:1", "mutationId": "m-1"}),
        event("02", "update", "orders", documentKey={"_id": 7},
              updateDescription={"updatedFields": {"mutationId": "m-2"}, "removedFields": []}),
        event("03", "delete", "orders", documentKey={"_id": "abc"},
              fullDocumentBeforeChange={"_id": "abc", "channel": "room:2"}),
        event("04", "insert", "ably", documentKey={"_id": "shop"}, fullDocument={"_id": "shop"}),
        event("05", "update", "ably_deadletter", documentKey={"_id": 1}),
        event("06", "dropDatabase", None),
        {"_id": {"_data": "07"}, "operationType": "invalidate"},
        event("08", "insert", "users", documentKey={"_id": 9}, fullDocument={"_id": 9}),
        event("09", "insert", "users", documentKey={"_id": {"a": 1}}, fullDocument={"_id": {"a": 1}}),
    ]  # fmt: skip


@pytest.fixture
def events() -> Iterator[Any]:
    client: Any = mongomock.MongoClient()
    collection = client.db.events
    collection.insert_many(sample_events())
    yield collection
    client.close()


def run(collection: Any, stages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return list(collection.aggregate(stages))


def test_exclusion_stage_blocks_own_collections_only(events: Any) -> None:
    stage = exclusion_stage(["ably", "ably_deadletter"])
    assert stage == {"$match": {"ns.coll": {"$nin": ["ably", "ably_deadletter"]}}}
    passed = [e["_id"]["_data"] for e in run(events, [stage])]
    assert passed == ["01", "02", "03", "06", "07", "08", "09"]


def test_shipped_pipelines_exist() -> None:
    assert {p.name for p in SHIPPED} >= {
        "channel-per-document.json",
        "channel-from-field.json",
        "channel-per-collection.json",
        "models-sdk.json",
    }
    readme = (PIPELINES / "README.md").read_text()
    assert all(p.name in readme for p in SHIPPED)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_pipeline_parses_validates_and_sets_channel(path: Path) -> None:
    stages = parse_pipeline(path.read_text(), source="PIPELINE_FILE")
    assert sets_channel(stages)
    assert len(pipeline_hash(stages)) == 64


def routed(name: str) -> dict[str, tuple[str, str, dict[str, str] | None] | str]:
    """Run a shipped pipeline over the sample events and map each survivor through to_message.

    mongomock lacks the `$type` expression the per-document pipelines use, so this runs on the
    project's MongoDB emulator engine (whose fidelity the conformance suite measures). The value is
    (channel, name, headers), or the reason when the event is unpublishable.
    """
    stages = [exclusion_stage(["ably", "ably_deadletter"]), *parse_pipeline((PIPELINES / name).read_text())]
    out: dict[str, tuple[str, str, dict[str, str] | None] | str] = {}
    for event in run_pipeline(sample_events(), stages):
        try:
            msg = to_message(0, event, json_mode="relaxed", max_message_size=65536)
        except UnpublishableEvent as exc:
            out[event["_id"]["_data"]] = exc.reason
            continue
        headers = msg.message.get("extras", {}).get("headers")
        out[event["_id"]["_data"]] = (msg.channel, msg.message["name"], headers)
    return out


NULL_CHANNEL = "_ablyChannel is null (the pipeline computed no channel for this event)"


def test_channel_per_document_routes() -> None:
    assert routed("channel-per-document.json") == {
        "01": (f"orders:{OID}", "insert", None),
        "02": ("orders:7", "update", None),
        "03": ("orders:abc", "delete", None),
        "08": ("users:9", "insert", None),
        "09": NULL_CHANNEL,  # a document _id: dead-lettered instead of failing the stream
    }


def test_channel_from_field_routes() -> None:
    assert routed("channel-from-field.json") == {
        "01": ("room:1", "insert", None),
        "03": ("room:2", "delete", None),
    }


def test_channel_per_collection_routes() -> None:
    assert routed("channel-per-collection.json") == {
        "01": ("orders", "insert", None),
        "02": ("orders", "update", None),
        "03": ("orders", "delete", None),
        "08": ("users", "insert", None),
        "09": ("users", "insert", None),
    }


def test_models_sdk_routes_with_mutation_header() -> None:
    header = "x-ably-models-event-uuid"
    assert routed("models-sdk.json") == {
        "01": (f"orders:{OID}", "insert", {header: "m-1"}),
        "02": ("orders:7", "update", {header: "m-2"}),
        "03": ("orders:abc", "delete", {header: "03"}),
        "08": ("users:9", "insert", {header: "08"}),
        "09": NULL_CHANNEL,
    }


def test_exclusion_stage_same_on_emulator_engine() -> None:
    """The emulator's engine agrees with mongomock on the exclusion stage (both stand in for MongoDB)."""
    stage = exclusion_stage(["ably", "ably_deadletter"])
    passed = [e["_id"]["_data"] for e in run_pipeline(sample_events(), [stage])]
    assert passed == ["01", "02", "03", "06", "07", "08", "09"]
