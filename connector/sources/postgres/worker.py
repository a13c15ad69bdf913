"""The Postgres outbox worker: membership and leadership, one term at a time, health and metrics.

    run() ─ health server ─ wait for PostgreSQL ─ check the tables (fatal if wrong) ─ ensure own objects
      ├─ membership loop: heartbeat in `nodes`, try the lock while standby, notice a lost lease
      └─ while not stopping: wait to become leader → Term(...).run() → step down (unless stopping)
    shutdown: the term drains and stores its position; leave `nodes`, unlock; exit 0

A DatabaseUnavailable ends a term (and leadership); the instance reconnects and competes again, and the
new term resumes from the watermark, so a PostgreSQL restart costs republishing (deduplicated by Ably),
never a row. SchemaError, FatalError and AblyAuthError end the process with exit status 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, Final

from connector.ably.client import AblyRestClient
from connector.check_report import ably_from
from connector.config import Settings
from connector.errors import (
    AblyAuthError,
    ConnectorError,
    DatabaseUnavailable,
    FatalError,
    LeadershipLost,
    SchemaError,
)
from connector.health import HealthServer, serve_health
from connector.metrics import build_registry
from connector.sources.postgres.check import schema_problems
from connector.sources.postgres.db import close_quietly, connect
from connector.sources.postgres.leader import Leadership
from connector.sources.postgres.names import OutboxNames
from connector.sources.postgres.schema import ensure_connector_objects
from connector.sources.postgres.term import Term

log = logging.getLogger(__name__)

EXIT_OK: Final = 0
EXIT_FATAL: Final = 1
#: Waiting for PostgreSQL at start-up, and between terms after a database error.
RETRY_BACKOFF_INITIAL_S: Final = 0.5
RETRY_BACKOFF_MAX_S: Final = 10.0
#: Counters summed over terms for the metrics (each term starts its own).
_COUNTERS: Final = (
    "events_read",
    "messages_published",
    "unpublishable_events",
    "events_deadlettered",
    "events_skipped",
    "publish_requests",
    "publish_retries",
    "checkpoints_stored",
    "late_rows",
    "messages_truncated",
    "messages_spilled",
    "messages_unspilled",
    "rate_limited_messages",
    "rate_limited_requests",
    "gaps_proven",
    "gaps_timed_out",
)


class PostgresWorker:
    """One connector instance on an outbox. `run()` returns the process exit status."""

    def __init__(self, settings: Settings, *, ably: AblyRestClient | None = None) -> None:
        self.settings = settings
        self.names = OutboxNames.from_settings(settings.outbox_table, settings.nodes_table)
        self.ably = ably or ably_from(settings)
        self.stop_event = asyncio.Event()
        self._stop_reason = ""
        self.leadership = Leadership(
            settings.postgres_uri,
            self.names,
            instance_id=settings.instance_id,
            connector_id=settings.connector_id,
            ttl_s=settings.lease_ttl_s,
        )
        self._became_leader = asyncio.Event()
        self._lost = asyncio.Event()
        self.term: Term | None = None
        self._totals = dict.fromkeys(_COUNTERS, 0)
        self._by_kind: dict[str, int] = {}  # dead-lettered or skipped rows of finished terms, by reason
        self._max_gap_wait_s = 0.0
        self.health: HealthServer | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    def request_stop(self, reason: str = "signal") -> None:
        """Called from a signal handler: only records the request and sets the event."""
        if not self._stop_reason:
            self._stop_reason = reason
        self.stop_event.set()

    # -- lifecycle ---------------------------------------------------------------------------------

    async def run(self) -> int:
        fatal: BaseException | None = None
        try:
            self.health = await serve_health(
                self.settings.http_port, self.readiness, build_registry(self.snapshot)
            )
            if await self._prepare():
                fatal = await self._serve()
        except ConnectorError as exc:
            fatal = exc
        finally:
            await self._shutdown()
        if fatal is not None:
            log.critical("stopping: %s", fatal, extra={"code": getattr(fatal, "code", 72000)})
            return EXIT_FATAL
        log.info("stopped cleanly (%s)", self._stop_reason or "requested")
        return EXIT_OK

    async def _prepare(self) -> bool:
        """Wait for PostgreSQL (as long as it takes), then check and complete the schema; False if stopped."""
        delay = RETRY_BACKOFF_INITIAL_S
        while not self.stop_event.is_set():
            try:
                conn = await connect(self.settings.postgres_uri, purpose="setup")
            except DatabaseUnavailable as exc:
                log.error("cannot reach PostgreSQL, retrying in %.1fs: %s", delay, exc, extra={"code": 72003})
                await self._sleep(delay)
                delay = min(RETRY_BACKOFF_MAX_S, delay * 2)
                continue
            try:
                problems = await schema_problems(conn, self.names)
                if problems:
                    raise SchemaError("; ".join(problems))
                await ensure_connector_objects(conn, self.names, lambda line: log.debug("%s", line))
            finally:
                await close_quietly(conn)
            return True
        return False

    async def _serve(self) -> BaseException | None:
        membership = self._spawn(self._membership(), "membership")
        delay = RETRY_BACKOFF_INITIAL_S
        while not self.stop_event.is_set():
            await self._wait_any(self._became_leader.wait(), self.stop_event.wait(), membership)
            if membership.done():
                return membership.exception() or FatalError("membership stopped unexpectedly")
            if self.stop_event.is_set():
                break
            self._became_leader.clear()
            self._lost.clear()
            error = await self._lead()
            if error is None:
                break
            if _fatal(error):
                return error
            log.error("leadership term ended: %s", error, extra={"code": getattr(error, "code", 72000)})
            await self.leadership.step_down(str(error))
            if not isinstance(error, LeadershipLost):
                await self._sleep(delay)  # a database error: back off before competing again
                delay = min(RETRY_BACKOFF_MAX_S, delay * 2)
            else:
                delay = RETRY_BACKOFF_INITIAL_S
        return None

    async def _lead(self) -> BaseException | None:
        term = Term(self.settings, self.names, self.ably, epoch=self.leadership.stats.epoch)
        self.term = term
        try:
            await term.open()
        except ConnectorError as exc:
            await term.close()
            self._retire(term)
            return exc
        error = await term.run(self.stop_event, self._lost)
        self._retire(term)
        return error

    async def _membership(self) -> None:
        """Heartbeat every interval; tell the leading loop when leadership is won or lost."""
        leadership = self.leadership
        while not self.stop_event.is_set():
            was_leader = leadership.is_leader
            try:
                await asyncio.wait_for(leadership.beat(), leadership.ttl_s / 2)
            except (DatabaseUnavailable, TimeoutError) as exc:
                log.error("heartbeat failed: %s", exc or "timed out", extra={"code": 72003})
                await leadership.disconnect()
            if was_leader and not leadership.lease_valid():
                self._lost.set()
            if not was_leader and leadership.is_leader:
                self._became_leader.set()
            await leadership.wait(self.stop_event)

    async def _shutdown(self) -> None:
        self.stop_event.set()
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.leadership.leave()
        with contextlib.suppress(Exception):
            await self.ably.aclose()
        if self.health is not None:
            await self.health.aclose()

    def _retire(self, term: Term) -> None:
        """Add a finished term's counters to the totals."""
        current = self._term_counters(term)
        for key in _COUNTERS:
            self._totals[key] += current[key]
        for kind, count in (term.unpublishable.by_kind if term.unpublishable else {}).items():
            self._by_kind[kind] = self._by_kind.get(kind, 0) + count
        if term.reader is not None:
            self._max_gap_wait_s = max(self._max_gap_wait_s, term.reader.stats.max_gap_wait_s)
        self.term = None

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop_event.wait(), seconds)

    async def _wait_any(self, *aws: Any) -> None:
        futures = [asyncio.ensure_future(a) for a in aws]
        try:
            await asyncio.wait(futures, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for future in futures:
                if future not in self._tasks:
                    future.cancel()

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- observability -------------------------------------------------------------------------------

    @property
    def role(self) -> str:
        return "leader" if self.leadership.is_leader else "standby"

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        problems: list[str] = []
        if not self.leadership.stats.connected:
            problems.append(f"PostgreSQL not reachable: {self.leadership.stats.last_error}")
        details: dict[str, Any] = {"role": self.role, "epoch": self.leadership.stats.epoch}
        term = self.term
        if (
            self.leadership.is_leader
            and term is not None
            and term.reader is not None
            and term.store is not None
        ):
            if not term.reader.stats.reading:
                problems.append("outbox reader not running")
            if not self.ably.answering:
                problems.append("Ably not answering")
            if not term.store.stats.healthy:
                problems.append(f"position writes failing: {term.store.stats.last_error}")
            tracker = term.reader.tracker
            details.update(
                in_flight=term.ledger.pending,
                held_back=term.reader.held,
                watermark=term.store.watermark,
                gaps_open=len(tracker.gaps),
                gaps_watched_late=len(tracker.late),
                oldest_gap_ms=round(tracker.oldest_wait_s(time.monotonic()) * 1000),
                listening=term.listener.stats.listening,
            )
        return not problems, {"problems": problems, **details}

    @staticmethod
    def _term_counters(term: Term) -> dict[str, int]:
        r = term.reader.stats if term.reader is not None else None
        p = term.publisher.stats
        u = term.unpublishable
        return {
            "events_read": r.rows_read if r else 0,
            "messages_published": p.published,
            "unpublishable_events": (r.unpublishable if r else 0) + p.rejected,
            "events_deadlettered": u.deadlettered if u else 0,
            "events_skipped": u.skipped if u else 0,
            "publish_requests": p.requests,
            "publish_retries": p.retries,
            "checkpoints_stored": term.store.stats.flushes if term.store else 0,
            "late_rows": r.late_rows if r else 0,
            "messages_truncated": r.truncated if r else 0,
            "messages_spilled": term.overflow.spilled if term.overflow else 0,
            "messages_unspilled": term.overflow.drained if term.overflow else 0,
            "rate_limited_messages": term.publisher.pacer.stats.rate_limited,
            "rate_limited_requests": p.rate_limited_requests,
            "gaps_proven": r.gaps_proven if r else 0,
            "gaps_timed_out": r.gaps_timed_out if r else 0,
        }

    def snapshot(self) -> dict[str, Any]:
        term = self.term
        values: dict[str, Any] = dict(self._totals)
        if term is not None:
            for key, value in self._term_counters(term).items():
                values[key] += value
        by_kind = dict(self._by_kind)
        for kind, count in (term.unpublishable.by_kind if term and term.unpublishable else {}).items():
            by_kind[kind] = by_kind.get(kind, 0) + count
        values["unpublishable_by_kind"] = by_kind
        ready, _ = self.readiness()
        stats = self.leadership.stats
        reading = term is not None and term.reader is not None and term.reader.stats.reading
        values.update(
            throttled_channels=len(term.publisher.pacer.stats.throttled_now) if term else 0,
            spilling_channels=len(term.overflow.spilling) if term and term.overflow else 0,
            channel_backlog=dict(term.publisher.backlogs(5)) if term else {},
            in_flight_events=term.ledger.pending if term else 0,
            in_flight_capacity=self.settings.max_in_flight,
            stream_open=int(reading),
            ready=int(ready),
            leader=int(self.leadership.is_leader),
            lease_epoch=stats.epoch,
            leader_changes=stats.leader_changes,
            max_gap_wait_seconds=max(
                self._max_gap_wait_s, term.reader.stats.max_gap_wait_s if term and term.reader else 0.0
            ),
        )
        return values


def _fatal(error: BaseException) -> bool:
    """Errors a new term cannot fix."""
    if isinstance(error, LeadershipLost | DatabaseUnavailable):
        return False
    return isinstance(error, SchemaError | FatalError | AblyAuthError) or not isinstance(
        error, ConnectorError
    )
