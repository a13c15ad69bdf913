"""Running the real connector (the Worker) in-process against the emulators, and reading what Ably got."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import orjson

from connector.config import load_settings
from connector.worker import Worker

WAIT_TIMEOUT_S = 20.0


class RunningConnector:
    def __init__(self, worker: Worker, task: asyncio.Task[int]) -> None:
        self.worker = worker
        self.task = task

    async def stop(self, timeout: float = 30.0) -> int:
        self.worker.request_stop("test")
        return await asyncio.wait_for(self.task, timeout)


@contextlib.asynccontextmanager
async def connector(env: Mapping[str, str], **overrides: str) -> AsyncIterator[RunningConnector]:
    """Start a Worker, wait until its stream is open, and stop it (SIGTERM path) on exit."""
    settings = load_settings({**env, **overrides}, env_file=None)
    worker = Worker(settings)
    task = asyncio.create_task(worker.run())
    running = RunningConnector(worker, task)
    try:
        await until(lambda: worker.reader.stats.stream_open or task.done(), what="the change stream to open")
        if task.done():
            yield running
            return
        yield running
    finally:
        if not task.done():
            await running.stop()


async def until(
    predicate: Callable[[], Any], *, timeout: float = WAIT_TIMEOUT_S, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


def delivered(ably: Any, channel: str | None = None) -> list[dict[str, Any]]:
    """Messages the Ably emulator delivered (duplicates by id already dropped), with `data` decoded."""
    out = []
    for msg in ably.messages(channel=channel):
        msg = dict(msg)
        if msg.get("encoding") == "json":
            msg["event"] = orjson.loads(msg["data"])
        out.append(msg)
    return out


async def wait_delivered(
    ably: Any, count: int, *, channel: str | None = None, timeout: float = WAIT_TIMEOUT_S
) -> list[dict[str, Any]]:
    await until(
        lambda: len(ably.messages(channel=channel)) >= count, timeout=timeout, what=f"{count} messages"
    )
    return delivered(ably, channel)
