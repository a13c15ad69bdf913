"""The worker: wires reader → router → publisher → ledger → checkpointer, and owns their lifecycle.

Shutdown order is fixed (invariant 7): stop reading → drain in-flight publishes within the grace period →
store the final checkpoint → close Ably, the health server and MongoDB. A fatal error takes the same path
(minus waiting for drains that cannot succeed) and the process exits 1 with one log line naming the cause.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any

from bson import Timestamp, json_util

from connector.ably.client import AblyRestClient
from connector.ably.ledger import InFlightLedger
from connector.ably.outbound import OutboundMessage
from connector.ably.publisher import Publisher
from connector.config import Settings
from connector.errors import AblyError, ConnectorError, FatalError, StreamError
from connector.health import HealthServer
from connector.metrics import build_registry
from connector.sources.mongodb.checkpoint import Checkpointer, StoredPosition, TokenStore
from connector.sources.mongodb.client import Mongo
from connector.sources.mongodb.deadletter import UnpublishableHandler
from connector.sources.mongodb.messages import encode_driver_event, to_message
from connector.sources.mongodb.pipeline import pipeline_hash, sets_channel
from connector.sources.mongodb.reader import Reader
from connector.sources.mongodb.stream import StartPosition, StreamOptions

log = logging.getLogger(__name__)

# Longest wait between publish rounds while Ably fails. Short, so delivery resumes within about two seconds
# of an outage ending; the client already backs off inside each round (429s grow to 10 s there).
PUBLISH_RETRY_BACKOFF_MAX_S = 2.0
# How long a stopping reader may take to notice: one awaitData poll (stream.MAX_AWAIT_TIME_MS) plus margin.
READER_STOP_GRACE_S = 2.0
# Waiting for MongoDB at start-up (a sidecar often starts before the replica set is ready).
STARTUP_RETRY_MAX_S = 30.0

EXIT_OK = 0
EXIT_FATAL = 1


def mongo_from(settings: Settings) -> Mongo:
    return Mongo(settings.mongodb_uri, settings.mongodb_database, driver=settings.mongo_driver)


def ably_from(settings: Settings) -> AblyRestClient:
    return AblyRestClient(
        api_key=settings.ably_api_key.get_secret_value(),
        rest_url=settings.ably_rest_url,
        fallback_hosts=settings.ably_fallback_hosts,
        request_timeout=settings.ably_request_timeout_s,
    )


class Worker:
    """One connector instance. `run()` returns the process exit status."""

    def __init__(
        self,
        settings: Settings,
        *,
        mongo: Mongo | None = None,
        ably: AblyRestClient | None = None,
    ) -> None:
        self.settings = settings
        self.stop_event = asyncio.Event()
        self._stop_reason = ""
        self._owns_mongo = mongo is None
        self.mongo = mongo or mongo_from(settings)
        self.ably = ably or ably_from(settings)
        # Events arrive decoded with the MongoDB client's CODEC_OPTIONS: the walk-free encoder applies.
        self._encoder = encode_driver_event if settings.json_mode == "relaxed" else None
        self.stages = settings.pipeline_stages()
        self.pipeline_hash = pipeline_hash(self.stages)
        self.namespace = settings.watch_label
        self.ledger = InFlightLedger(settings.max_in_flight)
        self.token_store = TokenStore(
            self.mongo.collection(settings.resume_token_collection, majority=True), settings.connector_id
        )
        self.unpublishable = UnpublishableHandler(
            settings.on_unpublishable,
            self.mongo.collection(settings.deadletter_collection, majority=True),
            ttl_days=settings.deadletter_ttl_days,
        )
        self.checkpointer = Checkpointer(
            self.token_store,
            self.ledger,
            namespace=self.namespace,
            pipeline_hash=self.pipeline_hash,
            interval=settings.checkpoint_interval_ms / 1000,
            idle_interval=settings.idle_checkpoint_interval_s,
        )
        self.publisher = Publisher(
            self.ably,
            self.ledger,
            on_rejected=self._on_rejected,
            max_batch_messages=settings.publish_batch_size,
            linger_ms=settings.publish_linger_ms,
            concurrency=settings.publish_concurrency,
            retry_backoff_max=PUBLISH_RETRY_BACKOFF_MAX_S,
        )
        self.reader = Reader(
            self.mongo,
            StreamOptions(
                collection=settings.mongodb_collection,
                pipeline=settings.stream_pipeline(),
                full_document=settings.full_document,
                full_document_before_change=settings.full_document_before_change,
                batch_size=settings.stream_batch_size,
            ),
            ledger=self.ledger,
            checkpointer=self.checkpointer,
            publisher=self.publisher,
            route=self._route,
            unpublishable=self.unpublishable,
            on_history_lost=settings.on_history_lost,
        )
        self.health: HealthServer | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- wiring ------------------------------------------------------------------------------------

    def _route(self, seq: int, event: Mapping[str, Any]) -> OutboundMessage:
        return to_message(
            seq,
            event,
            json_mode=self.settings.json_mode,
            max_message_size=self.settings.max_message_size,
            encoder=self._encoder,
        )

    async def _on_rejected(self, msg: OutboundMessage, error: AblyError) -> None:
        """Ably refused a message for good: apply ON_UNPUBLISHABLE to the original event."""
        event = json_util.loads(msg.message.get("data", "{}"))
        if not isinstance(event, dict):
            event = {"_id": msg.token}
        event.setdefault("_id", msg.token)
        await self.unpublishable.handle(event, f"rejected by Ably: {error}", error.ably_code or error.code)

    def request_stop(self, reason: str = "signal") -> None:
        """Called from a signal handler: only records the request and sets the event."""
        if not self._stop_reason:
            self._stop_reason = reason
        self.stop_event.set()

    # -- lifecycle ---------------------------------------------------------------------------------

    async def run(self) -> int:
        try:
            start = await self._prepare()
        except ConnectorError as exc:
            log.critical("%s", exc, extra={"code": exc.code})
            await self._close()
            return EXIT_FATAL
        if start is None:  # stopped while waiting for MongoDB
            await self._close()
            return EXIT_OK
        fatal: BaseException | None = None
        try:
            fatal = await self._serve(start)
        finally:
            # Events read before a fatal error still get their chance to publish, unless Ably is the
            # problem (then draining would only wait out the grace period).
            await self._shutdown(drain=not isinstance(fatal, AblyError))
        if fatal is not None:
            code = getattr(fatal, "code", 72000)
            log.critical("stopping: %s", fatal, extra={"code": code})
            return EXIT_FATAL
        log.info("stopped cleanly (%s)", self._stop_reason or "requested")
        return EXIT_OK

    async def _prepare(self) -> StartPosition | None:
        """Serve health, then read the stored position, waiting for MongoDB as long as it takes."""
        settings = self.settings
        if not sets_channel(list(self.stages)):
            log.warning(
                "no pipeline stage sets _ablyChannel: every event will be unpublishable",
                extra={"code": 72004},
            )
        if settings.http_port:
            self.health = HealthServer(settings.http_port, self.readiness, build_registry(self.snapshot))
            try:
                await self.health.start()
            except OSError as exc:
                raise FatalError(
                    f"cannot serve health checks on HTTP_PORT {settings.http_port}: {exc}"
                ) from exc
        attempt = 0
        while True:
            try:
                stored = await self.token_store.load()
                break
            except StreamError as exc:  # unreachable; a corrupt token is a different, fatal error
                attempt += 1
                delay = min(STARTUP_RETRY_MAX_S, 0.5 * 2**attempt)
                log.error("cannot reach MongoDB, retrying in %.0fs: %s", delay, exc, extra={"code": 72003})
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop_event.wait(), delay)
                if self.stop_event.is_set():
                    return None
        await self.unpublishable.ensure_indexes()
        return self._start_position(stored, settings.start_at)

    def _start_position(self, stored: StoredPosition | None, start_at: Any) -> StartPosition:
        if stored is not None:
            if stored.namespace and stored.namespace != self.namespace:
                raise FatalError(
                    f"stored resume token {self.settings.connector_id!r} belongs to namespace "
                    f"{stored.namespace!r}, not {self.namespace!r}; set CONNECTOR_ID or run "
                    "`livesync-connector token reset --yes`",
                    code=72006,
                )
            if stored.pipeline_hash and stored.pipeline_hash != self.pipeline_hash:
                log.warning("the pipeline changed since the token was stored; resuming anyway")
            self.reader.stored_cluster_time = stored.cluster_time
            log.info("resuming from stored token %s", stored.token.get("_data"))
            return StartPosition(token=stored.token, start_after=stored.invalidated)
        if start_at != "now":
            log.info("no stored token; starting at operation time %s", start_at)
            return StartPosition(operation_time=start_at)
        log.info("no stored token; starting from now")
        return StartPosition()

    async def _serve(self, start: StartPosition) -> BaseException | None:
        """Run until a stop request or a fatal error; returns the fatal error, if any."""
        reader = self._spawn(self.reader.run(start, self.stop_event), "reader")
        publisher = self._spawn(self.publisher.run(), "publisher")
        checkpointer = self._spawn(self.checkpointer.run(self.stop_event), "checkpointer")
        stopper = self._spawn(self.stop_event.wait(), "stop")
        done, _ = await asyncio.wait(
            {reader, publisher, checkpointer, stopper}, return_when=asyncio.FIRST_COMPLETED
        )
        for task in done:
            if task is stopper or task.cancelled():
                continue
            exc = task.exception()
            if exc is not None:
                return exc
            if task is not checkpointer and not self.stop_event.is_set():
                return FatalError(f"{task.get_name()} stopped unexpectedly")
        return None

    async def _shutdown(self, drain: bool) -> None:
        self.stop_event.set()
        # 1. stop reading: the reader sees the stop event after its current poll (bounded by the
        # awaitData wait); cancelling it mid-getMore would leave the driver a half-used socket.
        await self._cancel("reader", grace=READER_STOP_GRACE_S)
        # 2. drain in-flight publishes within the grace period
        grace = self.settings.shutdown_grace_s
        if drain and not self.ledger.is_idle():
            log.info("draining %d in-flight events (grace %.0fs)", self.ledger.pending, grace)
            if not await self.publisher.drain(grace):
                log.warning(
                    "grace period over with %d events in flight; they will be resent", self.ledger.pending
                )
        await self._cancel("publisher")
        await self._cancel("checkpointer")
        await self._cancel("stop")
        # 3. final checkpoint (the position covers only completed events)
        with contextlib.suppress(ConnectorError):
            await self.checkpointer.checkpoint()
        # 4. close resources
        await self._close()

    async def _close(self) -> None:
        with contextlib.suppress(Exception):
            await self.publisher.aclose()
        with contextlib.suppress(Exception):
            await self.ably.aclose()
        if self.health is not None:
            await self.health.aclose()
        if self._owns_mongo:
            await self.mongo.close()

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _cancel(self, name: str, grace: float = 0.0) -> None:
        """Stop an owned task: let it finish within `grace` seconds, then cancel it."""
        for task in [t for t in self._tasks if t.get_name() == name]:
            if grace > 0:
                await asyncio.wait({task}, timeout=grace)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # -- observability -------------------------------------------------------------------------------

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        problems: list[str] = []
        if not self.reader.stats.stream_open:
            problems.append("change stream not open")
        ably_ok = self._ably_answering()
        if not ably_ok:
            problems.append("Ably not answering")
        if not self.checkpointer.healthy:
            problems.append(f"checkpoint writes failing: {self.checkpointer.last_error}")
        return not problems, {"problems": problems, "in_flight": self.ledger.pending}

    def _ably_answering(self) -> bool:
        return self.ably.answering

    def snapshot(self) -> dict[str, Any]:
        r = self.reader.stats
        p = self.publisher.stats
        ready, _ = self.readiness()
        stored = self.checkpointer.last_stored_cluster_time
        return {
            "events_read": r.events_read,
            "messages_published": p.published,
            "unpublishable_events": r.unpublishable + p.rejected,
            "events_deadlettered": self.unpublishable.deadlettered,
            "events_skipped": self.unpublishable.skipped,
            "publish_requests": p.requests,
            "publish_retries": p.retries,
            "stream_reopens": r.reopens,
            "checkpoints_stored": self.checkpointer.stores,
            "in_flight_events": self.ledger.pending,
            "in_flight_capacity": self.ledger.capacity,
            "stream_open": int(r.stream_open),
            "ready": int(ready),
            "lag_seconds": (
                r.last_event_read_at - r.last_event_cluster_time.time
                if isinstance(r.last_event_cluster_time, Timestamp) and r.last_event_read_at
                else None
            ),
            "checkpoint_cluster_time_seconds": stored.time if stored else None,
        }
