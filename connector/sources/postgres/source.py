"""The Postgres outbox source: Ably's `outbox` and `nodes` tables, published in commit-safe order.

Process-wide: the table names, the lease (an advisory lock with its `nodes` heartbeat,
`lease_store.py`), and at start-up the wait for PostgreSQL and the schema check (fatal when Ably's tables
are wrong; the connector's own objects are created). Per term, everything starts from what the database
says (the watermark row), so nothing is carried over and nothing is lost across a failover: rows above
the watermark are simply read again (and their republished ids dropped by Ably). A PostgreSQL restart
ends the term (DatabaseUnavailable): the instance competes again and the next term resumes from the
watermark.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine, Mapping
from typing import Any, Final

from connector.ably.cipher import cipher_from
from connector.ably.outbound import OutboundMessage
from connector.ably.overflow import Overflow
from connector.config import Settings
from connector.errors import AblyError, ConnectorError, DatabaseUnavailable, SchemaError
from connector.sources.postgres.backlog import OutboxBacklog
from connector.sources.postgres.check import schema_problems
from connector.sources.postgres.db import Connection, close_quietly, connect
from connector.sources.postgres.deadletter import UnpublishableRows
from connector.sources.postgres.lease_store import PostgresLeaseStore
from connector.sources.postgres.listener import NotifyListener
from connector.sources.postgres.names import OutboxNames
from connector.sources.postgres.outbox import OutboxReader
from connector.sources.postgres.overflow_store import PostgresSpillStore
from connector.sources.postgres.schema import create_missing_tables, ensure_connector_objects
from connector.sources.postgres.store import OutboxStore, load_start
from connector.sources.protocol import Counter, TermContext

log = logging.getLogger(__name__)

#: Waiting for PostgreSQL at start-up.
STARTUP_BACKOFF_INITIAL_S: Final = 0.5
STARTUP_BACKOFF_MAX_S: Final = 10.0


class PostgresSource:
    """`connector.sources.protocol.Source` for an outbox table."""

    database = "PostgreSQL"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.lease_id = settings.connector_id
        self.names = OutboxNames.from_settings(settings.outbox_table, settings.nodes_table)
        self.lease_store = PostgresLeaseStore(
            settings.postgres_uri, self.names, connector_id=settings.connector_id, ttl_s=settings.lease_ttl_s
        )
        #: The longest wait behind a gap in any finished term (the current term's is added at scrape).
        self.max_gap_wait_s = 0.0
        #: CHANNEL_CIPHER_KEY(S): process-wide, so its count of encrypted messages spans terms.
        self.cipher = cipher_from(settings)
        #: When rows were first read, and the outbox's head: process-wide, so a new term's re-read of a
        #: waiting row does not make it look young again.
        self.backlog = OutboxBacklog()

    async def open(self, stop: asyncio.Event) -> bool:
        """Wait for PostgreSQL (as long as it takes), then check and complete the schema."""
        delay = STARTUP_BACKOFF_INITIAL_S
        while not stop.is_set():
            try:
                conn = await connect(self.settings.postgres_uri, purpose="setup")
            except DatabaseUnavailable as exc:
                log.error("cannot reach PostgreSQL, retrying in %.1fs: %s", delay, exc, extra={"code": 72003})
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                delay = min(STARTUP_BACKOFF_MAX_S, delay * 2)
                continue
            try:
                await create_missing_tables(
                    conn,
                    self.names,
                    outbox=self.settings.outbox_table_auto_create,
                    nodes=self.settings.nodes_table_auto_create,
                    say=lambda line: log.info("%s", line),
                )
                problems = await schema_problems(conn, self.names)
                if problems:
                    raise SchemaError("; ".join(problems))
                await ensure_connector_objects(conn, self.names, lambda line: log.debug("%s", line))
            finally:
                await close_quietly(conn)
            return True
        return False

    def term(self, ctx: TermContext) -> PostgresTerm:
        return PostgresTerm(self, ctx)

    def values(self) -> Mapping[str, Any]:
        return {"messages_encrypted": self.cipher.sealed if self.cipher else 0}

    async def close(self) -> None:
        """Nothing process-wide to close: each term closes its connections, the lease store its own."""


class PostgresTerm:
    """One term's connections, reader, position store and NOTIFY listener."""

    def __init__(self, source: PostgresSource, ctx: TermContext) -> None:
        self._source = source
        self._settings = source.settings
        self._names = source.names
        self._ctx = ctx
        self._read_conn: Connection | None = None
        self._store_conn: Connection | None = None
        self.wake = asyncio.Event()
        self.listener = NotifyListener(self._settings.postgres_uri, self.wake)
        self.reader: OutboxReader | None = None
        self.store: OutboxStore | None = None
        self.unpublishable: UnpublishableRows | None = None
        self.overflow: Overflow | None = None

    async def open(self) -> None:
        settings, ctx = self._settings, self._ctx
        self._read_conn = await connect(settings.postgres_uri, purpose="read")
        self._store_conn = await connect(settings.postgres_uri, purpose="store")
        start = await load_start(self._store_conn, self._names)
        self.unpublishable = UnpublishableRows(settings.on_unpublishable, self._store_conn, self._names)
        self.overflow = ctx.overflow(PostgresSpillStore(self._store_conn, self._names))
        self.reader = OutboxReader(
            self._read_conn,
            self._names,
            start=start,
            # where rows go
            ledger=ctx.ledger,
            publisher=ctx.publisher,
            overflow=self.overflow,
            # when to read
            wake=self.wake,
            poll_interval_s=settings.poll_interval_ms / 1000,
            gap_timeout_s=settings.gap_timeout_ms / 1000,
            batch_size=settings.outbox_batch_size,
            # what cannot be published as it is
            unpublishable=self.unpublishable,
            max_message_size=settings.max_message_size,
            on_oversize=settings.on_oversize,
            cipher=self._source.cipher,
            backlog=self._source.backlog,
        )
        self.store = OutboxStore(
            self._store_conn,
            self._names,
            ledger=ctx.ledger,
            reader=self.reader,
            epoch=ctx.fence.epoch,
            start=start,
            interval_s=settings.checkpoint_interval_ms / 1000,
        )
        log.info(
            "publishing %s from sequence_id %d (epoch %d)",
            self._names.outbox.text,
            start.watermark,
            ctx.fence.epoch,
        )

    def tasks(self, stop: asyncio.Event) -> dict[str, Coroutine[Any, Any, None]]:
        assert self.reader is not None and self.store is not None, "open() first"
        tasks = {"reader": self.reader.run(stop), "writer": self.store.run(stop)}
        if not self._settings.poll_fixed_rate:  # else only the poll interval wakes the reader
            tasks["listener"] = self.listener.run()
        return tasks

    async def store_position(self) -> None:
        if self.store is None:
            return
        try:
            await self.store.flush()
        except ConnectorError as exc:
            log.error("could not store the final outbox position: %s", exc, extra={"code": 72007})

    async def on_rejected(self, msg: OutboundMessage, error: AblyError) -> None:
        """Ably refused a row for good: apply ON_UNPUBLISHABLE to it."""
        assert self.unpublishable is not None
        await self.unpublishable.handle(
            msg.token["row"], f"rejected by Ably: {error}", error.ably_code or error.code, kind="rejected"
        )

    def counters(self) -> Mapping[str, Counter]:
        r = self.reader.stats if self.reader is not None else None
        u = self.unpublishable
        return {
            "events_read": r.rows_read if r else 0,
            "unpublishable_events": r.unpublishable if r else 0,
            "events_deadlettered": u.deadlettered if u else 0,
            "events_skipped": u.skipped if u else 0,
            "unpublishable_by_kind": dict(u.by_kind) if u else {},
            "checkpoints_stored": self.store.stats.flushes if self.store else 0,
            "late_rows": r.late_rows if r else 0,
            "messages_truncated": r.truncated if r else 0,
            "gaps_proven": r.gaps_proven if r else 0,
            "gaps_timed_out": r.gaps_timed_out if r else 0,
        }

    def gauges(self) -> Mapping[str, Any]:
        reading = self.reader is not None and self.reader.stats.reading
        wait = self.reader.stats.max_gap_wait_s if self.reader is not None else 0.0
        backlog = self._source.backlog
        return {
            "stream_open": int(reading),
            "max_gap_wait_seconds": max(self._source.max_gap_wait_s, wait),
            "outbox_oldest_row_age_seconds": backlog.oldest_age_s(time.time()),
            "outbox_backlog_rows": backlog.rows,
        }

    def problems(self) -> list[str]:
        problems = []
        if self.reader is None or not self.reader.stats.reading:
            problems.append("outbox reader not running")
        if self.store is not None and not self.store.stats.healthy:
            problems.append(f"position writes failing: {self.store.stats.last_error}")
        return problems

    def details(self) -> dict[str, Any]:
        if self.reader is None or self.store is None:
            return {}
        tracker = self.reader.tracker
        return {
            "held_back": self.reader.held,
            "watermark": self.store.watermark,
            "gaps_open": len(tracker.gaps),
            "gaps_watched_late": len(tracker.late),
            "oldest_gap_ms": round(tracker.oldest_wait_s(time.monotonic()) * 1000),
            "listening": self.listener.stats.listening,
        }

    async def close(self) -> None:
        if self.reader is not None:
            self._source.max_gap_wait_s = max(self._source.max_gap_wait_s, self.reader.stats.max_gap_wait_s)
        await close_quietly(self._read_conn)
        await close_quietly(self._store_conn)
        self._read_conn = self._store_conn = None
