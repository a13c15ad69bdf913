"""What happens to an event that can never be published (ON_UNPUBLISHABLE).

`deadletter` (default) writes `{_id: token, event, reason, kind, code, at}` to the dead-letter collection
(plus `rawEvent`, the BSON as read, for an event that could not be decoded; an event too large to store
whole is stored without its document bodies, with `eventSize`) and moves on (`livesync-connector
deadletter` lists and replays them, `deadletter_store.py`); `skip` logs and counts it;
`fail` stops the connector, and since the event never completes, the stored position stays before it.
A dead-letter write that fails is retried: the event is not complete until it is stored somewhere.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

import bson
from bson import Binary
from pymongo.errors import DocumentTooLarge, DuplicateKeyError, OperationFailure, PyMongoError

from connector.ably.validation import quote
from connector.errors import FatalError
from connector.sources.mongodb.decode import IDENTITY_FIELDS, UndecodableEvent
from connector.sources.mongodb.retrying import retry_forever

log = logging.getLogger(__name__)

Policy = Literal["deadletter", "skip", "fail"]

#: Server codes for a document over 16 MiB (BSONObjectTooLarge, BadValue on insert, update result too
#: large): retrying the same document can never succeed, so it is stored compact instead.
TOO_LARGE_CODES = frozenset({10334, 2, 17419, 17420})
TTL_INDEX = "at_ttl"  # the name ensure_indexes looks for: an index of another name is the user's own
INDEX_NOT_FOUND = 27


class UnpublishableHandler:
    """Applies the ON_UNPUBLISHABLE policy to one event."""

    def __init__(self, policy: Policy, collection: Any, *, ttl_days: int = 14) -> None:
        self.policy = policy
        self._collection = collection
        self._ttl_days = ttl_days
        self.deadlettered = 0
        self.skipped = 0
        #: Dead-lettered (or skipped) events by `UnpublishableEvent.kind`: a bounded vocabulary.
        self.by_kind: dict[str, int] = {}

    async def ensure_indexes(self) -> None:
        """Keep the TTL index on `at` in step with DEADLETTER_TTL_DAYS: create it, change its expiry in
        place when the setting changed (`collMod`; createIndexes cannot, it fails with 85
        IndexOptionsConflict), or drop it at 0, which keeps dead letters."""
        if self.policy != "deadletter":
            return
        try:
            await self._sync_ttl_index()
        except PyMongoError as exc:
            # A missing or stale index costs disk, not correctness: warn and keep going.
            log.warning("cannot bring the dead-letter TTL index in step with DEADLETTER_TTL_DAYS: %s", exc)

    async def _sync_ttl_index(self) -> None:
        existing = (await self._collection.index_information()).get(TTL_INDEX)  # {} if no collection yet
        seconds = self._ttl_days * 86_400
        if seconds <= 0:
            if existing is not None:
                try:
                    await self._collection.drop_index(TTL_INDEX)
                except OperationFailure as exc:
                    if exc.code != INDEX_NOT_FOUND:  # another instance dropped it first
                        raise
                log.info("dead-letter TTL index dropped: DEADLETTER_TTL_DAYS=0 keeps dead letters")
        elif existing is None:
            await self._collection.create_index("at", expireAfterSeconds=seconds, name=TTL_INDEX)
        elif existing.get("expireAfterSeconds") != seconds:
            await self._collection.database.command(
                "collMod", self._collection.name, index={"name": TTL_INDEX, "expireAfterSeconds": seconds}
            )
            log.info(
                "dead-letter TTL index: dead letters now expire after %d days (was %ss)",
                self._ttl_days,
                existing.get("expireAfterSeconds"),
            )

    async def handle(
        self,
        event: Mapping[str, Any],
        reason: str,
        code: int,
        *,
        kind: str = "invalid",
        fatal: bool = False,
        truncated_size: int | None = None,
    ) -> None:
        """Dead-letter, skip, or raise FatalError; returns once the event may count as done.

        `truncated_size`: the event is the compact form a truncated message carried (ON_OVERSIZE=truncate),
        and this was the whole message's size: it is stored as a dead letter without its bodies."""
        token = event.get("_id")
        channel = event.get("_ablyChannel")
        if self.policy == "fail" or fatal:
            raise FatalError(
                f"unpublishable event {_token_text(token)} (channel {channel!r}): {reason}", code=code
            )
        self.by_kind[kind] = self.by_kind.get(kind, 0) + 1
        if self.policy == "skip":
            self.skipped += 1
            log.warning(
                "skipped unpublishable event %s (documentKey %s): %s",
                _token_text(token),
                quote(event.get("documentKey")),
                reason,
                extra={"code": code, "channel": channel},
            )
            return
        doc: dict[str, Any] = {
            "_id": token,
            "event": dict(event),
            "reason": reason,
            "kind": kind,
            "code": code,
            "at": datetime.now(UTC),
        }
        if isinstance(event, UndecodableEvent):
            doc["rawEvent"] = Binary(event.raw)
        if truncated_size is not None:
            doc["eventSize"] = truncated_size
            doc["eventTruncated"] = True
        await self._insert_with_retry(doc)
        self.deadlettered += 1
        log.warning(
            "dead-lettered unpublishable event %s (documentKey %s): %s",
            _token_text(token),
            quote(event.get("documentKey")),
            reason,
            extra={"code": code, "channel": channel},
        )

    async def _insert_with_retry(self, doc: dict[str, Any]) -> None:
        await retry_forever("write dead letter", lambda: self._insert(doc), code=72001)

    async def _insert(self, doc: dict[str, Any]) -> None:
        """Insert the dead letter; one too large to store whole goes in compact form."""
        try:
            await self._collection.insert_one(dict(doc))
        except DuplicateKeyError:
            return  # already dead-lettered before a restart: the same token, the same event
        except (DocumentTooLarge, OperationFailure) as exc:
            too_large = isinstance(exc, DocumentTooLarge) or exc.code in TOO_LARGE_CODES
            if not too_large or doc.get("eventTruncated"):
                raise  # retried by retry_forever
            await self._insert(_compact(doc))


def _compact(doc: dict[str, Any]) -> dict[str, Any]:
    """The dead letter without the event's bodies (or raw BSON): what identifies it, and its size."""
    event = doc["event"]
    size = len(doc["rawEvent"]) if "rawEvent" in doc else len(bson.encode(event))
    out = {key: value for key, value in doc.items() if key not in ("event", "rawEvent")}
    out["event"] = {key: event[key] for key in IDENTITY_FIELDS if key in event}
    out["eventSize"] = size
    out["eventTruncated"] = True
    log.warning(
        "dead letter for event %s is too large to store whole: stored without its bodies (%d bytes)",
        _token_text(doc.get("_id")),
        size,
    )
    return out


def _token_text(token: Any) -> str:
    if isinstance(token, Mapping) and isinstance(token.get("_data"), str):
        return str(token["_data"])
    return repr(token)
