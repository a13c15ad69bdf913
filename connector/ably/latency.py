"""Freshness: seconds from a change's commit to Ably's acknowledgement, as a Prometheus histogram.

The commit time comes with each message (`OutboundMessage.committed_at`, unix seconds; 0 when unknown):
MongoDB's `wallTime` (millisecond precision, 6.0+) or else its `clusterTime` (whole seconds); for the
Postgres outbox, whose rows carry no commit time, the moment the connector read the row. Counting is a
bisect and two additions per acknowledged message; the runtime keeps one histogram for the process, so
it is cumulative across terms.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Iterable
from typing import Any, Final

#: Upper bounds in seconds: sub-second detail for a healthy pipeline, up to the minutes a backlog takes.
BUCKETS: Final = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class LatencyHistogram:
    def __init__(self, clock: Any = time.time) -> None:
        self._clock = clock
        self._counts = [0] * (len(BUCKETS) + 1)  # the last: above every bound (+Inf)
        self.count = 0
        self.sum = 0.0

    def observe(self, committed_at: Iterable[float]) -> None:
        """One observation per known commit time (0 = unknown, skipped)."""
        now = self._clock()
        counts = self._counts
        for at in committed_at:
            if at:
                seconds = max(0.0, now - at)
                counts[bisect.bisect_left(BUCKETS, seconds)] += 1
                self.count += 1
                self.sum += seconds

    def snapshot(self) -> dict[str, Any]:
        """Cumulative buckets as Prometheus wants them: [(le, count at or below)], the sum and count."""
        buckets: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip(BUCKETS, self._counts, strict=False):
            running += count
            buckets.append((f"{bound:g}", float(running)))
        buckets.append(("+Inf", float(self.count)))
        return {"buckets": buckets, "sum": self.sum}
