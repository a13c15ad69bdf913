"""Opening the change stream, and telling its failures apart.

Resumable errors (network errors, `ResumableChangeStreamError` labels, CursorNotFound) are resumed once
by the stream itself (`cursor.ChangeStreamCursor`, or the driver's `try_next()`). What reaches us is
classified here, by code and label, never by message text:
- 286 ChangeStreamHistoryLost → HistoryLostError (ON_HISTORY_LOST decides: the events between our stored
  position and the oldest oplog entry are gone, and only the user can accept that);
- 13 Unauthorized on a deployment-wide stream → StreamError naming the cluster-wide privileges it needs
  (retried like any other: granting them heals the connector without a restart);
- everything else → StreamError (the reader reopens from its last read position with growing backoff).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bson import Timestamp
from pymongo.errors import OperationFailure, PyMongoError

from connector.errors import HistoryLostError, StreamError
from connector.sources.mongodb.client import Mongo, brief_error
from connector.sources.mongodb.cursor import BatchStream
from connector.sources.mongodb.namespaces import DEPLOYMENT_PRIVILEGES
from connector.sources.mongodb.pipeline import large_event_stages, split_supported

if TYPE_CHECKING:
    from connector.sources.mongodb.settings import MongoSettings

log = logging.getLogger(__name__)

CHANGE_STREAM_HISTORY_LOST = 286
UNAUTHORIZED = 13
# How long one awaitData getMore may wait on the server. An event is returned as soon as it commits, so
# this bounds only idle polling (and how fast the idle post-batch token advances), not latency.
MAX_AWAIT_TIME_MS = 1000


@dataclass(frozen=True, slots=True)
class StartPosition:
    """Where to (re)open: after a token, after an invalidate token, at an operation time, or now."""

    token: Mapping[str, Any] | None = None
    start_after: bool = False
    operation_time: Timestamp | None = None

    def describe(self) -> str:
        if self.token is not None:
            kind = "startAfter" if self.start_after else "resumeAfter"
            return f"{kind} {self.token.get('_data')}"
        if self.operation_time is not None:
            return f"startAtOperationTime {self.operation_time.time}.{self.operation_time.inc}"
        return "now"


@dataclass(frozen=True, slots=True)
class StreamOptions:
    collection: str  # empty: the whole database
    pipeline: Sequence[Mapping[str, Any]]
    #: Every database (MONGODB_WATCH=deployment): `client.watch()`, opened on `admin`.
    deployment: bool = False
    full_document: str = "off"
    full_document_before_change: str = "off"
    max_await_time_ms: int = MAX_AWAIT_TIME_MS
    batch_size: int | None = None
    #: Append `pipeline.large_event_stages` (the split stage, or the oversize fallback) on open.
    large_events: bool = True


def stream_options(settings: MongoSettings, **overrides: Any) -> StreamOptions:
    """What the settings say to watch, and how (the reader's and `check`'s stream alike)."""
    return StreamOptions(
        collection=settings.mongodb_collection,
        pipeline=settings.stream_pipeline(),
        deployment=settings.watch_mode == "deployment",
        full_document=settings.full_document,
        full_document_before_change=settings.full_document_before_change,
        **overrides,
    )


def is_history_lost(exc: BaseException) -> bool:
    return isinstance(exc, OperationFailure) and (
        exc.code == CHANGE_STREAM_HISTORY_LOST
        or (exc.details or {}).get("codeName") == "ChangeStreamHistoryLost"
    )


def is_unauthorized(exc: BaseException) -> bool:
    return isinstance(exc, OperationFailure) and (
        exc.code == UNAUTHORIZED or (exc.details or {}).get("codeName") == "Unauthorized"
    )


def classify(exc: PyMongoError, position: StartPosition, *, deployment: bool = False) -> StreamError:
    """Map a driver error to ours (the one boundary between PyMongo errors and the reader)."""
    if is_history_lost(exc):
        return HistoryLostError(
            f"change stream history lost resuming from {position.describe()}: {brief_error(exc)}"
        )
    if deployment and is_unauthorized(exc):
        return StreamError(
            f"not authorized to watch the whole deployment (MONGODB_WATCH=deployment): the user needs "
            f"{DEPLOYMENT_PRIVILEGES} ({brief_error(exc)})"
        )
    return StreamError(f"change stream failed ({type(exc).__name__}): {brief_error(exc)}")


async def open_stream(mongo: Mongo, options: StreamOptions, position: StartPosition) -> BatchStream:
    """Open the change stream at `position`; raises HistoryLostError or StreamError."""
    kwargs: dict[str, Any] = {"max_await_time_ms": options.max_await_time_ms}
    if options.full_document != "off":
        kwargs["full_document"] = options.full_document
    if options.full_document_before_change != "off":
        kwargs["full_document_before_change"] = options.full_document_before_change
    if options.batch_size:
        kwargs["batch_size"] = options.batch_size
    if position.token is not None:
        kwargs["start_after" if position.start_after else "resume_after"] = dict(position.token)
    elif position.operation_time is not None:
        kwargs["start_at_operation_time"] = position.operation_time
    try:
        pipeline = [dict(stage) for stage in options.pipeline]
        if options.large_events:
            supported = split_supported(await mongo.server_version())
            pipeline += large_event_stages(pipeline, split_supported=supported)
        return await mongo.watch_batches(
            options.collection, pipeline, deployment=options.deployment, **kwargs
        )
    except PyMongoError as exc:
        raise classify(exc, position, deployment=options.deployment) from exc
