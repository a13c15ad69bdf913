"""A change stream read a batch at a time: `aggregate` + `getMore` commands, one decode per batch.

Why not the driver's ChangeStream: it hands out one document per `await try_next()`, and the per-document
coroutine chain cost the connector more than decoding the event. This cursor runs the same commands the
driver runs, through public API (`Database.command` in one explicit session), and returns whole batches,
so the reader can also ask for the next batch while it routes the current one.

It keeps the driver spec's resume rules (change-streams spec, "Resume Process"):
- the cached resume token is the `postBatchResumeToken` of the last batch, else the `_id` of its last
  event; an opening aggregate with an empty first batch and no token caches the `operationTime`;
- a resumable error (any network error, CursorNotFound, or the `ResumableChangeStreamError` label) is
  resumed once, at once, by a new aggregate: `startAfter` while a stream opened with startAfter has
  returned no event yet, `resumeAfter` after that, `startAtOperationTime` when no token was ever cached;
- every event must carry its `_id` (the resume token), or the stream fails;
- the server cursor is killed on close, and getMores run in the session that opened it.
Anything else reaches the reader, which reopens from its last position with a growing backoff.

`DriverStreamBatches` wraps the driver's own ChangeStream in the same interface, one event per batch,
wherever a getMore sent here might not reach the server holding the cursor (only the driver pins one):
several mongos, a load balancer, a read preference other than primary; and for Motor
(`Mongo.getmores_reach_the_cursor`).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from bson import Int64, Timestamp
from pymongo.errors import ConnectionFailure, CursorNotFound, InvalidOperation, OperationFailure, PyMongoError

from connector.sources.mongodb.decode import RAW_CODEC_OPTIONS, decode_event, decode_reply, plain_token

log = logging.getLogger(__name__)

Event = Mapping[str, Any]
MISSING_TOKEN = "Cannot provide resume functionality when the resume token is missing."
#: A killCursors on close is a courtesy (the server times idle cursors out); it must not hold up a stop.
KILL_TIMEOUT_S = 2.0


class BatchStream(Protocol):
    """What the reader needs from a change stream: batches in stream order and the position after them."""

    @property
    def alive(self) -> bool: ...

    @property
    def resume_token(self) -> Mapping[str, Any] | None: ...

    async def next_batch(self) -> Sequence[Event]: ...

    async def close(self) -> None: ...


def is_resumable(exc: PyMongoError) -> bool:
    """The spec's resumable errors (servers from 4.4 label them; network errors and 43 always are)."""
    if isinstance(exc, ConnectionFailure | CursorNotFound):
        return True
    return isinstance(exc, OperationFailure) and exc.has_error_label("ResumableChangeStreamError")


class ChangeStreamCursor:
    """One change stream over raw commands. `open()` runs the aggregate; `next_batch()` one getMore."""

    def __init__(
        self,
        db: Any,
        collection: str,
        pipeline: Sequence[Mapping[str, Any]],
        *,
        change_stream_options: Mapping[str, Any],
        max_await_time_ms: int,
        batch_size: int | None,
        resume_after: Mapping[str, Any] | None = None,
        start_after: bool = False,
        start_at_operation_time: Timestamp | None = None,
    ) -> None:
        self._db = db
        self._collection = collection
        self._pipeline = [dict(stage) for stage in pipeline]
        self._options = dict(change_stream_options)
        self._max_await_time_ms = max_await_time_ms
        self._batch_size = batch_size
        self._token: Mapping[str, Any] | None = resume_after
        self._start_after = start_after and resume_after is not None
        self._operation_time = None if resume_after is not None else start_at_operation_time
        self._session: Any = None
        self._cursor_id = 0
        self._getmore_collection = collection
        # The opening aggregate's first batch and its post-batch token, handed out by the next call.
        self._first: list[Event] = []
        self._first_pbrt: Mapping[str, Any] | None = None
        self._closed = False

    @property
    def alive(self) -> bool:
        return not self._closed

    @property
    def resume_token(self) -> Mapping[str, Any] | None:
        """The position after the last batch returned (the caller must not modify it)."""
        return self._token

    async def open(self) -> None:
        """Run the aggregate (once; a failure is the caller's to retry)."""
        self._session = self._db.client.start_session(causal_consistency=False)
        try:
            await self._aggregate()
        except BaseException:
            await self._end_session()
            raise

    async def next_batch(self) -> Sequence[Event]:
        """The next batch (empty after an idle awaitData wait). Resumes once on a resumable error."""
        if self._first:
            return self._take_first()
        if self._closed:
            return []
        if not self._cursor_id:
            self._closed = True  # the server closed the cursor (after an invalidate)
            return []
        try:
            reply = decode_reply(await self._command(self._get_more()), "nextBatch")
        except PyMongoError as exc:
            if not is_resumable(exc):
                await self.close()
                raise
            cause = str(exc).split(", Topology Description: ")[0]  # the description is long and says little
            log.info("change stream interrupted (%s: %s); resuming once", type(exc).__name__, cause)
            if isinstance(exc, ConnectionFailure):
                self._cursor_id = 0  # the server is unreachable: killing its cursor would only wait
            await self._kill_cursor()
            await self._aggregate()
            return self._take_first()
        cursor = reply["cursor"]
        self._cursor_id = cursor["id"]
        return self._take(cursor["nextBatch"], cursor.get("postBatchResumeToken"))

    async def close(self) -> None:
        """Kill the server cursor (bounded, best effort) and end the session; closing twice is harmless."""
        self._closed = True
        await self._kill_cursor()
        await self._end_session()

    # -- internals ----------------------------------------------------------------------------------

    async def _aggregate(self) -> None:
        reply = decode_reply(await self._command(self._aggregate_command()), "firstBatch")
        cursor = reply["cursor"]
        self._cursor_id = cursor["id"]
        # getMore names the collection as the reply's namespace does ("$cmd.aggregate" database-wide).
        self._getmore_collection = str(cursor.get("ns", "")).partition(".")[2] or self._collection
        first = cursor.get("firstBatch", [])
        pbrt = cursor.get("postBatchResumeToken")
        if not first:
            if pbrt is not None:
                self._token = pbrt
                self._operation_time = None
            elif self._token is None and self._operation_time is None:
                self._operation_time = reply.get("operationTime")
                if self._operation_time is None:
                    raise OperationFailure("the change stream's aggregate reply has no operationTime")
            return
        self._first, self._first_pbrt = list(first), pbrt

    def _take_first(self) -> Sequence[Event]:
        batch, pbrt = self._first, self._first_pbrt
        self._first, self._first_pbrt = [], None
        return self._take(batch, pbrt)

    def _take(self, batch: Sequence[Event], pbrt: Mapping[str, Any] | None = None) -> Sequence[Event]:
        """Cache the position after `batch` (its post-batch token, else its last event's `_id`)."""
        if batch:
            last = batch[-1]
            if not all("_id" in event for event in batch):
                raise InvalidOperation(MISSING_TOKEN)
            self._start_after = False
            self._token = pbrt if pbrt is not None else last["_id"]
            self._operation_time = None
        elif pbrt is not None:
            self._token = pbrt
            self._operation_time = None
        return batch

    def _aggregate_command(self) -> dict[str, Any]:
        stage: dict[str, Any] = dict(self._options)
        if self._token is not None:
            stage["startAfter" if self._start_after else "resumeAfter"] = self._token
        elif self._operation_time is not None:
            stage["startAtOperationTime"] = self._operation_time
        cursor: dict[str, Any] = {"batchSize": self._batch_size} if self._batch_size else {}
        return {
            "aggregate": self._collection or 1,
            "pipeline": [{"$changeStream": stage}, *self._pipeline],
            "cursor": cursor,
        }

    def _get_more(self) -> dict[str, Any]:
        command: dict[str, Any] = {
            "getMore": Int64(self._cursor_id),
            "collection": self._getmore_collection,
            "maxTimeMS": self._max_await_time_ms,
        }
        if self._batch_size:
            command["batchSize"] = self._batch_size
        return command

    async def _command(self, command: Mapping[str, Any]) -> Mapping[str, Any]:
        """Run a command in the stream's session; the reply stays raw (`decode.decode_reply` decodes it)."""
        reply: Mapping[str, Any] = await self._db.command(
            command, session=self._session, codec_options=RAW_CODEC_OPTIONS
        )
        return reply

    async def _kill_cursor(self) -> None:
        cursor_id, self._cursor_id = self._cursor_id, 0
        if cursor_id and self._session is not None:
            kill = {"killCursors": self._getmore_collection, "cursors": [Int64(cursor_id)]}
            with contextlib.suppress(PyMongoError, TimeoutError):
                await asyncio.wait_for(self._command(kill), KILL_TIMEOUT_S)

    async def _end_session(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            with contextlib.suppress(PyMongoError):
                await session.end_session()


class DriverStreamBatches:
    """The driver's own ChangeStream (PyMongo async or Motor) as a BatchStream of one event per batch.

    The stream's target must use `decode.RAW_CODEC_OPTIONS`: events arrive raw and are decoded here, one
    at a time, so an event that cannot be decoded is handed on as an `UndecodableEvent` (the driver has
    already moved its resume token past it) instead of failing the stream."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    @property
    def alive(self) -> bool:
        return bool(self._stream.alive)

    @property
    def resume_token(self) -> Mapping[str, Any] | None:
        # Motor opens the server-side stream lazily, on the first try_next(); until then there is no token.
        if hasattr(self._stream, "delegate") and self._stream.delegate is None:
            return None
        token: Mapping[str, Any] | None = plain_token(self._stream.resume_token)
        return token

    async def next_batch(self) -> Sequence[Event]:
        change: Any = await self._stream.try_next()
        if change is None:
            return []
        return [decode_event(change.raw) if hasattr(change, "raw") else change]

    async def close(self) -> None:
        result = self._stream.close()  # a coroutine for both drivers today; a plain call in older Motor
        if inspect.isawaitable(result):
            await result
