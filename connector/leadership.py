"""One publisher per CONNECTOR_ID: a lease kept in the database, and this instance's view of it.

One leadership loop for every source (invariant 8); each source keeps its lease in its own database
through a `LeaseStore`: MongoDB a lease document (`sources/mongodb/lease.py`), PostgreSQL a
session-level advisory lock with its `nodes` heartbeat (`sources/postgres/lease_store.py`).

The lease's expiry is decided by the database's clock (the store computes it server-side), so sidecars'
wall clocks never meet. Each takeover increments an epoch, and every position write is
conditional on the holder's epoch (the store's job), so a deposed leader's write matches nothing.

What the leader knows locally is a deadline on its own *monotonic* clock: the moment it sent the request
that last renewed the lease, plus the TTL, minus a safety margin. The server set the lease's expiry at or
after that moment, so the deadline falls before any standby can see the lease expire; the monotonic clock
keeps running while the process is stopped (SIGSTOP, a VM pause), so a leader that wakes up after a pause
knows at once that it may no longer publish. The remaining window — a pause between the deadline check
and the socket write — is covered by Ably's idempotent message ids (see the README's high-availability
section).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol

from connector.errors import LeadershipLost, LeaseStoreError

log = logging.getLogger(__name__)

Role = Literal["leader", "standby"]

# The leader stops publishing this long before the lease can have expired on the server: room for clock
# rate differences and for the renewal round trip's own delays. A fifth of the TTL, at least half a second.
SAFETY_MARGIN_FRACTION = 0.2
SAFETY_MARGIN_MIN_S = 0.5
# Renew three times per TTL, so two renewals can fail (e.g. a primary election) before the leader fences
# itself. Standbys poll at the same pace, but at least twice a second: a released lease (clean stop of the
# leader) is taken over within about half a second. A poll is one indexed conditional update that
# matches nothing while the lease is held: no oplog entry, negligible load.
RENEWALS_PER_TTL = 3
STANDBY_POLL_MAX_S = 0.5
JITTER = 0.2  # ± 20 %, so instances restarted together do not poll in lockstep


@dataclass(frozen=True, slots=True)
class LeaseInfo:
    """The lease as stored: who holds it, at which epoch, until when (the database's clock)."""

    owner: str
    epoch: int
    expires_at: datetime | None


class LeaseStore(Protocol):
    """Where the lease lives. Every method raises LeaseStoreError when the database cannot answer;
    `renew` raises LeadershipLost instead when the lease cannot still be ours whatever the deadline says
    (a lock whose database session ended)."""

    async def acquire(self, owner: str, ttl_s: float) -> int | None:
        """Take the lease if it is free or expired (server clock); the new epoch, or None if held."""
        ...

    async def renew(self, owner: str, epoch: int, ttl_s: float) -> bool:
        """Extend our lease; False when it is no longer ours at this epoch (deposed)."""
        ...

    async def release(self, owner: str, epoch: int) -> None:
        """Let the lease expire now, if it is still ours at this epoch."""
        ...

    async def read(self) -> LeaseInfo | None: ...

    async def close(self) -> None:
        """At exit, after `release`: leave for good (membership rows, sessions); never raises."""
        ...


def jittered(seconds: float, rng: random.Random) -> float:
    return seconds * rng.uniform(1 - JITTER, 1 + JITTER)


class Leadership:
    """This instance's role, epoch and monotonic deadline, and the loops that acquire and renew the lease."""

    def __init__(
        self,
        store: LeaseStore,
        *,
        owner: str,
        ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self._store = store
        self.owner = owner
        self.ttl_s = ttl_s
        self.margin_s = max(SAFETY_MARGIN_MIN_S, SAFETY_MARGIN_FRACTION * ttl_s)
        self._clock = clock
        self._rng = rng or random.Random()
        self.epoch = 0
        self.role: Role = "standby"
        self.changes = 0  # transitions to leader
        self.store_reachable = True  # the last lease operation reached the database
        self.polled = False  # a lease operation has reached the database at least once
        self._deadline = 0.0

    # -- the leader's local view ---------------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        return self.role == "leader"

    def may_publish(self) -> bool:
        """True while this instance is sure it still holds the lease (monotonic deadline not reached)."""
        return self.role == "leader" and self._clock() < self._deadline

    def ensure_may_publish(self) -> None:
        """Called before every publish request: raises LeadershipLost once the deadline has passed."""
        if self.role != "leader":
            raise LeadershipLost("not the leader: publishing stopped")
        if self._clock() >= self._deadline:
            raise LeadershipLost(
                f"lease not renewed in time (epoch {self.epoch}): stopped publishing before it can expire"
            )

    def seconds_left(self) -> float:
        return max(0.0, self._deadline - self._clock()) if self.role == "leader" else 0.0

    # -- transitions ---------------------------------------------------------------------------------

    async def try_acquire(self) -> bool:
        """One attempt to become the leader."""
        sent_at = self._clock()
        try:
            epoch = await self._store.acquire(self.owner, self.ttl_s)
        except LeaseStoreError as exc:
            self._unreachable(exc)
            return False
        self.store_reachable = self.polled = True
        if epoch is None:
            return False
        self.epoch = epoch
        self.role = "leader"
        self.changes += 1
        self._deadline = sent_at + self.ttl_s - self.margin_s
        log.info("lease acquired: leader of this CONNECTOR_ID at epoch %d (%s)", epoch, self.owner)
        return True

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Stand by until the lease is ours (True) or `stop` is set (False)."""
        announced = False
        while not stop.is_set():
            if await self.try_acquire():
                return True
            if not announced and self.store_reachable:
                holder = await self._holder()
                log.info("standing by: the lease is held by %s", holder)
                announced = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), jittered(self.standby_poll_s, self._rng))
        return False

    @property
    def standby_poll_s(self) -> float:
        return min(STANDBY_POLL_MAX_S, self.ttl_s / RENEWALS_PER_TTL)

    @property
    def renew_interval_s(self) -> float:
        return self.ttl_s / RENEWALS_PER_TTL

    async def renew(self) -> None:
        """One renewal; raises LeadershipLost when deposed or when the deadline passed unrenewed."""
        sent_at = self._clock()
        try:
            still_ours = await self._store.renew(self.owner, self.epoch, self.ttl_s)
        except LeaseStoreError as exc:
            self._unreachable(exc)
            if self._clock() >= self._deadline:
                raise LeadershipLost(
                    f"lease lost: could not renew it before its deadline (epoch {self.epoch}): {exc}"
                ) from exc
            return
        self.store_reachable = True
        if not still_ours:
            raise LeadershipLost(f"lease lost: another instance holds it now (our epoch was {self.epoch})")
        self._deadline = sent_at + self.ttl_s - self.margin_s

    async def hold(self, stop: asyncio.Event) -> None:
        """Renew until `stop` is set; raises LeadershipLost when the lease is lost."""
        while not stop.is_set():
            wait = min(jittered(self.renew_interval_s, self._rng), max(0.05, self.seconds_left() / 2))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)
            if not stop.is_set():
                await self.renew()

    def step_down(self, reason: str) -> None:
        """Become a standby (one log line): the lease was lost, or a fenced write matched nothing."""
        if self.role != "leader":
            return
        self.role = "standby"
        self._deadline = 0.0
        log.warning("stepped down to standby (epoch %d): %s", self.epoch, reason)

    async def release(self) -> None:
        """Clean stop of the leader: let the lease expire now so a standby takes over at once."""
        if self.role != "leader":
            return
        self.role = "standby"
        self._deadline = 0.0
        try:
            await self._store.release(self.owner, self.epoch)
        except LeaseStoreError as exc:
            log.warning("could not release the lease (it expires in at most %.0fs): %s", self.ttl_s, exc)
            return
        log.info("lease released (epoch %d)", self.epoch)

    async def close(self) -> None:
        await self._store.close()

    # -- helpers -------------------------------------------------------------------------------------

    def _unreachable(self, exc: LeaseStoreError) -> None:
        if self.store_reachable:
            log.error("cannot reach the lease: %s", exc, extra={"code": exc.code})
        self.store_reachable = False

    async def _holder(self) -> str:
        try:
            info = await self._store.read()
        except LeaseStoreError:
            return "another instance"
        if info is None:
            return "nobody yet"
        return f"{info.owner} (epoch {info.epoch})"
