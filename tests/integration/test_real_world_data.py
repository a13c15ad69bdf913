"""Data production holds never stops the stream (invariant 10): every value MongoDB stores, events over
16 MiB, changes over Ably's message size. MongoDB is the emulator or MONGODB_TEST_URI; Ably the emulator."""

from __future__ import annotations

import asyncio
import json
import math
import uuid
from typing import Any

import bson
import pytest
from bson import (
    Binary,
    Code,
    DatetimeMS,
    DBRef,
    Decimal128,
    Int64,
    MaxKey,
    MinKey,
    ObjectId,
    Regex,
    Timestamp,
)
from bson.raw_bson import RawBSONDocument
from pymongo import AsyncMongoClient

from connector.sources.mongodb.client import Mongo
from tests.integration.harness import connector, until, wait_delivered

pytestmark = pytest.mark.integration

YEAR_10000_MS = 253402300800000 + 1000  # 10000-01-01T00:00:01Z
BEFORE_YEAR_1_MS = -62135596800000 - 1  # one millisecond before 0001-01-01
NINE_MIB = 9 * 1024 * 1024


@pytest.fixture
async def raw_db(mongo_uri: str, db_name: str) -> Any:
    """A client that writes and reads any stored value (out-of-range dates, raw BSON)."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        mongo_uri, datetime_conversion="DATETIME_AUTO", unicode_decode_error_handler="replace"
    )
    yield client[db_name]
    await client.drop_database(db_name)
    await client.close()


def by_id(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages in stream order: channels publish concurrently, so arrival order across them is free."""
    return sorted(messages, key=lambda m: m["id"])


def raw_doc(doc: dict[str, Any], replace: bytes, by: bytes) -> RawBSONDocument:
    """A document whose BSON has `replace` swapped for `by` (same length): invalid UTF-8, for one."""
    assert len(replace) == len(by)
    data = bson.encode(doc)
    assert data.count(replace) == 1
    return RawBSONDocument(data.replace(replace, by))


async def test_out_of_range_dates_are_published_as_canonical_dates_and_the_stream_goes_on(
    connector_env: dict[str, str], raw_db: Any, ably: Any
) -> None:
    async with connector(connector_env):
        await raw_db.orders.insert_one({"_id": "late", "at": DatetimeMS(YEAR_10000_MS)})
        await raw_db.orders.insert_one({"_id": "early", "at": DatetimeMS(BEFORE_YEAR_1_MS)})
        await raw_db.orders.insert_one({"_id": "after"})
        msgs = by_id(await wait_delivered(ably, 3))
    assert [m["channel"] for m in msgs] == ["orders:late", "orders:early", "orders:after"]
    assert msgs[0]["event"]["fullDocument"]["at"] == {"$date": {"$numberLong": str(YEAR_10000_MS)}}
    assert msgs[1]["event"]["fullDocument"]["at"] == {"$date": {"$numberLong": str(BEFORE_YEAR_1_MS)}}


async def test_invalid_utf8_is_published_with_replacement_characters_and_counted(
    connector_env: dict[str, str], raw_db: Any, ably: Any
) -> None:
    async with connector(connector_env) as running:
        await raw_db.orders.insert_one(raw_doc({"_id": "bad", "name": "abc"}, b"abc", b"a\xffc"))
        await raw_db.orders.insert_one({"_id": "good", "name": "abc"})
        msgs = by_id(await wait_delivered(ably, 2))
        assert running.runtime.snapshot()["lossy_decodes"] >= 1
    assert msgs[0]["event"]["fullDocument"] == {"_id": "bad", "name": "a\ufffdc"}
    assert msgs[1]["event"]["fullDocument"] == {"_id": "good", "name": "abc"}


def every_bson_value() -> dict[str, Any]:
    """One of each BSON type and its edge values, as production databases hold them."""
    nested: dict[str, Any] = {"leaf": 1}
    for _ in range(90):
        nested = {"n": nested}
    return {
        "double": 1.5,
        "nan": float("nan"),
        "inf": float("inf"),
        "ninf": float("-inf"),
        "negzero": -0.0,
        "int32max": 2**31 - 1,
        "int32min": -(2**31),
        "int64max": Int64(2**63 - 1),
        "int64min": Int64(-(2**63)),
        "beyond53": Int64(2**53 + 1),
        "dec": Decimal128("1234567890.123456789012345678901234"),
        "decnan": Decimal128("NaN"),
        "decinf": Decimal128("-Infinity"),
        "decnegzero": Decimal128("-0"),
        "decsmall": Decimal128("1E-6176"),
        "string": "héllo \u2603 \U0001f600",
        "empty": "",
        "nul": None,
        "bools": [True, False],
        "oid": ObjectId("65a1b2c3d4e5f60718293a4b"),
        "regex": Regex("^a.*z$", "imsx"),
        "code": Code("function () { return 1; }"),
        "codews": Code("x", {"y": 1}),
        "ts": Timestamp(1700000000, 7),
        "minkey": MinKey(),
        "maxkey": MaxKey(),
        "dbref": DBRef("other", ObjectId("65a1b2c3d4e5f60718293a4b"), "db2"),
        "bin0": Binary(b"\x00\x01\xff", 0),
        "uuid4": Binary(uuid.UUID("12345678-1234-5678-1234-567812345678").bytes, 4),
        "uuid3": Binary(b"\x11" * 16, 3),
        "md5": Binary(b"\x22" * 16, 5),
        "user": Binary(b"custom", 0x80),
        "bigbin": Binary(b"\xab" * 30_000, 0),
        "emptydoc": {},
        "emptyarr": [],
        "": "empty key",
        "deep": nested,
    }


async def test_every_bson_type_and_edge_value_reaches_its_channel(
    connector_env: dict[str, str], raw_db: Any, ably: Any
) -> None:
    doc = {"_id": "all", **every_bson_value()}
    async with connector(connector_env, JSON_MODE="canonical"):
        await raw_db.orders.insert_one(doc)
        await raw_db.orders.insert_one({"_id": "after"})
        msgs = by_id(await wait_delivered(ably, 2))
    published = msgs[0]["event"]["fullDocument"]
    # Canonical Extended JSON keeps every value exact: it parses back to the stored document.
    back = bson.json_util.loads(json.dumps(published))
    assert back.keys() == doc.keys()
    for key, value in doc.items():
        if isinstance(value, float) and math.isnan(value):
            assert math.isnan(back[key])
        elif key == "regex":
            assert (back[key].pattern, back[key].flags) == (value.pattern, value.flags)
        elif isinstance(value, Binary) and value.subtype == 0:
            assert back[key] == bytes(value), key  # json_util reads subtype 0 back as bytes
        else:
            assert back[key] == value, key
    assert published["int64max"] == {"$numberLong": str(2**63 - 1)}
    assert published["nan"] == {"$numberDouble": "NaN"}
    assert msgs[1]["channel"] == "orders:after"


async def test_relaxed_mode_writes_large_integers_as_plain_numbers(
    connector_env: dict[str, str], raw_db: Any, ably: Any
) -> None:
    async with connector(connector_env):
        await raw_db.orders.insert_one({"_id": "n", "big": Int64(2**53 + 1), "nan": float("nan")})
        (msg,) = by_id(await wait_delivered(ably, 1))
    assert f'"big":{2**53 + 1}' in msg["data"]  # exact in the JSON text; JS Number rounds it
    assert msg["event"]["fullDocument"]["nan"] == {"$numberDouble": "NaN"}


async def images_collection(db: Any) -> None:
    await db.create_collection("orders", changeStreamPreAndPostImages={"enabled": True})


async def big_document_with_images(db: Any, connector_env: dict[str, str], **settings: str) -> dict[str, str]:
    """`orders` with pre- and post-images holding a 9 MiB document; the connector's env asking for both
    images (an update of it is an ~18 MiB event)."""
    await images_collection(db)
    await db.orders.insert_one({"_id": "big", "blob": "x" * NINE_MIB})
    return {
        **connector_env,
        "FULL_DOCUMENT": "required",
        "FULL_DOCUMENT_BEFORE_CHANGE": "required",
        **settings,
    }


async def test_update_of_a_9_mib_document_with_both_images_arrives_and_the_stream_goes_on(
    connector_env: dict[str, str], db: Any, ably: Any
) -> None:
    """Pre- and post-images of a 9 MiB document make an ~18 MiB event: split by the server, reassembled,
    published truncated (over MAX_MESSAGE_SIZE), and the changes after it flow."""
    env = await big_document_with_images(db, connector_env)
    async with connector(env) as running:
        await db.orders.update_one({"_id": "big"}, {"$set": {"small": 1}})
        await db.orders.insert_one({"_id": "next"})
        msgs = by_id(await wait_delivered(ably, 2, timeout=60))
        assert running.term.reader.fragments.reassembled == 1
        assert running.source.route_stats.truncated == 1
    big, nxt = msgs
    assert big["name"] == "update" and nxt["channel"] == "orders:next"
    headers = big["extras"]["headers"]
    assert headers["x-livesync-truncated"] == "true"
    assert int(headers["x-livesync-original-size"]) > 2 * NINE_MIB
    assert big["event"]["documentKey"] == {"_id": "big"}
    assert "splitEvent" not in big["event"]
    assert big["id"] < nxt["id"]


async def test_without_the_split_stage_an_event_over_16_mib_arrives_truncated(
    connector_env: dict[str, str], db: Any, ably: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server older than 7.0 / 6.0.9: the appended stages drop the bodies server-side."""

    async def old_server(self: Mongo) -> tuple[int, ...]:
        return (6, 0, 8)

    monkeypatch.setattr(Mongo, "server_version", old_server)
    env = await big_document_with_images(db, connector_env)
    async with connector(env) as running:
        await db.orders.update_one({"_id": "big"}, {"$set": {"small": 1}})
        await db.orders.insert_one({"_id": "next", "v": 1})
        msgs = by_id(await wait_delivered(ably, 2, timeout=60))
        assert running.term.reader.fragments.reassembled == 0
    big, nxt = msgs
    headers = big["extras"]["headers"]
    assert headers["x-livesync-truncated"] == "true"
    assert int(headers["x-livesync-original-size"]) > 2 * NINE_MIB
    assert "_livesyncOversize" not in big["event"] and "fullDocument" not in big["event"]
    # A small event keeps its bodies, and the stages leave no trace on it.
    assert nxt["event"]["fullDocument"] == {"_id": "next", "v": 1}
    assert "_livesyncOversize" not in nxt["event"]


async def test_dead_letter_of_an_event_too_large_to_store_whole_keeps_its_identity(
    connector_env: dict[str, str], db: Any, ably: Any
) -> None:
    """ON_OVERSIZE=deadletter with a 9 MiB document's update: the dead letter would be over 16 MiB with
    both images, so it is stored without the bodies, with the event's size; nothing blocks."""
    env = await big_document_with_images(db, connector_env)
    async with connector(env, ON_OVERSIZE="deadletter") as running:
        await db.orders.update_one({"_id": "big"}, {"$set": {"small": 1}})
        await db.orders.insert_one({"_id": "next"})
        await wait_delivered(ably, 1, timeout=60)
        await until(lambda: running.source.unpublishable.deadlettered == 1, what="the dead letter")
    dead = await db.ably_deadletter.find_one({})
    assert dead["kind"] == "too_large"
    assert dead["eventTruncated"] is True and dead["eventSize"] > 2 * NINE_MIB
    assert dead["event"]["documentKey"] == {"_id": "big"}


async def test_out_of_range_dates_survive_updates_and_images(
    connector_env: dict[str, str], raw_db: Any, ably: Any
) -> None:
    await raw_db.create_collection("orders", changeStreamPreAndPostImages={"enabled": True})
    await raw_db.orders.insert_one({"_id": "d", "at": DatetimeMS(YEAR_10000_MS)})
    env = {**connector_env, "FULL_DOCUMENT": "updateLookup", "FULL_DOCUMENT_BEFORE_CHANGE": "whenAvailable"}
    async with connector(env):
        await raw_db.orders.update_one({"_id": "d"}, {"$set": {"later": DatetimeMS(YEAR_10000_MS + 1)}})
        (msg,) = by_id(await wait_delivered(ably, 1))
    event = msg["event"]
    assert event["updateDescription"]["updatedFields"] == {
        "later": {"$date": {"$numberLong": str(YEAR_10000_MS + 1)}}
    }
    assert event["fullDocumentBeforeChange"]["at"] == {"$date": {"$numberLong": str(YEAR_10000_MS)}}
    assert event["fullDocument"]["later"] == {"$date": {"$numberLong": str(YEAR_10000_MS + 1)}}


async def test_no_resume_token_is_stored_between_the_fragments_of_a_split_event(
    connector_env: dict[str, str], db: Any, ably: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One fragment per batch and frequent checkpoints: every stored token is before the event's first
    fragment or at/after its last, so a crash at any moment resumes before the event (then rebuilt whole,
    with the same id) or after it."""
    from connector.sources.mongodb.checkpoint import TokenStore

    stored: list[str] = []
    original = TokenStore.store

    async def spy(self: TokenStore, token: Any, *args: Any, **kwargs: Any) -> Any:
        stored.append(token["_data"])
        return await original(self, token, *args, **kwargs)

    monkeypatch.setattr(TokenStore, "store", spy)
    env = await big_document_with_images(
        db,
        connector_env,
        STREAM_BATCH_SIZE="1",
        CHECKPOINT_INTERVAL_MS="10",
        IDLE_CHECKPOINT_INTERVAL_S="0.01",
    )
    async with connector(env):
        await db.orders.update_one({"_id": "big"}, {"$set": {"small": 1}})
        await db.orders.insert_one({"_id": "next"})
        big, _ = by_id(await wait_delivered(ably, 2, timeout=60))
    # The fragments' tokens, read with the same pipeline the connector ran.
    fragments: list[tuple[str, int, int]] = []
    async with await db.orders.watch(
        [{"$set": {"_ablyChannel": "x"}}, {"$changeStreamSplitLargeEvent": {}}],
        full_document="required",
        full_document_before_change="required",
        start_after={"_data": stored[0]},
        batch_size=1,
    ) as stream:
        while not fragments or fragments[-1][1] < fragments[-1][2]:
            change = await stream.try_next()
            if change is not None and "splitEvent" in change:
                split = change["splitEvent"]
                fragments.append((change["_id"]["_data"], split["fragment"], split["of"]))
    first, last = fragments[0][0], fragments[-1][0]
    assert big["id"] == last
    assert stored and not [token for token in stored if first <= token < last]


async def test_a_crash_in_the_middle_of_a_split_event_loses_and_duplicates_nothing(
    connector_env: dict[str, str], db: Any, ably: Any
) -> None:
    """The connector dies (its task cancelled: no drain, no final checkpoint, as kill -9) while it holds
    the first fragment of a split event; the next one rebuilds the event whole: one message, its id the
    last fragment's token, then the change after it."""
    from connector.config import load_settings
    from connector.sources.mongodb.source import MongoSource
    from tests.integration.harness import current_term, mongo_runtime, stream_open

    env = await big_document_with_images(db, connector_env, STREAM_BATCH_SIZE="1")
    runtime = mongo_runtime(load_settings(env, env_file=None))
    task = asyncio.create_task(runtime.run())
    await until(lambda: stream_open(runtime), what="the stream to open")
    term = current_term(runtime)
    assert term is not None
    await db.orders.update_one({"_id": "big"}, {"$set": {"small": 1}})
    await until(lambda: term.reader.fragments.pending, what="the first fragment", timeout=30)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert isinstance(runtime.source, MongoSource)
    await runtime.source.mongo.close()
    assert ably.messages() == [], "nothing of the split event published before the crash"
    async with connector(env) as running:
        await db.orders.insert_one({"_id": "next"})
        big, nxt = by_id(await wait_delivered(ably, 2, timeout=60))
        assert running.term.reader.fragments.reassembled == 1
    assert big["name"] == "update" and big["extras"]["headers"]["x-livesync-truncated"] == "true"
    assert nxt["channel"] == "orders:next"
    assert len(ably.messages()) == 2 and ably.stats()["duplicates_dropped"] == 0
