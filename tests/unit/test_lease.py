"""One publisher per CONNECTOR_ID (invariant 8): acquisition, renewal, expiry, epochs, fencing and the
leader's monotonic deadline, with a fake clock and an in-memory store that models the database's clock."""

from __future__ import annotations

import asyncio
import random
from datetime import datetime
from typing import Any

import httpx
import pytest
from mongomock_motor import AsyncMongoMockClient

from connector.ably.client import AblyRestClient
from connector.ably.outbound import OutboundMessage
from connector.errors import LeadershipLost
from connector.leadership import Leadership
from connector.sources.mongodb.checkpoint import TokenStore
from connector.sources.protocol import Fence
from tests.unit.lease_fakes import Clock, MemoryLeaseStore

TTL = 10.0


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(clock: Clock) -> MemoryLeaseStore:
    return MemoryLeaseStore(clock)


def member(store: MemoryLeaseStore, clock: Clock, name: str) -> Leadership:
    return Leadership(store, owner=name, ttl_s=TTL, clock=clock, rng=random.Random(1))


async def test_first_instance_acquires_epoch_1_and_a_second_stands_by(
    store: MemoryLeaseStore, clock: Clock
) -> None:
    a, b = member(store, clock, "a"), member(store, clock, "b")
    assert await a.try_acquire()
    assert (a.role, a.epoch, a.changes) == ("leader", 1, 1)
    assert a.may_publish()
    assert not await b.try_acquire()
    assert b.role == "standby" and not b.may_publish()


async def test_renewal_moves_the_deadline_and_a_missed_deadline_stops_publishing(
    store: MemoryLeaseStore, clock: Clock
) -> None:
    a = member(store, clock, "a")
    await a.try_acquire()
    clock.now += TTL - a.margin_s - 0.01
    a.ensure_may_publish()  # still inside the deadline
    await a.renew()
    clock.now += TTL - a.margin_s - 0.01
    a.ensure_may_publish()  # the renewal moved it
    clock.now += 0.02
    assert not a.may_publish()
    with pytest.raises(LeadershipLost, match="not renewed in time"):
        a.ensure_may_publish()


async def test_takeover_after_expiry_increments_the_epoch_and_the_old_leader_had_already_stopped(
    store: MemoryLeaseStore, clock: Clock
) -> None:
    a, b = member(store, clock, "a"), member(store, clock, "b")
    await a.try_acquire()
    # `a` is paused (SIGSTOP): nothing renews. The monotonic clock keeps running meanwhile.
    while not await b.try_acquire():
        assert a.may_publish() or clock() >= store.expires - a.margin_s
        clock.now += 0.25
    assert b.epoch == 2
    # The safety property: by the time anyone else could take over, `a` had stopped trusting its lease.
    assert not a.may_publish()
    with pytest.raises(LeadershipLost, match="another instance holds it"):
        await a.renew()


async def test_release_lets_a_standby_take_over_at_once(store: MemoryLeaseStore, clock: Clock) -> None:
    a, b = member(store, clock, "a"), member(store, clock, "b")
    await a.try_acquire()
    await a.release()
    assert a.role == "standby" and not a.may_publish()
    assert await b.try_acquire()
    assert b.epoch == 2


async def test_a_restarted_instance_with_the_same_id_reclaims_its_lease_with_a_new_epoch(
    store: MemoryLeaseStore, clock: Clock
) -> None:
    old = member(store, clock, "pod-0-1")
    await old.try_acquire()
    new = member(store, clock, "pod-0-1")  # same INSTANCE_ID: the old process is gone
    assert await new.try_acquire()
    assert new.epoch == 2


async def test_unreachable_store_keeps_leading_until_the_deadline_then_loses_the_lease(
    store: MemoryLeaseStore, clock: Clock
) -> None:
    a = member(store, clock, "a")
    await a.try_acquire()
    store.down = True
    clock.now += TTL / 3
    await a.renew()  # a failed renewal inside the deadline is not yet a loss
    assert a.is_leader and a.may_publish() and not a.store_reachable
    clock.now += TTL
    with pytest.raises(LeadershipLost, match="could not renew"):
        await a.renew()


async def test_acquire_waits_as_standby_until_the_lease_is_free_or_stop(
    store: MemoryLeaseStore, clock: Clock
) -> None:
    a, b = member(store, clock, "a"), member(store, clock, "b")
    await a.try_acquire()
    stop = asyncio.Event()
    waiting = asyncio.create_task(b.acquire(stop))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    await a.release()
    assert await asyncio.wait_for(waiting, 5) is True
    assert b.is_leader
    stop.set()
    c = member(store, clock, "c")
    assert await asyncio.wait_for(c.acquire(stop), 5) is False


async def test_hold_raises_when_deposed(store: MemoryLeaseStore, clock: Clock) -> None:
    a = Leadership(store, owner="a", ttl_s=0.3, clock=clock, rng=random.Random(1))
    await a.try_acquire()
    store.owner, store.epoch = "b", 2  # another instance took over
    with pytest.raises(LeadershipLost):
        await asyncio.wait_for(a.hold(asyncio.Event()), 5)


def test_standby_polls_at_least_twice_a_second_and_renewal_three_times_per_ttl(
    store: MemoryLeaseStore, clock: Clock
) -> None:
    a = member(store, clock, "a")
    assert a.standby_poll_s == 0.5
    assert a.renew_interval_s == pytest.approx(TTL / 3)
    short = Leadership(store, owner="s", ttl_s=2.0, clock=clock)
    assert short.standby_poll_s == 0.5
    assert Leadership(store, owner="t", ttl_s=1.2, clock=clock).standby_poll_s == pytest.approx(0.4)
    assert short.margin_s == 0.5


# -- fencing of the position write (TokenStore with a fence) ----------------------------------------------


@pytest.fixture
def tokens() -> Any:
    return AsyncMongoMockClient()["app"]["ably"]


async def test_fenced_checkpoint_write_is_rejected_after_a_takeover(tokens: Any) -> None:
    await tokens.insert_one({"_id": "app.orders", "lease": {"owner": "a", "epoch": 1}})
    store = TokenStore(tokens, "app.orders")
    store.fence = Fence("a", 1)
    await store.store({"_data": "82AA"}, cluster_time=None, namespace="app.orders", pipeline_hash="h")
    await tokens.update_one({"_id": "app.orders"}, {"$set": {"lease": {"owner": "b", "epoch": 2}}})
    with pytest.raises(LeadershipLost, match="matched nothing"):
        await store.store({"_data": "82BB"}, cluster_time=None, namespace="app.orders", pipeline_hash="h")
    doc = await tokens.find_one({"_id": "app.orders"})
    assert doc["resumeToken"] == {"_data": "82AA"}  # the deposed leader stored nothing


async def test_token_reset_keeps_the_lease(tokens: Any) -> None:
    lease = {"owner": "a", "epoch": 3, "expiresAt": datetime(2030, 1, 1)}
    await tokens.insert_one({"_id": "app.orders", "lease": lease, "resumeToken": {"_data": "82AA"}})
    store = TokenStore(tokens, "app.orders")
    assert await store.delete() is True
    assert await store.load() is None
    assert (await tokens.find_one({"_id": "app.orders"}))["lease"] == lease
    assert await store.delete() is False


# -- the publish gate --------------------------------------------------------------------------------------


async def test_no_publish_attempt_reaches_ably_once_the_deadline_has_passed(
    store: MemoryLeaseStore, clock: Clock
) -> None:
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(201, json=[{"channel": "c", "messageId": "x"}])

    lead = member(store, clock, "a")
    await lead.try_acquire()
    client = AblyRestClient(
        api_key="app.key:secret",
        rest_url="http://ably.test",
        fallback_hosts=[],
        transport=httpx.MockTransport(handler),
    )
    client.before_publish = lead.ensure_may_publish
    msg = OutboundMessage(seq=0, channel="c", message={"id": "m0", "name": "n"}, size=10, token={})
    assert await client.publish_batch([msg]) == [None]
    clock.now += TTL  # paused past the deadline
    with pytest.raises(LeadershipLost):
        await client.publish_batch([msg])
    assert len(requests) == 1
    await client.aclose()
