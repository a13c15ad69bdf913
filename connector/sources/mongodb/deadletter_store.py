"""The MongoDB source's dead letters for `livesync-connector deadletter`: the DEADLETTER_COLLECTION documents.

A record is `{_id: token, event, reason, kind, code, at}` (+ `rawEvent` for an undecodable event, or
`eventTruncated` and `eventSize` when stored without its bodies: `deadletter.py`); a replay adds
`replayedAt`, `replayOutcome` (`published` / `failed`), `replayForm` and `replays` to it, and on a failure
the new `reason`, `code` and `kind`. Messages are built by the source's own router, with the token's
`_data` as the id, exactly as the running connector builds them.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from bson import json_util
from bson.json_util import RELAXED_JSON_OPTIONS
from pymongo.errors import PyMongoError

from connector.ably.cipher import cipher_from
from connector.ably.outbound import OutboundMessage
from connector.ably.oversize import OnOversize
from connector.config import Settings
from connector.deadletter.model import DeadLetter, ReplayForm, Selection
from connector.errors import StreamError, UnpublishableEvent
from connector.sources.mongodb.client import Mongo, brief_error, mongo_from
from connector.sources.mongodb.decode import UndecodableEvent, decode_event
from connector.sources.mongodb.messages import BODY_FIELDS, OVERSIZE_FIELD, to_message

__all__ = ["MongoDeadLetterStore"]

_LEFT_OUT = frozenset({*BODY_FIELDS, OVERSIZE_FIELD})


@contextlib.contextmanager
def _mapped(doing: str) -> Iterator[None]:
    try:
        yield
    except PyMongoError as exc:
        raise StreamError(f"MongoDB, {doing}: {brief_error(exc)}", code=72003) from exc


def _aware(when: Any) -> datetime | None:
    if not isinstance(when, datetime):
        return None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def _naive(when: datetime) -> datetime:
    """The driver's datetimes are naive UTC (the client's codec options): compare like with like."""
    return when.astimezone(UTC).replace(tzinfo=None)


def _token_id(token: Any) -> str:
    if isinstance(token, Mapping) and isinstance(token.get("_data"), str):
        return str(token["_data"])
    return str(token)


class MongoDeadLetterStore:
    """`connector.deadletter.store.DeadLetterStore` over DEADLETTER_COLLECTION."""

    def __init__(self, settings: Settings, *, mongo: Mongo | None = None) -> None:
        self._settings = settings
        self._owns_mongo = mongo is None
        self._given = mongo
        self._mongo: Mongo | None = None
        self._collection: Any = None  # DEADLETTER_COLLECTION, once open
        self.where = f"{settings.mongodb_database}.{settings.deadletter_collection}"
        self._cipher = cipher_from(settings)  # a replay is encrypted as the connector's messages are
        #: Record id -> the document as read (BSON values), for routing and marking.
        self._docs: dict[str, dict[str, Any]] = {}

    async def open(self) -> None:
        try:
            self._mongo = self._given or mongo_from(self._settings)
        except (PyMongoError, ValueError) as exc:  # the URI parses only here (a port out of range ...)
            raise StreamError(f"MongoDB: invalid MONGODB_URI: {exc}", code=72003) from exc
        self._collection = self._mongo.collection(self._settings.deadletter_collection, majority=True)
        with _mapped("connecting"):
            await self._mongo.db.command("ping")

    def _filter(self, selection: Selection) -> dict[str, Any]:
        flt: dict[str, Any] = {}
        if selection.ids or selection.after is not None:
            # Tokens are `{_data: hex}` (mongod refuses a pipeline that changes them): ordered by `_data`.
            flt["_id"] = {}
            if selection.ids:
                flt["_id"]["$in"] = [{"_data": i} for i in selection.ids]
            if selection.after is not None:
                flt["_id"]["$gt"] = {"_data": selection.after}
        if selection.kind is not None:
            flt["kind"] = selection.kind
        if selection.reason is not None:
            flt["reason"] = {"$regex": re.escape(selection.reason), "$options": "i"}
        if selection.channel_exact is not None:
            flt["event._ablyChannel"] = selection.channel_exact
        if selection.since is not None or selection.until is not None:
            at: dict[str, Any] = {}
            if selection.since is not None:
                at["$gte"] = selection.since
            if selection.until is not None:
                at["$lt"] = selection.until
            flt["at"] = at
        if selection.replayed is True:
            flt["replayOutcome"] = "published"
        elif selection.replayed is False:
            flt["replayOutcome"] = {"$ne": "published"}
        return flt

    async def find(self, selection: Selection) -> list[DeadLetter]:
        """Filtered by the database, except a channel glob, matched here (so then the database cannot
        apply the limit)."""
        self._docs = {}  # the documents of this find only: a replay reads page by page
        out: list[DeadLetter] = []
        limit = 0 if selection.channel_glob is not None else selection.limit or 0
        with _mapped(f"reading {self.where}"):
            cursor = self._collection.find(self._filter(selection)).sort("_id", 1).limit(limit)
            async for doc in cursor:
                record = self._record(doc)
                if selection.matches(record):
                    out.append(record)
                    if selection.limit and len(out) >= selection.limit:
                        break
            await cursor.close()
        return out

    async def get(self, record_id: str) -> DeadLetter | None:
        with _mapped(f"reading {self.where}"):
            doc = await self._collection.find_one({"_id": {"_data": record_id}})
        return self._record(doc) if doc is not None else None

    def _record(self, doc: dict[str, Any]) -> DeadLetter:
        event = doc.get("event") if isinstance(doc.get("event"), Mapping) else {}
        assert isinstance(event, Mapping)
        channel = event.get("_ablyChannel")
        name = event.get("_ablyMsgName", event.get("operationType"))
        record_id = _token_id(doc.get("_id"))
        self._docs[record_id] = doc
        outcome = doc.get("replayOutcome")
        form = doc.get("replayForm")
        return DeadLetter(
            id=record_id,
            channel=channel if isinstance(channel, str) else None,
            name=name if isinstance(name, str) else None,
            kind=str(doc.get("kind", "invalid")),
            reason=str(doc.get("reason", "")),
            code=int(doc.get("code", 0) or 0),
            at=_aware(doc.get("at")) or datetime.fromtimestamp(0, UTC),
            replayed_at=_aware(doc.get("replayedAt")),
            replay_outcome=outcome if outcome in ("published", "failed") else None,
            replay_form=form if form in ("compact", "original") else None,
            replays=int(doc.get("replays", 0) or 0),
            whole=not doc.get("eventTruncated"),
            stored=self._stored(doc),
        )

    @staticmethod
    def _stored(doc: Mapping[str, Any]) -> dict[str, Any]:
        """The document as relaxed Extended JSON values; raw BSON shown by its size only."""
        shown = dict(doc)
        raw = shown.get("rawEvent")
        if raw is not None:
            shown["rawEvent"] = f"<{len(raw)} bytes of BSON>"
        try:
            text = json_util.dumps(shown, json_options=RELAXED_JSON_OPTIONS)
        except (TypeError, ValueError) as exc:  # a value Extended JSON cannot carry: say so, keep going
            return {"_id": _token_id(doc.get("_id")), "unprintable": str(exc)}
        value = orjson.loads(text)
        return value if isinstance(value, dict) else {}

    def _event(self, record: DeadLetter, *, compact: bool) -> dict[str, Any]:
        doc = self._docs[record.id]
        event: dict[str, Any] = dict(doc.get("event") or {})
        raw = doc.get("rawEvent")
        if raw is not None:
            decoded = decode_event(bytes(raw))
            if isinstance(decoded, UndecodableEvent):
                if not compact:
                    raise UnpublishableEvent(decoded.reason, kind="undecodable", code=72000)
            else:
                event = decoded
        if not compact and doc.get("eventTruncated"):
            raise UnpublishableEvent("stored without its document bodies: only the compact form can be sent")
        if compact:
            event = {key: value for key, value in event.items() if key not in _LEFT_OUT}
        return event

    def route(
        self, record: DeadLetter, seq: int, *, compact: bool, max_message_size: int, on_oversize: OnOversize
    ) -> OutboundMessage:
        return to_message(
            seq,
            self._event(record, compact=compact),
            json_mode=self._settings.json_mode,
            max_message_size=max_message_size,
            on_oversize=on_oversize,
            cipher=self._cipher,
        )

    async def mark_published(self, record: DeadLetter, at: datetime, form: ReplayForm) -> None:
        update = {"replayedAt": _naive(at), "replayOutcome": "published", "replayForm": form}
        await self._update(record, {"$set": update, "$inc": {"replays": 1}})

    async def mark_failed(self, record: DeadLetter, at: datetime, reason: str, code: int, kind: str) -> None:
        update = {
            "reason": reason,
            "code": code,
            "kind": kind,
            "replayedAt": _naive(at),
            "replayOutcome": "failed",
        }
        await self._update(record, {"$set": update, "$unset": {"replayForm": ""}, "$inc": {"replays": 1}})

    async def _update(self, record: DeadLetter, update: dict[str, Any]) -> None:
        with _mapped(f"marking {record.id} in {self.where}"):
            await self._collection.update_one({"_id": self._docs[record.id]["_id"]}, update)

    async def delete(self, records: Sequence[DeadLetter]) -> int:
        ids = [self._docs[r.id]["_id"] for r in records]
        with _mapped(f"deleting from {self.where}"):
            result = await self._collection.delete_many({"_id": {"$in": ids}})
        return int(result.deleted_count)

    async def close(self) -> None:
        mongo, self._mongo = self._mongo, None
        if mongo is not None and self._owns_mongo:
            await mongo.close()
