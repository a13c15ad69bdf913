"""The reader: pulls change events, routes them, and hands them to the publisher in stream order.

It owns the change stream, read a batch at a time with the next batch requested before the current one is
routed. Backpressure (invariant 5) is `ledger.reserve()`: when the ledger is full the reader stops routing,
so no getMore beyond the one already sent goes to MongoDB until Ably catches up (in memory: MAX_IN_FLIGHT
events plus at most two batches, the one being routed and the one read ahead).
After a non-resumable error the stream is reopened from the last position *read* (not the last one
stored): events read before it are still in the ledger and will complete, so rereading them would only
produce duplicates. The position never falls between the fragments of a split event (fragments.py): while
one is incomplete, it stays just before the first fragment.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from bson import Timestamp
from pymongo.errors import PyMongoError

from connector.ably.ledger import InFlightLedger
from connector.ably.outbound import OutboundMessage
from connector.ably.overflow import Overflow
from connector.errors import FatalError, HistoryLostError, StreamError, UnpublishableEvent
from connector.sources.mongodb.checkpoint import Checkpointer, StreamMark
from connector.sources.mongodb.client import Mongo
from connector.sources.mongodb.cursor import BatchStream
from connector.sources.mongodb.deadletter import UnpublishableHandler
from connector.sources.mongodb.fragments import SPLIT_FIELD, Reassembler
from connector.sources.mongodb.stream import StartPosition, StreamOptions, classify, open_stream

log = logging.getLogger(__name__)

# Reopen backoff after a stream failure: 0.5 s doubling to 30 s, with jitter so that a fleet of
# connectors does not reconnect in lockstep after a primary election.
REOPEN_BACKOFF_INITIAL_S = 0.5
REOPEN_BACKOFF_MAX_S = 30.0
# After an invalidate (watched collection dropped or renamed) wait a little before reopening with
# startAfter, so a drop-and-recreate has time to happen and we do not spin on a missing collection.
INVALIDATE_REOPEN_DELAY_S = 1.0

# Events routed between two yields to the event loop: the read-ahead getMore (it takes a few loop turns to
# reach its socket) and the publisher's requests and replies move on while a big batch is routed.
ROUTE_SLICE = 200

Router = Callable[[int, Mapping[str, Any]], OutboundMessage]
#: Sorts after every resume token: with no stored position, whatever an earlier run spilled is loadable.
LAST_KEY = "\uffff"
HistoryLostPolicy = Literal["fail", "restart"]


class Submitter(Protocol):
    def submit_many(self, msgs: Sequence[OutboundMessage]) -> None: ...


@dataclass(slots=True)
class ReaderStats:
    events_read: int = 0
    unpublishable: int = 0
    reopens: int = 0
    invalidations: int = 0
    last_event_cluster_time: Timestamp | None = None  # as found on the event (a pipeline may change it)
    last_event_wall_time: datetime | None = None
    last_event_read_at: float | None = None  # time.time() when read
    stream_open: bool = False


class Reader:
    def __init__(
        self,
        mongo: Mongo,
        options: StreamOptions,
        *,
        ledger: InFlightLedger,
        checkpointer: Checkpointer,
        publisher: Submitter,
        route: Router,
        unpublishable: UnpublishableHandler,
        on_history_lost: HistoryLostPolicy,
        stored_cluster_time: Timestamp | None = None,
        overflow: Overflow | None = None,
    ) -> None:
        self._mongo = mongo
        self._overflow = overflow
        self._options = options
        self._ledger = ledger
        self._checkpointer = checkpointer
        self._publisher = publisher
        self._route = route
        self._unpublishable = unpublishable
        self._on_history_lost = on_history_lost
        self.stored_cluster_time = stored_cluster_time
        self._seq = -1
        self._failures = 0
        self.position = StartPosition()
        self.stats = ReaderStats()
        self.fragments = Reassembler()

    async def run(self, start: StartPosition, stop: asyncio.Event) -> None:
        """Read until `stop` is set (or the task is cancelled); raises FatalError / HistoryLostError."""
        self.position = start
        self._checkpointer.reset_position(start.token)
        if self._overflow is not None:
            # Spilled messages up to the stored position are complete in the stream: loadable at once.
            start_key = start.token.get("_data") if start.token is not None else None
            self._overflow.read_up_to = start_key if isinstance(start_key, str) else LAST_KEY
        while not stop.is_set():
            try:
                stream = await open_stream(self._mongo, self._options, self.position)
            except HistoryLostError as exc:
                await self._history_lost(exc)
                continue
            except StreamError as exc:
                await self._backoff(exc, stop)
                continue
            log.info("change stream open (%s)", self.position.describe())
            self.fragments.reset()  # opened before the first fragment of any incomplete event
            self.stats.stream_open = True
            try:
                await self._store_first_position(stream)
                await self._pump(stream, stop)
            except HistoryLostError as exc:
                await self._history_lost(exc)
            except StreamError as exc:
                await self._backoff(exc, stop)
            finally:
                self.stats.stream_open = False
                with contextlib.suppress(PyMongoError):
                    await stream.close()

    async def _store_first_position(self, stream: BatchStream) -> None:
        """On a first start (nothing stored), store where the stream opened before reading anything.

        Otherwise a crash before the first checkpoint would restart from "now" again and silently skip
        every event committed in between.
        """
        token = stream.resume_token
        if token is None or self._checkpointer.has_position:
            return
        self._checkpointer.note_stream_mark(StreamMark(token, self._seq))
        await self._checkpointer.checkpoint()

    async def _pump(self, stream: BatchStream, stop: asyncio.Event) -> None:
        """Route each batch while the next one is on its way: the getMore for batch n+1 is sent before
        batch n is routed, so the server's work overlaps ours. At most one batch is read ahead, and none
        while the ledger is full (backpressure holds: the next getMore waits for the batch before it).

        `self.position` moves only past batches handed to the ledger, never past a batch read ahead."""
        ahead: asyncio.Future[Sequence[Mapping[str, Any]]] | None = None
        try:
            while not stop.is_set():
                if ahead is None:
                    ahead = asyncio.ensure_future(stream.next_batch())
                try:
                    batch = await ahead
                except PyMongoError as exc:
                    self._note_position(stream)  # the position after the last batch returned
                    raise classify(exc, self.position) from exc
                finally:
                    ahead = None
                token = stream.resume_token
                if not batch:
                    if not stream.alive:
                        self._note_position(stream)
                        raise StreamError("change stream closed by the server")
                    if token is not None and not self.fragments.pending:
                        self.position = StartPosition(token=token)
                        self._checkpointer.note_stream_mark(StreamMark(token, self._seq))
                    continue
                self._failures = 0
                if stream.alive and batch[-1].get("operationType") != "invalidate":
                    ahead = asyncio.ensure_future(stream.next_batch())
                    await asyncio.sleep(0)  # let it send its getMore before we route this batch
                if await self._accept_batch(batch, stop):
                    return  # invalidated: `_invalidated` set the position to start after it
                if self.fragments.pending:
                    self.position = self.fragments.before
                elif token is not None:
                    self.position = StartPosition(token=token)
        finally:
            if ahead is not None:
                await _settle(ahead)

    def _note_position(self, stream: BatchStream) -> None:
        """Remember the position after the last batch read, to reopen from it (only when nothing was
        read ahead: the stream's token has then moved past nothing the ledger has not seen)."""
        token = stream.resume_token
        if self.fragments.pending:
            self.position = self.fragments.before
        elif token is not None:
            self.position = StartPosition(token=token)

    async def _accept_batch(self, batch: Sequence[Mapping[str, Any]], stop: asyncio.Event) -> bool:
        """Reserve, route and submit a batch in stream order; True if it ended with an invalidate."""
        ledger = self._ledger
        route = self._route
        out: list[OutboundMessage] = []
        stats = self.stats
        last: Mapping[str, Any] | None = None
        try:
            for index, change in enumerate(batch):
                if SPLIT_FIELD in change:
                    before = StartPosition(token=batch[index - 1]["_id"]) if index else self.position
                    whole = self.fragments.add(change, before)
                    if whole is None:
                        continue
                    change = whole
                if change.get("operationType") == "invalidate":
                    await self._submit(out)
                    await self._invalidated(change, stop)
                    return True
                self._seq += 1
                seq = self._seq
                if ledger.full:
                    await self._submit(out)  # what was routed goes out before we wait for Ably to catch up
                    await ledger.reserve(seq, change["_id"])
                else:
                    ledger.add(seq, change["_id"])
                stats.events_read += 1
                last = change
                try:
                    out.append(route(seq, change))
                except UnpublishableEvent as exc:
                    await self._submit(out)
                    stats.unpublishable += 1
                    await self._unpublishable.handle(
                        change, exc.reason, exc.code, kind=exc.kind, fatal=exc.fatal
                    )
                    ledger.complete(seq)
                if len(out) >= ROUTE_SLICE:
                    await self._submit(out)
                    await asyncio.sleep(0)
            await self._submit(out)
            if last is not None and self._overflow is not None:
                self._overflow.read_up_to = _token_data(last)
        finally:
            if last is not None:
                stats.last_event_read_at = time.time()
                stats.last_event_cluster_time = last.get("clusterTime")
                stats.last_event_wall_time = last.get("wallTime")
        return False

    async def _submit(self, out: list[OutboundMessage]) -> None:
        """Hand routed messages to the publisher; a throttled channel's excess spills (overflow.py) and
        is written before the reader goes on, so the ledger can complete it."""
        if not out:
            return
        overflow = self._overflow
        if overflow is not None and overflow.active:
            out[:] = overflow.route(out)
        if out:
            self._publisher.submit_many(out)
            out.clear()
        if overflow is not None and overflow.has_pending:
            await overflow.flush(self._ledger.complete)

    async def _invalidated(self, change: Mapping[str, Any], stop: asyncio.Event) -> None:
        """The watched collection was dropped or renamed: continue after the invalidate with startAfter."""
        self._seq += 1
        seq = self._seq
        token = change["_id"]
        await self._ledger.reserve(seq, token)
        self._ledger.complete(seq)  # nothing to publish; the position still moves past it
        self.stats.invalidations += 1
        self.position = StartPosition(token=token, start_after=True)
        self._checkpointer.note_stream_mark(StreamMark(token, seq, invalidated=True))
        log.warning(
            "change stream invalidated (collection %r dropped or renamed); reopening with startAfter",
            self._options.collection,
            extra={"code": 72003},
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), INVALIDATE_REOPEN_DELAY_S)

    async def _history_lost(self, exc: HistoryLostError) -> None:
        since = self.stored_cluster_time
        gap = (
            f"events between {_ts_text(since)} and {datetime.now(UTC).isoformat()} may be missing"
            if since is not None
            else f"events up to {datetime.now(UTC).isoformat()} may be missing"
        )
        if self._on_history_lost == "fail":
            raise FatalError(
                f"change stream history lost: the stored position is no longer in the oplog; {gap}. "
                "Set ON_HISTORY_LOST=restart to start from now, or reset the token.",
                code=72008,
            ) from exc
        log.error(
            "change stream history lost; restarting from now (ON_HISTORY_LOST=restart): %s",
            gap,
            extra={"code": 72008},
        )
        self.position = StartPosition()
        self.stored_cluster_time = None

    async def _backoff(self, exc: StreamError, stop: asyncio.Event) -> None:
        self._failures += 1
        self.stats.reopens += 1
        delay = min(REOPEN_BACKOFF_MAX_S, REOPEN_BACKOFF_INITIAL_S * 2 ** (self._failures - 1))
        delay *= random.uniform(0.8, 1.2)
        log.error(
            "cannot read the change stream, reopening in %.1fs from %s: %s",
            delay,
            self.position.describe(),
            exc,
            extra={"code": 72003},
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)


async def _settle(ahead: asyncio.Future[Any]) -> None:
    """Wait out a read-ahead getMore nobody will use (bounded by the awaitData wait), then drop its
    result: cancelling a getMore mid-reply would cost the driver its connection."""
    try:
        await asyncio.shield(ahead)
    except asyncio.CancelledError:
        ahead.cancel()
        raise
    except Exception:  # the batch is not used; its error changes nothing
        return


def _token_data(event: Mapping[str, Any]) -> str | None:
    token = event.get("_id")
    data = token.get("_data") if isinstance(token, Mapping) else None
    return data if isinstance(data, str) else None


def _ts_text(ts: Timestamp) -> str:
    return f"{datetime.fromtimestamp(ts.time, UTC).isoformat()} (Timestamp({ts.time}, {ts.inc}))"
