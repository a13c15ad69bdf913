"""The outbox reader: finds new rows (woken by NOTIFY, or polling), holds back rows above commit-order gaps,
maps rows to messages and hands them to the shared publisher in `sequence_id` order.

One round: while gaps are open, read who holds the sequence lock (see `gaps.py` for why that proves a
gap permanent); fetch rows above the highest id seen plus the rows of every watched gap range (primary
key lookups), account for them in the `GapTracker`, and release what no gap blocks. The lock read comes
first so that a gap whose drawing transactions have all ended is decided by the same round's fetch. Rounds
follow each other at once while a fetch comes back full, every GAP_RECHECK_S while gaps are open, and
otherwise on a notification or after POLL_INTERVAL_MS.

Positions in the in-flight ledger: each released row (and each jump over resolved ids) is one ledger
entry whose token carries `watermark`, the id up to which everything has been released. The ledger's
checkpoint is therefore the `sync()` watermark: every id at or below it was published, dead-lettered,
or resolved. Rows that arrive in a range given up on after GAP_TIMEOUT_MS are published at once (late,
out of order: the alternative is losing them) and deleted by id once done (`late_done`).

Backpressure (invariant 5): the ledger's `reserve()` waits while MAX_IN_FLIGHT rows are in flight, and
no new rows are fetched while that many are held back behind a gap.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol

from psycopg import sql

from connector.ably.cipher import ChannelCipher
from connector.ably.ledger import InFlightLedger
from connector.ably.outbound import OutboundMessage
from connector.ably.overflow import Overflow
from connector.ably.oversize import TRUNCATED_HEADER, OnOversize
from connector.errors import UnpublishableEvent
from connector.sources.postgres.backlog import OutboxBacklog
from connector.sources.postgres.db import Connection, mapped_errors
from connector.sources.postgres.deadletter import UnpublishableRows
from connector.sources.postgres.gaps import GapTracker, Resolved
from connector.sources.postgres.messages import COLUMNS, OutboxRow, row_to_message
from connector.sources.postgres.names import OutboxNames
from connector.sources.postgres.overflow_store import order_key

log = logging.getLogger(__name__)

#: While a gap is open, how often to look again: short, since a held-back row waits on it, and cheap
#: (one primary-key query and one pg_locks read).
GAP_RECHECK_S: Final = 0.01


class Submitter(Protocol):
    """What the reader needs from the publisher (connector.ably.publisher.Publisher satisfies it)."""

    def submit(self, msg: OutboundMessage) -> None: ...


@dataclass(slots=True)
class ReaderStats:
    rows_read: int = 0
    rounds: int = 0
    unpublishable: int = 0
    truncated: int = 0  # published without their data (ON_OVERSIZE=truncate)
    late_rows: int = 0
    gaps_opened: int = 0
    gaps_proven: int = 0
    gaps_timed_out: int = 0
    #: How long the last and the longest gap resolved by proof blocked publishing (seconds).
    last_gap_wait_s: float = 0.0
    max_gap_wait_s: float = 0.0
    reading: bool = False
    last_read_at: float | None = None


@dataclass(frozen=True, slots=True)
class StartPoint:
    """Where a leadership term starts: the stored watermark and the ranges still watched."""

    watermark: int
    open_gaps: list[tuple[int, int]]


class OutboxReader:
    def __init__(
        self,
        conn: Connection,
        names: OutboxNames,
        *,
        start: StartPoint,
        ledger: InFlightLedger,
        publisher: Submitter,
        unpublishable: UnpublishableRows,
        wake: asyncio.Event,
        max_message_size: int,
        batch_size: int,
        on_oversize: OnOversize = "truncate",
        poll_interval_s: float,
        gap_timeout_s: float,
        clock: Callable[[], float] = time.monotonic,
        overflow: Overflow | None = None,
        cipher: ChannelCipher | None = None,
        backlog: OutboxBacklog | None = None,
    ) -> None:
        #: First read times of the rows fetched (for the outbox age gauge).
        self.backlog = backlog if backlog is not None else OutboxBacklog()
        self._overflow = overflow
        self._cipher = cipher
        self._routed_upto = 0  # the highest sequence_id handed to the publisher or the overflow
        self._conn = conn
        self._ledger = ledger
        self._publisher = publisher
        self._unpublishable = unpublishable
        self._wake = wake
        self._max_message_size = max_message_size
        self._on_oversize: OnOversize = on_oversize
        self._batch = batch_size
        self._poll_s = poll_interval_s
        self._clock = clock
        self.tracker = GapTracker(start.watermark, timeout_s=gap_timeout_s, late=start.open_gaps)
        self._start = start
        self._held: dict[int, OutboxRow] = {}
        self._order: list[int] = []  # heap of held ids
        self._seq = -1
        self._last_entry_watermark = start.watermark
        #: (ledger seq, sequence_id) of rows published out of order; the store deletes them by id.
        self._late: deque[tuple[int, int]] = deque()
        self._seq_oid: int | None = None
        self._fetch_floor = start.watermark
        outbox = names.outbox.sql
        self._fetch_new = sql.SQL(
            "SELECT {} FROM {} WHERE sequence_id > %s ORDER BY sequence_id LIMIT %s"
        ).format(sql.SQL(COLUMNS), outbox)
        self._fetch_ranges = sql.SQL(
            "SELECT {} FROM {} JOIN unnest(%s::bigint[], %s::bigint[]) AS g(lo, hi) "
            "ON sequence_id BETWEEN g.lo AND g.hi"
        ).format(sql.SQL(COLUMNS), outbox)
        self._fetch_behind = sql.SQL(
            "SELECT {} FROM {} WHERE sequence_id <= %s AND NOT processed ORDER BY sequence_id"
        ).format(sql.SQL(COLUMNS), outbox)
        self._sequence = names.outbox.sql
        self.stats = ReaderStats()

    # -- lifecycle -------------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Read until `stop` is set; raises DatabaseUnavailable / SchemaError / FatalError."""
        if self._overflow is not None:
            # Spilled rows up to the stored watermark are settled in the outbox: loadable at once.
            self._overflow.read_up_to = order_key(self._start.watermark)
        await self._prepare()
        self.stats.reading = True
        try:
            while not stop.is_set():
                self._wake.clear()
                full = await self._round()
                if stop.is_set() or full:
                    continue
                await self._wait(stop)
        finally:
            self.stats.reading = False

    async def _prepare(self) -> None:
        with mapped_errors("reading the outbox's sequence"):
            cur = await self._conn.execute(
                "SELECT pg_get_serial_sequence(%s, 'sequence_id')::regclass::oid",
                [self._sequence.as_string(self._conn)],
            )
            found = await cur.fetchone()
        self._seq_oid = int(str(found[0])) if found and found[0] is not None else None
        if self._seq_oid is None:
            log.warning("outbox sequence_id has no sequence: gaps are resolved by GAP_TIMEOUT_MS only")
        # Rows at or below the stored watermark that are still unprocessed committed after a gap was given
        # up on (before a restart): publish them now, late, rather than never.
        with mapped_errors("reading the outbox"):
            cur = await self._conn.execute(self._fetch_behind, [self._start.watermark])
            records: list[tuple[Any, ...]] = await cur.fetchall()
        behind = [OutboxRow(*r) for r in records]
        for row in behind:
            log.warning(
                "publishing outbox row %d late (it committed after its gap was given up on)", row.sequence_id
            )
            await self._publish_late(row)

    async def _wait(self, stop: asyncio.Event) -> None:
        timeout = GAP_RECHECK_S if self.tracker.watched() else self._poll_s
        waiters = {asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(stop.wait())}
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
            # Not `await waiter` under suppress(CancelledError): a cancellation of *this* task arriving
            # there would be swallowed, the reader would read on, and the term's close() would wait for
            # it forever (seen as a connector that stopped publishing after a PostgreSQL restart).
            await asyncio.wait(waiters)

    # -- one round -------------------------------------------------------------------------------------

    async def _round(self) -> bool:
        """Fetch, account, release; True when the fetch of new rows came back full."""
        self.stats.rounds += 1
        tracker = self.tracker
        if tracker.needs_lockers():
            # Before the fetch: a gap whose lockers have all ended is then decided by this very fetch.
            await self._read_lockers()
        room = self._ledger.capacity - len(self._held)
        limit = min(self._batch, room) if room > 0 else 0
        rows = await self._fetch(limit)
        now = self._clock()
        placements = tracker.saw((row.sequence_id for row in rows), now)
        new_rows = sum(1 for row in rows if row.sequence_id > self._fetch_floor)
        if new_rows:  # before the release, which may wait for room in the ledger
            self.backlog.read(tracker.seen_max, time.time())
        opened = len(tracker.gaps)
        for row, placement in zip(rows, placements, strict=True):
            if row.processed or placement == "known":
                continue
            if placement == "late":
                log.warning(
                    "publishing outbox row %d late (it committed after its gap was given up on)",
                    row.sequence_id,
                )
                await self._publish_late(row)
            else:
                self._held[row.sequence_id] = row
                heapq.heappush(self._order, row.sequence_id)
        self._note(tracker.take_resolved())
        self._note(tracker.expire(now))
        self.stats.gaps_opened += max(0, len(tracker.gaps) - opened)
        await self._release()
        return limit > 0 and new_rows >= limit

    async def _fetch(self, limit: int) -> list[OutboxRow]:
        ranges = self.tracker.watched()
        self._fetch_floor = self.tracker.seen_max
        out: list[tuple[Any, ...]] = []
        with mapped_errors("reading the outbox"):
            if limit > 0:
                cur = await self._conn.execute(self._fetch_new, [self.tracker.seen_max, limit])
                out = await cur.fetchall()
            if ranges:
                cur = await self._conn.execute(
                    self._fetch_ranges, [[lo for lo, _ in ranges], [hi for _, hi in ranges]]
                )
                found = await cur.fetchall()
                if found:
                    out = sorted(found + out, key=lambda r: int(r[0]))
        self.stats.rows_read += len(out)
        if out:
            self.stats.last_read_at = time.time()
        return [OutboxRow(*r) for r in out]

    async def _read_lockers(self) -> None:
        if self._seq_oid is None:
            return
        with mapped_errors("reading the sequence's lock holders"):
            cur = await self._conn.execute(
                "SELECT virtualtransaction FROM pg_locks WHERE locktype = 'relation' AND relation = %s "
                "AND mode = 'RowExclusiveLock' AND granted",
                [self._seq_oid],
            )
            holders = frozenset(str(r[0]) for r in await cur.fetchall())
        self.tracker.lockers_now(holders)

    def _note(self, resolved: list[Resolved]) -> None:
        for gap in resolved:
            span = f"{gap.lo}" if gap.lo == gap.hi else f"{gap.lo}..{gap.hi}"
            if gap.how == "timeout":
                self.stats.gaps_timed_out += 1
                log.warning(
                    "gave up waiting for outbox sequence_id %s after %.0f ms (GAP_TIMEOUT_MS): a transaction "
                    "that drew it is still open; publishing past it, and publishing it late if it commits",
                    span,
                    gap.waited_s * 1000,
                    extra={"code": 72001},
                )
                continue
            self.stats.gaps_proven += 1
            self.stats.last_gap_wait_s = gap.waited_s
            self.stats.max_gap_wait_s = max(self.stats.max_gap_wait_s, gap.waited_s)
            log.info(
                "outbox sequence_id %s will never commit (rolled back or deleted); waited %.1f ms",
                span,
                gap.waited_s * 1000,
            )

    # -- releasing ---------------------------------------------------------------------------------------

    async def _release(self) -> None:
        """Publish held rows below the first blocking gap, in order; move the watermark past the rest."""
        limit = self.tracker.release_limit()
        while self._order and self._order[0] < limit:
            seq_id = heapq.heappop(self._order)
            row = self._held.pop(seq_id)
            self.tracker.released = seq_id
            await self._publish(row, watermark=seq_id)
        await self._flush_overflow()
        if limit - 1 > self.tracker.released:
            self.tracker.released = limit - 1
        if self.tracker.released > self._last_entry_watermark:
            # Only resolved ids since the last row: one entry that completes at once moves the watermark.
            seq = await self._entry(self.tracker.released)
            self._ledger.complete(seq)

    async def _entry(self, watermark: int, token: dict[str, Any] | None = None) -> int:
        self._seq += 1
        token = token if token is not None else {}
        token["watermark"] = watermark
        if self._ledger.full:
            await self._flush_overflow()  # spilled rows free their slots once written
            await self._ledger.reserve(self._seq, token)
        else:
            self._ledger.add(self._seq, token)
        self._last_entry_watermark = max(self._last_entry_watermark, watermark)
        return self._seq

    async def _publish(self, row: OutboxRow, *, watermark: int, spill: bool = True) -> int:
        token: dict[str, Any] = {"row": row}
        seq = await self._entry(watermark, token)
        try:
            msg = row_to_message(
                seq,
                row,
                max_message_size=self._max_message_size,
                token=token,
                on_oversize=self._on_oversize,
                cipher=self._cipher,
            )
        except UnpublishableEvent as exc:
            self.stats.unpublishable += 1
            await self._unpublishable.handle(row, exc.reason, exc.code, kind=exc.kind, fatal=exc.fatal)
            self._ledger.complete(seq)
            return seq
        if TRUNCATED_HEADER in msg.message["extras"]["headers"]:
            self.stats.truncated += 1
        overflow = self._overflow
        if overflow is None or not spill:  # a late row goes out at once: it is out of order anyway
            self._publisher.submit(msg)
            return seq
        if not overflow.active or overflow.route([msg]):
            self._publisher.submit(msg)
        # else: a throttled channel's excess, written to the overflow table (`_flush_overflow`) before the
        # row counts as done
        self._routed_upto = max(self._routed_upto, row.sequence_id)
        return seq

    async def _flush_overflow(self) -> None:
        """Write the rows held back for the overflow table (one statement for the lot), then let the
        drainer load up to the last row handled."""
        overflow = self._overflow
        if overflow is None:
            return
        await overflow.flush(self._ledger.complete)
        overflow.read_up_to = order_key(max(self._routed_upto, int(overflow.read_up_to or 0)))

    async def _publish_late(self, row: OutboxRow) -> None:
        self.stats.late_rows += 1
        seq = await self._publish(row, watermark=self._last_entry_watermark, spill=False)
        self._late.append((seq, row.sequence_id))

    # -- for the store -----------------------------------------------------------------------------------

    def late_done(self, safe_seq: int) -> list[int]:
        """Ids of late rows whose ledger entries are complete (up to `safe_seq`), each returned once."""
        done = []
        while self._late and self._late[0][0] <= safe_seq:
            done.append(self._late.popleft()[1])
        return done

    def late_pending(self) -> list[int]:
        """Ids of late rows still in flight: the store must not delete them with their range."""
        return [seq_id for _, seq_id in self._late]

    @property
    def held(self) -> int:
        return len(self._held)
