"""Running the Postgres worker in-process, writing outbox rows, and reading what Ably got."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import orjson
import psycopg
from psycopg.types.json import Jsonb

from connector.config import load_settings
from connector.sources.postgres.worker import PostgresWorker

WAIT_TIMEOUT_S = 30.0


class RunningWorker:
    def __init__(self, worker: PostgresWorker, task: asyncio.Task[int]) -> None:
        self.worker = worker
        self.task = task

    async def stop(self, timeout: float = 30.0) -> int:
        self.worker.request_stop("test")
        return await asyncio.wait_for(self.task, timeout)

    def leading(self) -> bool:
        term = self.worker.term
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
    worker = PostgresWorker(load_settings({**env, **overrides}, env_file=None))
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
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


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
    out = []
    for msg in ably.messages(channel=channel):
        msg = dict(msg)
        if msg.get("encoding") == "json":
            msg["payload"] = orjson.loads(msg["data"])
        out.append(msg)
    return out


async def wait_delivered(
    ably: Any, count: int, *, channel: str | None = None, timeout: float = WAIT_TIMEOUT_S
) -> list[dict[str, Any]]:
    await until(
        lambda: len(ably.messages(channel=channel)) >= count, timeout=timeout, what=f"{count} messages"
    )
    return delivered(ably, channel)


def outbox_ids(conn: psycopg.Connection[Any]) -> list[tuple[int, bool]]:
    """(sequence_id, processed) of every row left in the outbox."""
    return [
        (int(r[0]), bool(r[1])) for r in conn.execute("SELECT sequence_id, processed FROM outbox ORDER BY 1")
    ]
