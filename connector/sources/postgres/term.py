"""One leadership term: the outbox reader, the shared publisher, the store and the NOTIFY listener.

A term starts from what the database says (the watermark row), so nothing is carried over from an
earlier term and nothing is lost across a failover: rows above the watermark are simply read again
(and their republished ids dropped by Ably). It ends in one of three ways:
- `stop` (SIGTERM): stop reading, drain in-flight publishes within SHUTDOWN_GRACE_S, store the final
  position, close (invariant 7);
- leadership lost: stop at once, without a final write (another instance may already be leading);
- an error: cancel, close, and hand the error to the worker (retry for DatabaseUnavailable, exit for
  anything fatal).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Final

from connector.ably.client import AblyRestClient
from connector.ably.ledger import InFlightLedger
from connector.ably.outbound import OutboundMessage
from connector.ably.overflow import Overflow
from connector.ably.publisher import build_publisher
from connector.config import Settings
from connector.errors import AblyError, ConnectorError, FatalError, LeadershipLost
from connector.sources.postgres.db import Connection, close_quietly, connect
from connector.sources.postgres.deadletter import UnpublishableRows
from connector.sources.postgres.listener import NotifyListener
from connector.sources.postgres.names import OutboxNames
from connector.sources.postgres.outbox import OutboxReader
from connector.sources.postgres.overflow_store import PostgresSpillStore
from connector.sources.postgres.store import OutboxStore, load_start

log = logging.getLogger(__name__)

#: How long a stopping reader may take to finish its round (one fetch and one lock read).
READER_STOP_GRACE_S: Final = 5.0
#: How long a cancelled task may take to finish (psycopg cancels a running query within 5 s, bounded).
TASK_STOP_TIMEOUT_S: Final = 12.0


class Term:
    """Build with `open()`, run once with `run()`; `close()` is idempotent."""

    def __init__(self, settings: Settings, names: OutboxNames, ably: AblyRestClient, *, epoch: int) -> None:
        self._settings = settings
        self._names = names
        self._ably = ably
        self.epoch = epoch
        self._read_conn: Connection | None = None
        self._store_conn: Connection | None = None
        self.wake = asyncio.Event()
        self.ledger = InFlightLedger(settings.max_in_flight)
        self.publisher = build_publisher(settings, ably, self.ledger, self._on_rejected)
        self.listener = NotifyListener(settings.postgres_uri, self.wake)
        self.reader: OutboxReader | None = None
        self.store: OutboxStore | None = None
        self.unpublishable: UnpublishableRows | None = None
        self.overflow: Overflow | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    async def open(self) -> None:
        settings = self._settings
        self._read_conn = await connect(settings.postgres_uri, purpose="read")
        self._store_conn = await connect(settings.postgres_uri, purpose="store")
        start = await load_start(self._store_conn, self._names)
        self.unpublishable = UnpublishableRows(settings.on_unpublishable, self._store_conn, self._names)
        self.overflow = Overflow(
            PostgresSpillStore(self._store_conn, self._names),
            self.publisher,
            max_backlog=settings.channel_max_backlog,
        )
        await self.overflow.start()
        self.reader = OutboxReader(
            self._read_conn,
            self._names,
            start=start,
            ledger=self.ledger,
            publisher=self.publisher,
            unpublishable=self.unpublishable,
            wake=self.wake,
            max_message_size=settings.max_message_size,
            on_oversize=settings.on_oversize,
            batch_size=settings.outbox_batch_size,
            poll_interval_s=settings.poll_interval_ms / 1000,
            gap_timeout_s=settings.gap_timeout_ms / 1000,
            overflow=self.overflow,
        )
        self.store = OutboxStore(
            self._store_conn,
            self._names,
            ledger=self.ledger,
            reader=self.reader,
            epoch=self.epoch,
            start=start,
            interval_s=settings.checkpoint_interval_ms / 1000,
        )
        log.info(
            "publishing %s from sequence_id %d (epoch %d)",
            self._names.outbox.text,
            start.watermark,
            self.epoch,
        )

    async def _on_rejected(self, msg: OutboundMessage, error: AblyError) -> None:
        """Ably refused a row for good: apply ON_UNPUBLISHABLE to it."""
        assert self.unpublishable is not None
        await self.unpublishable.handle(
            msg.token["row"], f"rejected by Ably: {error}", error.ably_code or error.code, kind="rejected"
        )

    async def run(self, stop: asyncio.Event, lost: asyncio.Event) -> BaseException | None:
        """Until `stop`, `lost` or an error; returns the error that ended the term (None: stopped)."""
        assert self.reader is not None and self.store is not None
        stop_reading = asyncio.Event()
        reader = self._spawn(self.reader.run(stop_reading), "reader")
        publisher = self._spawn(self.publisher.run(), "publisher")
        store = self._spawn(self.store.run(stop_reading), "store")
        self._spawn(self.listener.run(), "listener")
        if self.overflow is not None:
            self._spawn(self.overflow.run(stop_reading), "overflow")
        stopper = self._spawn(stop.wait(), "stop")
        loser = self._spawn(lost.wait(), "lost")
        done, _ = await asyncio.wait(
            {reader, publisher, store, stopper, loser}, return_when=asyncio.FIRST_COMPLETED
        )
        error = _first_error(done, {stopper, loser})
        if error is None and loser in done:
            error = LeadershipLost("the leadership session ended")
        if error is None and not stop.is_set():
            error = FatalError(f"{next(iter(done)).get_name()} stopped unexpectedly")
        stop_reading.set()
        if error is None:
            await self._finish(reader)
        await self.close()
        return error

    async def _finish(self, reader: asyncio.Task[Any]) -> None:
        """The clean stop: reading ends, in-flight publishes drain, the final position is stored."""
        await asyncio.wait({reader}, timeout=READER_STOP_GRACE_S)
        grace = self._settings.shutdown_grace_s
        if not self.ledger.is_idle():
            log.info("draining %d in-flight rows (grace %.0fs)", self.ledger.pending, grace)
            if not await self.publisher.drain(grace):
                log.warning(
                    "grace period over with %d rows in flight; they will be resent", self.ledger.pending
                )
        assert self.store is not None
        if self.overflow is not None:  # else the next leader sends them again (same ids)
            with contextlib.suppress(ConnectorError):
                await self.overflow.delete_acknowledged()
        try:
            await self.store.flush()
        except ConnectorError as exc:
            log.error("could not store the final outbox position: %s", exc, extra={"code": 72007})

    async def close(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            # Bounded, and never `await task` under suppress(CancelledError): that would also swallow a
            # cancellation of the caller. A task that ignores cancellation is named, not waited for.
            stopped, stuck = await asyncio.wait(tasks, timeout=TASK_STOP_TIMEOUT_S)
            for task in stuck:
                log.error("term task %s did not stop when cancelled; leaving it", task.get_name())
            for task in stopped:
                if not task.cancelled():
                    task.exception()  # retrieved: an error while stopping is expected, not reportable
        with contextlib.suppress(Exception):
            await self.publisher.aclose()
        await close_quietly(self._read_conn)
        await close_quietly(self._store_conn)

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


def _first_error(done: set[asyncio.Task[Any]], signals: set[asyncio.Task[Any]]) -> BaseException | None:
    for task in done:
        if task in signals or task.cancelled():
            continue
        exc = task.exception()
        if exc is not None:
            return exc
    return None
