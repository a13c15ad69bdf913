"""Collection scans are linear and leave other clients answered (issue 8, item 4.2).

mongomock's cursor made every read of n documents cost O(n²): a count at 100k documents stalled the
whole emulator for over a minute, so every change stream on it stopped getting answers. These tests load
the documents straight into the emulator's storage (fast, no wire round trips), then query through a
real driver. Nothing here is a wall-clock bound (the suite runs on loaded machines): linearity is judged
on the emulator thread's own CPU time, and "answered meanwhile" by counting replies during the scan.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from emulators.mongodb import run_in_thread
from emulators.mongodb.engine import Engine
from tests.emulators.mongodb.test_cli import emulator_process

pytestmark = pytest.mark.integration

SMALL, LARGE = 10_000, 100_000
#: Filters that match every document but must be evaluated per document (no count fast path).
MATCH_ALL = {"a": {"$gte": 0}}
#: Per-document scan CPU time at LARGE may be at most this multiple of that at SMALL (quadratic: ~10x).
MAX_GROWTH = 3.0
AWAIT_MS = 10
LOAD_BATCH = 10_000
TIMING_RUNS = 3


def _load(engine: Engine, db: str, start: int, stop: int) -> None:
    for i in range(start, stop):
        engine.storage.insert(db, "c", {"_id": i, "a": i % 7, "pad": "x" * 100})


@pytest.fixture
def emulator(emulator_only: None) -> Iterator[Any]:
    with run_in_thread(port=0, oplog_size=1000) as server:
        yield server


def _cpu_clock(emulator: Any) -> Callable[[], float]:
    """CPU seconds of the emulator's own thread: what a scan costs, whatever else the machine runs."""
    clock_id = time.pthread_getcpuclockid(emulator._thread.ident)
    return lambda: time.clock_gettime(clock_id)


async def _best_of(runs: int, clock: Callable[[], float], operation: Any) -> float:
    best = float("inf")
    for _ in range(runs):
        started = clock()
        await operation()
        best = min(best, clock() - started)
    return best


async def test_scan_time_per_document_does_not_grow_with_the_collection(emulator: Any) -> None:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(emulator.uri)
    coll = client["scan"]["c"]
    clock = _cpu_clock(emulator)
    per_doc: dict[int, dict[str, float]] = {}
    try:
        loaded = 0
        for size in (SMALL, LARGE):
            emulator.call(_load, emulator.server.engine, "scan", loaded, size)
            loaded = size
            assert await coll.count_documents({}) == size
            per_doc[size] = {
                "count": await _best_of(TIMING_RUNS, clock, lambda: coll.count_documents(MATCH_ALL)) / size,
                "find": await _best_of(TIMING_RUNS, clock, lambda: coll.find(MATCH_ALL).to_list()) / size,
            }
    finally:
        await client.close()
    for kind in ("count", "find"):
        growth = per_doc[LARGE][kind] / per_doc[SMALL][kind]
        assert growth <= MAX_GROWTH, f"{kind}: {per_doc}"


@pytest.mark.usefixtures("emulator_only")
async def test_change_stream_get_more_is_answered_while_another_client_counts() -> None:
    # The emulator in its own process: in this one, its thread and the clients would share one GIL, and
    # what got answered would say more about thread scheduling than about the emulator's event loop.
    async with emulator_process() as (_, uri):
        counter: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri)
        watcher: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri)
        try:
            coll = counter["scan"]["c"]
            for start in range(0, LARGE, LOAD_BATCH):
                await coll.insert_many(
                    [{"_id": i, "a": i % 7, "pad": "x" * 100} for i in range(start, start + LOAD_BATCH)]
                )
            stream = await watcher["scan"]["c"].watch(max_await_time_ms=AWAIT_MS)
            await stream.try_next()  # connection and cursor ready before the count starts
            answered_while_counting = 0
            counting = True

            async def poll() -> None:
                nonlocal answered_while_counting
                while counting:
                    await stream.try_next()
                    answered_while_counting += counting

            poller = asyncio.ensure_future(poll())
            try:
                n = await coll.count_documents(MATCH_ALL)
            finally:
                counting = False
                await poller
            await stream.close()
        finally:
            await counter.close()
            await watcher.close()
    assert n == LARGE
    # A scan that held the event loop would let at most the getMore already in flight through.
    assert answered_while_counting >= 2, "no getMore was answered while the count ran"
