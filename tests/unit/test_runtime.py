"""The runtime, once for every source: standby, takeover, self-fence, the shutdown order of invariant 7,
fatal and retryable errors, and counters summed over terms, against a fake source and an in-memory lease
store. Each source keeps its own integration and fault suites (tests/integration, tests/postgres, tests/e2e).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

import pytest

from connector import runtime as runtime_module
from connector.ably.client import AblyRestClient
from connector.ably.outbound import OutboundMessage
from connector.config import Settings, load_settings
from connector.errors import AblyError, DatabaseUnavailable, FatalError, StreamError
from connector.leadership import Leadership
from connector.runtime import Runtime
from connector.sources.protocol import Counter, TermContext
from tests.delivery import until
from tests.unit.ably_fakes import API_KEY, FakeAbly, make_message
from tests.unit.lease_fakes import Clock, MemoryLeaseStore

PRIMARY = "https://rest.example.test"
TTL = 2.0


class RecordingLeaseStore(MemoryLeaseStore):
    def __init__(self, clock: Clock, events: list[str]) -> None:
        super().__init__(clock)
        self.events = events

    async def release(self, owner: str, epoch: int) -> None:
        await super().release(owner, epoch)
        self.events.append(f"lease released {epoch}")

    async def close(self) -> None:
        await super().close()
        self.events.append("lease store closed")


class FakeSource:
    """`Source`: each term reads `events` messages on channel `ch`, then waits for its stop."""

    database = "FakeDB"
    lease_id = "fake#0of2"

    def __init__(self, clock: Clock, *, events: int = 5) -> None:
        self.log: list[str] = []
        self.lease_store = RecordingLeaseStore(clock, self.log)
        self.events = events
        self.terms: list[FakeTerm] = []
        self.open_failures = 0  # term opens that fail with StreamError first
        self.reader_error: Callable[[], BaseException] | None = None
        self.committed_at = time.time()  # the changes' commit time (unix seconds)

    async def open(self, stop: asyncio.Event) -> bool:
        self.log.append("source opened")
        return True

    def term(self, ctx: TermContext) -> FakeTerm:
        return FakeTerm(self, ctx)

    def values(self) -> Mapping[str, Any]:
        return {"fake_terms": len(self.terms)}

    async def close(self) -> None:
        self.log.append("source closed")


class FakeTerm:
    def __init__(self, source: FakeSource, ctx: TermContext) -> None:
        self.source = source
        self.ctx = ctx
        self.overflow = None
        self.read = 0
        self.opened = False

    async def open(self) -> None:
        if self.source.open_failures:
            self.source.open_failures -= 1
            raise StreamError("FakeDB: connection refused")
        self.opened = True
        self.source.terms.append(self)
        self.source.log.append(f"term opened at epoch {self.ctx.fence.epoch}")

    def tasks(self, stop: asyncio.Event) -> dict[str, Coroutine[Any, Any, None]]:
        return {"reader": self._read(stop), "writer": self._write(stop)}

    async def _read(self, stop: asyncio.Event) -> None:
        base = 1000 * len(self.source.terms)
        for i in range(self.source.events):
            msg = make_message(base + i, "ch")
            msg.committed_at = self.source.committed_at
            self.ctx.ledger.add(msg.seq, msg.token)
            self.ctx.publisher.submit(msg)
            self.read += 1
        error, self.source.reader_error = self.source.reader_error, None  # once
        if error is not None:
            raise error()
        await stop.wait()
        self.source.log.append(f"reader stopped with {self.ctx.ledger.pending} in flight")

    async def _write(self, stop: asyncio.Event) -> None:
        await stop.wait()  # a real writer stores positions until here

    async def store_position(self) -> None:
        pending = self.ctx.ledger.pending
        self.source.log.append(f"position stored: {self.ctx.ledger.checkpoint()} with {pending} in flight")

    async def on_rejected(self, msg: OutboundMessage, error: AblyError) -> None:
        self.source.log.append(f"rejected {msg.seq}")

    def counters(self) -> Mapping[str, Counter]:
        return {"events_read": self.read, "unpublishable_events": 0, "by_reason": {"x": self.read}}

    def gauges(self) -> Mapping[str, Any]:
        return {"stream_open": int(self.opened)}

    def problems(self) -> list[str]:
        return [] if self.opened else ["not reading"]

    def details(self) -> dict[str, Any]:
        return {"fake": True}

    async def close(self) -> None:
        self.source.log.append("term closed")


@pytest.fixture
def settings() -> Settings:
    env = {
        "MONGODB_DATABASE": "db",
        "PIPELINE": "[]",
        "ABLY_API_KEY": API_KEY,
        "ABLY_REST_URL": PRIMARY,
        "HTTP_PORT": "0",
        "LEASE_TTL_S": str(TTL),
        "CHANNEL_RATE_LIMIT": "0",
        "INSTANCE_ID": "me",
        "SHUTDOWN_GRACE_S": "5",
    }
    return load_settings(env, env_file=None)


class Rig:
    def __init__(self, settings: Settings, clock: Clock) -> None:
        self.clock = clock
        self.fake = FakeAbly()
        self.source = FakeSource(clock)
        self.ably = AblyRestClient(api_key=API_KEY, rest_url=PRIMARY, transport=self.fake.transport)
        self.runtime = Runtime(settings, self.source, ably=self.ably)
        # The leadership loop on the fake clock (the runtime's own uses the monotonic clock).
        self.runtime.leadership = Leadership(
            self.source.lease_store, owner="me", ttl_s=TTL, clock=clock, rng=random.Random(1)
        )
        self.ably.before_publish = self.runtime.leadership.ensure_may_publish
        self.task: asyncio.Task[int] | None = None

    def start(self) -> Rig:
        self.task = asyncio.create_task(self.runtime.run())
        return self

    def delivered(self) -> list[str]:
        return self.fake.delivered["ch"]

    async def stop(self) -> int:
        assert self.task is not None
        self.runtime.request_stop("test")
        return await asyncio.wait_for(self.task, 10)


@pytest.fixture
def rig(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Rig:
    monkeypatch.setattr(runtime_module, "RETRY_BACKOFF_INITIAL_S", 0.01)
    return Rig(settings, Clock())


def leading(rig: Rig, terms: int = 1) -> bool:
    return rig.runtime.leadership.is_leader and len(rig.source.terms) >= terms


async def test_stands_by_while_another_instance_holds_the_lease_then_takes_over(rig: Rig) -> None:
    rig.source.lease_store.owner, rig.source.lease_store.epoch = "other", 7
    rig.source.lease_store.expires = rig.clock.now + 100
    rig.start()
    await until(lambda: rig.runtime.leadership.polled, what="the first poll")
    await asyncio.sleep(0.3)
    ready, details = rig.runtime.readiness()
    assert ready and details["role"] == "standby"
    assert rig.source.terms == [] and rig.fake.requests == [], "a standby reads and publishes nothing"
    rig.clock.now += 101  # the other holder's lease expired (server clock)
    await until(lambda: leading(rig), what="the takeover")
    await until(lambda: len(rig.delivered()) == 5, what="the first term's messages")
    ready, details = rig.runtime.readiness()
    assert ready and details["role"] == "leader" and details["epoch"] == 8 and details["fake"] is True
    assert rig.source.log[1] == "term opened at epoch 8"
    assert await rig.stop() == 0


async def test_a_clean_stop_follows_invariant_7(rig: Rig) -> None:
    rig.fake.gate = asyncio.Event()  # publishes wait: the stop lands with every event in flight
    rig.start()
    await until(lambda: leading(rig) and rig.fake.started.is_set(), what="a publish in flight")
    rig.runtime.request_stop("test")
    await asyncio.sleep(0.2)
    rig.fake.gate.set()
    assert rig.task is not None
    assert await asyncio.wait_for(rig.task, 10) == 0
    assert rig.source.log == [
        "source opened",
        "term opened at epoch 1",
        "reader stopped with 5 in flight",  # 1. stop reading
        "position stored: {'_data': 1004} with 0 in flight",  # 2. drained, 3. the final position
        "term closed",
        "lease released 1",  # 4. the lease handed over at once
        "lease store closed",
        "source closed",
    ]
    assert len(rig.delivered()) == 5


async def test_a_deposed_leader_drops_its_term_without_storing_and_stands_by(rig: Rig) -> None:
    rig.fake.gate = asyncio.Event()
    rig.start()
    await until(lambda: leading(rig) and rig.fake.started.is_set(), what="a publish in flight")
    store = rig.source.lease_store
    store.owner, store.epoch, store.expires = "usurper", store.epoch + 1, rig.clock.now + 100
    await until(lambda: not rig.runtime.leadership.is_leader, what="the step down", timeout=5)
    await until(lambda: "term closed" in rig.source.log, what="the dropped term")
    stored = [line for line in rig.source.log if line.startswith("position stored")]
    assert stored == [], "a deposed leader stores nothing"
    assert rig.runtime.readiness()[1]["role"] == "standby"
    rig.fake.gate.set()
    rig.clock.now += 101  # the usurper's lease expires: this instance leads again, in a fresh term
    await until(lambda: leading(rig, terms=2), what="the second term")
    assert rig.source.log.count("term opened at epoch 3") == 1
    assert await rig.stop() == 0


async def test_past_its_deadline_a_leader_that_cannot_renew_fences_itself(rig: Rig) -> None:
    rig.start()
    await until(lambda: len(rig.delivered()) == 5, what="the first messages")
    rig.source.lease_store.down = True
    requests = len(rig.fake.requests)
    rig.clock.now += TTL  # past the monotonic deadline with no renewal: may not publish any more
    with pytest.raises(Exception, match="lease not renewed in time"):
        rig.runtime.leadership.ensure_may_publish()
    await until(lambda: not rig.runtime.leadership.is_leader, what="the self-fence", timeout=5)
    assert len(rig.fake.requests) == requests, "nothing sent past the deadline"
    assert not any(line.startswith("position stored") for line in rig.source.log)
    problems = ["cannot reach FakeDB to poll the lease"]
    assert rig.runtime.readiness() == (
        False,
        {"role": "standby", "problems": problems, "instance": "me", "epoch": 1},
    )
    rig.source.lease_store.down = False
    assert await rig.stop() == 0


async def test_a_fatal_error_drains_stores_releases_and_exits_1(rig: Rig) -> None:
    rig.source.reader_error = lambda: FatalError("the stream cannot go on", code=72008)
    rig.start()
    assert rig.task is not None
    assert await asyncio.wait_for(rig.task, 10) == 1
    assert len(rig.delivered()) == 5, "events read before the error still publish"
    assert rig.source.log[-5:] == [
        "position stored: {'_data': 1004} with 0 in flight",
        "term closed",
        "lease released 1",
        "lease store closed",
        "source closed",
    ]


async def test_a_lost_database_ends_the_term_and_the_instance_competes_again(rig: Rig) -> None:
    rig.source.reader_error = lambda: DatabaseUnavailable("FakeDB restarted")
    rig.start()
    await until(lambda: leading(rig, terms=2), what="a second term")
    log = rig.source.log
    assert log[:4] == ["source opened", "term opened at epoch 1", "term closed", "lease released 1"]
    assert log[4] == "term opened at epoch 2", "it competed again and won a new epoch"
    assert await rig.stop() == 0


async def test_a_term_that_cannot_open_is_retried_while_the_lease_holds(rig: Rig) -> None:
    rig.source.open_failures = 2
    rig.start()
    await until(lambda: leading(rig), what="the term open after two failures")
    assert rig.runtime.leadership.epoch == 1, "the same lease: the retries did not step down"
    assert await rig.stop() == 0


async def test_counters_are_summed_over_terms_and_exist_before_the_first(rig: Rig) -> None:
    before = rig.runtime.snapshot()
    assert (before["events_read"], before["messages_published"], before["by_reason"]) == (0, 0, {})
    assert before["leader"] == 0 and before["stream_open"] == 0
    rig.start()
    await until(lambda: len(rig.delivered()) == 5, what="the first term")
    store = rig.source.lease_store
    store.owner, store.epoch, store.expires = "usurper", store.epoch + 1, rig.clock.now + 100
    await until(lambda: not rig.runtime.leadership.is_leader, what="the step down", timeout=5)
    rig.clock.now += 101
    await until(lambda: leading(rig, terms=2) and len(rig.delivered()) == 10, what="the second term")
    snapshot = rig.runtime.snapshot()
    assert snapshot["events_read"] == 10 and snapshot["messages_published"] == 10
    assert snapshot["by_reason"] == {"x": 10}
    assert snapshot["leader_changes"] == 2 and snapshot["fake_terms"] == 2
    assert await rig.stop() == 0


async def test_lag_rises_while_changes_wait_and_is_zero_when_none_does(rig: Rig) -> None:
    rig.source.committed_at = time.time() - 5  # committed 5 s before they were read
    rig.fake.gate = asyncio.Event()  # Ably holds every publish: the changes wait
    assert rig.runtime.snapshot()["lag_seconds"] == 0, "nothing read: no lag"
    rig.start()
    await until(lambda: leading(rig) and rig.fake.started.is_set(), what="changes waiting")
    first = rig.runtime.snapshot()["lag_seconds"]
    await asyncio.sleep(0.3)
    second = rig.runtime.snapshot()["lag_seconds"]
    assert 5 <= first < second, "a stalled stream's lag rises"
    rig.fake.gate.set()
    await until(lambda: len(rig.delivered()) == 5, what="the acknowledgements")
    assert rig.runtime.snapshot()["lag_seconds"] == 0, "an idle stream raises no alarm"
    latency = rig.runtime.snapshot()["publish_latency_seconds"]
    assert latency["buckets"][-1] == ("+Inf", 5.0) and latency["sum"] >= 25
    assert await rig.stop() == 0


def test_the_info_metric_names_the_lease_id_so_each_partition_counts_its_own_leader(rig: Rig) -> None:
    # CONNECTOR_ID is the same for every partition; alerts sum leaders by the info metric's connector_id.
    assert rig.runtime.labels() == {"instance_id": "me", "connector_id": "fake#0of2"}
