"""What a source is: the small, typed protocol the runtime (`connector/runtime.py`) drives.

A source is a package under `connector/sources/` (today `mongodb` and `postgres`), listed once in
`connector/sources/registry.py`, which is the only module outside the package that names it:

    connector/sources/<name>/
      settings.py   its settings, a mixin of the one `Settings` (connector/config.py)
      source.py     a `Source` and its `SourceTerm` (below)
      check.py      `check` (and commands.py or check.py: the source's own commands, `token ...`,
                    `create-tables`, listed in the registry)

The runtime owns everything the sources share: the health server and metrics, the leadership loop
(`connector/leadership.py`) over the source's `LeaseStore`, and one `Term` per leadership
(`connector/term.py`): the in-flight ledger, the publisher and its overflow, the owned tasks and the fixed
stop order of invariant 7. A source supplies the rest:

    Source                      one per process
      database                  "MongoDB", "PostgreSQL": named in log lines and readiness problems
      lease_id                  what the lease and the stored position are kept under: CONNECTOR_ID, or
                                a partition's own id; the info metric's `connector_id` label, so that
                                alerts count one leader per partition
      lease_store               where the lease lives, fenced by epoch (invariant 8)
      open(stop)                wait for the database and check what must exist; False when stopped
                                first; a ConnectorError is fatal
      term(ctx)                 fresh components for one term (nothing carried over from the last)
      values()                  process-wide metrics that are cumulative on their own
      close()                   at exit, after the lease is released

    SourceTerm                  one per leadership term
      open()                    read the stored position (after the lease was won: the last leader may
                                have moved it) and build the reader; a StreamError is retried while the
                                lease holds, after close()
      overflow                  built by open() with ctx.overflow(spill store)
      tasks(stop)               the term's coroutines until `stop`: "reader" reads batches of events and
                                hands each as an OutboundMessage, with its position as the token, to
                                ctx.publisher (the ledger orders positions); "writer" stores the position
                                of completed events, fenced by ctx.fence; others are optional helpers
      store_position()          the final fenced position write of a clean stop (never raises)
      on_rejected(msg, error)   Ably refused a message for good: its dead-letter sink (ON_UNPUBLISHABLE)
      counters()                this term's counters (the runtime sums them over terms)
      gauges()                  values of this term that are not summed (lag, stream open)
      problems(), details()     readiness of a leading term
      close()                   idempotent

Errors a source raises follow `connector/errors.py`: DatabaseUnavailable ends a term (the instance
steps down and competes again), LeadershipLost ends it without a final write, any other ConnectorError
out of a term is fatal (exit 1).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from connector.ably.ledger import InFlightLedger
from connector.ably.outbound import OutboundMessage
from connector.ably.overflow import Overflow, SpillStore
from connector.ably.publisher import Publisher
from connector.errors import AblyError
from connector.leadership import LeaseStore

#: A term counter: a number, or numbers by label (summed per label).
Counter = int | dict[str, int]


@dataclass(frozen=True, slots=True)
class Fence:
    """The lease a position write is conditional on (invariant 8)."""

    owner: str
    epoch: int


@dataclass(slots=True)
class TermContext:
    """What the runtime gives a source for one term."""

    ledger: InFlightLedger
    publisher: Publisher
    fence: Fence
    ensure_may_publish: Callable[[], None]
    max_backlog: int

    def overflow(self, store: SpillStore) -> Overflow:
        """The term's overflow (busy channels' backlogs) over the source's spill store."""
        return Overflow(
            store, self.publisher, max_backlog=self.max_backlog, before_write=self.ensure_may_publish
        )


class SourceTerm(Protocol):
    overflow: Overflow | None

    async def open(self) -> None: ...

    def tasks(self, stop: asyncio.Event) -> dict[str, Coroutine[Any, Any, None]]: ...

    async def store_position(self) -> None: ...

    async def on_rejected(self, msg: OutboundMessage, error: AblyError) -> None: ...

    def counters(self) -> Mapping[str, Counter]: ...

    def gauges(self) -> Mapping[str, Any]: ...

    def problems(self) -> list[str]: ...

    def details(self) -> dict[str, Any]: ...

    async def close(self) -> None: ...


class Source(Protocol):
    database: str
    lease_id: str

    @property
    def lease_store(self) -> LeaseStore: ...

    async def open(self, stop: asyncio.Event) -> bool: ...

    def term(self, ctx: TermContext) -> SourceTerm: ...

    def values(self) -> Mapping[str, Any]: ...

    async def close(self) -> None: ...
