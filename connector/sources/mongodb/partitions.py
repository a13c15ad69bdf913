"""Partitioned connectors: one change stream split by channel across `PARTITIONS` connectors.

One change stream is one ordered sequence, read by one process. To go past what one process publishes,
`PARTITIONS=N` connectors watch the same namespace with the same pipeline, and partition `k` appends one
stage AFTER the user's stages (so `_ablyChannel` exists) that keeps the events whose channel hashes into
bucket `k`. A channel always lands in one bucket, so its order is one partition's stream order; each
partition has its own resume token and lease (`Partition.position_id`), so HA and fencing hold per
partition unchanged.

The hash is MongoDB's `$toHashedIndexKey` (a signed 64-bit long): `((h mod N) + N) mod N` is its bucket.
`$abs` is not used: the absolute value of the minimum long errors on mongod, and `$mod` cannot fail
(its result has the dividend's sign, which the second step folds back into 0..N-1). Events whose
`_ablyChannel` is not a string (unpublishable: no channel) all go to partition 0, and an `invalidate`
reaches every partition (each one's stream ends with it), so every event is handled by exactly one.

`$toHashedIndexKey` is documented from MongoDB 7.0 (the 7.0 manual is the first to list it). On older
servers the stream carries every event and the same bucket is computed here, from the hash reimplemented
below (`hashed_index_key`), and events of other buckets are dropped before the reader sees them (the
stream's position still moves past them). There, a split stage (`$changeStreamSplitLargeEvent`, 6.0.9+)
is replaced by the stages that drop an oversized event's bodies: a fragment carries no channel to decide
by, and the whole event must be kept or dropped by one partition.

Public API:
    Partition, resolve_partition(count, given, hostname), layout_ids(connector_id, count)
    hashed_index_key(text), bucket_of(event, count), partition_stage(partition)
    server_hashes(version), PartitionedMongo
"""

from __future__ import annotations

import hashlib
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from connector.sources.mongodb.client import Mongo
from connector.sources.mongodb.cursor import BatchStream, Event
from connector.sources.mongodb.pipeline import CHANNEL_FIELD, oversize_stages

__all__ = [
    "HASHED_INDEX_KEY_SINCE",
    "MAX_PARTITIONS",
    "Partition",
    "PartitionedMongo",
    "bucket_of",
    "hashed_index_key",
    "layout_ids",
    "partition_stage",
    "resolve_partition",
    "server_hashes",
]

#: First server version whose manual documents `$toHashedIndexKey`; older servers filter here.
HASHED_INDEX_KEY_SINCE: Final = (7, 0)
#: Each partition is a whole change stream on the server (it reads the whole oplog): past a few dozen the
#: server's read work, not the connectors, is the limit. A larger value is most likely a typo.
MAX_PARTITIONS: Final = 64
#: A StatefulSet pod's host name ends with its ordinal: `livesync-4`.
_ORDINAL = re.compile(r"-(\d+)$")
#: mongod's canonical type of a string (bsontypes.h canonicalizeBSONType), hashed before the value.
_STRING_CANONICAL_TYPE: Final = 15
_INT32 = struct.Struct("<i")
_INT64 = struct.Struct("<q")


@dataclass(frozen=True, slots=True)
class Partition:
    """Partition `index` (0-based) of `count`; count 1 is the unpartitioned connector."""

    index: int = 0
    count: int = 1

    @property
    def split(self) -> bool:
        return self.count > 1

    def position_id(self, connector_id: str) -> str:
        """`_id` of this partition's token (and lease) document: CONNECTOR_ID itself when unpartitioned
        (today's document, byte for byte), else `<CONNECTOR_ID>#<k>of<N>`. N is part of the id, so a new
        layout never resumes another layout's position by mistake (see layout.py for the handover)."""
        return connector_id if self.count == 1 else f"{connector_id}#{self.index}of{self.count}"

    def describe(self) -> str:
        return f"partition {self.index} of {self.count}" if self.split else "unpartitioned"


def layout_ids(connector_id: str, count: int) -> list[str]:
    """The token/lease document ids of every partition of a layout of `count` partitions."""
    return [Partition(k, count).position_id(connector_id) for k in range(count)]


def resolve_partition(count: int, given: int | None, hostname: str) -> tuple[int, list[str]]:
    """PARTITION, or the StatefulSet ordinal at the end of `hostname` modulo PARTITIONS when unset.

    One StatefulSet of `N x (1 + standbys)` replicas then gives every partition its standbys: pods
    `livesync-0 .. livesync-5` with N=3 are partitions 0,1,2,0,1,2. Returns (index, problems)."""
    if given is not None:
        if given >= count:
            return 0, [f"PARTITION: must be less than PARTITIONS ({count}): 0 to {count - 1} (got {given})"]
        return given, []
    if count == 1:
        return 0, []
    match = _ORDINAL.search(hostname)
    if match is None:
        return 0, [
            f"PARTITION: not set, and the host name {hostname!r} does not end with a StatefulSet ordinal "
            "(-<n>) to take it from; set PARTITION (0 to PARTITIONS-1)"
        ]
    return int(match.group(1)) % count, []


def hashed_index_key(text: str) -> int:
    """mongod's hashed-index key of a string (`$toHashedIndexKey`, BSONElementHasher::hash64, seed 0).

    MD5 over: the seed (int32 0), the canonical type (int32 15 for strings), then the value as BSON stores
    it (int32 byte length including the NUL, the UTF-8 bytes, the NUL); the digest's first 8 bytes read as
    a little-endian signed int64. `"string to hash"` -> 763543691661428748 (MongoDB's manual)."""
    data = text.encode("utf-8", "surrogatepass")
    blob = _INT32.pack(0) + _INT32.pack(_STRING_CANONICAL_TYPE) + _INT32.pack(len(data) + 1) + data + b"\0"
    value: int = _INT64.unpack(hashlib.md5(blob, usedforsecurity=False).digest()[:8])[0]
    return value


def bucket_of(event: Mapping[str, Any], count: int) -> int:
    """The partition an event belongs to: its channel's hash bucket; 0 without a string channel.

    Python's `%` is already non-negative for a positive divisor: it equals the stage's ((h mod N)+N) mod N."""
    channel = event.get(CHANNEL_FIELD) if isinstance(event, Mapping) else None
    if not isinstance(channel, str):
        return 0
    return hashed_index_key(channel) % count


def keeps(event: Event, partition: Partition) -> bool:
    """The client-side form of `partition_stage` (servers without `$toHashedIndexKey`)."""
    if isinstance(event, Mapping) and event.get("operationType") == "invalidate":
        return True
    return bucket_of(event, partition.count) == partition.index


def partition_stage(partition: Partition) -> dict[str, Any]:
    """The `$match` that keeps this partition's events, appended after the user's stages."""
    n = partition.count
    hashed = {"$toHashedIndexKey": f"${CHANNEL_FIELD}"}
    bucket = {"$mod": [{"$add": [{"$mod": [hashed, n]}, n]}, n]}
    is_string = {"$eq": [{"$type": f"${CHANNEL_FIELD}"}, "string"]}
    return {
        "$match": {
            "$or": [
                {"operationType": "invalidate"},
                {"$expr": {"$eq": [{"$cond": [is_string, bucket, 0]}, partition.index]}},
            ]
        }
    }


def server_hashes(version: tuple[int, ...]) -> bool:
    """Whether the server has `$toHashedIndexKey` (else the filter runs client-side)."""
    return version >= HASHED_INDEX_KEY_SINCE


def _is_split(stage: Mapping[str, Any]) -> bool:
    return "$changeStreamSplitLargeEvent" in stage


class FilteredStream:
    """A change stream of which only this partition's events are handed on (client-side filter).

    The position is the stream's own: a batch of only other partitions' events reads as an empty batch,
    after which the reader moves its position to the batch's resume token, as after a server-side filter."""

    def __init__(self, stream: BatchStream, partition: Partition) -> None:
        self._stream = stream
        self._partition = partition
        self.dropped = 0

    @property
    def alive(self) -> bool:
        return self._stream.alive

    @property
    def resume_token(self) -> Mapping[str, Any] | None:
        return self._stream.resume_token

    async def next_batch(self) -> Sequence[Event]:
        batch = await self._stream.next_batch()
        kept = [event for event in batch if keeps(event, self._partition)]
        self.dropped += len(batch) - len(kept)
        return kept

    async def close(self) -> None:
        await self._stream.close()


class PartitionedMongo(Mongo):
    """The source's client as the reader and `check` see it: every change stream it opens keeps only this
    partition's events. It shares the source's client (no second connection pool) and never closes it.

    `user_stages` is the length of the pipeline the settings give (`stream_pipeline()`): the partition's
    stage goes right after it, before the stages the connector appends for large events."""

    def __init__(self, inner: Mongo, partition: Partition, *, user_stages: int) -> None:
        # No super().__init__(): that would open a second client. Share the inner one's instead.
        self.driver = inner.driver
        self.client = inner.client
        self.db = inner.db
        self._closed = True  # closing this view must not close the shared client
        self._version = None
        self._inner = inner
        self.partition = partition
        self._user_stages = user_stages
        #: "server" once a stream opened with the server-side stage, "client" with the fallback.
        self.filtering: str | None = None

    async def server_version(self) -> tuple[int, ...]:
        return await self._inner.server_version()

    async def watch_batches(
        self, collection: str, pipeline: Sequence[Mapping[str, Any]], **kwargs: Any
    ) -> BatchStream:
        stages = [dict(stage) for stage in pipeline]
        if server_hashes(await self._inner.server_version()):
            at = self._user_stages
            if at and at <= len(stages) and _is_split(stages[at - 1]):
                at -= 1  # the user's own split stage must stay last
            stages.insert(at, partition_stage(self.partition))
            self.filtering = "server"
            return await self._inner.watch_batches(collection, stages, **kwargs)
        if stages and _is_split(stages[-1]):
            stages[-1:] = oversize_stages()
        self.filtering = "client"
        stream = await self._inner.watch_batches(collection, stages, **kwargs)
        return FilteredStream(stream, self.partition)

    async def close(self) -> None:
        """Nothing to close: the client belongs to the source."""
