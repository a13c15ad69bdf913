"""The outbox reader's wait between rounds never swallows a cancellation of its own task.

It waits for a notification or the stop event with two helper futures and cancels them afterwards. Awaiting
those cancelled helpers under suppress(CancelledError) also swallowed a cancellation of the reader itself
that arrived in that moment: the reader read on, and the term that cancelled it waited forever (a
connector that stopped publishing after a PostgreSQL restart).
"""

from __future__ import annotations

import asyncio
from typing import Any

from connector.ably.ledger import InFlightLedger
from connector.sources.postgres.names import OutboxNames
from connector.sources.postgres.outbox import OutboxReader, StartPoint

STEPS = 12  # loop iterations to try the cancellation at: before, during and after the clean-up


def _reader() -> OutboxReader:
    unused: Any = None  # the wait touches neither the connection, nor the publisher, nor dead letters
    return OutboxReader(
        unused,
        OutboxNames.from_settings("public.outbox", "public.nodes"),
        start=StartPoint(watermark=0, open_gaps=[]),
        ledger=InFlightLedger(10),
        publisher=unused,
        unpublishable=unused,
        wake=asyncio.Event(),
        max_message_size=65536,
        batch_size=100,
        poll_interval_s=1.0,
        gap_timeout_s=5.0,
    )


async def test_a_cancellation_at_any_step_of_the_wait_ends_the_task() -> None:
    for steps in range(STEPS):
        stop = asyncio.Event()
        stop.set()  # the wait ends at once, so its clean-up runs on the normal path
        task = asyncio.create_task(_reader()._wait(stop))
        for _ in range(steps):
            await asyncio.sleep(0)
        if task.done():
            continue
        task.cancel()
        await asyncio.wait({task}, timeout=5)
        assert task.cancelled(), f"cancelled after {steps} loop steps, the wait returned normally"
