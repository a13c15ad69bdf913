"""Invariant 11 on the outbox: a channel over Ably's per-channel limit (the emulator enforcing it) is
paced and spills its backlog to `<outbox>_overflow`; quiet channels flow; order and delivery hold, across
a stop with a spilled backlog too."""

from __future__ import annotations

import time
from typing import Any

import psycopg
import pytest

from tests.postgres.harness import running, until, wait_delivered

# Low enough that even a loaded machine exceeds it (see tests/integration/test_busy_channels.py).
RATE = 25
HOT = 400


def insert_many(conn: psycopg.Connection[Any], channel: str, count: int, first: int = 0) -> None:
    conn.execute(
        "INSERT INTO outbox (mutation_id, channel, name, rejected, data, headers) "
        "SELECT 'm' || i, %s, 'update', false, jsonb_build_object('seq', i), NULL "
        "FROM generate_series(%s::int, %s::int) i",
        [channel, first, first + count - 1],
    )


def seqs(messages: list[dict[str, Any]]) -> list[int]:
    return [int(m["payload"]["seq"]) for m in messages]


@pytest.fixture
def busy_env(pg_env: dict[str, str], ably: Any) -> dict[str, str]:
    ably.configure(channel_rate_limit=RATE)
    return {
        **pg_env,
        "CHANNEL_RATE_LIMIT": str(RATE),
        "CHANNEL_MAX_BACKLOG": "100",
        "MAX_IN_FLIGHT": "300",
        "SHUTDOWN_GRACE_S": "0.5",
    }


async def test_hot_outbox_channel_spills_while_quiet_channels_flow(
    busy_env: dict[str, str], outbox: psycopg.Connection[Any], ably: Any
) -> None:
    async with running(busy_env) as handle:
        insert_many(outbox, "hot", HOT)
        quiet_at = time.monotonic()
        for i in range(10):
            insert_many(outbox, f"quiet{i}", 1)
        await until(
            lambda: all(ably.messages(channel=f"quiet{i}") for i in range(10)), what="the quiet channels"
        )
        quiet_latency = time.monotonic() - quiet_at
        assert len(ably.messages(channel="hot")) < HOT
        term = handle.term
        assert term is not None and term.overflow is not None and term.overflow.spilled > 0
        got = await wait_delivered(ably, HOT, channel="hot", timeout=60)
        overflow = term.overflow
        await until(lambda: not overflow.spilling, what="the hot channel back in memory")
    print(f"\n[busy/postgres] quiet latency {quiet_latency:.2f}s, spilled {overflow.spilled}")
    assert quiet_latency < 5
    assert seqs(got) == list(range(HOT))
    assert ably.stats()["rate_limited_requests"] / HOT <= 0.1
    assert outbox.execute("SELECT count(*) FROM outbox_overflow").fetchone() == (0,)


async def test_spilled_rows_survive_a_stop_and_drain_first(
    busy_env: dict[str, str], outbox: psycopg.Connection[Any], ably: Any
) -> None:
    env = {**busy_env, "CHANNEL_MAX_BACKLOG": str(RATE)}
    first, more = 2 * RATE, 150
    async with running(env) as handle:
        # Twice a second's allowance: the channel is paced (throttled) with a backlog; the rows after it are
        # routed while it is, and spill.
        insert_many(outbox, "hot", first)
        term = handle.worker.term
        assert term is not None
        await until(lambda: "hot" in term.publisher.pacer.stats.throttled_now, what="the hot channel paced")
        insert_many(outbox, "hot", more, first=first)
        await until(
            lambda: (
                handle.term is not None
                and handle.term.overflow is not None
                and handle.term.overflow.spilled >= 100
            ),
            what="a spilled backlog",
        )
    left = outbox.execute("SELECT count(*) FROM outbox_overflow").fetchone()
    assert left is not None and left[0] > 0
    total = first + more
    async with running(env):
        outbox.execute(
            "INSERT INTO outbox (mutation_id, channel, name, rejected, data) "
            "VALUES ('new', 'hot', 'update', false, jsonb_build_object('seq', %s::int))",
            [total],
        )
        got = await wait_delivered(ably, total + 1, channel="hot", timeout=60)
    assert seqs(got) == list(range(total + 1))
    assert outbox.execute("SELECT count(*) FROM outbox_overflow").fetchone() == (0,)
