"""The outbox's position: published rows deleted (a processed tombstone kept), the `sync()` watermark
advanced, fenced by the leadership epoch.

Every CHECKPOINT_INTERVAL_MS (and once more at a clean stop) one transaction:
1. moves the watermark row to the ledger's checkpoint (`GREATEST`, never back) and stores the ranges
   still watched after a gap timeout — *only if the row still carries this term's epoch*: a new leader
   bumps the epoch when it takes over, so a deposed leader's transaction matches nothing, is rolled
   back, and raises LeadershipLost (invariant 8);
2. deletes the rows that are done: the ids in `(stored, watermark]` (every one was published,
   dead-lettered or skipped; ranges given up on after GAP_TIMEOUT_MS and late rows still in flight are
   left alone), late rows that are done, and processed rows below — except the row with the highest
   `sequence_id` in the table, which stays as Ably's tombstone so `MAX(sequence_id)` keeps working;
3. marks what is left of those rows `processed` (the tombstone, when it is one of them).

Every HEAD_RECHECK_S it also reads MAX(sequence_id) (an index lookup) for the backlog gauge: the reader
cannot see the rows piling up above what it fetched while backpressure stops it.

Deleting a published row in the same transaction that would mark it processed is the same end state
as Ably's mark-then-delete, with one write instead of two. Rows above the watermark are never touched:
after a crash they are published again with the same ids, which Ably's idempotent publishing drops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Final

from psycopg import sql
from psycopg.types.json import Jsonb

from connector.ably.ledger import InFlightLedger
from connector.errors import LeadershipLost
from connector.sources.postgres.db import Connection, mapped_errors
from connector.sources.postgres.names import OutboxNames
from connector.sources.postgres.outbox import OutboxReader, StartPoint

log = logging.getLogger(__name__)

#: How often the store reads MAX(sequence_id) for `livesync_outbox_backlog_rows`.
HEAD_RECHECK_S: Final = 1.0


async def load_start(conn: Connection, names: OutboxNames) -> StartPoint:
    """The stored watermark and the ranges still watched, from the watermark row."""
    with mapped_errors("reading the watermark"):
        cur = await conn.execute(sql.SQL("SELECT sequence_id, open_gaps FROM {}").format(names.watermark.sql))
        row = await cur.fetchone()
    if row is None:
        return StartPoint(0, [])
    gaps = row[1] if isinstance(row[1], list) else []
    return StartPoint(int(str(row[0])), [(int(lo), int(hi)) for lo, hi in gaps])


@dataclass(slots=True)
class StoreStats:
    flushes: int = 0
    rows_deleted: int = 0
    last_flush_at: float | None = None
    healthy: bool = True
    last_error: str | None = None


class OutboxStore:
    def __init__(
        self,
        conn: Connection,
        names: OutboxNames,
        *,
        ledger: InFlightLedger,
        reader: OutboxReader,
        epoch: int,
        start: StartPoint,
        interval_s: float,
    ) -> None:
        self._conn = conn
        self._ledger = ledger
        self._reader = reader
        self._epoch = epoch
        self._interval_s = interval_s
        self.watermark = start.watermark
        self._stored_gaps: list[list[int]] = [[lo, hi] for lo, hi in start.open_gaps]
        self._late_ids: list[int] = []
        outbox, wm = names.outbox.sql, names.watermark.sql
        self._advance = sql.SQL(
            "UPDATE {} SET sequence_id = GREATEST(sequence_id, %s), open_gaps = %s, updated_at = now() "
            "WHERE epoch = %s RETURNING sequence_id"
        ).format(wm)
        in_range = (
            "sequence_id > %(lo)s AND sequence_id <= %(hi)s AND sequence_id <> ALL(%(pending)s) "
            "AND NOT EXISTS (SELECT 1 FROM unnest(%(glo)s::bigint[], %(ghi)s::bigint[]) AS g(lo, hi) "
            "WHERE sequence_id BETWEEN g.lo AND g.hi)"
        )
        self._delete = sql.SQL(
            "DELETE FROM {outbox} WHERE sequence_id < (SELECT max(sequence_id) FROM {outbox}) AND ("
            "(processed AND sequence_id <= %(hi)s) OR (" + in_range + ") OR sequence_id = ANY(%(late)s))"
        ).format(outbox=outbox)
        self._mark = sql.SQL(
            "UPDATE {outbox} SET processed = true WHERE NOT processed AND ("
            "(" + in_range + ") OR sequence_id = ANY(%(late)s))"
        ).format(outbox=outbox)
        self._head = sql.SQL("SELECT max(sequence_id) FROM {}").format(outbox)
        self._head_read_at: float | None = None
        self._backlog = reader.backlog
        self._backlog.stored(start.watermark)
        self.stats = StoreStats()

    async def run(self, stop: asyncio.Event) -> None:
        """Flush every interval until `stop`; raises LeadershipLost / DatabaseUnavailable."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._interval_s)
            if stop.is_set():
                return
            await self.flush()
            now = time.monotonic()
            if self._head_read_at is None or now - self._head_read_at >= HEAD_RECHECK_S:
                await self._read_head()
                self._head_read_at = now

    async def _read_head(self) -> None:
        with mapped_errors("reading the outbox's highest sequence_id"):
            cur = await self._conn.execute(self._head)
            found = await cur.fetchone()
        if found and found[0] is not None:
            self._backlog.saw_head(int(str(found[0])))

    async def flush(self) -> bool:
        """Store what the ledger allows; True if anything was written."""
        token = self._ledger.checkpoint()
        target = max(self.watermark, int(token["watermark"])) if token else self.watermark
        self._late_ids += self._reader.late_done(self._ledger.safe_seq)
        gaps = self._reader.tracker.open_gaps()
        if target <= self.watermark and not self._late_ids and gaps == self._stored_gaps:
            return False
        params = {
            "lo": self.watermark,
            "hi": target,
            "pending": self._reader.late_pending(),
            "glo": [lo for lo, _ in gaps],
            "ghi": [hi for _, hi in gaps],
            "late": self._late_ids,
        }
        try:
            deleted = await self._write(target, gaps, params)
        except Exception as exc:
            self.stats.healthy = False
            self.stats.last_error = str(exc)
            raise
        self.stats.flushes += 1
        self.stats.rows_deleted += deleted
        self.stats.last_flush_at = time.time()
        self.stats.healthy, self.stats.last_error = True, None
        self.watermark, self._stored_gaps, self._late_ids = target, gaps, []
        self._backlog.stored(target)
        return True

    async def _write(self, target: int, gaps: list[list[int]], params: dict[str, object]) -> int:
        with mapped_errors("storing the outbox position"):
            async with self._conn.transaction():
                cur = await self._conn.execute(self._advance, [target, Jsonb(gaps), self._epoch])
                if await cur.fetchone() is None:
                    raise LeadershipLost(
                        f"the watermark row no longer carries epoch {self._epoch}: another instance took over"
                    )
                cur = await self._conn.execute(self._delete, params)
                deleted = cur.rowcount
                await self._conn.execute(self._mark, params)
        return deleted
