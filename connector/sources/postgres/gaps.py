"""Commit-order gaps in `sequence_id`, and when a missing id can no longer appear (invariant 9).

`SERIAL` numbers are drawn at insert time, not commit time: transaction A draws 9, B draws 10 and commits
first. A reader that published whatever is visible would send 10 before 9. So rows above a missing id
are held back until the gap is *resolved*: the row appears, or it is proven that it never will, or
GAP_TIMEOUT_MS passes (then the range is logged and skipped, but still watched: a row that commits
later is published late rather than lost).

The proof. `nextval()` takes a `RowExclusiveLock` on the sequence before it hands out a number, and that
lock is held to the end of the drawing transaction. So, when a fetch shows id x missing while a higher id
is visible, the transaction that drew x (if any) is still open at that fetch, or has ended since. The
reader then reads who holds that lock (`pg_locks`): x can only still appear if its transaction is among
them. Once every one of them has ended (later lock reads no longer list their virtual transaction ids),
a fetch whose snapshot is taken after that decides: x is there, or x will never be there (its
transaction rolled back, or the row was deleted). A snapshot-xmin test is not enough on its own here:
an INSERT evaluates `nextval()` *before* its transaction is assigned an xid, so for a moment a
transaction holds a number that no snapshot's xmin accounts for; the sequence lock has no such window.
(Assumes the sequence hands out numbers one at a time, CACHE 1, as `SERIAL` does; `check` warns
otherwise, and the timeout still bounds the wait.)

This module is pure bookkeeping, no I/O: the reader feeds it the ids each fetch returned and the lock
holders it read, and asks which ranges to re-fetch and up to where rows may be released.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["Gap", "GapTracker", "Placement", "Resolved"]

Placement = Literal["new", "filled", "late", "known"]


@dataclass(slots=True)
class Gap:
    """Missing ids `lo..hi` (inclusive), first seen missing at `seen_at` (the tracker's clock)."""

    lo: int
    hi: int
    seen_at: float
    #: Virtual transaction ids that held the sequence lock when the gap was first checked (None: not yet).
    lockers: frozenset[str] | None = None
    #: Every locker has ended: the next fetch decides (what it does not return never will be).
    proving: bool = False
    size: int = field(init=False)

    def __post_init__(self) -> None:
        self.size = self.hi - self.lo + 1

    def contains(self, seq_id: int) -> bool:
        return self.lo <= seq_id <= self.hi

    def pieces_without(self, seq_id: int) -> list[Gap]:
        """This gap with `seq_id` taken out (0, 1 or 2 pieces, same history)."""
        out = []
        if seq_id > self.lo:
            out.append(Gap(self.lo, seq_id - 1, self.seen_at, self.lockers, self.proving))
        if seq_id < self.hi:
            out.append(Gap(seq_id + 1, self.hi, self.seen_at, self.lockers, self.proving))
        return out


@dataclass(slots=True)
class Resolved:
    """A range that stopped blocking, how, and after how long (seconds)."""

    lo: int
    hi: int
    how: Literal["proven", "timeout"]
    waited_s: float


def _place(gaps: list[Gap], seq_id: int) -> int:
    """Index of the gap containing `seq_id`, or -1 (gaps are sorted and disjoint)."""
    i = bisect.bisect_right([g.lo for g in gaps], seq_id) - 1
    return i if i >= 0 and gaps[i].contains(seq_id) else -1


class GapTracker:
    """Every id in `(released, seen_max]` is either a row the reader holds or inside one of `gaps`.

    `late` holds ranges given up on after the timeout: they no longer block, but are still fetched until
    proven empty, so a row that commits after all is published (late) instead of being lost.
    """

    def __init__(self, released: int, *, timeout_s: float, late: Iterable[tuple[int, int]] = ()) -> None:
        self.released = released
        self.seen_max = released
        self.timeout_s = timeout_s
        self.gaps: list[Gap] = []
        # A late range's seen_at is irrelevant (it already timed out); lockers are read afresh.
        self.late: list[Gap] = [Gap(lo, hi, 0.0) for lo, hi in sorted(late)]
        self._resolved: list[Resolved] = []

    # -- what to fetch -------------------------------------------------------------------------------

    def watched(self) -> list[tuple[int, int]]:
        """Ranges the next fetch must re-read besides the rows above `seen_max`."""
        return [(g.lo, g.hi) for g in self.gaps] + [(g.lo, g.hi) for g in self.late]

    def open_gaps(self) -> list[list[int]]:
        """The late ranges, as stored next to the watermark (a restart keeps watching them)."""
        return [[g.lo, g.hi] for g in self.late]

    # -- what a fetch returned -------------------------------------------------------------------------

    def saw(self, ids: Iterable[int], now: float) -> list[Placement]:
        """Account for the ids one fetch returned (ascending); one placement per id.

        `new`: above everything seen (a jump opens a gap below it); `filled`: it was missing and arrived
        while it still blocked; `late`: it arrived in a range given up on; `known`: nothing to do.
        Gaps that were being proven and are still missing after this fetch are resolved and removed.
        """
        out = [self._place_one(seq_id, now) for seq_id in ids]
        self._resolved = [Resolved(g.lo, g.hi, "proven", now - g.seen_at) for g in self.gaps if g.proving]
        self.gaps = [g for g in self.gaps if not g.proving]
        self.late = [g for g in self.late if not g.proving]
        return out

    def _place_one(self, seq_id: int, now: float) -> Placement:
        if seq_id > self.seen_max:
            if seq_id > self.seen_max + 1:
                self.gaps.append(Gap(self.seen_max + 1, seq_id - 1, now))
            self.seen_max = seq_id
            return "new"
        i = _place(self.gaps, seq_id)
        if i >= 0:
            self.gaps[i : i + 1] = self.gaps[i].pieces_without(seq_id)
            return "filled"
        i = _place(self.late, seq_id)
        if i >= 0:
            self.late[i : i + 1] = self.late[i].pieces_without(seq_id)
            return "late"
        return "known"

    def take_resolved(self) -> list[Resolved]:
        """Gaps the last `saw()` proved empty (each logged once by the reader)."""
        resolved, self._resolved = self._resolved, []
        return resolved

    def expire(self, now: float) -> list[Resolved]:
        """Give up on blocking gaps older than the timeout: they move to `late`."""
        expired = [g for g in self.gaps if now - g.seen_at >= self.timeout_s]
        if expired:
            self.gaps = [g for g in self.gaps if now - g.seen_at < self.timeout_s]
            self.late = sorted(self.late + expired, key=lambda g: g.lo)
        return [Resolved(g.lo, g.hi, "timeout", now - g.seen_at) for g in expired]

    # -- the lock read -------------------------------------------------------------------------------

    def needs_lockers(self) -> bool:
        return any(not g.proving for g in self.gaps) or any(not g.proving for g in self.late)

    def lockers_now(self, holders: frozenset[str]) -> None:
        """Record who holds the sequence lock now; gaps whose lockers all ended go to proving."""
        for gap in (*self.gaps, *self.late):
            if gap.proving:
                continue
            gap.lockers = holders if gap.lockers is None else gap.lockers & holders
            if not gap.lockers:
                gap.proving = True

    # -- releasing -------------------------------------------------------------------------------------

    def release_limit(self) -> int:
        """Rows below this id may be released: nothing below it can still appear in order."""
        return self.gaps[0].lo if self.gaps else self.seen_max + 1

    def oldest_wait_s(self, now: float) -> float:
        return now - self.gaps[0].seen_at if self.gaps else 0.0
