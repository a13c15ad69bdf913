"""How far behind the outbox is (`livesync_outbox_oldest_row_age_seconds`, `livesync_outbox_backlog_rows`):
while Ably refuses, the oldest waiting row ages and the backlog counts every row written, also those the
reader has not fetched (backpressure); once Ably answers, both fall to 0."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg

from tests.postgres.harness import insert_row, running, until, wait_delivered

IN_FLIGHT = 5


def outbox_gauges(snapshot: dict[str, Any]) -> tuple[float, int]:
    return snapshot["outbox_oldest_row_age_seconds"], snapshot["outbox_backlog_rows"]


async def test_the_oldest_row_ages_while_ably_refuses_and_both_gauges_fall_to_0_once_published(
    pg_env: dict[str, str], outbox: psycopg.Connection[Any], ably: Any
) -> None:
    async with running(pg_env, MAX_IN_FLIGHT=str(IN_FLIGHT)) as handle:
        worker = handle.worker
        insert_row(outbox, "warm:1", {"i": 0})
        await wait_delivered(ably, 1)
        await until(lambda: outbox_gauges(worker.snapshot()) == (0.0, 0), what="an idle outbox")

        ably.inject_fault(status=503, code=50003, duration_s=120)
        ids = [insert_row(outbox, f"c:{i % 3}", {"i": i}) for i in range(4 * IN_FLIGHT)]
        # The reader holds IN_FLIGHT rows and fetches no more; the store's look at MAX(sequence_id) still
        # counts the rest.
        await until(lambda: outbox_gauges(worker.snapshot())[1] == len(ids), what="the backlog")
        await until(lambda: outbox_gauges(worker.snapshot())[0] > 0.2, what="the oldest row to age")
        first_age = outbox_gauges(worker.snapshot())[0]
        await asyncio.sleep(0.05)
        age, rows = outbox_gauges(worker.snapshot())
        assert age > first_age and rows == len(ids)
        assert len(ably.messages()) == 1  # nothing got through meanwhile

        ably.clear_faults()
        await wait_delivered(ably, 1 + len(ids))
        await until(lambda: outbox_gauges(worker.snapshot()) == (0.0, 0), what="both gauges back to 0")
