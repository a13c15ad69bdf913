"""How far behind the outbox is: the age of the oldest row still waiting, and how many ids wait.

Ably's outbox table has no time column, so a row's age is measured from when this process first read it
(NOTIFY wakes the reader at once, so that is within POLL_INTERVAL_MS of its commit at worst). A row
waits until the stored watermark passes it, that is until it is published (or dead-lettered) *and* the
position is stored: the same "still in the outbox" an operator sees with `SELECT`.

Bookkeeping is one entry per fetch that returned new rows: (highest id fetched, when). Ids are fetched
in ascending order, so the first entry above the watermark holds the read time of the oldest waiting row.
Entries survive terms (the source owns this), so a row re-read by a new term keeps its first read time.
Nothing here does I/O: the reader and the store feed it, a scrape reads it.
"""

from __future__ import annotations

from collections import deque


class OutboxBacklog:
    def __init__(self) -> None:
        self._reads: deque[tuple[int, float]] = deque()  # (highest sequence_id of a fetch, unix time)
        self._read_upto = 0  # the highest id any entry covers
        #: The highest sequence_id known in the outbox (the reader's last look).
        self.head = 0
        #: The stored watermark: every id at or below it is done and gone from the outbox.
        self.watermark = 0

    def read(self, highest: int, at: float) -> None:
        """A fetch returned rows up to `highest` at `at`; ids already covered keep their first read time."""
        if highest > self._read_upto:
            self._reads.append((highest, at))
            self._read_upto = highest
        self.head = max(self.head, highest)

    def saw_head(self, head: int) -> None:
        """The reader's look at MAX(sequence_id)."""
        self.head = max(self.head, head)

    def stored(self, watermark: int) -> None:
        """The watermark stored (or loaded by a new term): rows at or below it no longer wait."""
        self.watermark = max(self.watermark, watermark)
        while self._reads and self._reads[0][0] <= self.watermark:
            self._reads.popleft()

    def oldest_age_s(self, now: float) -> float:
        """Seconds since the oldest row above the watermark was first read; 0 when none waits."""
        return max(0.0, now - self._reads[0][1]) if self._reads else 0.0

    @property
    def rows(self) -> int:
        """Ids above the watermark up to the head: the rows waiting (rolled-back ids count too)."""
        return max(0, self.head - self.watermark)
