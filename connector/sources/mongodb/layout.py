"""Changing PARTITIONS safely: the recorded layout, who may lead, and where a new layout starts.

The layout lives beside the token documents: `{_id: "<CONNECTOR_ID>#layout", partitions: N, previous: M,
handover: {resumeToken, invalidated, clusterTime} or {operationTime}, changedAt, changedBy}`. No document
means one partition (every deployment from before partitions), and an unpartitioned connector writes it
only to replace a partitioned layout: with PARTITIONS=1 the token and lease documents stay today's, byte
for byte.

1. Two layouts never publish at once. An instance leads only while the recorded layout is its own, and
   records its own only when no lease of the recorded one is live (it logs which lease holds it back).
   Races are closed by each side writing, then reading the other's document: a partition writes its lease
   and then re-reads the layout; a new layout writes the layout and then (after winning its own lease)
   re-reads the previous layout's leases. Whichever writes second sees the other and stands back. A leader
   whose layout was replaced stops at its next renewal (LeadershipLost).
2. Nothing is lost. The change records a handover: the OLDEST stored position of the old layout (for an old
   partition that stored none, the handover it started from). A new partition without a token of its own
   starts there. Every old partition's position is at or after it, so each channel's events before it were
   published; those after it are read again, and the overlap goes out with the same message ids: Ably drops
   them within its idempotency window (2 minutes) and a client recognises them by id beyond it. When the
   old layout stored no position at all (a first deployment), the handover is the cluster time at which the
   layout was recorded: with START_AT=now every partition starts there, however late its process comes up.
3. Tokens under the new layout's ids from an earlier era are cleared when the layout changes: they are
   older than the handover and would replay from there (or fail with history lost).
4. Throttled channels' spilled messages (OVERFLOW_COLLECTION) under another layout's ids are adopted by the
   partition that now owns their channel when its term opens, before its overflow drains them; messages
   the stream replays after the handover are spilled again under the same id, behind them.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

from bson import Timestamp
from pymongo.errors import BulkWriteError, DuplicateKeyError, PyMongoError

from connector.errors import CheckpointError, LeadershipLost, LeaseStoreError, StreamError
from connector.leadership import LeaseInfo
from connector.sources.mongodb.checkpoint import TokenStore
from connector.sources.mongodb.client import brief_error
from connector.sources.mongodb.lease import MongoLeaseStore, lease_info
from connector.sources.mongodb.partitions import Partition, bucket_of, layout_ids

log = logging.getLogger(__name__)

__all__ = ["LAYOUT_SUFFIX", "GuardedLeaseStore", "Handover", "LayoutGuard"]

LAYOUT_SUFFIX: Final = "#layout"
#: Spilled messages moved per round when a partition adopts another layout's.
ADOPT_BATCH: Final = 500
DUPLICATE_KEY: Final = 11000
_UINT32_MAX: Final = 2**32 - 1
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Handover:
    """Where a new layout's partitions without a token start: the old layout's oldest position, or the
    cluster time the layout was recorded at when the old one stored none."""

    token: Mapping[str, Any] | None
    invalidated: bool
    previous: int  # how many partitions the old layout had
    operation_time: Timestamp | None = None


def _partitions(doc: Mapping[str, Any] | None) -> int:
    value = doc.get("partitions") if doc else None
    return value if isinstance(value, int) and value >= 1 else 1


def _valid_token(token: Any) -> bool:
    return isinstance(token, Mapping) and isinstance(token.get("_data"), str) and bool(token["_data"])


class LayoutGuard:
    """The layout document of one CONNECTOR_ID, seen from one partition of one layout."""

    def __init__(self, tokens: Any, connector_id: str, partition: Partition) -> None:
        self._tokens = tokens
        self._connector_id = connector_id
        self.partition = partition
        self.layout_id = connector_id + LAYOUT_SUFFIX
        #: The live lease of another layout that holds this instance back (for the standby log line).
        self.blocker: LeaseInfo | None = None

    async def _layout(self) -> dict[str, Any] | None:
        doc: dict[str, Any] | None = await self._tokens.find_one({"_id": self.layout_id})
        return doc

    async def _live_lease(self, count: int) -> tuple[str, LeaseInfo] | None:
        """A live lease (by the server's clock) of the layout of `count` partitions, if any."""
        doc = await self._tokens.find_one(
            {
                "_id": {"$in": layout_ids(self._connector_id, count)},
                "$expr": {"$gt": ["$lease.expiresAt", "$$NOW"]},
            },
            {"lease": 1},
        )
        info = lease_info(doc)
        return (str(doc["_id"]), info) if doc is not None and info is not None else None

    def _held_back(self, count: int, held: tuple[str, LeaseInfo]) -> str:
        doc_id, info = held
        self.blocker = info
        return (
            f"the {count}-partition layout still leads ({doc_id!r} is held by {info.owner} at epoch "
            f"{info.epoch}); PARTITIONS={self.partition.count} waits until every instance of that layout "
            "has stopped (two layouts never publish at once)"
        )

    async def admit(self, owner: str) -> str | None:
        """Before competing for the lease: None when the recorded layout is ours (recording it if no lease
        of the recorded one is live); else why this instance must stand by."""
        count = self.partition.count
        for _ in range(2):  # the layout changed under us: look again once
            doc = await self._layout()
            current = _partitions(doc)
            if current == count:
                return None
            held = await self._live_lease(current)
            if held is not None:
                return self._held_back(current, held)
            if await self._switch(doc, current, owner):
                return None
        return "the partition layout is being changed by another instance; trying again"

    async def confirm(self) -> str | None:
        """After winning the lease: None when the layout is still ours and no lease of the previous one is
        live (a previous-layout instance may have won its lease just before we recorded ours)."""
        doc = await self._layout()
        reason = self._other_layout(doc)
        if reason is not None:
            return reason
        previous = doc.get("previous") if doc else None
        if isinstance(previous, int) and previous != self.partition.count:
            held = await self._live_lease(previous)
            if held is not None:
                return self._held_back(previous, held)
        self.blocker = None
        return None

    async def current(self) -> str | None:
        """On every renewal: None while the recorded layout is ours; else why this leader must stop."""
        return self._other_layout(await self._layout())

    def _other_layout(self, doc: Mapping[str, Any] | None) -> str | None:
        current = _partitions(doc)
        if current == self.partition.count:
            return None
        by = doc.get("changedBy", "another instance") if doc else "another instance"
        return (
            f"the partition layout is now {current} partition(s) (recorded by {by}); this instance has "
            f"PARTITIONS={self.partition.count}: standing by (update or stop it)"
        )

    async def _switch(self, doc: Mapping[str, Any] | None, current: int, owner: str) -> bool:
        """Record our layout in place of `current` (whose leases are all free); False if another instance
        changed the document first."""
        count = self.partition.count
        handover = await self._oldest_position(current, doc)
        if handover is None:
            now = await self._cluster_time()
            handover = {"operationTime": now} if now is not None else None
        for stale in layout_ids(self._connector_id, count):
            await TokenStore(self._tokens, stale).delete()
        record: dict[str, Any] = {
            "_id": self.layout_id,
            "partitions": count,
            "previous": current,
            "changedAt": datetime.now(UTC),
            "changedBy": owner,
        }
        if handover is not None:
            record["handover"] = handover
        try:
            if doc is None:
                await self._tokens.insert_one(record)
            else:
                result = await self._tokens.replace_one(
                    {"_id": self.layout_id, "partitions": doc.get("partitions")}, record
                )
                if not result.matched_count:
                    return False
        except DuplicateKeyError:
            return False
        if handover is not None and "resumeToken" in handover:
            start = (
                f"from the old layout's oldest position {handover['resumeToken']['_data']} (the overlap is "
                "re-sent with the same message ids)"
            )
        else:
            start = "at START_AT, or with START_AT=now where the layout was recorded (no position was stored)"
        log.warning(
            "partition layout changed from %d to %d partition(s) by %s; partitions without a token of "
            "their own start %s",
            current,
            count,
            owner,
            start,
        )
        return True

    async def _oldest_position(self, count: int, doc: Mapping[str, Any] | None) -> dict[str, Any] | None:
        """The oldest stored position of the layout of `count` partitions, as a handover record."""
        ids = layout_ids(self._connector_id, count)
        found = {d["_id"]: d for d in await self._tokens.find({"_id": {"$in": ids}}).to_list(None)}
        inherited = doc.get("handover") if doc and _partitions(doc) == count else None
        candidates: list[dict[str, Any]] = []
        for position_id in ids:
            stored = found.get(position_id, {})
            if _valid_token(stored.get("resumeToken")):
                candidates.append(
                    {
                        "resumeToken": dict(stored["resumeToken"]),
                        "invalidated": bool(stored.get("invalidated", False)),
                        "clusterTime": stored.get("clusterTime"),
                    }
                )
            elif isinstance(inherited, Mapping) and _valid_token(inherited.get("resumeToken")):
                candidates.append(dict(inherited))
            elif isinstance(inherited, Mapping) and isinstance(inherited.get("operationTime"), Timestamp):
                return dict(inherited)  # that layout's own start: before every position it stored
            elif count > 1:
                log.warning(
                    "partition %r of the %d-partition layout has no stored position to hand over",
                    position_id,
                    count,
                )
        if not candidates:
            return None
        return min(candidates, key=lambda c: str(c["resumeToken"]["_data"]))

    async def _cluster_time(self) -> Timestamp | None:
        """Just after the deployment's latest operation time (a ping's reply), as a stream opened "now"
        starts (startAtOperationTime includes its own time); None when the server does not say."""
        reply = await self._tokens.database.command("ping")
        value = reply.get("operationTime") or reply.get("$clusterTime", {}).get("clusterTime")
        if not isinstance(value, Timestamp):
            return None
        return (
            Timestamp(value.time, value.inc + 1) if value.inc < _UINT32_MAX else Timestamp(value.time + 1, 0)
        )

    async def handover(self) -> Handover | None:
        """Where this partition starts when it has no token of its own (None: START_AT, as ever)."""
        try:
            doc = await self._layout()
        except PyMongoError as exc:
            raise StreamError(f"cannot read the partition layout: {brief_error(exc)}") from exc
        record = doc.get("handover") if doc and _partitions(doc) == self.partition.count else None
        if not isinstance(record, Mapping):
            return None
        previous = int(doc.get("previous", 1)) if doc else 1
        if _valid_token(record.get("resumeToken")):
            invalidated = bool(record.get("invalidated", False))
            return Handover(token=dict(record["resumeToken"]), invalidated=invalidated, previous=previous)
        if isinstance(record.get("operationTime"), Timestamp):
            return Handover(None, False, previous, operation_time=record["operationTime"])
        return None

    async def adopt_spilled(self, overflow: Any) -> int:
        """Move other layouts' spilled messages of this partition's channels under this partition's id."""
        try:
            if await self._layout() is None:
                return 0  # never partitioned: no other layout's ids exist
            return await self._adopt(overflow)
        except PyMongoError as exc:
            raise StreamError(f"cannot adopt other layouts' spilled messages: {brief_error(exc)}") from exc

    async def _adopt(self, overflow: Any) -> int:
        cid, partition = self._connector_id, self.partition
        mine = partition.position_id(cid)
        pattern = f"^{re.escape(cid)}(#[0-9]+of[0-9]+)?$"
        others = {"$regex": pattern, "$nin": layout_ids(cid, partition.count)}
        moved = 0
        batch: list[tuple[Any, dict[str, Any]]] = []
        async for spilled in overflow.find({"c": others}):
            if bucket_of({"_ablyChannel": spilled.get("ch")}, partition.count) != partition.index:
                continue
            copy = {**spilled, "_id": f"{mine}/{spilled.get('k')}", "c": mine}
            batch.append((spilled["_id"], copy))
            if len(batch) >= ADOPT_BATCH:
                moved += await _move(overflow, batch)
                batch = []
        if batch:
            moved += await _move(overflow, batch)
        if moved:
            log.info("adopted %d spilled message(s) of another partition layout", moved)
        return moved


async def _move(overflow: Any, batch: list[tuple[Any, dict[str, Any]]]) -> int:
    """Write the copies (a copy already there from an earlier attempt is fine), then delete the originals."""
    try:
        await overflow.insert_many([copy for _, copy in batch], ordered=False)
    except BulkWriteError as exc:
        if any(error.get("code") != DUPLICATE_KEY for error in exc.details.get("writeErrors", [])):
            raise
    await overflow.delete_many({"_id": {"$in": [old for old, _ in batch]}})
    return len(batch)


async def _lease_op(operation: Awaitable[T], what: str) -> T:
    try:
        return await operation
    except PyMongoError as exc:
        raise LeaseStoreError(f"cannot {what}: {brief_error(exc)}") from exc
    except CheckpointError as exc:  # clearing a stale token while recording a new layout
        raise LeaseStoreError(f"cannot {what}: {exc}") from exc


class GuardedLeaseStore:
    """`connector.leadership.LeaseStore`: a partition's lease document, won and kept only while the
    recorded layout is this instance's (LayoutGuard); everything else is `MongoLeaseStore`'s."""

    def __init__(self, inner: MongoLeaseStore, guard: LayoutGuard) -> None:
        self._inner = inner
        self._guard = guard
        self._refusal: str | None = None

    @property
    def connector_id(self) -> str:
        return self._inner.connector_id

    async def acquire(self, owner: str, ttl_s: float) -> int | None:
        reason = await _lease_op(self._guard.admit(owner), "read the partition layout")
        if reason is None:
            epoch = await self._inner.acquire(owner, ttl_s)
            if epoch is None:
                return None
            reason = await _lease_op(self._guard.confirm(), "read the partition layout")
            if reason is None:
                self._refusal = None
                return epoch
            await self._inner.release(owner, epoch)
        if reason != self._refusal:  # one line per new reason, not one per poll
            log.warning("not leading: %s", reason)
            self._refusal = reason
        return None

    async def renew(self, owner: str, epoch: int, ttl_s: float) -> bool:
        if not await self._inner.renew(owner, epoch, ttl_s):
            return False
        reason = await _lease_op(self._guard.current(), "read the partition layout")
        if reason is not None:
            raise LeadershipLost(reason)
        return True

    async def release(self, owner: str, epoch: int) -> None:
        await self._inner.release(owner, epoch)

    async def read(self) -> LeaseInfo | None:
        return self._guard.blocker or await self._inner.read()

    async def close(self) -> None:
        await self._inner.close()
