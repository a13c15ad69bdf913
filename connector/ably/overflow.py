"""Overflow: a throttled channel's backlog waits in durable storage, so no channel holds back another.

Ably publishes one channel at about 50 messages/s; a channel that follows a busy document or tenant gets
more. Held in memory, its backlog would fill the in-flight ledger, the reader would stop, and every other
channel would wait behind it (invariant 11). So once a channel is throttled (its pacer bucket is empty)
and has `CHANNEL_MAX_BACKLOG` messages waiting in memory, its further messages are written, in stream
order, to a spill store in the source's own database (MongoDB: `OVERFLOW_COLLECTION`) and count as done for
the source's position; the reader reads on, and quiet channels keep flowing. A drainer loads the channel's
spilled messages back, oldest first, whenever its in-memory backlog falls below half the limit, and
deletes them once Ably has them. While a channel has anything spilled, all its new messages are spilled
too, behind them, so its order holds; when the store has nothing left of it, it returns to memory.

Memory stays bounded (at most `CHANNEL_MAX_BACKLOG` messages per throttled channel, within MAX_IN_FLIGHT);
nothing is lost across a crash: a spilled message is durable before the position moves past it, and the
next leader drains every spilled channel before that channel's new messages. A spilled message is loaded
only once the reader has read past it in this term (`read_up_to`): after a restart the stream replays
events from the stored position, and those of a spilled channel are spilled again, in their place in
the channel's order, before anything after them is loaded. What a restart replays:
spilled messages Ably accepted but whose deletion had not been written (at most one deletion round, about
a second), published again with the same ids: Ably drops them within its 2-minute window, and they stay
recognisable by id beyond it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Final, Protocol

from connector.ably.outbound import OutboundMessage
from connector.ably.publisher import Publisher
from connector.errors import StreamError

log = logging.getLogger(__name__)

__all__ = ["Overflow", "SpillStore"]

#: How often spilled channels are topped up and acknowledged spilled messages deleted.
DRAIN_INTERVAL_S: Final = 0.1


class SpillStore(Protocol):
    """Durable per-channel queues in the source's database (ordered by the message's stream order)."""

    async def channels(self) -> list[str]:
        """Channels with spilled messages (read once when a term starts)."""
        ...

    async def write(self, msgs: Sequence[OutboundMessage]) -> None:
        """Store messages durably; idempotent by message id (a replay after a crash writes them again)."""
        ...

    async def load(self, channel: str, after: str | None, upto: str, limit: int) -> list[OutboundMessage]:
        """The channel's next spilled messages in stream order, with order keys after `after` (None: from
        the first) and at most `upto`, as OutboundMessages with `seq` -1 and `token` {"spill": record id,
        "key": order key}."""
        ...

    async def any_after(self, channel: str, after: str | None) -> bool:
        """Whether the channel has spilled messages with order keys after `after` (None: any)."""
        ...

    async def delete(self, keys: Sequence[str]) -> None:
        """Forget spilled messages by record id (Ably has them)."""
        ...


class Overflow:
    """Decides which messages spill, writes them, and drains spilled channels back into the publisher."""

    def __init__(
        self,
        store: SpillStore,
        publisher: Publisher,
        *,
        max_backlog: int,
        before_write: Callable[[], None] = lambda: None,
    ) -> None:
        self._store = store
        self._publisher = publisher
        self._max_backlog = max(1, max_backlog)
        self._low_water = max(1, self._max_backlog // 2)
        self._before_write = before_write  # raises LeadershipLost on a deposed leader
        self.spilling: set[str] = set()
        self._pending: list[OutboundMessage] = []
        self._loaded_to: dict[str, str | None] = {}  # last key loaded per spilling channel
        self._writes: dict[str, int] = {}  # spill writes completed per channel (see `drain_once`)
        self._writing: dict[str, int] = {}  # spill writes in progress per channel
        self._done: list[str] = []
        #: Order key of the last event the reader has handled (spilled ones written) in this term.
        self.read_up_to: str | None = None
        self.spilled = 0
        self.drained = 0
        publisher.on_outside_done = self._acknowledged

    async def start(self) -> None:
        """Channels left spilled by an earlier term are spilling from the start: their new messages queue
        up behind what is stored."""
        for channel in await self._store.channels():
            self.spilling.add(channel)
            self._loaded_to[channel] = None
        if self.spilling:
            log.info("%d channel(s) have spilled messages; draining them first", len(self.spilling))

    @property
    def active(self) -> bool:
        """Whether `route` has anything to decide (checked once per batch on the hot path)."""
        return bool(self.spilling) or bool(self._publisher.pacer.stats.throttled_now)

    def route(self, out: list[OutboundMessage]) -> list[OutboundMessage]:
        """Split routed messages: the ones to publish now are returned, the rest wait for `flush()`."""
        keep: list[OutboundMessage] = []
        if out:
            self._publisher.note_read(out[-1].committed_at)
        throttled = self._publisher.pacer.stats.throttled_now
        for msg in out:
            channel = msg.channel
            if channel not in self.spilling:
                if channel not in throttled or self._publisher.backlog(channel) < self._max_backlog:
                    keep.append(msg)
                    continue
                self.spilling.add(channel)
                self._loaded_to[channel] = None
                log.warning(
                    "channel %r is throttled with %d messages waiting: spilling its backlog to the "
                    "overflow store so other channels keep flowing",
                    channel,
                    self._publisher.backlog(channel),
                    extra={"channel": channel},
                )
            self._pending.append(msg)
        return keep

    @property
    def has_pending(self) -> bool:
        return bool(self._pending)

    async def flush(self, complete: Callable[[int], None]) -> None:
        """Write what `route` held back, then mark it done for the source (`complete(seq)`)."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        channels = {msg.channel for msg in pending}
        for channel in channels:
            self._writing[channel] = self._writing.get(channel, 0) + 1
        try:
            self._before_write()
            await self._store.write(pending)
        finally:
            for channel in channels:
                self._writing[channel] -= 1
                self._writes[channel] = self._writes.get(channel, 0) + 1
        for msg in pending:
            complete(msg.seq)
        self.spilled += len(pending)

    async def run(self, stop: asyncio.Event) -> None:
        """Top up spilled channels and delete what Ably has, until `stop`."""
        while not stop.is_set():
            try:
                await self.drain_once()
            except StreamError as exc:  # the database is unreachable: next round
                log.error("cannot drain the overflow store: %s", exc, extra={"code": 72003})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), DRAIN_INTERVAL_S)
        await self.delete_acknowledged()

    async def drain_once(self) -> None:
        for channel in list(self.spilling):
            if self._publisher.backlog(channel) >= self._low_water:
                continue
            writes = self._writes.get(channel, 0)
            after = self._loaded_to.get(channel)
            msgs = []
            if self.read_up_to is not None:
                msgs = await self._store.load(channel, after, self.read_up_to, self._max_backlog)
            if msgs:
                self._loaded_to[channel] = str(msgs[-1].token["key"])
                self._publisher.submit_many(msgs)
                self.drained += len(msgs)
            elif (
                self._writes.get(channel, 0) == writes
                and not self._writing.get(channel)
                and not any(m.channel == channel for m in self._pending)
                and not await self._store.any_after(channel, after)
            ):
                # Nothing stored after the last key loaded, and nothing written meanwhile: back to memory.
                self.spilling.discard(channel)
                self._loaded_to.pop(channel, None)
                self._writes.pop(channel, None)
                log.info("channel %r has no spilled messages left", channel, extra={"channel": channel})
        await self.delete_acknowledged()

    def _acknowledged(self, msg: OutboundMessage) -> None:
        key = msg.token.get("spill") if isinstance(msg.token, dict) else None
        if key is not None:
            self._done.append(str(key))

    async def delete_acknowledged(self) -> None:
        """Delete the spilled messages Ably has accepted since the last call."""
        if not self._done:
            return
        done, self._done = self._done, []
        self._before_write()
        await self._store.delete(done)
