"""One leadership term: the shared publishing pipeline around a source's reader and position writer.

A term starts from the stored position with nothing in flight: a fresh ledger, publisher and overflow,
and the source's fresh reader and writer. Its tasks are owned here and it ends in one of three ways:

- a stop request (SIGTERM) or a fatal error: the fixed order of invariant 7, `shutdown()`: stop reading →
  drain in-flight publishes within SHUTDOWN_GRACE_S → stop the writers → store the final position (the
  caller then releases the lease). A fatal error takes the same path, without waiting for drains that
  cannot succeed when Ably is the problem;
- the lease lost, or the database gone: `drop()`: stop publishing at once and store nothing; what was in
  flight is the next leader's to resend.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from typing import Any, Final

from connector.ably.client import AblyRestClient
from connector.ably.latency import LatencyHistogram
from connector.ably.ledger import InFlightLedger
from connector.ably.outbound import OutboundMessage
from connector.ably.publisher import build_publisher
from connector.config import Settings
from connector.errors import AblyError, ConnectorError, FatalError
from connector.leadership import Leadership
from connector.sources.protocol import Counter, Fence, Source, SourceTerm, TermContext

log = logging.getLogger(__name__)

#: How long a stopping reader may take to notice: one awaitData poll or one outbox round, plus margin.
READER_STOP_GRACE_S: Final = 5.0
#: How long the position writer and the overflow may take to finish a write in progress when stopping.
#: Cancelling a driver operation mid-flight can leave a half-open socket behind; they see the stop
#: between writes, so this only bounds a write stuck on an unreachable database.
WRITER_STOP_GRACE_S: Final = 5.0
#: How long a cancelled task may take to unwind (driver clean-up after a cancellation is bounded).
TASK_STOP_TIMEOUT_S: Final = 12.0
#: Channels named in the per-channel backlog metric: the busiest few (bounded label cardinality).
TOP_BACKLOGS: Final = 5
#: The required tasks of a source term; ending before a stop request is an error.
_WATCHED: Final = ("reader", "writer")
#: Tasks that end on their own once the term's stop event is set: given WRITER_STOP_GRACE_S to finish.
_GRACEFUL: Final = ("writer", "lease", "overflow")


class Term:
    """Build, `open()` (retried by the runtime), `run()` once, then `shutdown()` or `drop()`."""

    def __init__(
        self,
        settings: Settings,
        source: Source,
        ably: AblyRestClient,
        leadership: Leadership,
        latency: LatencyHistogram | None = None,
    ) -> None:
        self._settings = settings
        self._leadership = leadership
        #: Set when this term ends (a stop request, or the lease lost): its tasks finish what they do.
        self.stop = asyncio.Event()
        self.ledger = InFlightLedger(settings.max_in_flight)
        self.publisher = build_publisher(settings, ably, self.ledger, self._on_rejected, latency)
        self.source: SourceTerm = source.term(
            TermContext(
                ledger=self.ledger,
                publisher=self.publisher,
                fence=Fence(leadership.owner, leadership.epoch),
                ensure_may_publish=leadership.ensure_may_publish,
                max_backlog=settings.channel_max_backlog,
            )
        )
        self.retired = False
        self._tasks: set[asyncio.Task[Any]] = set()

    async def _on_rejected(self, msg: OutboundMessage, error: AblyError) -> None:
        await self.source.on_rejected(msg, error)

    async def open(self) -> None:
        """The source's position and reader, then the overflow's spilled channels."""
        await self.source.open()
        if self.source.overflow is not None:
            await self.source.overflow.start()

    async def run(self, stop_requested: asyncio.Event) -> BaseException | None:
        """Until a stop request, a fatal error or a lost lease; returns the error, if any."""
        if stop_requested.is_set():
            return None
        watched = {self._spawn(self.publisher.run(), "publisher")}
        for name, coro in self.source.tasks(self.stop).items():
            task = self._spawn(coro, name)
            if name in _WATCHED:
                watched.add(task)
        if self.source.overflow is not None:
            self._spawn(self.source.overflow.run(self.stop), "overflow")
        watched.add(self._spawn(self._leadership.hold(self.stop), "lease"))
        stopper = self._spawn(stop_requested.wait(), "stop")
        watched.add(stopper)
        done, _ = await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task is stopper or task.cancelled():
                continue
            exc = task.exception()
            if exc is not None:
                return exc
            if task.get_name() != "lease" and not stop_requested.is_set():
                return FatalError(f"{task.get_name()} stopped unexpectedly")
        return None

    async def drop(self) -> None:
        """The lease is lost or the database gone: stop publishing at once, store nothing. The reader and
        the writers end at their next step (the term's stop event)."""
        self.stop.set()
        with contextlib.suppress(Exception):
            await self.publisher.aclose()
        await self._cancel("publisher")
        await self._cancel("reader", grace=READER_STOP_GRACE_S)
        await self._cancel_rest(grace=WRITER_STOP_GRACE_S)
        dropped = self.ledger.pending
        if dropped:
            log.info("dropped %d in-flight events: the new leader resends them from its position", dropped)
        await self.close()

    async def shutdown(self, drain: bool) -> None:
        """Invariant 7: stop reading → drain → stop the writers → store the final position."""
        self.stop.set()
        # 1. stop reading: the reader sees the stop event after its current poll (cancelling it mid-read
        # would leave the driver a half-used socket).
        await self._cancel("reader", grace=READER_STOP_GRACE_S)
        # 2. drain in-flight publishes within the grace period
        grace = self._settings.shutdown_grace_s
        if drain and not self.ledger.is_idle():
            log.info("draining %d in-flight events (grace %.0fs)", self.ledger.pending, grace)
            if not await self.publisher.drain(grace):
                log.warning(
                    "grace period over with %d events in flight; they will be resent", self.ledger.pending
                )
        await self._cancel("publisher")
        await self._cancel_rest(grace=WRITER_STOP_GRACE_S)
        overflow = self.source.overflow
        if overflow is not None:  # else they are sent again (same ids) by the next leader
            with contextlib.suppress(ConnectorError):
                await asyncio.wait_for(overflow.delete_acknowledged(), WRITER_STOP_GRACE_S)
        # 3. the final position: only completed events; fenced, so a deposed leader's write stores nothing
        await self.source.store_position()
        await self.close()

    async def close(self) -> None:
        """Cancel what is left (bounded), close the publisher and the source's term."""
        for task in list(self._tasks):
            await self._stop_task(task, grace=0.0)
        with contextlib.suppress(Exception):
            await self.publisher.aclose()
        await self.source.close()

    # -- metrics -------------------------------------------------------------------------------------

    def counters(self) -> dict[str, Counter]:
        """This term's counters: the pipeline's and the source's (summed over terms by the runtime)."""
        p, overflow = self.publisher.stats, self.source.overflow
        source = dict(self.source.counters())
        source_unpublishable = source.pop("unpublishable_events", 0)
        assert isinstance(source_unpublishable, int)
        return {
            **source,
            "messages_published": p.published,
            "unpublishable_events": source_unpublishable + p.rejected,
            "publish_requests": p.requests,
            "publish_retries": p.retries,
            "messages_spilled": overflow.spilled if overflow else 0,
            "messages_unspilled": overflow.drained if overflow else 0,
            "rate_limited_messages": self.publisher.pacer.stats.rate_limited,
            "rate_limited_requests": p.rate_limited_requests,
            "order_hazards": p.order_hazards,
        }

    def throttled_seconds(self) -> float:
        return self.publisher.pacer.throttled_seconds()

    def lag_seconds(self) -> float:
        """While changes wait (read, not yet acknowledged), seconds since the newest one read was committed;
        0 when nothing waits: an idle stream raises no false alarm, and a stalled one rises."""
        newest = self.publisher.newest_committed_at
        if self.ledger.is_idle() or not newest:
            return 0.0
        return max(0.0, time.time() - newest)

    def gauges(self) -> Mapping[str, Any]:
        overflow = self.source.overflow
        return {
            **self.source.gauges(),
            "lag_seconds": self.lag_seconds(),
            "throttled_channels": len(self.publisher.pacer.stats.throttled_now),
            "spilling_channels": len(overflow.spilling) if overflow else 0,
            "channel_backlog": dict(self.publisher.backlogs(TOP_BACKLOGS)),
            "in_flight_events": self.ledger.pending,
        }

    # -- owned tasks ---------------------------------------------------------------------------------

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _cancel(self, name: str, grace: float = 0.0) -> None:
        for task in [t for t in self._tasks if t.get_name() == name]:
            await self._stop_task(task, grace)

    async def _cancel_rest(self, grace: float) -> None:
        """The writer, the lease renewal and the overflow within `grace` (they see the stop event), then
        the source's helpers and the stop watcher at once."""
        for name in _GRACEFUL:
            await self._cancel(name, grace=grace)
        for task in [t for t in self._tasks if t.get_name() not in ("reader", "publisher")]:
            await self._stop_task(task, grace=0.0)

    async def _stop_task(self, task: asyncio.Task[Any], grace: float) -> None:
        """Let an owned task finish within `grace` seconds, then cancel it (bounded wait).

        `asyncio.wait`, not `await task` under suppress(CancelledError): that would also swallow a
        cancellation of this caller (a second signal forcing exit)."""
        if grace > 0:
            await asyncio.wait({task}, timeout=grace)
        task.cancel()
        _, stuck = await asyncio.wait({task}, timeout=TASK_STOP_TIMEOUT_S)
        if stuck:
            log.error("task %s did not stop when cancelled; leaving it", task.get_name())
        elif not task.cancelled():
            task.exception()  # retrieved: an error while stopping is expected, not reportable
