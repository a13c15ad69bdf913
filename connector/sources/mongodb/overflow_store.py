"""The overflow store on MongoDB: a throttled channel's spilled messages (`connector.ably.overflow`).

One document per message in `OVERFLOW_COLLECTION` (default `ably_overflow`) of the watched database:
`{_id: "<CONNECTOR_ID>/<message id>", c: CONNECTOR_ID, ch: channel, k: message id, m: the Ably message,
size}`. A message id is the event's resume token, which sorts in stream order, so `k` orders a channel's
messages; the `_id` makes writing a message twice (a replay after a crash) harmless. Writes and deletes
are majority-acknowledged: a spilled message must survive a failover before the position moves past it.
Every operation is retried while MongoDB is unreachable: the events involved are in flight until then.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Final

from pymongo.errors import BulkWriteError, PyMongoError

from connector.ably.outbound import OutboundMessage
from connector.errors import StreamError
from connector.sources.mongodb.retrying import retry_forever

log = logging.getLogger(__name__)

__all__ = ["MongoSpillStore"]

DUPLICATE_KEY: Final = 11000


class MongoSpillStore:
    def __init__(self, collection: Any, connector_id: str) -> None:
        self._collection = collection
        self._connector_id = connector_id

    async def ensure_indexes(self) -> None:
        try:
            await self._collection.create_index([("c", 1), ("ch", 1), ("k", 1)], name="channel_order")
        except PyMongoError as exc:  # reads then scan the connector's few documents: slower, not wrong
            log.warning("cannot create the overflow collection's index: %s", exc)

    async def channels(self) -> list[str]:
        try:
            found = await self._collection.distinct("ch", {"c": self._connector_id})
        except PyMongoError as exc:
            raise StreamError(f"cannot read the overflow collection: {exc}") from exc
        return [str(channel) for channel in found]

    async def write(self, msgs: Sequence[OutboundMessage]) -> None:
        docs = [
            {
                "_id": f"{self._connector_id}/{msg.message['id']}",
                "c": self._connector_id,
                "ch": msg.channel,
                "k": msg.message["id"],
                "m": dict(msg.message),
                "size": msg.size,
            }
            for msg in msgs
        ]
        await retry_forever("write spilled messages", lambda: self._insert(docs), code=72003)

    async def _insert(self, docs: list[dict[str, Any]]) -> None:
        try:
            await self._collection.insert_many(docs, ordered=False)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if any(err.get("code") != DUPLICATE_KEY for err in errors) or exc.details.get(
                "writeConcernErrors"
            ):
                raise  # a duplicate is a message written before a crash: the same message

    async def load(self, channel: str, after: str | None, upto: str, limit: int) -> list[OutboundMessage]:
        query: dict[str, Any] = {"c": self._connector_id, "ch": channel, "k": {"$lte": upto}}
        if after is not None:
            query["k"]["$gt"] = after

        async def find() -> list[dict[str, Any]]:
            cursor = self._collection.find(query).sort("k", 1).limit(limit)
            return [doc async for doc in cursor]

        try:
            docs = await find()
        except PyMongoError as exc:
            raise StreamError(f"cannot read the overflow collection: {exc}") from exc
        return [
            OutboundMessage(
                seq=-1,
                channel=channel,
                message=doc["m"],
                size=int(doc["size"]),
                token={"spill": doc["_id"], "key": doc["k"]},
            )
            for doc in docs
        ]

    async def any_after(self, channel: str, after: str | None) -> bool:
        query: dict[str, Any] = {"c": self._connector_id, "ch": channel}
        if after is not None:
            query["k"] = {"$gt": after}
        try:
            return await self._collection.find_one(query, projection={"_id": 1}) is not None
        except PyMongoError as exc:
            raise StreamError(f"cannot read the overflow collection: {exc}") from exc

    async def delete(self, keys: Sequence[str]) -> None:
        query = {"_id": {"$in": list(keys)}}
        await retry_forever(
            "delete drained messages", lambda: self._collection.delete_many(query), code=72003
        )
