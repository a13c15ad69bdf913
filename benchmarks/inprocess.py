"""`python -m benchmarks.inprocess [--events N] [--ably fake|emulator] [--runs R]`: the connector's own cost.

The real `Worker` runs in this process against a MongoDB emulator subprocess holding a uniform backlog;
Ably is either faked (each request's body is built, then accepted at once: no HTTP, no Ably emulator on
the machine) or the Ably emulator. It prints, per run, the steady events/s (first to last message handed to
Ably) and this process's CPU seconds per 10k events over the same window: the connector's hot path with
less of the machine-sharing noise of `benchmarks.run`, where three processes share the cores.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any, cast

from bson.timestamp import Timestamp
from pymongo import MongoClient

from benchmarks import procs
from benchmarks.workloads import PIPELINE, WORKLOADS, start_at, write_backlog
from connector.ably.client import AblyRestClient, ably_from, encode_spec
from connector.ably.outbound import OutboundMessage
from connector.ably.publisher import BatchClient, Outcome
from connector.config import load_settings
from connector.runtime import Runtime
from connector.sources.mongodb.source import MongoSource

DB = "bench_inprocess"
#: No run may take longer than this; a stuck run fails loudly instead of hanging.
RUN_TIMEOUT_S = 600.0
_runs = itertools.count()


class Counted:
    """Wraps the publisher's client: counts messages handed to Ably and notes when the first and the
    last went, with this process's CPU time at both."""

    def __init__(self, inner: BatchClient | None, events: int, client: AblyRestClient) -> None:
        self._inner = inner
        self._client = client  # answers everything else the runtime asks of its Ably client
        self._events = events
        self.count = 0
        self.body_bytes = 0
        self.first: tuple[float, float] | None = None
        self.last: tuple[float, float] = (0.0, 0.0)
        self.done = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    async def publish_batch(self, messages: Sequence[OutboundMessage]) -> list[Outcome]:
        if self._inner is not None:
            outcomes = await self._inner.publish_batch(messages)
        else:
            body = b"[" + b",".join(encode_spec(m) for m in messages) + b"]"  # what the client would send
            self.body_bytes += len(body)
            await asyncio.sleep(0)
            outcomes = [None] * len(messages)
        now = (time.perf_counter(), time.process_time())
        self.first = self.first or now
        self.count += len(messages)
        if self.count >= self._events:
            self.last = now
            self.done.set()
        return outcomes


async def one_run(mongo: str, ably: str | None, start: Timestamp, events: int) -> tuple[float, float]:
    """(steady events/s, CPU seconds per 10k events) of one connector run over the backlog."""
    os.environ.update(
        MONGODB_URI=mongo,
        MONGODB_DATABASE=DB,
        MONGODB_COLLECTION="items",
        PIPELINE=json.dumps(PIPELINE),
        ABLY_API_KEY=procs.ABLY_KEY,
        ABLY_REST_URL=ably or "http://127.0.0.1:9",
        ABLY_FALLBACK_HOSTS="",
        START_AT=f"Timestamp({start.time}, {start.inc})",
        CONNECTOR_ID=f"inprocess-{os.getpid()}-{next(_runs)}",
        LOG_LEVEL="WARNING",
        HTTP_PORT="0",
        CHANNEL_RATE_LIMIT="0",  # no per-channel limit on the fake or the emulator in these runs
    )
    settings = load_settings()
    real = ably_from(settings)
    counted = Counted(real if ably else None, events, real)
    # The one seam: the client every term's publisher hands its batches to.
    worker = Runtime(settings, MongoSource(settings), ably=cast(AblyRestClient, counted))
    gc.collect()
    gc.freeze()  # as `connector run` does once its worker is built
    task = asyncio.create_task(worker.run())
    try:
        await asyncio.wait_for(counted.done.wait(), RUN_TIMEOUT_S)
    finally:
        worker.request_stop("benchmark done")
        await task
        gc.unfreeze()
    assert counted.first is not None
    wall = counted.last[0] - counted.first[0]
    cpu = counted.last[1] - counted.first[1]
    return events / wall, cpu / events * 10_000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.inprocess", description=__doc__)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--ably", choices=["fake", "emulator"], default="fake")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    with procs.mongo_emulator(args.events + 10_000) as mongo, procs.ably_emulator() as ably:
        client: MongoClient[dict[str, object]] = MongoClient(mongo.address)
        start = start_at(client)
        write_backlog(client, DB, WORKLOADS["uniform"], args.events)
        client.close()
        for run in range(1, args.runs + 1):
            address = ably.address if args.ably == "emulator" else None
            rate, cpu = asyncio.run(one_run(mongo.address, address, start, args.events))
            print(
                f"run {run}: Ably {args.ably}: {args.events:,} events, {rate:,.0f} events/s steady, "
                f"{cpu:.3f} CPU-s per 10k events ({cpu * 100:.1f} µs/event)",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
