"""Invariant 11 end to end: a channel over Ably's per-channel rate limit is paced, spills its backlog to the
overflow collection, and holds back no other channel; order and delivery hold. MongoDB is the emulator or
MONGODB_TEST_URI; Ably the emulator with its per-channel limit on."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.integration.harness import connector, until, wait_delivered

pytestmark = pytest.mark.integration

# Messages/s per channel, on the emulator and in the connector: low enough that even a loaded machine
# exceeds it (while paced, a channel has one request in flight with one message, so its pace is also
# bounded by round trips; a limit above that would never be reached, and nothing would spill).
RATE = 25
HOT = 400  # 16 s of the hot channel's budget: more than the in-flight ledger holds


def busy_env(connector_env: dict[str, str], ably: Any, **settings: str) -> dict[str, str]:
    """Channels from each document's `ch`; the emulator and the connector at RATE per channel."""
    ably.configure(channel_rate_limit=RATE)
    return {
        **connector_env,
        "PIPELINE": '[{"$set": {"_ablyChannel": "$fullDocument.ch"}}]',
        "CHANNEL_RATE_LIMIT": str(RATE),
        **settings,
    }


async def test_a_hot_channel_is_paced_and_spills_while_quiet_channels_flow(
    connector_env: dict[str, str], db: Any, ably: Any
) -> None:
    env = busy_env(connector_env, ably, CHANNEL_MAX_BACKLOG="100", MAX_IN_FLIGHT="300")
    async with connector(env) as running:
        await db.orders.insert_many([{"_id": i, "ch": "hot", "seq": i} for i in range(HOT)])
        # The quiet changes come after the whole hot backlog in the stream.
        quiet_at = time.monotonic()
        await db.orders.insert_many([{"_id": f"q{i}", "ch": f"quiet{i}", "seq": i} for i in range(20)])
        await until(
            lambda: all(ably.messages(channel=f"quiet{i}") for i in range(20)),
            timeout=10,
            what="the quiet channels",
        )
        quiet_latency = time.monotonic() - quiet_at
        hot_before = len(ably.messages(channel="hot"))
        assert hot_before < HOT, "the quiet channels must not have waited for the hot backlog"
        overflow = running.overflow
        assert overflow.spilled > 0 and "hot" in overflow.spilling
        hot_started = time.monotonic()
        msgs = await wait_delivered(ably, HOT, channel="hot", timeout=60)
        hot_rate = (HOT - hot_before) / (time.monotonic() - hot_started)
        await until(lambda: not overflow.spilling, what="the hot channel back in memory")
        await until(lambda: running.publisher.pacer.stats.throttled_now == {}, what="unthrottled")
    stats = ably.stats()
    rejections_per_message = stats["rate_limited_requests"] / HOT
    print(
        f"\n[busy] quiet latency {quiet_latency:.2f}s, hot rate {hot_rate:.0f}/s (limit {RATE}), "
        f"rejected requests per message {rejections_per_message:.3f}, spilled {overflow.spilled}"
    )
    assert [m["event"]["fullDocument"]["seq"] for m in msgs] == list(range(HOT))
    assert stats["duplicates_dropped"] == 0
    assert rejections_per_message <= 0.1
    assert hot_rate <= RATE * 1.2
    assert await db.ably_overflow.count_documents({}) == 0
    # The stored position is past everything: nothing is replayed after a restart.
    async with connector(env):
        await db.orders.insert_one({"_id": "last", "ch": "quiet0", "seq": 99})
        await wait_delivered(ably, 2, channel="quiet0")
    assert len(ably.messages(channel="hot")) == HOT


async def test_spilled_backlog_survives_a_stop_and_is_drained_first_after_restart(
    connector_env: dict[str, str], db: Any, ably: Any
) -> None:
    env = busy_env(connector_env, ably, CHANNEL_MAX_BACKLOG="50", MAX_IN_FLIGHT="200", SHUTDOWN_GRACE_S="0.5")
    async with connector(env) as running:
        await db.orders.insert_many([{"_id": i, "ch": "hot", "seq": i} for i in range(500)])
        await until(lambda: running.overflow.spilled >= 200, what="a spilled backlog")
    left = await db.ably_overflow.count_documents({})
    assert left > 0, "stopped with a spilled backlog"
    async with connector(env):
        await db.orders.insert_one({"_id": "new", "ch": "hot", "seq": 500})
        msgs = await wait_delivered(ably, 501, channel="hot", timeout=60)
    assert [m["event"]["fullDocument"]["seq"] for m in msgs] == list(range(501))
    assert await db.ably_overflow.count_documents({}) == 0
