"""Cluster time, topology version and the step-down state of the one-member replica set."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import time
from typing import Any

from bson import Int64, ObjectId, Timestamp

# Real servers sign $clusterTime; without auth a zero signature is what a keyless server gossips.
ZERO_SIGNATURE = {"hash": b"\x00" * 20, "keyId": Int64(0)}


# How often the cluster time moves while nothing is written, like mongod's periodic no-op writer (which
# the server runs every 10 s; faster here so idle post-batch resume tokens advance within a test's poll).
IDLE_ADVANCE_S = 0.1


class ClusterClock:
    """Hands out strictly increasing operation times and reports the current cluster time.

    The cluster time follows the wall clock even when nothing is written (as the server's periodic
    no-op writer makes it do), so post-batch resume tokens of idle change streams keep advancing.
    """

    def __init__(self) -> None:
        self._last = Timestamp(0, 0)
        self._last_write = Timestamp(0, 0)
        self._advanced_at = 0.0

    def _advance(self) -> Timestamp:
        now = int(time.time())
        if now > self._last.time:
            self._last = Timestamp(now, 1)
        else:
            self._last = Timestamp(self._last.time, self._last.inc + 1)
        self._advanced_at = time.monotonic()
        return self._last

    def tick(self) -> Timestamp:
        """A new, unique operation time for one write."""
        self._last_write = self._advance()
        return self._last_write

    @property
    def last_write(self) -> Timestamp:
        return self._last_write

    def now(self) -> Timestamp:
        """The current cluster time: the latest time handed out, moved on at most every IDLE_ADVANCE_S."""
        if time.monotonic() - self._advanced_at >= IDLE_ADVANCE_S:
            return self._advance()
        return self._last

    def gossip(self) -> dict[str, Any]:
        return {"clusterTime": self.now(), "signature": ZERO_SIGNATURE}


def wall_time() -> datetime.datetime:
    """Wall time truncated to milliseconds, as BSON dates carry it."""
    now = datetime.datetime.now(datetime.UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


class Topology:
    """Primary/step-down state; awaitable hellos park here until it changes."""

    def __init__(self) -> None:
        self.process_id = ObjectId()
        self.counter = 0
        self._stepdown_until = 0.0
        self._changed = asyncio.Event()

    def version(self) -> dict[str, Any]:
        self.refresh()
        return {"processId": self.process_id, "counter": Int64(self.counter)}

    def _bump(self) -> None:
        self.counter += 1
        self._changed.set()
        self._changed = asyncio.Event()

    def step_down(self, seconds: float) -> None:
        """Refuse writes with NotWritablePrimary for ``seconds``."""
        self.refresh()
        self._stepdown_until = time.monotonic() + max(0.0, seconds)
        self._bump()

    def refresh(self) -> None:
        """End an expired step-down (lazily: whoever looks first notices)."""
        if self._stepdown_until and time.monotonic() >= self._stepdown_until:
            self._stepdown_until = 0.0
            self._bump()

    @property
    def stepped_down(self) -> bool:
        self.refresh()
        return self._stepdown_until > 0.0

    async def wait_for_change(self, timeout: float) -> None:
        """Park until the topology changes or ``timeout`` passes (awaitable hello)."""
        self.refresh()
        if self._stepdown_until:
            timeout = min(timeout, max(0.0, self._stepdown_until - time.monotonic()) + 0.01)
        event = self._changed
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)
        self.refresh()
