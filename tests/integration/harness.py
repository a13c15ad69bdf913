"""Running the real connector (the runtime with the MongoDB source) in-process against the emulators, and
reading what Ably got."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping

from connector.ably.overflow import Overflow
from connector.ably.publisher import Publisher
from connector.config import Settings, load_settings
from connector.runtime import Runtime
from connector.sources.mongodb.source import MongoSource, MongoTerm
from tests.delivery import delivered, until, wait_delivered

__all__ = ["RunningConnector", "connector", "delivered", "mongo_runtime", "until", "wait_delivered"]


def mongo_runtime(settings: Settings) -> Runtime:
    return Runtime(settings, MongoSource(settings))


def current_term(runtime: Runtime) -> MongoTerm | None:
    """The leading term's MongoDB parts (reader, checkpointer), once a term began."""
    term = runtime.term
    return term.source if term is not None and isinstance(term.source, MongoTerm) else None


def stream_open(runtime: Runtime) -> bool:
    term = current_term(runtime)
    return term is not None and term.reader.stats.stream_open


class RunningConnector:
    def __init__(self, runtime: Runtime, task: asyncio.Task[int]) -> None:
        self.runtime = runtime
        self.task = task

    @property
    def source(self) -> MongoSource:
        assert isinstance(self.runtime.source, MongoSource)
        return self.runtime.source

    @property
    def term(self) -> MongoTerm:
        term = current_term(self.runtime)
        assert term is not None, "no term yet"
        return term

    @property
    def publisher(self) -> Publisher:
        assert self.runtime.term is not None, "no term yet"
        return self.runtime.term.publisher

    @property
    def overflow(self) -> Overflow:
        assert self.term.overflow is not None
        return self.term.overflow

    async def stop(self, timeout: float = 30.0) -> int:
        self.runtime.request_stop("test")
        return await asyncio.wait_for(self.task, timeout)


@contextlib.asynccontextmanager
async def connector(env: Mapping[str, str], **overrides: str) -> AsyncIterator[RunningConnector]:
    """Start the connector, wait until its stream is open, and stop it (SIGTERM path) on exit."""
    runtime = mongo_runtime(load_settings({**env, **overrides}, env_file=None))
    task = asyncio.create_task(runtime.run())
    running = RunningConnector(runtime, task)
    try:
        await until(lambda: stream_open(runtime) or task.done(), what="the change stream to open")
        if task.done():
            yield running
            return
        yield running
    finally:
        if not task.done():
            await running.stop()
