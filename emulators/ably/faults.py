"""Fault injection: what the next matching requests suffer (an error status, a delay, a dropped
connection, per-entry batch failures) and for how long (a request count, a duration, or until cleared).

A ``partial`` fault fails entries of a publish, not the request: every (BatchSpec, channel) entry of its
``channels`` (all channels if omitted), or with ``entries`` only the n-th entries of each such channel in
the request (0-based, negative from the end: ``[0]`` fails a channel's first spec and lets its later
specs of the same request through, which Ably can do since it publishes a request's entries
independently). Several partial faults matching one request all apply; an entry takes the error of the
first that selects it.

``refuse`` (stop listening) and ``disconnect`` (drop realtime connections and refuse new ones for a while,
REST unaffected) are not per-request faults; the server acts on them directly.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, Final, Literal, cast, get_args

from emulators.ably.errors import INTERNAL, status_for_code

FaultMode = Literal["status", "delay", "drop", "refuse", "partial", "disconnect"]
FaultTarget = Literal["publish", "all"]
RequestKind = Literal["publish", "other"]

DEFAULT_REFUSE_S: Final = 5.0  # long enough for a client to notice, short enough not to stall a test


@dataclass
class Fault:
    """One injected fault. ``remaining``/``expires_at`` None = until cleared."""

    id: int
    mode: FaultMode
    status: int
    code: int
    message: str
    delay_ms: float
    channels: frozenset[str] | None
    target: FaultTarget
    # partial only: which entries of a matching channel fail (0-based occurrence in the request; negative
    # counts from the channel's last entry); None = all of them.
    entries: tuple[int, ...] | None
    remaining: int | None
    expires_at: float | None
    duration_s: float | None
    served: int = 0

    def public(self) -> dict[str, Any]:
        """JSON-able description (as listed by ``GET /_emulator/faults``)."""
        return {
            "id": self.id,
            "mode": self.mode,
            "status": self.status,
            "code": self.code,
            "message": self.message,
            "delay_ms": self.delay_ms,
            "channels": sorted(self.channels) if self.channels is not None else None,
            "target": self.target,
            "entries": list(self.entries) if self.entries is not None else None,
            "remaining": self.remaining,
            "duration_s": self.duration_s,
            "served": self.served,
        }

    def selects(self, channel: str, occurrence: int, total: int) -> bool:
        """Whether this partial fault fails the ``occurrence``-th of ``total`` entries of ``channel`` in a
        request (a single-channel publish is occurrence 0 of 1)."""
        if self.channels is not None and channel not in self.channels:
            return False
        if self.entries is None:
            return True
        return occurrence in self.entries or occurrence - total in self.entries


_fault_ids = itertools.count(1)


def _status_and_code(spec: dict[str, Any]) -> tuple[int, int]:
    status, code = spec.get("status"), spec.get("code")
    if status is None and code is None:
        return 500, INTERNAL
    if status is None:
        return status_for_code(int(code)), int(code)  # type: ignore[arg-type]
    if code is None:
        return int(status), int(status) * 100
    return int(status), int(code)


def parse_fault(spec: dict[str, Any], now: float) -> Fault:
    """Build a Fault from its JSON form; raises ValueError with a readable reason."""
    mode = spec.get("mode") or ("delay" if "delay_ms" in spec and "status" not in spec else "status")
    if mode not in get_args(FaultMode):
        raise ValueError(f"unknown fault mode {mode!r}; expected one of {get_args(FaultMode)}")
    target = spec.get("target", "publish")
    if target not in get_args(FaultTarget):
        raise ValueError(f"unknown fault target {target!r}; expected publish or all")
    channels = spec.get("channels")
    if isinstance(channels, str):
        channels = [channels]
    if channels is not None and not (
        isinstance(channels, list) and channels and all(isinstance(c, str) for c in channels)
    ):
        raise ValueError("channels must be a channel name or a non-empty list of them")
    entries = spec.get("entries")
    if entries is not None:
        if mode != "partial":
            raise ValueError("entries applies to partial faults only")
        if not (
            isinstance(entries, list)
            and entries
            and all(isinstance(e, int) and not isinstance(e, bool) for e in entries)
        ):
            raise ValueError("entries must be a non-empty list of integers (0-based, negative from the end)")
    count, duration = spec.get("count"), spec.get("duration_s")
    if count is not None and (not isinstance(count, int) or count < 1):
        raise ValueError("count must be a positive integer")
    if duration is not None and (not isinstance(duration, int | float) or duration <= 0):
        raise ValueError("duration_s must be a positive number")
    if mode in ("refuse", "disconnect") and duration is None:
        duration = DEFAULT_REFUSE_S
    delay_ms = spec.get("delay_ms", 0)
    if mode == "delay" and (not isinstance(delay_ms, int | float) or delay_ms <= 0):
        raise ValueError("a delay fault needs delay_ms > 0")
    status, code = _status_and_code(spec)
    return Fault(
        id=next(_fault_ids),
        mode=cast(FaultMode, mode),
        status=status,
        code=code,
        message=str(spec.get("message") or f"injected fault ({mode}, code {code})"),
        delay_ms=float(delay_ms),
        channels=frozenset(channels) if channels is not None else None,
        target=cast(FaultTarget, target),
        entries=tuple(entries) if entries is not None else None,
        remaining=count,
        expires_at=now + duration if duration is not None else None,
        duration_s=float(duration) if duration is not None else None,
    )


class FaultBook:
    """The active per-request faults, first match wins. Thread-safe."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._faults: list[Fault] = []

    def add(self, fault: Fault) -> None:
        """Activate ``fault`` after those already active."""
        with self._lock:
            self._faults.append(fault)

    def clear(self) -> None:
        """Deactivate every fault."""
        with self._lock:
            self._faults.clear()

    def active(self) -> list[Fault]:
        """The faults still in force."""
        with self._lock:
            self._expire(self._clock())
            return list(self._faults)

    def _expire(self, now: float) -> None:
        self._faults = [f for f in self._faults if f.expires_at is None or f.expires_at > now]

    def take(self, kind: RequestKind, channels: Collection[str]) -> list[Fault]:
        """Consume one use of the faults a request of ``kind`` touching ``channels`` suffers: the first
        matching fault, and if it is ``partial``, every later matching ``partial`` fault as well (they
        combine). Empty if none matches."""
        if not self._faults:  # unlocked fast path: the common case is no faults at all
            return []
        taken: list[Fault] = []
        with self._lock:
            self._expire(self._clock())
            for fault in list(self._faults):
                partial = fault.mode == "partial"
                if kind != "publish" and (partial or fault.target != "all"):
                    continue
                if taken and not partial:
                    continue
                if fault.channels is not None and fault.channels.isdisjoint(channels):
                    continue
                fault.served += 1
                if fault.remaining is not None:
                    fault.remaining -= 1
                    if fault.remaining == 0:
                        self._faults.remove(fault)
                taken.append(fault)
                if not partial:
                    break
        return taken
