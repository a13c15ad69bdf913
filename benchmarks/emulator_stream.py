"""Throughput of the MongoDB emulator (a script, not a test): insert rate and change-stream read rate.

    .venv/bin/python benchmarks/emulator_stream.py [--events 100000] [--uri mongodb://...]

Without ``--uri`` the emulator runs as a subprocess (``python -m emulators.mongodb --port 0``), so the
client and the server each have their own interpreter, as with a real ``mongod``. Prints one line per
measurement. Targets (brief M1): >= 20k events/s read with an empty pipeline, >= 5k/s with one `$set`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

from pymongo import AsyncMongoClient

DOC_PAYLOAD_BYTES = 1024
INSERT_BATCH = 1000
# A stage like the connector's routing pipelines: computes the channel from the document key.
SET_PIPELINE: list[dict[str, Any]] = [
    {"$set": {"_ablyChannel": {"$concat": ["items:", {"$toString": "$documentKey._id"}]}}}
]


@contextlib.contextmanager
def emulator_subprocess() -> Iterator[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "emulators.mongodb", "--port", "0", "--oplog-size", "2000000"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    try:
        assert proc.stdout is not None
        uri = proc.stdout.readline().strip()
        if not uri:
            raise RuntimeError("the emulator did not print its URI")
        yield uri
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


async def measure_inserts(client: AsyncMongoClient[dict[str, Any]], events: int) -> Any:
    coll = client.bench.items
    await coll.drop()
    start_time = (await client.admin.command("ping"))["operationTime"]
    payload = "x" * DOC_PAYLOAD_BYTES
    began = time.perf_counter()
    for first in range(0, events, INSERT_BATCH):
        batch = [{"_id": i, "payload": payload} for i in range(first, min(events, first + INSERT_BATCH))]
        await coll.insert_many(batch, ordered=True)
    elapsed = time.perf_counter() - began
    print(f"insert_many 1 KiB docs: {events} docs in {elapsed:.2f} s = {events / elapsed:,.0f} docs/s")
    return start_time


async def measure_reads(
    client: AsyncMongoClient[dict[str, Any]], start_time: Any, events: int, pipeline: list[Any], label: str
) -> float:
    coll = client.bench.items
    began = time.perf_counter()
    seen = 0
    async with await coll.watch(
        pipeline, start_at_operation_time=start_time, max_await_time_ms=200
    ) as stream:
        while seen < events:
            change = await stream.try_next()
            if change is None:
                continue
            if change["operationType"] == "insert":
                seen += 1
    elapsed = time.perf_counter() - began
    rate = seen / elapsed
    print(f"change stream read, {label}: {seen} events in {elapsed:.2f} s = {rate:,.0f} events/s")
    return rate


async def run(uri: str, events: int) -> None:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri, serverSelectionTimeoutMS=10_000)
    try:
        start_time = await measure_inserts(client, events)
        await measure_reads(client, start_time, events, [], "empty pipeline")
        await measure_reads(client, start_time, events, SET_PIPELINE, "one $set stage")
    finally:
        await client.close()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--uri", help="benchmark this server instead of starting the emulator")
    args = parser.parse_args()
    if args.uri:
        asyncio.run(run(args.uri, args.events))
        return 0
    with emulator_subprocess() as uri:
        asyncio.run(run(uri, args.events))
    return 0


if __name__ == "__main__":
    sys.exit(main())
