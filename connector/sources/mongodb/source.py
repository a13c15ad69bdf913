"""The MongoDB source: a change stream, read by one `Reader` per term, its position in a token document.

Process-wide: the client, the router (channel, name and headers from each event), the dead-letter
handler, the overflow collection and the lease document (`lease.py`, on the token document, so a fenced
position write is one atomic check). Per term: a `TokenStore` fenced by the term's lease epoch, the
checkpointer and the reader, started from the position stored by the last leader.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine, Mapping
from typing import Any

from bson import json_util

from connector.ably.cipher import ChannelCipher, cipher_from
from connector.ably.outbound import OutboundMessage
from connector.ably.overflow import Overflow
from connector.ably.oversize import ORIGINAL_SIZE_HEADER, TRUNCATED_HEADER
from connector.config import Settings
from connector.errors import AblyError, ConnectorError, FatalError
from connector.sources.mongodb import decode
from connector.sources.mongodb.checkpoint import Checkpointer, StoredPosition, TokenStore
from connector.sources.mongodb.client import Mongo, mongo_from
from connector.sources.mongodb.deadletter import UnpublishableHandler
from connector.sources.mongodb.layout import GuardedLeaseStore, Handover, LayoutGuard
from connector.sources.mongodb.lease import MongoLeaseStore
from connector.sources.mongodb.messages import RouteStats, encode_driver_event, make_router
from connector.sources.mongodb.overflow_store import MongoSpillStore
from connector.sources.mongodb.partitions import PartitionedMongo
from connector.sources.mongodb.pipeline import pipeline_hash, sets_channel
from connector.sources.mongodb.reader import Reader
from connector.sources.mongodb.stream import StartPosition, stream_options
from connector.sources.protocol import Counter, TermContext

log = logging.getLogger(__name__)


class MongoSource:
    """`connector.sources.protocol.Source` for a change stream on a collection or a database."""

    database = "MongoDB"

    def __init__(self, settings: Settings, *, mongo: Mongo | None = None) -> None:
        self.settings = settings
        self._owns_mongo = mongo is None
        self.mongo = mongo or mongo_from(settings)
        # Events arrive decoded with the MongoDB client's CODEC_OPTIONS: the walk-free encoder applies.
        self.route_stats = RouteStats()
        self.cipher = cipher_from(settings)
        self.route = make_router(
            json_mode=settings.json_mode,
            max_message_size=settings.max_message_size,
            encoder=encode_driver_event if settings.json_mode == "relaxed" else None,
            on_oversize=settings.on_oversize,
            stats=self.route_stats,
            cipher=self.cipher,
        )
        self.stages = settings.pipeline_stages()
        self.pipeline_hash = pipeline_hash(self.stages)
        self.namespace = settings.watch_label
        # With PARTITIONS > 1 each partition has its own token and lease document (partitions.py), and
        # leads only while the recorded layout is its own (layout.py).
        self.partition = settings.partition_spec
        self.position_id = self.partition.position_id(settings.connector_id)
        self.lease_id = self.position_id
        self.tokens = self.mongo.collection(settings.resume_token_collection, majority=True)
        self.layout = LayoutGuard(self.tokens, settings.connector_id, self.partition)
        self.lease_store = GuardedLeaseStore(MongoLeaseStore(self.tokens, self.position_id), self.layout)
        #: The reader's client: with PARTITIONS > 1 its change streams keep only this partition's events.
        self.stream_mongo: Mongo = self.mongo
        if self.partition.split:
            user_stages = len(settings.stream_pipeline())
            self.stream_mongo = PartitionedMongo(self.mongo, self.partition, user_stages=user_stages)
        self.unpublishable = UnpublishableHandler(
            settings.on_unpublishable,
            self.mongo.collection(settings.deadletter_collection, majority=True),
            ttl_days=settings.deadletter_ttl_days,
        )
        self.overflow_collection = self.mongo.collection(settings.overflow_collection, majority=True)
        self.spill_store = MongoSpillStore(self.overflow_collection, self.position_id)

    async def open(self, stop: asyncio.Event) -> bool:
        """Nothing to wait for here: the lease's first poll finds out whether MongoDB answers."""
        if not sets_channel(list(self.stages)):
            log.warning(
                "no pipeline stage sets _ablyChannel: every event will be unpublishable",
                extra={"code": 72004},
            )
        if self.partition.split:
            log.info("%s: token and lease document %r", self.partition.describe(), self.position_id)
        return True

    def term(self, ctx: TermContext) -> MongoTerm:
        return MongoTerm(self, ctx)

    def values(self) -> Mapping[str, Any]:
        return {
            "events_deadlettered": self.unpublishable.deadlettered,
            "events_skipped": self.unpublishable.skipped,
            "unpublishable_by_kind": dict(self.unpublishable.by_kind),
            "messages_truncated": self.route_stats.truncated,
            "messages_encrypted": self.cipher.sealed if self.cipher else 0,
            "lossy_decodes": decode.STATS.lossy_events,
            "undecodable_events": decode.STATS.undecodable_events,
        }

    async def close(self) -> None:
        if self._owns_mongo:
            await self.mongo.close()


class MongoTerm:
    """One term's token store (fenced by its epoch), checkpointer and reader."""

    def __init__(self, source: MongoSource, ctx: TermContext) -> None:
        settings = source.settings
        self._source = source
        self._ctx = ctx
        self.token_store = TokenStore(source.tokens, source.position_id)
        self.token_store.fence = ctx.fence
        self.checkpointer = Checkpointer(
            self.token_store,
            ctx.ledger,
            namespace=source.namespace,
            pipeline_hash=source.pipeline_hash,
            interval=settings.checkpoint_interval_ms / 1000,
            idle_interval=settings.idle_checkpoint_interval_s,
        )
        self.overflow: Overflow | None = ctx.overflow(source.spill_store)
        self.reader = Reader(
            source.stream_mongo,
            stream_options(settings, batch_size=settings.stream_batch_size),
            ledger=ctx.ledger,
            checkpointer=self.checkpointer,
            publisher=ctx.publisher,
            route=source.route,
            unpublishable=source.unpublishable,
            on_history_lost=settings.on_history_lost,
            overflow=self.overflow,
        )
        self._start = StartPosition()

    async def open(self) -> None:
        """The stored position (read after winning the lease: the last leader may have moved it)."""
        stored = await self.token_store.load()
        handover = await self._source.layout.handover() if stored is None else None
        await self._source.unpublishable.ensure_indexes()
        await self._source.spill_store.ensure_indexes()
        await self._source.layout.adopt_spilled(self._source.overflow_collection)
        self._start = self._start_position(stored, self._source.settings.start_at, handover)

    def _start_position(
        self, stored: StoredPosition | None, start_at: Any, handover: Handover | None = None
    ) -> StartPosition:
        namespace = self._source.namespace
        if stored is not None:
            if stored.namespace and stored.namespace != namespace:
                raise FatalError(
                    f"stored resume token {self._source.settings.connector_id!r} belongs to namespace "
                    f"{stored.namespace!r}, not {namespace!r}; set CONNECTOR_ID or run "
                    "`livesync-connector token reset --yes`",
                    code=72006,
                )
            if stored.pipeline_hash and stored.pipeline_hash != self._source.pipeline_hash:
                log.warning("the pipeline changed since the token was stored; resuming anyway")
            self.reader.stored_cluster_time = stored.cluster_time
            log.info("resuming from stored token %s", stored.token.get("_data"))
            return StartPosition(token=stored.token, start_after=stored.invalidated)
        if handover is not None and handover.token is not None:
            log.info(
                "no stored token of its own; starting from the %d-partition layout's oldest position %s "
                "(changes since then are sent again with the same ids)",
                handover.previous,
                handover.token.get("_data"),
            )
            return StartPosition(token=handover.token, start_after=handover.invalidated)
        if handover is not None and handover.operation_time is not None and start_at == "now":
            # A first partitioned deployment: every partition starts where the layout was recorded.
            log.info(
                "no stored token; starting where this partition layout began, %s", handover.operation_time
            )
            return StartPosition(operation_time=handover.operation_time)
        if start_at != "now":
            log.info("no stored token; starting at operation time %s", start_at)
            return StartPosition(operation_time=start_at)
        log.info("no stored token; starting from now")
        return StartPosition()

    def tasks(self, stop: asyncio.Event) -> dict[str, Coroutine[Any, Any, None]]:
        return {"reader": self.reader.run(self._start, stop), "writer": self.checkpointer.run(stop)}

    async def store_position(self) -> None:
        # On failure the next leader resends from the last stored position (same ids).
        with contextlib.suppress(ConnectorError):
            await self.checkpointer.checkpoint()

    async def on_rejected(self, msg: OutboundMessage, error: AblyError) -> None:
        """Ably refused a message for good: apply ON_UNPUBLISHABLE to the event it carried (decrypted;
        one sent truncated is stored as such, so a replay never takes its compact form for the whole)."""
        event = _carried_event(msg, self._source.cipher)
        headers = (msg.message.get("extras") or {}).get("headers") or {}
        original_size = headers.get(TRUNCATED_HEADER) == "true" and headers.get(ORIGINAL_SIZE_HEADER)
        await self._source.unpublishable.handle(
            event,
            f"rejected by Ably: {error}",
            error.ably_code or error.code,
            kind="rejected",
            truncated_size=int(original_size) if original_size and original_size.isdigit() else None,
        )

    def counters(self) -> Mapping[str, Counter]:
        r = self.reader.stats
        return {
            "events_read": r.events_read,
            "unpublishable_events": r.unpublishable,
            "stream_reopens": r.reopens,
            "checkpoints_stored": self.checkpointer.stores,
            "events_reassembled": self.reader.fragments.reassembled,
        }

    def gauges(self) -> Mapping[str, Any]:
        r = self.reader.stats
        stored = self.checkpointer.last_stored_cluster_time
        return {
            "stream_open": int(r.stream_open),
            "checkpoint_cluster_time_seconds": stored.time if stored else None,
        }

    def problems(self) -> list[str]:
        problems = []
        if not self.reader.stats.stream_open:
            problems.append("change stream not open")
        if not self.checkpointer.healthy:
            problems.append(f"checkpoint writes failing: {self.checkpointer.last_error}")
        return problems

    def details(self) -> dict[str, Any]:
        return {}

    async def close(self) -> None:
        """Nothing of its own to close: the client is the source's."""


def _carried_event(msg: OutboundMessage, cipher: ChannelCipher | None) -> dict[str, Any]:
    """The change event a message carries, as JSON decodes it (its `_id` at least)."""
    data = msg.message.get("data", "{}")
    event: Any = None
    try:
        if "cipher+" in msg.message.get("encoding", "") and cipher is not None:
            data = cipher.decrypt(msg.channel, data).decode("utf-8")
        event = json_util.loads(data)
    except ValueError as exc:  # json errors are ValueErrors too
        log.warning("cannot read back the event of a refused message %s: %s", msg.message.get("id"), exc)
    carried: dict[str, Any] = event if isinstance(event, dict) else {"_ablyChannel": msg.channel}
    carried.setdefault("_id", msg.token)
    return carried
