"""Running the real connector (the Worker) in-process against the emulators, and reading what Ably got."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping

from connector.config import load_settings
from connector.worker import Worker
from tests.delivery import delivered, until, wait_delivered

__all__ = ["RunningConnector", "connector", "delivered", "until", "wait_delivered"]


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
