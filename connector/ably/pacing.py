"""Per-channel pacing under Ably's per-channel inbound rate limit (42913; 50 messages/s by default).

Ably counts every BatchSpec as one message toward its channel's rate, shared by every publisher of the
channel, and rejects what is over it; a rejected request still counts against the account's request rate,
so a connector that bounces off the limit in a tight loop can throttle the whole account. So each channel
gets a token bucket here (`CHANNEL_RATE_LIMIT` per second, one second of burst): the publisher sends a
channel only the messages its bucket allows, and a busy channel goes out at its allowed rate instead of
being rejected.

When Ably rejects anyway (another publisher shares the channel, or the account's limit is lower), the
channel's own rate is halved (down to `MIN_RATE`) and its bucket emptied; it climbs back linearly to the
configured rate over `RECOVERY_S` of accepted publishes. Nothing resets on partial progress: a channel
that keeps being rejected keeps slowing down, and other channels are untouched.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

__all__ = ["ChannelPacer", "PacerStats"]

log = logging.getLogger(__name__)

#: Slowest a rejected channel is paced at (messages/s): it keeps moving, and probes the limit.
MIN_RATE: Final = 1.0
#: Time for a rejected channel's rate to climb from its floor back to the configured rate.
RECOVERY_S: Final = 10.0
#: A backlogged channel waits for this much of a second's allowance before its next request, so a busy
#: channel costs a few requests a second (each with several messages), not one request per message.
BATCH_WINDOW_S: Final = 0.2
#: Buckets of channels unseen this long are forgotten (a new bucket starts full, which is what it would be).
IDLE_FORGET_S: Final = 60.0


@dataclass(slots=True)
class _Bucket:
    tokens: float
    rate: float
    updated: float
    last_rejected: float = -math.inf
    throttled_since: float | None = None


@dataclass(slots=True)
class PacerStats:
    rate_limited: int = 0  # entries Ably rejected with a rate-limit code
    paced_waits: int = 0  # times a channel waited for its bucket
    throttled_seconds: float = 0.0  # summed over channels, closed throttling periods only
    throttled_now: dict[str, float] = field(default_factory=dict)  # channel -> since (clock)


class ChannelPacer:
    """Token buckets per channel. `rate` 0 turns pacing off (every channel may send everything)."""

    def __init__(self, rate: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        if rate < 0:
            raise ValueError("rate must be >= 0")
        self.rate = rate
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._swept = clock()
        self.stats = PacerStats()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def allowance(self, channel: str, wanted: int) -> int:
        """How many of `wanted` messages the channel may send now (0: it must wait, see `wait_s`)."""
        if not self.rate:
            return wanted
        bucket = self._refill(channel)
        allowed = min(wanted, int(bucket.tokens))
        if allowed < wanted and allowed < self._batch(bucket):
            return 0  # backlogged: wait for a worthwhile batch rather than send a trickle
        return allowed

    def spend(self, channel: str, count: int) -> None:
        if self.rate and count:
            self._refill(channel).tokens -= count

    def wait_s(self, channel: str, wanted: int) -> float:
        """Seconds until the channel's bucket holds a worthwhile batch of `wanted` (after `allowance` 0)."""
        bucket = self._refill(channel)
        need = min(wanted, self._batch(bucket))
        now = self._clock()
        if bucket.throttled_since is None:
            self._throttle(channel, bucket, now, f"paced at {bucket.rate:g} messages/s (CHANNEL_RATE_LIMIT)")
        self.stats.paced_waits += 1
        return max(0.0, (need - bucket.tokens) / bucket.rate)

    def rejected(self, channel: str) -> float:
        """Ably rate-limited the channel: halve its rate, empty its bucket; returns the wait before
        the next attempt (the time one message takes at the new rate)."""
        self.stats.rate_limited += 1
        if not self.rate:
            return 1.0
        bucket = self._refill(channel)
        now = self._clock()
        bucket.rate = max(MIN_RATE, self._current_rate(bucket, now) / 2)
        bucket.tokens = min(bucket.tokens, 0.0)
        bucket.last_rejected = now
        if bucket.throttled_since is None:
            self._throttle(channel, bucket, now, f"rate-limited by Ably (42913): slowed to {bucket.rate:g}/s")
        return 1.0 / bucket.rate

    def settled(self, channel: str, *, backlog: bool) -> None:
        """A request of the channel finished; once it has no backlog left it is no longer throttled."""
        bucket = self._buckets.get(channel)
        if backlog or bucket is None or bucket.throttled_since is None:
            return
        spent = self._clock() - bucket.throttled_since
        self.stats.throttled_seconds += spent
        bucket.throttled_since = None
        self.stats.throttled_now.pop(channel, None)
        log.info("channel %r no longer throttled (after %.1fs)", channel, spent, extra={"channel": channel})

    def _throttle(self, channel: str, bucket: _Bucket, now: float, why: str) -> None:
        bucket.throttled_since = now
        self.stats.throttled_now[channel] = now
        log.info("channel %r throttled: %s", channel, why, extra={"channel": channel})

    def channel_rate(self, channel: str) -> float:
        """The rate the channel is paced at now (the configured rate unless Ably rejected it lately)."""
        bucket = self._buckets.get(channel)
        return self.rate if bucket is None else self._current_rate(bucket, self._clock())

    def throttled_seconds(self) -> float:
        """Time spent throttled, summed over channels, including periods still open."""
        now = self._clock()
        return self.stats.throttled_seconds + sum(now - since for since in self.stats.throttled_now.values())

    # -- internals --------------------------------------------------------------------------------------

    def _batch(self, bucket: _Bucket) -> int:
        return max(1, int(bucket.rate * BATCH_WINDOW_S))

    def _current_rate(self, bucket: _Bucket, now: float) -> float:
        if bucket.rate >= self.rate:
            return self.rate
        climbed = (now - bucket.last_rejected) / RECOVERY_S * self.rate
        return min(self.rate, bucket.rate + climbed)

    def _refill(self, channel: str) -> _Bucket:
        now = self._clock()
        bucket = self._buckets.get(channel)
        if bucket is None:
            if now - self._swept > IDLE_FORGET_S:
                self._sweep(now)
            bucket = self._buckets[channel] = _Bucket(tokens=self.rate, rate=self.rate, updated=now)
            return bucket
        rate = self._current_rate(bucket, now)
        if rate >= self.rate:
            bucket.rate = self.rate
        bucket.tokens = min(rate, bucket.tokens + (now - bucket.updated) * rate)
        bucket.updated = now
        return bucket

    def _sweep(self, now: float) -> None:
        self._swept = now
        stale = [
            name
            for name, bucket in self._buckets.items()
            if bucket.throttled_since is None and now - bucket.updated > IDLE_FORGET_S
        ]
        for name in stale:
            del self._buckets[name]
