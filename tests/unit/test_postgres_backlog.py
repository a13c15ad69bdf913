"""OutboxBacklog: the age of the oldest waiting row (from its first read) and the ids waiting."""

from __future__ import annotations

from connector.sources.postgres.backlog import OutboxBacklog


def test_nothing_read_nothing_waits() -> None:
    b = OutboxBacklog()
    assert b.oldest_age_s(now=100.0) == 0.0 and b.rows == 0


def test_the_age_is_the_oldest_fetch_above_the_stored_watermark() -> None:
    b = OutboxBacklog()
    b.read(10, at=100.0)  # ids 1..10
    b.read(15, at=103.0)  # ids 11..15
    assert b.oldest_age_s(now=110.0) == 10.0 and b.rows == 15
    b.stored(9)  # row 10 still waits: its fetch's time still counts
    assert b.oldest_age_s(now=110.0) == 10.0 and b.rows == 6
    b.stored(10)
    assert b.oldest_age_s(now=110.0) == 7.0 and b.rows == 5
    b.stored(15)
    assert b.oldest_age_s(now=110.0) == 0.0 and b.rows == 0


def test_a_re_read_keeps_the_first_read_time() -> None:
    b = OutboxBacklog()
    b.read(10, at=100.0)
    b.read(10, at=105.0)  # a new term reads the same rows again
    b.read(8, at=106.0)
    assert b.oldest_age_s(now=110.0) == 10.0
    b.read(12, at=107.0)  # only ids 11..12 are new
    b.stored(10)
    assert b.oldest_age_s(now=110.0) == 3.0


def test_the_head_counts_rows_not_fetched_yet() -> None:
    b = OutboxBacklog()
    b.read(100, at=1.0)
    b.saw_head(1_000)  # backpressure: the reader has not fetched 101..1000
    b.stored(40)
    assert b.rows == 960
    b.saw_head(500)  # an older look never lowers it
    assert b.rows == 960


def test_the_watermark_never_moves_back_and_may_pass_the_head() -> None:
    b = OutboxBacklog()
    b.read(5, at=1.0)
    b.stored(20)  # another instance published further (a new term loads its watermark)
    b.stored(3)
    assert b.watermark == 20 and b.rows == 0 and b.oldest_age_s(now=9.0) == 0.0
    b.read(25, at=8.0)
    assert b.rows == 5 and b.oldest_age_s(now=9.0) == 1.0
