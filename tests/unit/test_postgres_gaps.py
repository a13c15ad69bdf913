"""GapTracker: which ids still block, when a missing id is proven gone, timeouts and late ranges."""

from __future__ import annotations

from connector.sources.postgres.gaps import GapTracker


def test_contiguous_ids_open_no_gap_and_release_everything() -> None:
    t = GapTracker(0, timeout_s=5)
    assert t.saw([1, 2, 3], now=0.0) == ["new", "new", "new"]
    assert t.gaps == [] and t.release_limit() == 4 and not t.needs_lockers()


def test_a_jump_opens_a_range_that_blocks_until_filled() -> None:
    t = GapTracker(0, timeout_s=5)
    t.saw([1, 4], now=0.0)
    assert [(g.lo, g.hi) for g in t.gaps] == [(2, 3)]
    assert t.release_limit() == 2 and t.watched() == [(2, 3)]
    assert t.saw([3], now=0.1) == ["filled"]
    assert [(g.lo, g.hi) for g in t.gaps] == [(2, 2)] and t.release_limit() == 2
    assert t.saw([2], now=0.2) == ["filled"]
    assert t.gaps == [] and t.release_limit() == 5


def test_a_gap_is_proven_only_by_a_fetch_after_all_its_lockers_ended() -> None:
    t = GapTracker(0, timeout_s=5)
    t.saw([1, 3], now=0.0)
    t.lockers_now(frozenset({"3/7", "4/9"}))  # someone may still hold 2
    t.saw([], now=0.1)
    assert t.take_resolved() == [] and t.release_limit() == 2
    t.lockers_now(frozenset({"4/9", "5/1"}))  # 3/7 ended; a newcomer (5/1) cannot hold 2
    assert not t.gaps[0].proving
    t.lockers_now(frozenset({"5/1"}))  # every original locker ended
    assert t.gaps[0].proving and not t.needs_lockers()
    t.saw([], now=0.25)  # the deciding fetch: 2 is still not there
    resolved = t.take_resolved()
    assert [(r.lo, r.hi, r.how) for r in resolved] == [(2, 2, "proven")]
    assert resolved[0].waited_s == 0.25 and t.release_limit() == 4


def test_a_row_found_by_the_deciding_fetch_fills_instead() -> None:
    t = GapTracker(0, timeout_s=5)
    t.saw([1, 3], now=0.0)
    t.lockers_now(frozenset())
    assert t.saw([2], now=0.1) == ["filled"]
    assert t.take_resolved() == [] and t.gaps == []


def test_proving_a_range_keeps_what_the_fetch_found() -> None:
    t = GapTracker(0, timeout_s=5)
    t.saw([1, 6], now=0.0)
    t.lockers_now(frozenset())
    assert t.saw([3], now=0.1) == ["filled"]
    assert [(r.lo, r.hi) for r in t.take_resolved()] == [(2, 2), (4, 5)]
    assert t.release_limit() == 7


def test_timeout_moves_a_gap_to_the_late_ranges_which_stay_watched() -> None:
    t = GapTracker(0, timeout_s=1.0)
    t.saw([1, 3], now=0.0)
    assert t.expire(0.5) == []
    expired = t.expire(1.0)
    assert [(r.lo, r.hi, r.how) for r in expired] == [(2, 2, "timeout")]
    assert t.gaps == [] and t.release_limit() == 4
    assert t.watched() == [(2, 2)] and t.open_gaps() == [[2, 2]] and t.needs_lockers()
    assert t.saw([2], now=2.0) == ["late"]
    assert t.late == [] and t.watched() == []


def test_late_ranges_from_a_restart_are_watched_until_proven_empty() -> None:
    t = GapTracker(10, timeout_s=1.0, late=[(4, 5)])
    assert t.watched() == [(4, 5)] and t.release_limit() == 11
    t.lockers_now(frozenset({"9/9"}))
    t.lockers_now(frozenset())
    t.saw([], now=0.0)
    assert t.late == [] and t.take_resolved() == []  # a late range never blocked: nothing to report


def test_ids_below_everything_seen_are_known() -> None:
    t = GapTracker(5, timeout_s=1.0)
    assert t.saw([3, 6], now=0.0) == ["known", "new"]
