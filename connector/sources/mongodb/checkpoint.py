"""Where the stream position lives: the resume-token document and the checkpoint timer.

The document is compatible with the managed connector's `ably` collection:
`{_id: CONNECTOR_ID, resumeToken, clusterTime, updatedAt, namespace, pipelineHash}` (plus `invalidated`
when the token is an invalidate event's, so a restart uses `startAfter`). Writes use majority write
concern: a token acknowledged only by a primary that then rolls back would point past events we never
published.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bson import Timestamp
from pymongo.errors import PyMongoError

from connector.ably.ledger import InFlightLedger
from connector.errors import CheckpointError, CorruptCheckpointError, LeadershipLost, StreamError
from connector.sources.mongodb.client import brief_error
from connector.sources.protocol import Fence

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StoredPosition:
    """A resume position read back from the token collection."""

    token: Mapping[str, Any]
    cluster_time: Timestamp | None
    updated_at: datetime | None
    namespace: str
    pipeline_hash: str
    invalidated: bool


def cluster_time_of(token: Mapping[str, Any] | None) -> Timestamp | None:
    """The cluster time encoded at the front of a resume token, if it has the server's layout.

    Real servers' `_data` is a KeyString whose first byte 0x82 introduces the 8-byte timestamp; tokens in
    any other layout simply have no decodable time (we then fall back to the event's `clusterTime`).
    """
    data = token.get("_data") if token else None
    if not isinstance(data, str) or len(data) < 18 or data[:2].upper() != "82":
        return None
    try:
        return Timestamp(int(data[2:10], 16), int(data[10:18], 16))
    except ValueError:
        return None


# The document's position fields (the rest is the lease, which `token reset` keeps).
POSITION_FIELDS = ("resumeToken", "clusterTime", "updatedAt", "namespace", "pipelineHash", "invalidated")


class TokenStore:
    """Load, store and delete the resume-token document (`collection` is a driver collection object).

    With a `fence`, a store matches the document only while the lease on it is still `owner` at `epoch`;
    a store that matches nothing raises LeadershipLost (another instance took over), and stores nothing.
    """

    def __init__(self, collection: Any, connector_id: str) -> None:
        self._collection = collection
        self.connector_id = connector_id
        self.fence: Fence | None = None

    async def load(self) -> StoredPosition | None:
        """The stored position, None when nothing is stored; CorruptCheckpointError when unreadable."""
        try:
            doc = await self._collection.find_one({"_id": self.connector_id})
        except PyMongoError as exc:
            # MongoDB not reachable (yet): the caller retries; this is not a corrupt token.
            raise StreamError(f"cannot read the stored resume token: {brief_error(exc)}") from exc
        if doc is None or "resumeToken" not in doc:  # nothing stored yet (maybe only a lease)
            return None
        token = doc.get("resumeToken")
        if not isinstance(token, Mapping) or not isinstance(token.get("_data"), str) or not token["_data"]:
            raise CorruptCheckpointError(
                f"stored resume token for {self.connector_id!r} is unreadable "
                f"(expected {{_data: <hex string>}}, got {token!r}); "
                "fix or delete it with `livesync-connector token reset --yes`"
            )
        cluster_time = doc.get("clusterTime")
        return StoredPosition(
            token=dict(token),
            cluster_time=cluster_time if isinstance(cluster_time, Timestamp) else None,
            updated_at=doc.get("updatedAt") if isinstance(doc.get("updatedAt"), datetime) else None,
            namespace=str(doc.get("namespace", "")),
            pipeline_hash=str(doc.get("pipelineHash", "")),
            invalidated=bool(doc.get("invalidated", False)),
        )

    async def store(
        self,
        token: Mapping[str, Any],
        *,
        cluster_time: Timestamp | None,
        namespace: str,
        pipeline_hash: str,
        invalidated: bool = False,
    ) -> None:
        document = {
            "resumeToken": dict(token),
            "clusterTime": cluster_time if cluster_time is not None else cluster_time_of(token),
            "updatedAt": datetime.now(UTC),
            "namespace": namespace,
            "pipelineHash": pipeline_hash,
            "invalidated": invalidated,
        }
        fence = self.fence
        query: dict[str, Any] = {"_id": self.connector_id}
        if fence is not None:
            query.update({"lease.owner": fence.owner, "lease.epoch": fence.epoch})
        try:
            result = await self._collection.update_one(query, {"$set": document}, upsert=fence is None)
        except PyMongoError as exc:
            raise CheckpointError(f"cannot store resume token: {brief_error(exc)}") from exc
        if fence is not None and not result.matched_count:
            raise LeadershipLost(
                f"deposed: the position write at epoch {fence.epoch} matched nothing "
                "(another instance holds the lease); nothing stored"
            )

    async def delete(self) -> bool:
        """Forget the stored position; a lease on the same document stays (a running leader keeps it)."""
        stored = {"_id": self.connector_id, "resumeToken": {"$exists": True}}
        try:
            deleted = await self._collection.delete_one({**stored, "lease": {"$exists": False}})
            if deleted.deleted_count:
                return True
            result = await self._collection.update_one(stored, {"$unset": dict.fromkeys(POSITION_FIELDS, "")})
        except PyMongoError as exc:
            raise CheckpointError(f"cannot delete resume token: {brief_error(exc)}") from exc
        return bool(result.modified_count)


@dataclass(slots=True)
class StreamMark:
    """The reader's latest post-batch token, and the newest event read when it was taken."""

    token: Mapping[str, Any]
    last_read_seq: int
    invalidated: bool = False


class Checkpointer:
    """Decides what position is safe to store, and stores it on a timer.

    Two candidates: the ledger's checkpoint (newest event with everything before it completed) and the
    stream's post-batch resume token, which is safe only once every event read before it was taken has
    completed. The post-batch token of an idle stream is stored at most every `idle_interval` seconds,
    since the token write itself moves the cluster time (invariant 4).
    """

    def __init__(
        self,
        store: TokenStore,
        ledger: InFlightLedger,
        *,
        namespace: str,
        pipeline_hash: str,
        interval: float,
        idle_interval: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._ledger = ledger
        self._namespace = namespace
        self._pipeline_hash = pipeline_hash
        self._interval = interval
        self._idle_interval = idle_interval
        self._clock = clock
        self._mark: StreamMark | None = None
        self._stored_seq = -1
        self._stored_token: Mapping[str, Any] | None = None
        self._last_store_at = clock()
        self.healthy = True
        self.last_error: str | None = None
        self.stores = 0
        self.last_stored_cluster_time: Timestamp | None = None

    def reset_position(self, token: Mapping[str, Any] | None) -> None:
        """Tell the checkpointer where the stream starts (nothing before it needs storing)."""
        self._stored_token = token

    @property
    def has_position(self) -> bool:
        """False until a position is stored (or the stream resumed from a stored one)."""
        return self._stored_token is not None

    def note_stream_mark(self, mark: StreamMark) -> None:
        self._mark = mark

    def candidate(self) -> tuple[Mapping[str, Any], int, bool, bool] | None:
        """(token, seq, invalidated, idle_refresh) worth storing now, or None."""
        safe_seq = self._ledger.safe_seq
        mark = self._mark
        # The mark is the newest safe position only when every event read before it has completed and
        # nothing read after it has (then the ledger's token would be newer).
        if mark is not None and mark.last_read_seq == safe_seq and mark.token != self._stored_token:
            if safe_seq > self._stored_seq or mark.invalidated or self._stored_token is None:
                return mark.token, safe_seq, mark.invalidated, False
            if self._clock() - self._last_store_at >= self._idle_interval:
                return mark.token, safe_seq, False, True
            return None
        token = self._ledger.checkpoint()
        if token is not None and safe_seq > self._stored_seq:
            return token, safe_seq, False, False
        return None

    async def checkpoint(self) -> bool:
        """Store the newest safe position if it advanced; True when something was stored."""
        chosen = self.candidate()
        if chosen is None:
            return False
        token, seq, invalidated, _ = chosen
        cluster_time = cluster_time_of(token)
        try:
            await self._store.store(
                token,
                cluster_time=cluster_time,
                namespace=self._namespace,
                pipeline_hash=self._pipeline_hash,
                invalidated=invalidated,
            )
        except CheckpointError as exc:
            self.healthy = False
            self.last_error = str(exc)
            log.error("%s", exc, extra={"code": 72007})
            log.debug("checkpoint write failed in full", exc_info=exc.__cause__)
            return False
        if not self.healthy:
            log.info("resume token stored again after failures", extra={"code": 72007})
        self.healthy = True
        self.last_error = None
        self._stored_seq = max(self._stored_seq, seq)
        self._stored_token = token
        self._last_store_at = self._clock()
        self.stores += 1
        self.last_stored_cluster_time = cluster_time
        return True

    async def run(self, stop: asyncio.Event) -> None:
        """Checkpoint every `interval` seconds until `stop` is set (the final store is the owner's job)."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._interval)
            if not stop.is_set():
                await self.checkpoint()
