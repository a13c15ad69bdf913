"""The in-flight ledger: which events are still owed to Ably, and the safe checkpoint.

Invariant 1 lives here: `checkpoint()` returns the resume token of the highest event at or below which
every event has been completed (acknowledged by Ably or dead-lettered). Acknowledgements may arrive in
any order across channels; a token is never handed out past an event that is still pending.

Invariant 5 lives here too: `reserve()` waits while `capacity` events are pending, which is what makes
the reader stop pulling from the change stream when Ably is slow (backpressure).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Mapping
from typing import Any

Token = Mapping[str, Any]


class InFlightLedger:
    """Tracks events by their read sequence number (0, 1, 2 ... in stream order)."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._capacity = capacity
        # (seq, token, done) in stream order; the head is the oldest pending-or-done entry.
        self._entries: deque[list[Any]] = deque()
        self._index: dict[int, list[Any]] = {}
        self._pending = 0
        self._safe: Token | None = None
        self._safe_seq = -1
        # Set whenever a slot is free. One reader reserves, so an Event is enough (no lock needed).
        self._space = asyncio.Event()
        self._space.set()
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def pending(self) -> int:
        """Events reserved and not yet completed."""
        return self._pending

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def full(self) -> bool:
        return self._pending >= self._capacity

    @property
    def safe_seq(self) -> int:
        """Sequence number of the newest event covered by `checkpoint()` (-1 if none)."""
        return self._safe_seq

    async def reserve(self, seq: int, token: Token) -> None:
        """Record an event as in flight, waiting while the ledger is full."""
        while self._pending >= self._capacity:
            self._space.clear()
            await self._space.wait()
        self.add(seq, token)

    def add(self, seq: int, token: Token) -> None:
        """`reserve()` for a caller that has checked `full` (no coroutine per event on the hot path)."""
        if self._pending >= self._capacity:
            raise RuntimeError("ledger is full: use reserve() to wait for space")
        if self._entries and seq <= self._entries[-1][0]:
            raise ValueError(f"sequence numbers must increase: {seq} after {self._entries[-1][0]}")
        entry = [seq, token, False]
        self._entries.append(entry)
        self._index[seq] = entry
        self._pending += 1
        self._idle.clear()

    def complete(self, seq: int) -> None:
        """Mark an event acknowledged or dead-lettered. Completing twice is harmless."""
        entry = self._index.pop(seq, None)
        if entry is None or entry[2]:
            return
        entry[2] = True
        self._pending -= 1
        while self._entries and self._entries[0][2]:
            head_seq, head_token, _ = self._entries.popleft()
            self._safe_seq = head_seq
            self._safe = head_token
        if self._pending == 0:
            self._idle.set()
        if not self._space.is_set():  # only a reserver waiting on a full ledger clears it
            self._space.set()

    def checkpoint(self) -> Token | None:
        """Token of the newest event with everything at or before it completed."""
        return self._safe

    def is_idle(self) -> bool:
        return self._pending == 0

    async def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until nothing is pending; False if the timeout expired first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True
