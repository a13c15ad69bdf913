"""The publisher: per-channel FIFO queues batched into concurrent Ably batch-publish requests.

Invariants kept here (ARCHITECTURE.md):
- Per-channel order: a channel has at most ONE request in flight, and a failed entry is retried before
  anything newer of that channel is sent. Requests in flight at the same time cover disjoint channel sets,
  so REST requests arriving out of order cannot reorder a channel. Ably publishes the BatchSpecs of one
  request independently, so it can reject one spec of a channel and accept a later one (README, "Order
  under partial failure"): with a per-channel rate limit (`CHANNEL_RATE_LIMIT`, the default) a request
  therefore carries at most ONE message per channel, and no partial answer can reorder a channel.
- Pacing (invariant 11): each channel is sent no more than its rate allows (`pacing.ChannelPacer`); a
  channel Ably rate-limits anyway slows down alone, and a channel waiting for its bucket holds back no
  other channel.
- No event is dropped: retryable failures are retried forever with a growing backoff; a message leaves
  the ledger only when Ably accepted it or `on_rejected` handled a permanent rejection. An entry Ably
  accepted is never sent again, even when an earlier entry of its channel failed.

Batching is adaptive: when a request slot is free, whatever is queued goes out at once (a lone event is
not held back); what accumulates while all slots are busy forms the next, bigger batch. `linger_ms`
optionally waits for a fuller batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol

from connector.ably.client import MAX_BODY_BYTES, MAX_CHANNELS_PER_REQUEST, encode_spec
from connector.ably.latency import LatencyHistogram
from connector.ably.ledger import InFlightLedger
from connector.ably.outbound import OutboundMessage
from connector.ably.pacing import ChannelPacer
from connector.errors import AblyError, AblyRateLimitError, AblyRejectedError, AblyRetryableError

if TYPE_CHECKING:
    from connector.config import Settings

__all__ = ["BatchClient", "Publisher", "PublisherStats", "RejectHandler"]

logger = logging.getLogger(__name__)

# First publisher-level retry delay; the client already retried for up to its own budget, so waiting a
# second before the next round lets a per-second rate-limit window roll over.
RETRY_BACKOFF_BASE_S: Final = 1.0
# Safety net for the scheduler's wait: every state change sets the wakeup event, so this only bounds a wait
# that would otherwise be unbounded.
SCHEDULER_IDLE_WAIT_S: Final = 1.0
# Longest wait between publish rounds while Ably fails. Short, so delivery resumes within about two seconds
# of an outage ending; the client already backs off inside each round (429s grow to 10 s there).
PUBLISH_RETRY_BACKOFF_MAX_S: Final = 2.0
# "[" + "]" around the BatchSpecs, plus one comma per additional spec (counted per entry).
_BODY_OVERHEAD: Final = 2
#: Ably's code for a channel's inbound rate limit (the pacer slows that channel down).
CHANNEL_RATE_LIMITED: Final = 42913

RejectHandler = Callable[[OutboundMessage, AblyError], Awaitable[None]]
Outcome = AblyError | None
# A queued message and the size of its encoded BatchSpec (computed once, at submit).
_Entry = tuple[OutboundMessage, int]


class BatchClient(Protocol):
    """What the publisher needs from the Ably client (AblyRestClient satisfies it)."""

    async def publish_batch(self, messages: Sequence[OutboundMessage]) -> list[Outcome]: ...


@dataclass(slots=True)
class PublisherStats:
    """Counters for metrics and health."""

    published: int = 0  # messages Ably accepted
    rejected: int = 0  # messages permanently rejected and handed to on_rejected
    retries: int = 0  # messages queued again after a retryable failure
    requests: int = 0  # batch-publish requests started
    failed_requests: int = 0  # requests that failed as a whole (after the client's own retries)
    in_flight_requests: int = 0
    queued: int = 0  # messages waiting for a request (not in flight)
    rate_limited_requests: int = 0  # requests with at least one entry Ably rate-limited
    order_hazards: int = 0  # entries Ably accepted after rejecting an earlier one of their channel
    last_error: AblyError | None = None


class _State(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    CLOSED = "closed"


def _retryable(outcome: Outcome) -> bool:
    return isinstance(outcome, AblyRetryableError | AblyRateLimitError)


def _channel_rate_limited(outcome: Outcome) -> bool:
    return isinstance(outcome, AblyRateLimitError) and outcome.ably_code == CHANNEL_RATE_LIMITED


class Publisher:
    """Owns the per-channel queues and the request tasks; `run()` is the scheduler loop."""

    def __init__(
        self,
        client: BatchClient,
        ledger: InFlightLedger,
        *,
        on_rejected: RejectHandler,
        max_batch_messages: int = 500,
        max_batch_bytes: int = 1_900_000,
        max_channels_per_request: int = MAX_CHANNELS_PER_REQUEST,
        linger_ms: float = 0.0,
        concurrency: int = 8,
        retry_backoff_max: float = 30.0,
        channel_rate: float = 0.0,
        latency: LatencyHistogram | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if not 1 <= max_channels_per_request <= MAX_CHANNELS_PER_REQUEST:
            raise ValueError(f"max_channels_per_request must be 1..{MAX_CHANNELS_PER_REQUEST}")
        if not 0 < max_batch_bytes <= MAX_BODY_BYTES:
            raise ValueError(f"max_batch_bytes must be 1..{MAX_BODY_BYTES}")
        if max_batch_messages < 1 or concurrency < 1 or linger_ms < 0 or retry_backoff_max <= 0:
            raise ValueError("max_batch_messages and concurrency must be >= 1, linger_ms >= 0, backoff > 0")
        self._client = client
        self._ledger = ledger
        self._on_rejected = on_rejected
        self._max_messages = max_batch_messages
        self._max_bytes = max_batch_bytes
        self._max_channels = max_channels_per_request
        self._linger_s = linger_ms / 1000.0
        self._concurrency = concurrency
        self._backoff_max = retry_backoff_max
        self._sleep = sleep
        self.pacer = ChannelPacer(channel_rate)
        # Commit → acknowledgement, observed per accepted message (the runtime's, for the whole process).
        self.latency = latency or LatencyHistogram()
        self.newest_committed_at = 0.0  # unix seconds; see note_read
        # Messages per channel in one request: one when channels are rate-limited (order under partial
        # failure), else as many as the batch holds.
        self._per_channel = 1 if self.pacer.enabled else max_batch_messages
        self._holds: dict[str, asyncio.TimerHandle] = {}  # channels waiting for their bucket
        self._queues: dict[str, deque[_Entry]] = {}
        # Idle channels with queued messages, in the order they became ready (a dict is an ordered set).
        self._ready: dict[str, None] = {}
        self._busy: set[str] = set()  # channels with a request in flight or waiting out a backoff
        self._failures: dict[str, int] = {}  # consecutive failed rounds per channel
        self._requests: set[asyncio.Task[None]] = set()
        self._backoffs: set[asyncio.Task[None]] = set()
        self._wakeup = asyncio.Event()
        self._unfinished = 0
        self._drained = asyncio.Event()
        self._drained.set()
        self._stopped = asyncio.Event()
        self._fatal: BaseException | None = None
        self._state = _State.NEW
        self.stats = PublisherStats()
        #: Called for each completed message that is not in the ledger (`seq` < 0: drained from overflow).
        self.on_outside_done: Callable[[OutboundMessage], None] | None = None

    # -- producer side ----------------------------------------------------------------------------------

    def note_read(self, committed_at: float) -> None:
        """The commit time of the newest change routed (what `lag_seconds` measures from)."""
        if committed_at > self.newest_committed_at:
            self.newest_committed_at = committed_at

    def submit(self, msg: OutboundMessage) -> None:
        """Queue a message (non-blocking). The caller has already reserved `msg.seq` in the ledger."""
        self.submit_many((msg,))

    def submit_many(self, msgs: Sequence[OutboundMessage]) -> None:
        """Queue messages in stream order (non-blocking); one scheduler wake-up for the lot."""
        if self._state is _State.CLOSED:
            raise RuntimeError("publisher is closed")
        if not msgs:
            return
        self.note_read(msgs[-1].committed_at)
        queues, ready, busy = self._queues, self._ready, self._busy
        for msg in msgs:
            channel = msg.channel
            queue = queues.get(channel)
            if queue is None:
                queue = queues[channel] = deque()
            queue.append((msg, len(encode_spec(msg))))
            if channel not in busy:
                ready[channel] = None
        self.stats.queued += len(msgs)
        self._unfinished += len(msgs)
        self._drained.clear()
        self._wakeup.set()

    def backlog(self, channel: str) -> int:
        """Messages of the channel waiting in memory for a request."""
        queue = self._queues.get(channel)
        return len(queue) if queue is not None else 0

    def backlogs(self, top: int) -> list[tuple[str, int]]:
        """The `top` channels with the most messages waiting, most first (for metrics)."""
        sizes = [(channel, len(queue)) for channel, queue in self._queues.items() if queue]
        sizes.sort(key=lambda item: item[1], reverse=True)
        return sizes[:top]

    @property
    def unfinished(self) -> int:
        """Messages submitted and not yet completed (accepted or rejected)."""
        return self._unfinished

    # -- lifecycle --------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Schedule requests until `aclose()`; raises a fatal error (AblyAuthError, on_rejected's error)."""
        if self._state is not _State.NEW:
            raise RuntimeError("Publisher.run() can only be called once, before aclose()")
        self._state = _State.RUNNING
        try:
            while True:
                if self._fatal is not None:
                    raise self._fatal
                if self._state is _State.CLOSED:
                    return
                if self._ready and len(self._requests) < self._concurrency:
                    await self._linger()
                    if self._ready and self._fatal is None and self._state is _State.RUNNING:
                        batch = self._take_batch()
                        if batch:
                            self._start_request(batch)
                    continue
                await self._wait_wakeup(SCHEDULER_IDLE_WAIT_S)
        finally:
            self._stopped.set()
            await self._cancel_tasks()

    async def drain(self, timeout: float) -> bool:
        """Wait until everything submitted is completed; False on timeout or if the publisher stopped."""
        waiters = [asyncio.ensure_future(self._drained.wait()), asyncio.ensure_future(self._stopped.wait())]
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)
        return self._unfinished == 0

    async def aclose(self) -> None:
        """Stop scheduling and cancel what is still in flight (call `drain()` first for a clean stop)."""
        if self._state is _State.CLOSED:
            return
        self._state = _State.CLOSED
        self._wakeup.set()
        await self._cancel_tasks()
        self._stopped.set()

    async def _cancel_tasks(self) -> None:
        for handle in self._holds.values():
            handle.cancel()
        self._holds.clear()
        tasks = [*self._requests, *self._backoffs]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    # -- scheduling -------------------------------------------------------------------------------------

    async def _wait_wakeup(self, timeout: float) -> None:
        self._wakeup.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), timeout)

    async def _linger(self) -> None:
        """With linger_ms > 0, wait (bounded) for a fuller batch before sending."""
        if self._linger_s <= 0:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._linger_s
        while (
            self.stats.queued < self._max_messages and self._fatal is None and self._state is _State.RUNNING
        ):
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            await self._wait_wakeup(remaining)

    def _take_batch(self) -> list[_Entry]:
        """Take consecutive messages from idle channels within the message, byte and channel limits, and
        within each channel's rate allowance (a channel without one waits for its bucket, off the list)."""
        batch: list[_Entry] = []
        size = _BODY_OVERHEAD
        pacer = self.pacer
        # At most max_channels idle channels are looked at, so the request's channel limit holds.
        for channel in list(itertools.islice(self._ready, self._max_channels)):
            if len(batch) >= self._max_messages:
                break
            queue = self._queues[channel]
            wanted = min(len(queue), self._per_channel)
            allowed = pacer.allowance(channel, wanted) if pacer.enabled else wanted
            if not allowed:
                self._hold(channel, pacer.wait_s(channel, wanted))
                continue
            taken = 0
            while queue and taken < allowed and len(batch) < self._max_messages:
                cost = queue[0][1] + (1 if batch else 0)
                if batch and size + cost > self._max_bytes:
                    break
                batch.append(queue.popleft())
                size += cost
                taken += 1
            if not taken:
                break  # the byte budget is spent
            if pacer.enabled:
                pacer.spend(channel, taken)
            del self._ready[channel]
            self._busy.add(channel)
        self.stats.queued -= len(batch)
        return batch

    def _hold(self, channel: str, delay: float) -> None:
        """Keep a channel off the ready list until its bucket refills (it stays busy meanwhile)."""
        del self._ready[channel]
        self._busy.add(channel)
        self._holds[channel] = asyncio.get_running_loop().call_later(delay, self._end_hold, channel)

    def _end_hold(self, channel: str) -> None:
        self._holds.pop(channel, None)
        if self._state is _State.RUNNING:
            self._release(channel)

    def _start_request(self, batch: list[_Entry]) -> None:
        task = asyncio.create_task(self._run_request(batch), name=f"ably-publish-{self.stats.requests}")
        self._requests.add(task)
        self.stats.requests += 1
        self.stats.in_flight_requests = len(self._requests)
        task.add_done_callback(self._request_done)

    def _request_done(self, task: asyncio.Task[None]) -> None:
        self._requests.discard(task)
        self.stats.in_flight_requests = len(self._requests)
        if not task.cancelled() and (exc := task.exception()) is not None and self._fatal is None:
            self._fatal = exc
        self._wakeup.set()

    # -- one request ------------------------------------------------------------------------------------

    async def _run_request(self, batch: list[_Entry]) -> None:
        outcomes = await self._publish(batch)
        await self._settle(batch, outcomes)

    async def _publish(self, batch: list[_Entry]) -> list[Outcome]:
        """Per-entry outcomes; a whole-request failure becomes every entry's outcome.

        A whole-request permanent rejection of several messages (e.g. 413 for the body) is bisected, so
        only the message(s) Ably really refuses are rejected. AblyAuthError propagates (fatal).
        """
        try:
            return await self._client.publish_batch([msg for msg, _ in batch])
        except (AblyRetryableError, AblyRateLimitError) as err:
            self.stats.failed_requests += 1
            return [err] * len(batch)
        except AblyRejectedError as err:
            if len(batch) == 1:
                return [err]
            logger.warning("Ably rejected a batch of %d as a whole (%s); splitting it", len(batch), err)
            return await self._publish_halves(batch)

    async def _publish_halves(self, batch: list[_Entry]) -> list[Outcome]:
        mid = len(batch) // 2
        first = await self._publish(batch[:mid])
        failed = {
            msg.channel: out for (msg, _), out in zip(batch[:mid], first, strict=True) if _retryable(out)
        }
        # Nothing newer of a channel whose earlier entry must be retried may go out first.
        rest = [entry for entry in batch[mid:] if entry[0].channel not in failed]
        sent = iter(await self._publish(rest)) if rest else iter(())
        second = [failed[msg.channel] if msg.channel in failed else next(sent) for msg, _ in batch[mid:]]
        return first + second

    async def _settle(self, batch: list[_Entry], outcomes: list[Outcome]) -> None:
        """Complete accepted and rejected entries; queue each channel's failed entries for a retry.

        An entry Ably accepted is complete even after an earlier entry of its channel failed: sending it
        again would only be dropped as a duplicate, and it has reached subscribers already (ahead of the
        failed one: counted as an order hazard, which one message per channel per request rules out).
        A channel Ably rate-limited (42913) is slowed down by the pacer and retried as soon as its bucket
        allows; other retryable failures back off, and that backoff only restarts after a round in which
        the channel had no failure at all.
        """
        if outcomes.count(None) == len(outcomes):
            self._settle_accepted(batch)
            return
        retry: dict[str, list[_Entry]] = {}
        paced: dict[str, list[_Entry]] = {}
        seen: set[str] = set()
        rate_limited = False
        for entry, outcome in zip(batch, outcomes, strict=True):
            msg = entry[0]
            channel = msg.channel
            seen.add(channel)
            if outcome is None:
                if channel in retry or channel in paced:
                    self.stats.order_hazards += 1
                    logger.warning(
                        "Ably accepted message %s on %r after refusing an earlier one of the channel in the "
                        "same request: subscribers may see it first",
                        msg.message.get("id"),
                        channel,
                    )
                self.stats.published += 1
                self.latency.observe((msg.committed_at,))
                self._complete(msg)
            elif self.pacer.enabled and _channel_rate_limited(outcome):
                self.stats.last_error = outcome
                rate_limited = True
                if channel not in paced:
                    self.pacer.rejected(channel)
                paced.setdefault(channel, []).append(entry)
            elif _retryable(outcome):
                self.stats.last_error = outcome
                retry.setdefault(channel, []).append(entry)
            elif isinstance(outcome, AblyRejectedError):
                self.stats.last_error = outcome
                logger.warning(
                    "72001 Ably rejected message %s on %r: %s", msg.message.get("id"), channel, outcome
                )
                await self._on_rejected(msg, outcome)
                self.stats.rejected += 1
                self._complete(msg)
            else:
                raise outcome  # AblyAuthError or an unclassified failure: fatal
        if rate_limited:
            self.stats.rate_limited_requests += 1
        for channel, entries in paced.items():
            if channel in retry:  # keep the channel's failed entries in their order
                retry[channel] = sorted(retry[channel] + entries, key=lambda entry: entry[0].seq)
                continue
            self._requeue(channel, entries)
            self.stats.retries += len(entries)
            self._release(channel)
        for channel in seen:
            if channel not in retry and channel not in paced:
                self._failures.pop(channel, None)
                self.pacer.settled(channel, backlog=bool(self._queues[channel]))
                self._release(channel)
        if retry:
            self._schedule_retry(retry)

    def _settle_accepted(self, batch: list[_Entry]) -> None:
        """The common case, in one pass: Ably accepted the whole batch."""
        complete = self._ledger.complete
        channels: dict[str, None] = {}
        for msg, _ in batch:
            if msg.seq < 0 and self.on_outside_done is not None:
                self.on_outside_done(msg)
            complete(msg.seq)
            channels[msg.channel] = None
        self.stats.published += len(batch)
        self.latency.observe([msg.committed_at for msg, _ in batch])
        self._unfinished -= len(batch)
        if self._unfinished == 0:
            self._drained.set()
        pacer = self.pacer
        for channel in channels:
            self._failures.pop(channel, None)
            if pacer.enabled:
                pacer.settled(channel, backlog=bool(self._queues[channel]))
            self._release(channel)

    def _complete(self, msg: OutboundMessage) -> None:
        if msg.seq < 0 and self.on_outside_done is not None:
            self.on_outside_done(msg)
        self._ledger.complete(msg.seq)
        self._unfinished -= 1
        if self._unfinished == 0:
            self._drained.set()

    def _release(self, channel: str) -> None:
        """The channel has nothing in flight any more: make it ready again, or forget its empty queue."""
        self._busy.discard(channel)
        if self._queues[channel]:
            self._ready[channel] = None
        else:
            del self._queues[channel]
        self._wakeup.set()

    def _schedule_retry(self, retry: dict[str, list[_Entry]]) -> None:
        """Back off per channel (the channel stays busy meanwhile), then put its entries back in front."""
        by_delay: dict[float, dict[str, list[_Entry]]] = {}
        for channel, entries in retry.items():
            failures = self._failures[channel] = self._failures.get(channel, 0) + 1
            delay = min(self._backoff_max, RETRY_BACKOFF_BASE_S * 2.0 ** (failures - 1))
            by_delay.setdefault(delay, {})[channel] = entries
            self.stats.retries += len(entries)
        for delay, group in by_delay.items():
            error = self.stats.last_error
            logger.warning(
                "72001 publish to %d channel(s) failed, retrying %d message(s) in %.1fs: %s",
                len(group),
                sum(len(e) for e in group.values()),
                delay,
                error,
            )
            task = asyncio.create_task(self._requeue_after(delay, group), name="ably-publish-backoff")
            self._backoffs.add(task)
            task.add_done_callback(self._backoff_done)

    async def _requeue_after(self, delay: float, group: dict[str, list[_Entry]]) -> None:
        await self._sleep(delay)
        for channel, entries in group.items():
            self._requeue(channel, entries)
            self._release(channel)

    def _requeue(self, channel: str, entries: list[_Entry]) -> None:
        """Put entries back in front of their channel's queue, in their order."""
        self._queues[channel].extendleft(reversed(entries))
        self.stats.queued += len(entries)

    def _backoff_done(self, task: asyncio.Task[None]) -> None:
        self._backoffs.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None and self._fatal is None:
            self._fatal = exc
        self._wakeup.set()


def build_publisher(
    settings: Settings,
    client: BatchClient,
    ledger: InFlightLedger,
    on_rejected: RejectHandler,
    latency: LatencyHistogram | None = None,
) -> Publisher:
    """The publisher as configured by PUBLISH_BATCH_SIZE, PUBLISH_LINGER_MS and PUBLISH_CONCURRENCY
    (either source's term builds one)."""
    return Publisher(
        client,
        ledger,
        on_rejected=on_rejected,
        max_batch_messages=settings.publish_batch_size,
        linger_ms=settings.publish_linger_ms,
        concurrency=settings.publish_concurrency,
        retry_backoff_max=PUBLISH_RETRY_BACKOFF_MAX_S,
        channel_rate=settings.channel_rate_limit,
        latency=latency,
    )
