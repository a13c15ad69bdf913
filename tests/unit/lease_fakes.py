"""A lease store in memory and a settable clock, for the leadership loop's and the runtime's tests."""

from __future__ import annotations

from connector.errors import LeaseStoreError
from connector.leadership import LeaseInfo


class Clock:
    """Monotonic seconds; the store's server clock is the same timeline (no drift) unless a test says."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class MemoryLeaseStore:
    """`LeaseStore` in memory: expiry judged on the shared clock, as the database judges it on its own."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.owner: str | None = None
        self.epoch = 0
        self.expires = 0.0
        self.down = False
        self.closed = False

    def _check(self) -> None:
        if self.down:
            raise LeaseStoreError("cannot reach the lease: connection refused")

    async def acquire(self, owner: str, ttl_s: float) -> int | None:
        self._check()
        if self.owner is not None and self.owner != owner and self.clock() < self.expires:
            return None
        self.owner, self.epoch, self.expires = owner, self.epoch + 1, self.clock() + ttl_s
        return self.epoch

    async def renew(self, owner: str, epoch: int, ttl_s: float) -> bool:
        self._check()
        if (self.owner, self.epoch) != (owner, epoch):
            return False
        self.expires = self.clock() + ttl_s
        return True

    async def release(self, owner: str, epoch: int) -> None:
        self._check()
        if (self.owner, self.epoch) == (owner, epoch):
            self.expires = 0.0

    async def read(self) -> LeaseInfo | None:
        self._check()
        return None if self.owner is None else LeaseInfo(self.owner, self.epoch, None)

    async def close(self) -> None:
        self.closed = True
