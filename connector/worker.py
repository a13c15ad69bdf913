"""The worker: stands by for the lease, then wires reader → router → publisher → ledger → checkpointer for
as long as it leads, and owns their lifecycle.

Roles (invariant 8): a standby polls the lease and reads nothing. A leader runs one *term*: fresh
components, the position read after the lease was won, every position write fenced by the lease's epoch.
Losing the lease (deposed by a fenced write, or the monotonic deadline passed unrenewed) ends the term at
once: nothing drained, nothing stored, back to standby.

Shutdown order is fixed (invariant 7): stop reading → drain in-flight publishes within the grace period →
store the final checkpoint → release the lease → close Ably, the health server and MongoDB. A fatal error
takes the same path (minus waiting for drains that cannot succeed) and the process exits 1 with one log
line naming the cause.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from bson import Timestamp, json_util

from connector.ably.client import AblyRestClient
from connector.ably.ledger import InFlightLedger
from connector.ably.outbound import OutboundMessage
from connector.ably.overflow import Overflow
from connector.ably.publisher import build_publisher
from connector.check_report import ably_from
from connector.config import Settings
from connector.errors import AblyError, ConnectorError, FatalError, LeadershipLost, StreamError
from connector.health import HealthServer, serve_health
from connector.lease import Leadership
from connector.metrics import build_registry
from connector.sources.mongodb import decode
from connector.sources.mongodb.checkpoint import Checkpointer, Fence, StoredPosition, TokenStore
from connector.sources.mongodb.client import Mongo
from connector.sources.mongodb.deadletter import UnpublishableHandler
from connector.sources.mongodb.lease import MongoLeaseStore
from connector.sources.mongodb.messages import RouteStats, encode_driver_event, make_router
from connector.sources.mongodb.overflow_store import MongoSpillStore
from connector.sources.mongodb.pipeline import pipeline_hash, sets_channel
from connector.sources.mongodb.reader import Reader
from connector.sources.mongodb.stream import StartPosition, StreamOptions

log = logging.getLogger(__name__)

# How long a stopping reader may take to notice: one awaitData poll (stream.MAX_AWAIT_TIME_MS) plus margin.
READER_STOP_GRACE_S = 2.0
# How long the checkpointer and the lease renewal may take to finish a write in progress when stopping.
# Cancelling a driver operation mid-flight can leave a half-open socket behind; they see the stop
# between writes, so this only bounds a write stuck on an unreachable database.
WRITER_STOP_GRACE_S = 5.0
# How long a cancelled task may take to unwind (driver clean-up after a cancellation is bounded).
TASK_STOP_TIMEOUT_S = 10.0
# Waiting for MongoDB at start-up (a sidecar often starts before the replica set is ready).
STARTUP_RETRY_MAX_S = 30.0

#: Channels named in the per-channel backlog metric: the busiest few (bounded label cardinality).
TOP_BACKLOGS = 5

EXIT_OK = 0
EXIT_FATAL = 1

# Counters that restart with each term's components and are summed across terms for /metrics.
TERM_COUNTERS = (
    "events_read",
    "messages_published",
    "unpublishable_events",
    "publish_requests",
    "publish_retries",
    "stream_reopens",
    "checkpoints_stored",
    "events_reassembled",
    "messages_spilled",
    "messages_unspilled",
    "rate_limited_messages",
    "rate_limited_requests",
    "order_hazards",
)


def mongo_from(settings: Settings) -> Mongo:
    return Mongo(settings.mongodb_uri, settings.mongodb_database, driver=settings.mongo_driver)


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
        self.route_stats = RouteStats()
        self._route = make_router(
            json_mode=settings.json_mode,
            max_message_size=settings.max_message_size,
            encoder=encode_driver_event if settings.json_mode == "relaxed" else None,
            on_oversize=settings.on_oversize,
            stats=self.route_stats,
        )
        self.stages = settings.pipeline_stages()
        self.pipeline_hash = pipeline_hash(self.stages)
        self.namespace = settings.watch_label
        token_collection = self.mongo.collection(settings.resume_token_collection, majority=True)
        self.token_store = TokenStore(token_collection, settings.connector_id)
        self.leadership = Leadership(
            MongoLeaseStore(token_collection, settings.connector_id),
            owner=settings.instance_id,
            ttl_s=settings.lease_ttl_s,
        )
        # Checked before every publish attempt, retries included: a leader past its deadline sends nothing.
        self.ably.before_publish = self.leadership.ensure_may_publish
        self.unpublishable = UnpublishableHandler(
            settings.on_unpublishable,
            self.mongo.collection(settings.deadletter_collection, majority=True),
            ttl_days=settings.deadletter_ttl_days,
        )
        self.spill_store = MongoSpillStore(
            self.mongo.collection(settings.overflow_collection, majority=True), settings.connector_id
        )
        self.health: HealthServer | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._past_terms: dict[str, int] = dict.fromkeys(TERM_COUNTERS, 0)
        self._past_throttled_s = 0.0
        self._new_term()

    def _new_term(self) -> None:
        """Fresh pipeline components: a term starts from the stored position with nothing in flight."""
        settings = self.settings
        # Set when this term ends (a stop request, or the lease lost): its tasks finish what they are doing.
        self._term_stop = asyncio.Event()
        self.ledger = InFlightLedger(settings.max_in_flight)
        self.checkpointer = Checkpointer(
            self.token_store,
            self.ledger,
            namespace=self.namespace,
            pipeline_hash=self.pipeline_hash,
            interval=settings.checkpoint_interval_ms / 1000,
            idle_interval=settings.idle_checkpoint_interval_s,
        )
        self.publisher = build_publisher(settings, self.ably, self.ledger, self._on_rejected)
        self.overflow = Overflow(
            self.spill_store,
            self.publisher,
            max_backlog=settings.channel_max_backlog,
            before_write=self.leadership.ensure_may_publish,
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
            overflow=self.overflow,
        )

    def _end_term(self) -> None:
        """Keep the finished term's counters (metrics are cumulative), then start a fresh term."""
        for name, value in self._term_counters().items():
            self._past_terms[name] += value
        self._past_throttled_s += self.publisher.pacer.throttled_seconds()
        self._new_term()

    def _term_counters(self) -> dict[str, int]:
        r, p, r_fragments = self.reader.stats, self.publisher.stats, self.reader.fragments
        return {
            "events_read": r.events_read,
            "messages_published": p.published,
            "unpublishable_events": r.unpublishable + p.rejected,
            "publish_requests": p.requests,
            "publish_retries": p.retries,
            "stream_reopens": r.reopens,
            "checkpoints_stored": self.checkpointer.stores,
            "events_reassembled": r_fragments.reassembled,
            "messages_spilled": self.overflow.spilled,
            "messages_unspilled": self.overflow.drained,
            "rate_limited_messages": self.publisher.pacer.stats.rate_limited,
            "rate_limited_requests": p.rate_limited_requests,
            "order_hazards": p.order_hazards,
        }

    # -- wiring ------------------------------------------------------------------------------------

    async def _on_rejected(self, msg: OutboundMessage, error: AblyError) -> None:
        """Ably refused a message for good: apply ON_UNPUBLISHABLE to the original event."""
        event = json_util.loads(msg.message.get("data", "{}"))
        if not isinstance(event, dict):
            event = {"_id": msg.token}
        event.setdefault("_id", msg.token)
        await self.unpublishable.handle(
            event, f"rejected by Ably: {error}", error.ably_code or error.code, kind="rejected"
        )

    def request_stop(self, reason: str = "signal") -> None:
        """Called from a signal handler: only records the request and sets the event."""
        if not self._stop_reason:
            self._stop_reason = reason
        self.stop_event.set()
        self._term_stop.set()

    # -- lifecycle ---------------------------------------------------------------------------------

    async def run(self) -> int:
        try:
            await self._serve_health()
        except ConnectorError as exc:
            log.critical("%s", exc, extra={"code": exc.code})
            await self._close()
            return EXIT_FATAL
        fatal: BaseException | None = None
        try:
            while fatal is None and await self.leadership.acquire(self.stop_event):
                fatal = await self._lead()
                if self.stop_event.is_set():
                    break
        finally:
            await self._close()
        if fatal is not None:
            code = getattr(fatal, "code", 72000)
            log.critical("stopping: %s", fatal, extra={"code": code})
            return EXIT_FATAL
        log.info("stopped cleanly (%s)", self._stop_reason or "requested")
        return EXIT_OK

    async def _serve_health(self) -> None:
        if not sets_channel(list(self.stages)):
            log.warning(
                "no pipeline stage sets _ablyChannel: every event will be unpublishable",
                extra={"code": 72004},
            )
        registry = build_registry(self.snapshot, self.labels())
        self.health = await serve_health(self.settings.http_port, self.readiness, registry)

    async def _lead(self) -> BaseException | None:
        """One term as the leader. Returns a fatal error, or None after a clean stop or a lost lease."""
        self.token_store.fence = Fence(self.leadership.owner, self.leadership.epoch)
        try:
            start = await self._prepare()
        except LeadershipLost as exc:
            self._step_down(exc)
            return None
        except ConnectorError as exc:
            await self.leadership.release()
            return exc
        if start is None:  # stopped while waiting for MongoDB
            await self.leadership.release()
            return None
        fatal = await self._serve(start)
        if isinstance(fatal, LeadershipLost):
            await self._drop_term()
            self._step_down(fatal)
            return None
        # Events read before a fatal error still get their chance to publish, unless Ably is the problem
        # (then draining would only wait out the grace period).
        await self._shutdown(drain=not isinstance(fatal, AblyError))
        return fatal

    async def _prepare(self) -> StartPosition | None:
        """Read the stored position (after winning the lease: the last leader may have moved it)."""
        attempt = 0
        while True:
            try:
                stored = await self.token_store.load()
                await self.overflow.start()
                break
            except StreamError as exc:  # unreachable; a corrupt token is a different, fatal error
                attempt += 1
                delay = min(STARTUP_RETRY_MAX_S, 0.5 * 2**attempt)
                log.error("cannot reach MongoDB, retrying in %.0fs: %s", delay, exc, extra={"code": 72003})
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop_event.wait(), delay)
                if self.stop_event.is_set():
                    return None
                self.leadership.ensure_may_publish()  # the lease could not be renewed meanwhile
        await self.unpublishable.ensure_indexes()
        await self.spill_store.ensure_indexes()
        return self._start_position(stored, self.settings.start_at)

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
        """Run until a stop request, a fatal error or a lost lease; returns the error, if any."""
        if self.stop_event.is_set():
            return None
        reader = self._spawn(self.reader.run(start, self._term_stop), "reader")
        publisher = self._spawn(self.publisher.run(), "publisher")
        checkpointer = self._spawn(self.checkpointer.run(self._term_stop), "checkpointer")
        self._spawn(self.overflow.run(self._term_stop), "overflow")
        lease = self._spawn(self.leadership.hold(self._term_stop), "lease")
        stopper = self._spawn(self.stop_event.wait(), "stop")
        done, _ = await asyncio.wait(
            {reader, publisher, checkpointer, lease, stopper}, return_when=asyncio.FIRST_COMPLETED
        )
        for task in done:
            if task is stopper or task.cancelled():
                continue
            exc = task.exception()
            if exc is not None:
                return exc
            if task not in (checkpointer, lease) and not self.stop_event.is_set():
                return FatalError(f"{task.get_name()} stopped unexpectedly")
        return None

    async def _drop_term(self) -> None:
        """The lease is lost: stop publishing at once, store nothing; what was in flight is the next
        leader's. The reader and the writers end at their next step (the term's stop event)."""
        self._term_stop.set()
        with contextlib.suppress(Exception):
            await self.publisher.aclose()
        await self._cancel("publisher")
        await self._cancel("reader", grace=READER_STOP_GRACE_S)
        for name in ("checkpointer", "lease", "overflow"):
            await self._cancel(name, grace=WRITER_STOP_GRACE_S)
        await self._cancel("stop")
        dropped = self.ledger.pending
        if dropped:
            log.info("dropped %d in-flight events: the new leader resends them from its position", dropped)
        self._end_term()

    def _step_down(self, reason: LeadershipLost) -> None:
        self.token_store.fence = None
        self.leadership.step_down(str(reason))

    async def _shutdown(self, drain: bool) -> None:
        self.stop_event.set()
        self._term_stop.set()
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
        for name in ("checkpointer", "lease", "overflow"):
            await self._cancel(name, grace=WRITER_STOP_GRACE_S)
        await self._cancel("stop")
        with contextlib.suppress(ConnectorError):  # else they are sent again (same ids) by the next leader
            await asyncio.wait_for(self.overflow.delete_acknowledged(), WRITER_STOP_GRACE_S)
        # 3. final checkpoint (the position covers only completed events; fenced: a deposed leader's
        # write stores nothing)
        with contextlib.suppress(ConnectorError):
            await self.checkpointer.checkpoint()
        # 4. hand the lease over at once instead of letting it expire
        await self.leadership.release()

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
        """Stop an owned task: let it finish within `grace` seconds, then cancel it (bounded wait).

        `asyncio.wait`, not `await task` under suppress(CancelledError): that would also swallow a
        cancellation of this caller (a second signal forcing exit)."""
        for task in [t for t in self._tasks if t.get_name() == name]:
            if grace > 0:
                await asyncio.wait({task}, timeout=grace)
            task.cancel()
            _, stuck = await asyncio.wait({task}, timeout=TASK_STOP_TIMEOUT_S)
            if stuck:
                log.error("task %s did not stop when cancelled; leaving it", name)
            elif not task.cancelled():
                task.exception()  # retrieved: an error while stopping is expected, not reportable

    # -- observability -------------------------------------------------------------------------------

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Leader: stream open, Ably answering, checkpoints stored. Standby: the lease is reachable (a
        standby sidecar must not make its mongod pod unready)."""
        role = self.leadership.role
        problems: list[str] = []
        if role == "standby":
            if not self.leadership.store_reachable:
                problems.append("cannot reach MongoDB to poll the lease")
            return not problems, {"role": role, "problems": problems, "instance": self.leadership.owner}
        if not self.reader.stats.stream_open:
            problems.append("change stream not open")
        if not self._ably_answering():
            problems.append("Ably not answering")
        if not self.checkpointer.healthy:
            problems.append(f"checkpoint writes failing: {self.checkpointer.last_error}")
        return not problems, {
            "role": role,
            "problems": problems,
            "in_flight": self.ledger.pending,
            "instance": self.leadership.owner,
            "epoch": self.leadership.epoch,
        }

    def _ably_answering(self) -> bool:
        return self.ably.answering

    def labels(self) -> dict[str, str]:
        """Constant labels of the info metric: which instance of which connector this is."""
        return {"instance_id": self.settings.instance_id, "connector_id": self.settings.connector_id}

    def snapshot(self) -> dict[str, Any]:
        r = self.reader.stats
        ready, _ = self.readiness()
        stored = self.checkpointer.last_stored_cluster_time
        totals = self._term_counters()
        return {
            **{name: self._past_terms[name] + totals[name] for name in TERM_COUNTERS},
            "events_deadlettered": self.unpublishable.deadlettered,
            "events_skipped": self.unpublishable.skipped,
            "unpublishable_by_kind": dict(self.unpublishable.by_kind),
            "messages_truncated": self.route_stats.truncated,
            "throttled_channels": len(self.publisher.pacer.stats.throttled_now),
            "throttled_seconds": self._past_throttled_s + self.publisher.pacer.throttled_seconds(),
            "spilling_channels": len(self.overflow.spilling),
            "channel_backlog": dict(self.publisher.backlogs(TOP_BACKLOGS)),
            "lossy_decodes": decode.STATS.lossy_events,
            "undecodable_events": decode.STATS.undecodable_events,
            "in_flight_events": self.ledger.pending,
            "in_flight_capacity": self.ledger.capacity,
            "stream_open": int(r.stream_open),
            "ready": int(ready),
            "leader": int(self.leadership.is_leader),
            "lease_epoch": self.leadership.epoch,
            "leader_changes": self.leadership.changes,
            "lag_seconds": (
                r.last_event_read_at - r.last_event_cluster_time.time
                if isinstance(r.last_event_cluster_time, Timestamp) and r.last_event_read_at
                else None
            ),
            "checkpoint_cluster_time_seconds": stored.time if stored else None,
        }
