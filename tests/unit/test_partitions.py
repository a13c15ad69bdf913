"""Partitioned connectors without a server: settings, ids, mongod's hash, the stage, the client-side filter
and where the partition's stage goes in the pipeline (connector/sources/mongodb/partitions.py)."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from connector.sources.mongodb import partitions
from connector.sources.mongodb.client import Mongo
from connector.sources.mongodb.partitions import (
    FilteredStream,
    Partition,
    PartitionedMongo,
    bucket_of,
    hashed_index_key,
    layout_ids,
    partition_stage,
    resolve_partition,
)
from connector.sources.mongodb.pipeline import oversize_stages
from tests.unit.settings_helpers import load_with, problems_with

BASE = {
    "MONGODB_DATABASE": "shop",
    "MONGODB_COLLECTION": "orders",
    "ABLY_API_KEY": "appid.keyid:s3cr3t-Key-Value",
    "PIPELINE": '[{"$set": {"_ablyChannel": "$ns.coll"}}]',
}


load = functools.partial(load_with, BASE)
problems = functools.partial(problems_with, BASE)


# ---- settings and ids ----


def test_one_partition_keeps_todays_ids() -> None:
    settings = load()
    assert (settings.partitions, settings.partition) == (1, 0)
    assert settings.partition_spec == Partition(0, 1)
    assert settings.partition_spec.position_id(settings.connector_id) == "shop.orders"
    assert layout_ids("shop.orders", 1) == ["shop.orders"]


def test_each_partition_has_its_own_token_and_lease_id() -> None:
    settings = load(PARTITIONS="3", PARTITION="2")
    assert settings.partition_spec == Partition(2, 3)
    assert settings.partition_spec.position_id(settings.connector_id) == "shop.orders#2of3"
    assert layout_ids("blue", 3) == ["blue#0of3", "blue#1of3", "blue#2of3"]


def test_partition_must_be_below_partitions() -> None:
    assert "PARTITION: must be less than PARTITIONS (3): 0 to 2 (got 3)" in problems(
        PARTITIONS="3", PARTITION="3"
    )


def test_partitions_must_be_at_least_one_and_at_most_the_cap() -> None:
    assert any(p.startswith("PARTITIONS:") for p in problems(PARTITIONS="0"))
    assert any(p.startswith("PARTITIONS:") for p in problems(PARTITIONS=str(partitions.MAX_PARTITIONS + 1)))
    assert any(p.startswith("PARTITION:") for p in problems(PARTITIONS="2", PARTITION="-1"))


def test_partition_from_the_statefulset_ordinal_modulo_partitions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("socket.gethostname", lambda: "livesync-4")
    assert load(PARTITIONS="3").partition_spec == Partition(1, 3)
    assert load(PARTITIONS="3", PARTITION="0").partition_spec == Partition(0, 3)  # explicit wins
    assert load().partition_spec == Partition(0, 1)


def test_unparsable_host_name_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("socket.gethostname", lambda: "worker")
    assert problems(PARTITIONS="2") == [
        "PARTITION: not set, and the host name 'worker' does not end with a StatefulSet ordinal (-<n>) "
        "to take it from; set PARTITION (0 to PARTITIONS-1)"
    ]
    assert load(PARTITIONS="1").partition_spec == Partition(0, 1)  # unpartitioned needs no ordinal


@pytest.mark.parametrize(
    ("count", "given", "host", "expected"),
    [(2, None, "livesync-0", 0), (2, None, "livesync-3", 1), (4, None, "a-b-10", 2), (1, None, "x", 0)],
)
def test_resolve_partition(count: int, given: int | None, host: str, expected: int) -> None:
    assert resolve_partition(count, given, host) == (expected, [])


# ---- the hash and the bucket ----


def test_hash_of_the_manuals_example() -> None:
    assert hashed_index_key("string to hash") == 763543691661428748


def test_bucket_folds_negative_hashes_into_range() -> None:
    negative = next(f"ch{i}" for i in range(100) if hashed_index_key(f"ch{i}") < 0)
    for count in (2, 3, 7):
        bucket = bucket_of({"_ablyChannel": negative}, count)
        h = hashed_index_key(negative)
        truncated = abs(h) % count * (-1 if h < 0 else 1)  # mongod's $mod: the dividend's sign
        assert bucket == (truncated + count) % count
        assert 0 <= bucket < count


def test_events_without_a_string_channel_go_to_partition_zero() -> None:
    for event in ({}, {"_ablyChannel": None}, {"_ablyChannel": 42}, {"_ablyChannel": ["a"]}):
        assert bucket_of(event, 5) == 0


def test_channels_spread_over_every_partition() -> None:
    counts = [0, 0, 0]
    for i in range(3000):
        counts[bucket_of({"_ablyChannel": f"orders:{i}"}, 3)] += 1
    assert all(800 < c < 1200 for c in counts), counts


def test_stage_keeps_invalidate_and_uses_mod_not_abs() -> None:
    stage = partition_stage(Partition(1, 3))
    text = repr(stage)
    assert "$abs" not in text and "$toHashedIndexKey" in text
    assert {"operationType": "invalidate"} in stage["$match"]["$or"]


# ---- the client-side filter and the stage's place ----


class FakeStream:
    def __init__(self, batches: list[list[dict[str, Any]]]) -> None:
        self._batches = batches
        self.closed = False

    @property
    def alive(self) -> bool:
        return bool(self._batches)

    @property
    def resume_token(self) -> Mapping[str, Any] | None:
        return {"_data": f"T{len(self._batches)}"}

    async def next_batch(self) -> Sequence[Mapping[str, Any]]:
        return self._batches.pop(0)

    async def close(self) -> None:
        self.closed = True


async def test_client_side_filter_keeps_own_channels_invalidate_and_the_position() -> None:
    channels = [f"orders:{i}" for i in range(40)]
    events = [{"_id": {"_data": str(i)}, "_ablyChannel": ch} for i, ch in enumerate(channels)]
    events += [{"_id": {"_data": "x"}, "operationType": "invalidate"}, {"_id": {"_data": "y"}}]
    kept_by: list[list[Mapping[str, Any]]] = []
    for k in range(3):
        stream = FilteredStream(FakeStream([list(events)]), Partition(k, 3))
        kept_by.append(list(await stream.next_batch()))
        assert stream.resume_token == {"_data": "T0"}
    published = [
        e["_id"]["_data"] for kept in kept_by for e in kept if e.get("operationType") != "invalidate"
    ]
    assert sorted(published) == sorted(e["_id"]["_data"] for e in events if "operationType" not in e)
    assert all(any(e.get("operationType") == "invalidate" for e in kept) for kept in kept_by)
    assert {"_id": {"_data": "y"}} in kept_by[0]  # no channel: partition 0 only


class FakeMongo(Mongo):
    """Only what PartitionedMongo uses: the version and the pipeline it opens a stream with."""

    def __init__(self, version: tuple[int, ...]) -> None:
        self.driver = "pymongo"
        self.client = None
        self.db = None
        self.version = version
        self.opened: list[list[dict[str, Any]]] = []

    async def server_version(self) -> tuple[int, ...]:
        return self.version

    async def watch_batches(self, collection: str, pipeline: Sequence[Mapping[str, Any]], **_: Any) -> Any:
        self.opened.append([dict(s) for s in pipeline])
        return FakeStream([])


USER = {"$set": {"_ablyChannel": "$ns.coll"}}
SPLIT = {"$changeStreamSplitLargeEvent": {}}


async def test_stage_goes_after_the_users_stages_and_before_the_split_stage() -> None:
    inner = FakeMongo((7, 0, 2))
    view = PartitionedMongo(inner, Partition(1, 2), user_stages=1)
    stream = await view.watch_batches("orders", [USER, SPLIT], max_await_time_ms=10)
    assert inner.opened[-1] == [USER, partition_stage(Partition(1, 2)), SPLIT]
    assert not isinstance(stream, FilteredStream) and view.filtering == "server"
    view = PartitionedMongo(inner, Partition(1, 2), user_stages=2)
    await view.watch_batches("orders", [USER, SPLIT], max_await_time_ms=10)
    assert inner.opened[-1] == [USER, partition_stage(Partition(1, 2)), SPLIT]


async def test_older_servers_filter_client_side_without_fragments() -> None:
    inner = FakeMongo((6, 0, 9))
    view = PartitionedMongo(inner, Partition(0, 2), user_stages=1)
    stream = await view.watch_batches("orders", [USER, SPLIT], max_await_time_ms=10)
    assert isinstance(stream, FilteredStream) and view.filtering == "client"
    assert inner.opened[-1] == [USER, *oversize_stages()]
