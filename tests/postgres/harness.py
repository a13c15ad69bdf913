"""Running the connector with the Postgres source in-process, writing outbox rows, and reading what Ably
got."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from connector.config import load_settings
from connector.runtime import Runtime
from connector.sources.postgres.lease_store import PostgresLeaseStore
from connector.sources.postgres.source import PostgresSource, PostgresTerm
from tests import delivery

WAIT_TIMEOUT_S = 30.0


class RunningWorker:
    def __init__(self, worker: Runtime, task: asyncio.Task[int]) -> None:
        self.worker = worker
        self.task = task

    @property
    def term(self) -> PostgresTerm | None:
        """The leading term's outbox parts (reader, store, listener, overflow), None between terms."""
        term = self.worker.term
        if term is None or term.retired or not isinstance(term.source, PostgresTerm):
            return None
        return term.source

    @property
    def lease_store(self) -> PostgresLeaseStore:
        assert isinstance(self.worker.source, PostgresSource)
        return self.worker.source.lease_store

    async def stop(self, timeout: float = 30.0) -> int:
        self.worker.request_stop("test")
        return await asyncio.wait_for(self.task, timeout)

    def leading(self) -> bool:
        term = self.term
        return bool(
            self.worker.leadership.is_leader
            and term is not None
            and term.reader is not None
            and term.reader.stats.reading
        )


@contextlib.asynccontextmanager
async def running(
    env: Mapping[str, str], *, lead: bool = True, **overrides: str
) -> AsyncIterator[RunningWorker]:
    """Start a worker; with `lead`, wait until it is the leader and reading; stop it (SIGTERM path) after."""
    settings = load_settings({**env, **overrides}, env_file=None)
    worker = Runtime(settings, PostgresSource(settings))
    task = asyncio.create_task(worker.run())
    handle = RunningWorker(worker, task)
    try:
        if lead:
            await until(lambda: handle.leading() or task.done(), what="the worker to lead and read")
            assert not task.done(), f"worker exited with {task.result()}"
        yield handle
    finally:
        if not task.done():
            await handle.stop()


async def until(
    predicate: Callable[[], Any], *, timeout: float = WAIT_TIMEOUT_S, what: str = "condition"
) -> None:
    await delivery.until(predicate, timeout=timeout, what=what)


def insert_row(
    conn: psycopg.Connection[Any],
    channel: str,
    data: Any = None,
    *,
    name: str = "update",
    mutation_id: str = "m",
    headers: Any = None,
    rejected: bool = False,
) -> int:
    """One outbox row as an application writes it; returns its sequence_id."""
    row = conn.execute(
        "INSERT INTO outbox (mutation_id, channel, name, rejected, data, headers) "
        "VALUES (%s, %s, %s, %s, %s, %s) RETURNING sequence_id",
        [
            mutation_id,
            channel,
            name,
            rejected,
            Jsonb(data) if data is not None else None,
            Jsonb(headers) if headers is not None else None,
        ],
    ).fetchone()
    assert row is not None
    return int(row[0])


def delivered(ably: Any, channel: str | None = None) -> list[dict[str, Any]]:
    """Messages the Ably emulator delivered, with `data` decoded into `payload`."""
    return delivery.delivered(ably, channel, decoded_as="payload")


async def wait_delivered(
    ably: Any, count: int, *, channel: str | None = None, timeout: float = WAIT_TIMEOUT_S
) -> list[dict[str, Any]]:
    return await delivery.wait_delivered(ably, count, channel=channel, timeout=timeout, decoded_as="payload")


def outbox_ids(conn: psycopg.Connection[Any]) -> list[tuple[int, bool]]:
    """(sequence_id, processed) of every row left in the outbox."""
    return [
        (int(r[0]), bool(r[1])) for r in conn.execute("SELECT sequence_id, processed FROM outbox ORDER BY 1")
    ]
