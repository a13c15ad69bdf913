"""Change events over 16 MiB: BSONObjectTooLarge, or fragments with `$changeStreamSplitLargeEvent`.

The connector accepts `$changeStreamSplitLargeEvent` as the last user stage (connector/pipeline.py); an
event carrying both images of a ~9 MiB document exceeds the 16 MiB limit on a real server, which then fails
the getMore with 10334 unless the stream splits the event (MongoDB manual: "Large Change Stream Events").
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import bson
import pytest
from bson import Int64
from pymongo import MongoClient
from pymongo.errors import OperationFailure

#: Needs a MongoDB server: the emulator, or MONGODB_TEST_URI.
pytestmark = pytest.mark.integration

EVENT_WAIT_S = 20.0
MAX_AWAIT_MS = 200
BSON_OBJECT_TOO_LARGE = 10334
MAX_BSON_SIZE = 16 * 1024 * 1024

#: Each image is ~9 MiB, so an event with both is ~18 MiB: over the limit, fits in two fragments.
BIG = "x" * (9 * 1024 * 1024)


async def _large_update_stream(async_db: Any, pipeline: list[dict[str, Any]]) -> Any:
    await async_db.create_collection("big", changeStreamPreAndPostImages={"enabled": True})
    await async_db["big"].insert_one({"_id": 1, "blob": BIG})
    return await async_db["big"].watch(
        pipeline,
        full_document="required",
        full_document_before_change="required",
        max_await_time_ms=MAX_AWAIT_MS,
    )


async def test_event_over_16_mib_fails_with_bson_object_too_large(async_db: Any) -> None:
    stream = await _large_update_stream(async_db, [])
    try:
        await async_db["big"].update_one({"_id": 1}, {"$set": {"small": 1}})
        with pytest.raises(OperationFailure) as excinfo:
            async with asyncio.timeout(EVENT_WAIT_S):
                while await stream.try_next() is None:
                    pass
        assert excinfo.value.code == BSON_OBJECT_TOO_LARGE
    finally:
        await stream.close()


async def test_split_large_event_delivers_numbered_fragments(async_db: Any) -> None:
    stream = await _large_update_stream(async_db, [{"$changeStreamSplitLargeEvent": {}}])
    fragments: list[dict[str, Any]] = []
    try:
        await async_db["big"].update_one({"_id": 1}, {"$set": {"small": 1}})
        async with asyncio.timeout(EVENT_WAIT_S):
            while (
                not fragments or fragments[-1]["splitEvent"]["fragment"] < fragments[-1]["splitEvent"]["of"]
            ):
                event = await stream.try_next()
                if event is not None:
                    fragments.append(event)
    finally:
        await stream.close()
    total = fragments[0]["splitEvent"]["of"]
    assert total >= 2
    assert [f["splitEvent"] for f in fragments] == [{"fragment": i, "of": total} for i in range(1, total + 1)]
    tokens = [f["_id"]["_data"] for f in fragments]
    assert tokens == sorted(tokens)
    assert len(set(tokens)) == total
    assert all(len(bson.encode(f)) <= MAX_BSON_SIZE for f in fragments)
    merged: dict[str, Any] = {}
    for fragment in fragments:
        merged.update({key: value for key, value in fragment.items() if key not in ("_id", "splitEvent")})
    assert merged["operationType"] == "update"
    assert merged["fullDocument"] == {"_id": 1, "blob": BIG, "small": 1}
    assert merged["fullDocumentBeforeChange"] == {"_id": 1, "blob": BIG}


async def test_split_stage_must_be_last(async_db: Any) -> None:
    with pytest.raises(OperationFailure):
        await async_db["c"].watch([{"$changeStreamSplitLargeEvent": {}}, {"$match": {}}])


# -- $changeStreamSplitLargeEvent against the server's algorithm ------------------------------------------
# document_source_change_stream_split_large_event.cpp and change_stream_split_event_helpers.cpp (mongod):
# events up to kBSONObjMaxChangeEventSize (BSONObjMaxInternalSize, 16 MiB + 16 KiB, less 8 KiB) are
# returned whole; larger ones are split into fragments that take the top-level fields other than `_id`
# sorted by BSON size and then name, each fragment starting with its own `_id` token and `splitEvent`.
MAX_FRAGMENT_BYTES = MAX_BSON_SIZE + 16 * 1024 - 8 * 1024
MIB = 1024 * 1024
SPLIT = [{"$changeStreamSplitLargeEvent": {}}]
#: The streams start at the insert's time: its event is left out.
UPDATES_SPLIT = [{"$match": {"operationType": "update"}}, *SPLIT]
CHANGE_STREAM_FATAL = 280
UNRECOGNIZED_STAGE = 40324
SPLIT_SPEC_NOT_EMPTY = 7182800
IMAGES: dict[str, Any] = {"fullDocument": "required", "fullDocumentBeforeChange": "required"}


def _element_size(name: str, value: Any) -> int:
    return len(bson.encode({name: value})) - 5


def _three_fragment_update(sync_db: Any) -> Any:
    """An update whose event holds a 6 MiB updateDescription and two 12 MiB images: three fragments."""
    sync_db.create_collection("split3", changeStreamPreAndPostImages={"enabled": True})
    coll = sync_db["split3"]
    coll.insert_one({"_id": 1, "a": "a" * (6 * MIB), "b": "b" * (6 * MIB)})
    start = sync_db.client.admin.command("ping")["operationTime"]
    coll.update_one({"_id": 1}, {"$set": {"b": "c" * (6 * MIB)}})
    return start


def _open(sync_db: Any, coll: str, pipeline: list[Any], batch_size: int, **spec: Any) -> dict[str, Any]:
    return dict(
        sync_db.command(
            "aggregate",
            coll,
            pipeline=[{"$changeStream": spec}, *pipeline],
            cursor={"batchSize": batch_size},
        )["cursor"]
    )


def _get_more(sync_db: Any, coll: str, cursor_id: int, batch_size: int | None = None) -> dict[str, Any]:
    options: dict[str, Any] = {"collection": coll, "maxTimeMS": MAX_AWAIT_MS}
    if batch_size is not None:
        options["batchSize"] = batch_size
    return dict(sync_db.command("getMore", Int64(cursor_id), **options)["cursor"])


def _drain(sync_db: Any, coll: str, cursor: dict[str, Any], count: int) -> list[list[dict[str, Any]]]:
    """Batches (getMores without a batch size) until ``count`` documents came."""
    batches = [cursor["firstBatch"]] if cursor["firstBatch"] else []
    deadline = time.monotonic() + EVENT_WAIT_S
    while sum(map(len, batches)) < count:
        assert time.monotonic() < deadline, "the fragments did not arrive"
        batch = _get_more(sync_db, coll, cursor["id"])["nextBatch"]
        if batch:
            batches.append(batch)
    sync_db.command("killCursors", coll, cursors=[cursor["id"]])
    return batches


def test_fragments_take_the_fields_by_size_each_with_its_token(sync_db: Any) -> None:
    start = _three_fragment_update(sync_db)
    cursor = _open(sync_db, "split3", UPDATES_SPLIT, 0, startAtOperationTime=start, **IMAGES)
    fragments = [doc for batch in _drain(sync_db, "split3", cursor, 3) for doc in batch]
    assert [f["splitEvent"] for f in fragments] == [{"fragment": n, "of": 3} for n in (1, 2, 3)]
    assert all(list(f)[:2] == ["_id", "splitEvent"] for f in fragments)
    assert all(len(bson.encode(f)) <= MAX_FRAGMENT_BYTES for f in fragments)
    tokens = [f["_id"]["_data"] for f in fragments]
    assert tokens == sorted(set(tokens))
    fields = [(name, value) for f in fragments for name, value in list(f.items())[2:]]
    keys = [(_element_size(name, value), name.encode()) for name, value in fields]
    assert keys == sorted(keys)  # ascending size, then name: the first fragment holds the most fields
    merged = dict(fields)
    assert merged["operationType"] == "update" and merged["documentKey"] == {"_id": 1}
    assert merged["updateDescription"]["updatedFields"] == {"b": "c" * (6 * MIB)}
    assert merged["fullDocument"] == {"_id": 1, "a": "a" * (6 * MIB), "b": "c" * (6 * MIB)}
    assert merged["fullDocumentBeforeChange"] == {"_id": 1, "a": "a" * (6 * MIB), "b": "b" * (6 * MIB)}
    assert [name for name, _ in fields][-3:] == [
        "updateDescription",
        "fullDocument",
        "fullDocumentBeforeChange",
    ]


def test_batch_size_1_returns_one_fragment_a_batch_with_its_token_as_pbrt(sync_db: Any) -> None:
    """A batch that ends inside a split event carries the last fragment's token as its
    postBatchResumeToken, so a driver that resumes from it gets the remaining fragments."""
    start = _three_fragment_update(sync_db)
    cursor = _open(sync_db, "split3", UPDATES_SPLIT, 1, startAtOperationTime=start, **IMAGES)
    first = cursor["firstBatch"]
    assert [f["splitEvent"]["fragment"] for f in first] == [1]
    assert cursor["postBatchResumeToken"] == first[0]["_id"]
    second = _get_more(sync_db, "split3", cursor["id"], batch_size=1)
    assert [f["splitEvent"]["fragment"] for f in second["nextBatch"]] == [2]
    assert second["postBatchResumeToken"] == second["nextBatch"][0]["_id"]
    sync_db.command("killCursors", "split3", cursors=[cursor["id"]])


def test_resuming_from_each_fragment_returns_the_rest(sync_db: Any) -> None:
    start = _three_fragment_update(sync_db)
    cursor = _open(sync_db, "split3", UPDATES_SPLIT, 0, startAtOperationTime=start, **IMAGES)
    fragments = [doc for batch in _drain(sync_db, "split3", cursor, 3) for doc in batch]
    for n, fragment in enumerate(fragments[:-1], start=1):
        resumed = _open(sync_db, "split3", UPDATES_SPLIT, 0, resumeAfter=fragment["_id"], **IMAGES)
        rest = [doc for batch in _drain(sync_db, "split3", resumed, 3 - n) for doc in batch]
        assert [f["_id"] for f in rest] == [f["_id"] for f in fragments[n:]]


def test_resuming_from_a_fragment_needs_the_split_stage(sync_db: Any) -> None:
    """Pipeline::validateCommon: ChangeStreamFatalError without the stage; with it, a pipeline that no
    longer produces a large event cannot reproduce the split (ChangeStreamFatalError too)."""
    start = _three_fragment_update(sync_db)
    cursor = _open(sync_db, "split3", UPDATES_SPLIT, 1, startAtOperationTime=start, **IMAGES)
    token = cursor["firstBatch"][0]["_id"]
    sync_db.command("killCursors", "split3", cursors=[cursor["id"]])
    with pytest.raises(OperationFailure) as excinfo:
        _open(sync_db, "split3", [], 1, resumeAfter=token, **IMAGES)
    assert excinfo.value.code == CHANGE_STREAM_FATAL
    shrinking = [
        {"$unset": ["fullDocument", "fullDocumentBeforeChange", "updateDescription"]},
        *UPDATES_SPLIT,
    ]
    with pytest.raises(OperationFailure) as excinfo:
        _open(sync_db, "split3", shrinking, 1, resumeAfter=token, **IMAGES)
    assert excinfo.value.code == CHANGE_STREAM_FATAL


def test_a_batch_holds_fragments_of_two_events_up_to_16_mib(sync_db: Any) -> None:
    """Batches are filled to 16 MiB (the first document always goes in): the last fragment of one split
    event and the first of the next share a batch when together they fit."""
    coll = sync_db["twosplits"]
    copies = {"$set": {name: "$fullDocument.blob" for name in ("c1", "c2", "c3", "c4")}}
    cursor = _open(sync_db, "twosplits", [copies, *SPLIT], 0)
    # Five 3.5 MiB fields (four copies and fullDocument): 14 MiB + 3.5 MiB. Five of 6 MiB: 12 + 12 + 6.
    coll.insert_one({"_id": 1, "blob": "a" * (7 * MIB // 2)})
    coll.insert_one({"_id": 2, "blob": "b" * (6 * MIB)})
    batches = _drain(sync_db, "twosplits", cursor, 5)
    shape = [[(f["splitEvent"]["fragment"], f["splitEvent"]["of"]) for f in batch] for batch in batches]
    assert shape == [[(1, 2)], [(2, 2), (1, 3)], [(2, 3)], [(3, 3)]]
    assert all(sum(len(bson.encode(f)) for f in batch) <= MAX_BSON_SIZE for batch in batches[1:3])


async def test_split_stage_takes_an_empty_document(async_db: Any) -> None:
    with pytest.raises(OperationFailure) as excinfo:
        await async_db["c"].watch([{"$changeStreamSplitLargeEvent": {"x": 1}}])
    assert excinfo.value.code == SPLIT_SPEC_NOT_EMPTY


def _split_supported(version: tuple[int, ...]) -> bool:
    return version >= (7, 0) or (6, 0, 9) <= version < (6, 1)


async def test_split_stage_matches_the_server_version(async_client: Any, async_db: Any) -> None:
    version = tuple((await async_client.admin.command("buildInfo"))["versionArray"][:3])
    if _split_supported(version):
        async with await async_db["c"].watch(SPLIT) as stream:
            assert stream.alive
        return
    with pytest.raises(OperationFailure) as excinfo:
        await async_db["c"].watch(SPLIT)
    assert excinfo.value.code == UNRECOGNIZED_STAGE


@pytest.mark.parametrize(
    ("server_version", "supported"),
    [
        ("6.0.0", False),
        ("6.0.8", False),
        ("6.0.9", True),
        ("6.1.0", False),
        ("6.3.2", False),
        ("7.0.0", True),
        ("8.0.4", True),
    ],
)
def test_split_stage_exists_from_7_0_and_6_0_9(
    private_emulator: Any, server_version: str, supported: bool
) -> None:
    """SERVER-71828, backported to 6.0.9 (the manual: "New in MongoDB 7.0 (and 6.0.9)"); elsewhere the
    stage is unknown: UnrecognizedPipelineStage 40324, like any unknown stage."""
    with private_emulator(server_version=server_version) as uri:
        client: MongoClient[dict[str, Any]] = MongoClient(uri)
        try:
            coll = client.db.c
            if supported:
                with coll.watch(SPLIT) as stream:
                    assert stream.alive
            else:
                with pytest.raises(OperationFailure) as excinfo:
                    coll.watch(SPLIT)
                assert excinfo.value.code == UNRECOGNIZED_STAGE
        finally:
            client.close()
