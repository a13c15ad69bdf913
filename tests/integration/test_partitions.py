"""Partitioned connectors end to end in-process (emulator, or MONGODB_TEST_URI): N partitions together deliver
every change exactly once, in order per channel, each channel by exactly one partition; the events without
a channel by partition 0 only; ids per partition; PARTITIONS=1 unchanged; changing N hands over from the
old layout's oldest position, and two layouts never lead at once."""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import pytest

from connector.ably.outbound import OutboundMessage
from connector.config import load_settings
from connector.runtime import Runtime
from connector.sources.mongodb import partitions
from connector.sources.mongodb.layout import LayoutGuard
from connector.sources.mongodb.partitions import Partition, bucket_of, hashed_index_key, partition_stage
from connector.sources.mongodb.source import MongoSource
from tests.integration.harness import delivered, stream_open, until, wait_delivered

pytestmark = pytest.mark.integration

#: The channel comes from the document (`ch`); a document without one makes an unpublishable event.
PIPELINE = '[{"$set": {"_ablyChannel": "$fullDocument.ch"}}]'
CHANNELS = [f"orders:{i}" for i in range(24)]


class Partitioned:
    """One in-process connector of a layout, recording which channels its reader routed."""

    def __init__(self, env: Mapping[str, str], count: int, index: int) -> None:
        settings = load_settings(
            {**env, "PARTITIONS": str(count), "PARTITION": str(index), "INSTANCE_ID": f"p{index}of{count}"},
            env_file=None,
        )
        self.source = MongoSource(settings)
        self.runtime = Runtime(settings, self.source)
        self.routed: list[str] = []
        route: Callable[[int, Mapping[str, Any]], OutboundMessage] = self.source.route

        def recording(seq: int, change: Mapping[str, Any]) -> OutboundMessage:
            self.routed.append(str(change.get("_ablyChannel")))
            return route(seq, change)

        self.source.route = recording
        self.task: asyncio.Task[int] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self.runtime.run())

    @property
    def leading(self) -> bool:
        return stream_open(self.runtime)

    async def stop(self) -> None:
        if self.task is not None and not self.task.done():
            self.runtime.request_stop("test")
            assert await asyncio.wait_for(self.task, 30) == 0


@contextlib.asynccontextmanager
async def layout(
    env: Mapping[str, str], count: int, *, wait: bool = True
) -> AsyncIterator[list[Partitioned]]:
    nodes = [Partitioned(env, count, k) for k in range(count)]
    for node in nodes:
        node.start()
    try:
        if wait:
            await until(lambda: all(n.leading for n in nodes), what=f"{count} partitions to lead")
        yield nodes
    finally:
        for node in nodes:
            await node.stop()


async def assert_stands_by(node: Partitioned) -> None:
    """`node`, of another layout than the one recorded, starts, says what blocks it, and never leads."""
    node.start()
    try:
        await until(lambda: node.source.layout.blocker is not None, what="the instance to stand by")
        assert not node.runtime.leadership.is_leader
    finally:
        await node.stop()


def env_of(connector_env: dict[str, str]) -> dict[str, str]:
    return {**connector_env, "PIPELINE": PIPELINE, "ON_UNPUBLISHABLE": "deadletter"}


def assert_in_order_once(ably: Any, expected: dict[str, list[int]]) -> None:
    """Every channel got exactly its changes (duplicates by id already dropped by Ably), in order."""
    got: dict[str, list[int]] = defaultdict(list)
    for msg in delivered(ably):
        got[msg["channel"]].append(msg["event"]["fullDocument"]["i"])
    assert dict(got) == expected


async def write(db: Any, start: int, count: int, *, channels: list[str] = CHANNELS) -> dict[str, list[int]]:
    docs = [{"_id": i, "i": i, "ch": channels[i % len(channels)]} for i in range(start, start + count)]
    await db.orders.insert_many(docs)
    out: dict[str, list[int]] = defaultdict(list)
    for doc in docs:
        out[doc["ch"]].append(doc["i"])
    return out


def merge(*parts: dict[str, list[int]]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = defaultdict(list)
    for part in parts:
        for channel, values in part.items():
            out[channel].extend(values)
    return dict(out)


async def test_the_connectors_hash_and_bucket_are_the_servers(db: Any) -> None:
    names = ["string to hash", "", "orders:1", "ü-ñ", "x" * 300, *CHANNELS]
    await db.names.insert_many([{"_id": i, "n": n} for i, n in enumerate(names)])
    bucket = partition_stage(Partition(0, 5))["$match"]["$or"][1]["$expr"]["$eq"][0]
    cursor = await db.names.aggregate(
        [
            {"$set": {"_ablyChannel": "$n"}},
            {"$project": {"n": 1, "h": {"$toHashedIndexKey": "$n"}, "b": bucket}},
        ]
    )
    rows = await cursor.to_list(None)
    assert len(rows) == len(names)
    for row in rows:
        assert row["h"] == hashed_index_key(row["n"]), row["n"]
        assert row["b"] == bucket_of({"_ablyChannel": row["n"]}, 5), row["n"]
    assert any(row["h"] < 0 for row in rows)  # the fold of negative hashes is exercised


async def test_partitions_deliver_every_change_once_in_order_each_channel_by_one(
    connector_env: dict[str, str], db: Any, ably: Any
) -> None:
    env = env_of(connector_env)
    async with layout(env, 3) as nodes:
        expected = await write(db, 0, 240)
        await db.orders.insert_many([{"_id": f"none{i}"} for i in range(5)])  # no channel: unpublishable
        await wait_delivered(ably, 240)
        await until(lambda: sum(len(n.routed) for n in nodes) == 245, what="every event routed")
        await asyncio.sleep(0.3)  # nothing more arrives
    assert_in_order_once(ably, expected)
    assert ably.stats()["duplicates_dropped"] == 0
    for k, node in enumerate(nodes):
        channels = {ch for ch in node.routed if ch != "None"}
        assert channels and all(bucket_of({"_ablyChannel": ch}, 3) == k for ch in channels), k
        assert node.routed.count("None") == (5 if k == 0 else 0)
    assert await db.ably_deadletter.count_documents({}) == 5


async def test_each_partition_stores_its_own_token_and_lease(
    connector_env: dict[str, str], db: Any, ably: Any
) -> None:
    env = env_of(connector_env)
    cid = f"{env['MONGODB_DATABASE']}.orders"
    async with layout(env, 2):
        await write(db, 0, 40)
        await wait_delivered(ably, 40)
    docs = {d["_id"]: d async for d in db.ably.find({})}
    assert set(docs) == {f"{cid}#0of2", f"{cid}#1of2", f"{cid}#layout"}
    for k in range(2):
        doc = docs[f"{cid}#{k}of2"]
        assert doc["resumeToken"]["_data"] and doc["lease"]["owner"] == f"p{k}of2"
    assert docs[f"{cid}#layout"]["partitions"] == 2 and docs[f"{cid}#layout"]["previous"] == 1


async def test_one_partition_keeps_todays_documents(
    connector_env: dict[str, str], db: Any, ably: Any
) -> None:
    env = env_of(connector_env)
    async with layout(env, 1):
        expected = await write(db, 0, 30)
        await wait_delivered(ably, 30)
    docs = [d async for d in db.ably.find({})]
    assert [d["_id"] for d in docs] == [f"{env['MONGODB_DATABASE']}.orders"]
    assert set(docs[0]) == {
        "_id", "resumeToken", "clusterTime", "updatedAt", "namespace", "pipelineHash", "invalidated", "lease"
    }  # fmt: skip
    assert_in_order_once(ably, expected)


async def test_client_side_filter_where_the_server_has_no_hash(
    connector_env: dict[str, str], db: Any, ably: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(partitions, "server_hashes", lambda version: False)
    env = env_of(connector_env)
    async with layout(env, 2) as nodes:
        expected = await write(db, 0, 120)
        await db.orders.insert_many([{"_id": f"none{i}"} for i in range(3)])
        await wait_delivered(ably, 120)
        await until(lambda: sum(len(n.routed) for n in nodes) == 123, what="every event routed")
    assert all(isinstance(n.source.stream_mongo, partitions.PartitionedMongo) for n in nodes)
    assert {n.source.stream_mongo.filtering for n in nodes} == {"client"}  # type: ignore[attr-defined]
    assert_in_order_once(ably, expected)
    for k, node in enumerate(nodes):
        assert all(bucket_of({"_ablyChannel": ch}, 2) == k for ch in node.routed if ch != "None")
        assert node.routed.count("None") == (3 if k == 0 else 0)


async def test_repartition_starts_from_the_old_layouts_oldest_position_and_loses_nothing(
    connector_env: dict[str, str], db: Any, ably: Any
) -> None:
    env = env_of(connector_env)
    cid = f"{env['MONGODB_DATABASE']}.orders"
    first = await write(db, 0, 60)
    async with layout(env, 2) as old:
        second = await write(db, 60, 60)
        await wait_delivered(ably, 60)  # (the first 60 came before the stream started: START_AT=now)
        await old[0].stop()  # partition 0 stops early: its channels' next changes wait for the new layout
        third = await write(db, 120, 60)
        lagging = sum(len(v) for ch, v in third.items() if bucket_of({"_ablyChannel": ch}, 2) == 0)
        await wait_delivered(ably, 120 - lagging)
        # A new layout's instance started while the old one still leads stands by, saying why.
        await assert_stands_by(Partitioned(env, 3, 0))
    old_tokens = [
        d["resumeToken"]["_data"]
        async for d in db.ably.find({"_id": {"$in": [f"{cid}#0of2", f"{cid}#1of2"]}})
    ]
    async with layout(env, 3):
        fourth = await write(db, 180, 60)
        await wait_delivered(ably, 240 - 60)
        layout_doc = await db.ably.find_one({"_id": f"{cid}#layout"})
        assert (layout_doc["partitions"], layout_doc["previous"]) == (3, 2)
        assert layout_doc["handover"]["resumeToken"]["_data"] == min(old_tokens)
        # An instance of the old layout started now refuses to lead while the new one does.
        await assert_stands_by(Partitioned(env, 2, 1))
        await asyncio.sleep(0.3)
    del first  # written before any stream opened (START_AT=now): never expected
    assert_in_order_once(ably, merge(second, third, fourth))


async def test_a_new_partition_adopts_the_old_layouts_spilled_messages_of_its_channels(db: Any) -> None:
    cid = "shop.orders"
    tokens = db.get_collection("ably")
    await tokens.insert_one({"_id": f"{cid}#layout", "partitions": 3, "previous": 2})
    spilled = [
        {"_id": f"{cid}#{k}of2/{i:04d}", "c": f"{cid}#{k}of2", "ch": ch, "k": f"{i:04d}", "m": {"id": i}}
        for i, ch in enumerate(CHANNELS)
        for k in [bucket_of({"_ablyChannel": ch}, 2)]
    ]
    spilled.append({"_id": "other/1", "c": "other", "ch": CHANNELS[0], "k": "1", "m": {}})
    await db.ably_overflow.insert_many(spilled)
    moved = 0
    for k in range(3):
        moved += await LayoutGuard(tokens, cid, Partition(k, 3)).adopt_spilled(db.ably_overflow)
    assert moved == len(CHANNELS)
    docs = [d async for d in db.ably_overflow.find({})]
    for doc in docs:
        if doc["c"] == "other":
            continue  # another CONNECTOR_ID's: untouched
        k = bucket_of({"_ablyChannel": doc["ch"]}, 3)
        assert doc["c"] == f"{cid}#{k}of3" and doc["_id"] == f"{cid}#{k}of3/{doc['k']}"
    assert len(docs) == len(CHANNELS) + 1


async def test_back_to_one_partition_starts_from_the_handover_not_a_stale_token(
    connector_env: dict[str, str], db: Any, ably: Any, caplog: pytest.LogCaptureFixture
) -> None:
    env = env_of(connector_env)
    cid = f"{env['MONGODB_DATABASE']}.orders"
    async with layout(env, 1):
        first = await write(db, 0, 20)
        await wait_delivered(ably, 20)
    stale = (await db.ably.find_one({"_id": cid}))["resumeToken"]
    async with layout(env, 2):
        second = await write(db, 20, 40)
        await wait_delivered(ably, 60)
    partitioned = [
        d["resumeToken"] async for d in db.ably.find({"_id": {"$in": [f"{cid}#0of2", f"{cid}#1of2"]}})
    ]
    caplog.set_level("INFO", logger="connector")
    async with layout(env, 1):
        third = await write(db, 60, 20)
        await wait_delivered(ably, 80)
        layout_doc = await db.ably.find_one({"_id": f"{cid}#layout"})
    assert (layout_doc["partitions"], layout_doc["previous"]) == (1, 2)
    handover = min(t["_data"] for t in partitioned)
    assert layout_doc["handover"]["resumeToken"]["_data"] == handover != stale["_data"]
    assert f"starting from the 2-partition layout's oldest position {handover}" in caplog.text
    assert_in_order_once(ably, merge(first, second, third))


async def test_check_reports_the_partition_and_where_it_filters(
    connector_env: dict[str, str], db: Any, ably: Any
) -> None:
    from connector.sources.mongodb.check import run_checks

    lines: list[str] = []
    settings = load_settings({**env_of(connector_env), "PARTITIONS": "3", "PARTITION": "1"}, env_file=None)
    assert await run_checks(settings, out=lines.append) == 0
    assert any(
        "partition 1 of 3: channels filtered server-side ($toHashedIndexKey)" in line for line in lines
    )


async def test_a_first_partitioned_deployment_starts_every_partition_where_the_layout_began(
    connector_env: dict[str, str], db: Any, ably: Any
) -> None:
    """START_AT=now: a partition whose process comes up later still publishes what was written since the
    first partition recorded the layout (its channels' changes in between are not skipped)."""
    env = env_of(connector_env)
    early = Partitioned(env, 2, 0)
    early.start()
    try:
        await until(lambda: early.leading, what="partition 0 to lead")
        expected = await write(db, 0, 48)
        own = sum(len(v) for ch, v in expected.items() if bucket_of({"_ablyChannel": ch}, 2) == 0)
        await wait_delivered(ably, own)
        async with layout(env, 2, wait=False) as late:  # partition 0 again (stands by) and partition 1
            await until(lambda: late[1].leading, what="partition 1 to lead")
            await wait_delivered(ably, 48)
    finally:
        await early.stop()
    assert_in_order_once(ably, expected)
