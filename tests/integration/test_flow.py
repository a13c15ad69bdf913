"""The connector end to end in-process: MongoDB (emulator or MONGODB_TEST_URI) → Worker → Ably emulator."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from tests.integration.harness import connector, delivered, until, wait_delivered

pytestmark = pytest.mark.integration


async def test_every_operation_type_reaches_its_channel_in_order(
    connector_env: dict[str, str], db: Any, ably: Any
) -> None:
    async with connector(connector_env, FULL_DOCUMENT="updateLookup"):
        await db.orders.insert_one({"_id": "a", "status": "placed", "n": 1})
        await db.orders.update_one({"_id": "a"}, {"$set": {"status": "paid"}, "$unset": {"n": ""}})
        # updateLookup reads the document when the stream reaches the update (on mongod too): the
        # replace must not land before that, or the update's fullDocument is already the replaced one.
        await wait_delivered(ably, 2, channel="orders:a")
        await db.orders.replace_one({"_id": "a"}, {"status": "replaced"})
        await db.orders.delete_one({"_id": "a"})
        msgs = await wait_delivered(ably, 4, channel="orders:a")
    assert [m["name"] for m in msgs] == ["insert", "update", "replace", "delete"]
    insert, update, replace, delete = (m["event"] for m in msgs)
    assert insert["fullDocument"] == {"_id": "a", "status": "placed", "n": 1}
    assert update["updateDescription"]["updatedFields"] == {"status": "paid"}
    assert update["updateDescription"]["removedFields"] == ["n"]
    assert update["fullDocument"] == {"_id": "a", "status": "paid"}
    assert replace["fullDocument"] == {"_id": "a", "status": "replaced"}
    assert delete["documentKey"] == {"_id": "a"}
    # id = the resume token's _data, which sorts in stream order
    ids = [m["id"] for m in msgs]
    assert ids == [m["event"]["_id"]["_data"] for m in msgs]
    assert ids == sorted(ids)
    assert all(m["event"]["_ablyChannel"] == "orders:a" for m in msgs)


async def test_restart_resumes_from_the_stored_token_without_gap_or_duplicate(
    connector_env: dict[str, str], db: Any, ably: Any
) -> None:
    async with connector(connector_env) as running:
        await db.orders.insert_many([{"_id": f"d{i}", "i": i} for i in range(30)])
        await wait_delivered(ably, 30)
        assert await running.stop() == 0
    token_doc = await db.ably.find_one({"_id": connector_env["MONGODB_DATABASE"] + ".orders"})
    assert token_doc is not None and token_doc["resumeToken"]["_data"]
    # Written while the connector is down: must be delivered after the restart.
    await db.orders.insert_many([{"_id": f"d{i}", "i": i} for i in range(30, 60)])
    async with connector(connector_env):
        msgs = await wait_delivered(ably, 60)
        await asyncio.sleep(0.3)
    msgs = delivered(ably)
    assert sorted(m["event"]["documentKey"]["_id"] for m in msgs) == sorted(f"d{i}" for i in range(60))
    assert ably.stats()["duplicates_dropped"] == 0, "a clean stop must not replay acknowledged events"


async def test_database_wide_watch_excludes_own_collections(
    connector_env: dict[str, str], db: Any, ably: Any
) -> None:
    pipeline = '[{"$set": {"_ablyChannel": "$ns.coll"}}]'
    async with connector(
        connector_env, MONGODB_COLLECTION="", PIPELINE=pipeline, IDLE_CHECKPOINT_INTERVAL_S="0.2"
    ) as running:
        for name in ("alpha", "beta", "gamma"):
            await db[name].insert_one({"_id": 1})
        await wait_delivered(ably, 3)
        # Let several checkpoints (writes to the own `ably` collection) happen.
        await until(lambda: running.term.checkpointer.stores >= 3, what="3 checkpoints")
        await asyncio.sleep(0.3)
    channels = sorted(m["channel"] for m in delivered(ably))
    assert channels == ["alpha", "beta", "gamma"]


async def test_missing_channel_is_deadlettered_and_the_stream_moves_on(
    connector_env: dict[str, str], db: Any, ably: Any
) -> None:
    pipeline = (
        '[{"$set": {"_ablyChannel": '
        '{"$cond": [{"$eq": ["$fullDocument.route", true]}, "routed", "$$REMOVE"]}}}]'
    )
    async with connector(connector_env, PIPELINE=pipeline):
        await db.orders.insert_one({"_id": 1, "route": False})
        await db.orders.insert_one({"_id": 2, "route": True})
        msgs = await wait_delivered(ably, 1)
    assert [m["event"]["documentKey"]["_id"] for m in msgs] == [2]
    dead = await db.ably_deadletter.find_one({})
    assert dead["code"] == 72004
    assert dead["event"]["documentKey"] == {"_id": 1}
    assert "_ablyChannel" in dead["reason"]


async def test_oversize_change_is_published_truncated_in_order(
    connector_env: dict[str, str], db: Any, ably: Any
) -> None:
    async with connector(connector_env, MAX_MESSAGE_SIZE="2000") as running:
        await db.orders.insert_one({"_id": "before"})
        await db.orders.insert_one({"_id": "big", "blob": "x" * 5000})
        await db.orders.insert_one({"_id": "after"})
        await wait_delivered(ably, 3)
        assert running.source.route_stats.truncated == 1
    # Three channels publish concurrently: their arrival order is free, their ids keep stream order.
    messages = sorted(delivered(ably), key=lambda m: m["id"])
    assert [m["channel"] for m in messages] == ["orders:before", "orders:big", "orders:after"]
    big = messages[1]
    headers = big["extras"]["headers"]
    assert headers["x-livesync-truncated"] == "true"
    assert int(headers["x-livesync-original-size"]) > 5000
    data = json.loads(big["data"])
    assert data["documentKey"] == {"_id": "big"} and "fullDocument" not in data
    assert await db.ably_deadletter.count_documents({}) == 0


async def test_oversize_event_is_deadlettered(connector_env: dict[str, str], db: Any, ably: Any) -> None:
    async with connector(connector_env, MAX_MESSAGE_SIZE="2000", ON_OVERSIZE="deadletter"):
        await db.orders.insert_one({"_id": "big", "blob": "x" * 5000})
        await db.orders.insert_one({"_id": "small"})
        await wait_delivered(ably, 1)
    assert [m["channel"] for m in delivered(ably)] == ["orders:small"]
    dead = await db.ably_deadletter.find_one({})
    assert dead is not None and "2000" in dead["reason"]
    assert dead["kind"] == "too_large"


async def test_skip_policy_counts_without_deadlettering(
    connector_env: dict[str, str], db: Any, ably: Any
) -> None:
    async with connector(
        connector_env, ON_UNPUBLISHABLE="skip", MAX_MESSAGE_SIZE="2000", ON_OVERSIZE="deadletter"
    ) as running:
        await db.orders.insert_one({"_id": "big", "blob": "x" * 5000})
        await db.orders.insert_one({"_id": "small"})
        await wait_delivered(ably, 1)
        assert running.source.unpublishable.skipped == 1
    assert await db.ably_deadletter.count_documents({}) == 0


async def test_fail_policy_stops_with_exit_1_before_the_event(
    connector_env: dict[str, str], db: Any, ably: Any
) -> None:
    async with connector(
        connector_env, ON_UNPUBLISHABLE="fail", MAX_MESSAGE_SIZE="2000", ON_OVERSIZE="deadletter"
    ) as running:
        await db.orders.insert_one({"_id": "ok1"})
        await wait_delivered(ably, 1)
        await db.orders.insert_one({"_id": "big", "blob": "x" * 5000})
        await db.orders.insert_one({"_id": "after"})
        status = await asyncio.wait_for(running.task, 20)
    assert status == 1
    assert [m["channel"] for m in delivered(ably)] == ["orders:ok1"]
    # The stored position is not past the failed event: a restart would meet it again.
    token_doc = await db.ably.find_one({})
    ok1 = delivered(ably)[0]["id"]
    assert (
        token_doc["resumeToken"]["_data"] <= ok1
        or token_doc["resumeToken"]["_data"] < delivered(ably)[0]["id"] + "~"
    )


async def test_ably_503s_are_retried_until_delivered(
    connector_env: dict[str, str], db: Any, ably: Any
) -> None:
    ably.inject_fault(status=503, code=50003, count=5)
    async with connector(connector_env):
        await db.orders.insert_many([{"_id": i} for i in range(10)])
        msgs = await wait_delivered(ably, 10)
    assert sorted(m["event"]["documentKey"]["_id"] for m in msgs) == list(range(10))


async def test_ably_auth_failure_is_fatal(connector_env: dict[str, str], db: Any, ably: Any) -> None:
    async with connector(connector_env, ABLY_API_KEY="testapp.key1:wrong-secret") as running:
        await db.orders.insert_one({"_id": 1})
        status = await asyncio.wait_for(running.task, 20)
    assert status == 1
    assert delivered(ably) == []


async def test_quiet_collection_token_stays_fresh_while_another_churns(
    connector_env: dict[str, str], db: Any, ably: Any
) -> None:
    async with connector(connector_env, IDLE_CHECKPOINT_INTERVAL_S="0.3") as running:
        await until(lambda: running.term.checkpointer.stores >= 1, what="a first idle checkpoint")
        first = await db.ably.find_one({})
        for i in range(20):
            await db.other.insert_one({"i": i})
        await asyncio.sleep(0.8)
        await until(lambda: running.term.checkpointer.stores >= 2, what="a second idle checkpoint")
        second = await db.ably.find_one({})
    assert second["resumeToken"] != first["resumeToken"]
    assert second["clusterTime"] > first["clusterTime"]
    assert delivered(ably) == []


async def test_invalidate_then_recreate_recovers(connector_env: dict[str, str], db: Any, ably: Any) -> None:
    async with connector(connector_env) as running:
        await db.orders.insert_one({"_id": "before"})
        await wait_delivered(ably, 1)
        await db.orders.drop()
        await until(lambda: running.term.reader.stats.invalidations == 1, what="the invalidate")
        await db.orders.insert_one({"_id": "after"})
        await until(
            lambda: any(m["channel"] == "orders:after" for m in delivered(ably)), what="the event after"
        )
    names = [m["name"] for m in delivered(ably)]
    assert names[0] == "insert" and names[-1] == "insert"


async def test_motor_driver_path(connector_env: dict[str, str], db: Any, ably: Any) -> None:
    async with connector(connector_env, MONGO_DRIVER="motor") as running:
        assert running.source.mongo.driver == "motor"
        await db.orders.insert_many([{"_id": i} for i in range(5)])
        msgs = await wait_delivered(ably, 5)
    assert sorted(m["event"]["documentKey"]["_id"] for m in msgs) == list(range(5))  # 5 channels


async def test_waits_for_mongodb_at_startup_and_stops_cleanly(connector_env: dict[str, str]) -> None:
    """A sidecar may start before the replica set: keep retrying (72003), serve /healthz, stop on request."""
    import httpx

    from connector.config import load_settings
    from tests.e2e.procs import free_port
    from tests.integration.harness import mongo_runtime

    env = {
        **connector_env,
        "MONGODB_URI": f"mongodb://127.0.0.1:{free_port()}/?serverSelectionTimeoutMS=200",
        "HTTP_PORT": str(free_port()),
    }
    worker = mongo_runtime(load_settings(env, env_file=None))
    task = asyncio.create_task(worker.run())
    await asyncio.sleep(1.5)
    assert not task.done(), "an unreachable MongoDB at start-up must not be fatal"
    async with httpx.AsyncClient() as http:
        base = f"http://127.0.0.1:{env['HTTP_PORT']}"
        assert (await http.get(f"{base}/healthz")).status_code == 200
        ready = await http.get(f"{base}/readyz")
        assert ready.status_code == 503
        # Nobody can hold the lease without MongoDB: a standby that cannot poll it is not ready.
        assert ready.json()["role"] == "standby"
        assert ready.json()["problems"] == ["cannot reach MongoDB to poll the lease"]
    worker.request_stop("test")
    assert await asyncio.wait_for(task, 10) == 0


async def test_readyz_and_metrics_while_running(connector_env: dict[str, str], db: Any, ably: Any) -> None:
    import httpx

    from tests.e2e.procs import free_port

    port = free_port()
    async with connector(connector_env, HTTP_PORT=str(port)) as running, httpx.AsyncClient() as http:
        await db.orders.insert_many([{"_id": i} for i in range(7)])
        await wait_delivered(ably, 7)
        await until(lambda: running.term.checkpointer.stores >= 1, what="a checkpoint")
        ready = await http.get(f"http://127.0.0.1:{port}/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["ready"] is True
        metrics = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
    values = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in metrics.splitlines()
        if line and not line.startswith("#")
    }
    assert values["livesync_events_read_total"] == 7
    assert values["livesync_messages_published_total"] == 7
    assert values["livesync_in_flight_events"] == 0
    assert values["livesync_stream_open"] == 1
    assert values["livesync_checkpoints_stored_total"] >= 1
    assert 0 <= values["livesync_lag_seconds"] < 10


async def test_motor_stream_has_no_token_until_its_lazy_open(mongo_uri: str, db_name: str) -> None:
    from connector.sources.mongodb.client import Mongo

    mongo = Mongo(mongo_uri, db_name, driver="motor")
    stream = await mongo.watch_batches("orders", [], max_await_time_ms=100)
    assert stream.resume_token is None  # Motor opens on the first poll; asking earlier must not raise
    assert await stream.next_batch() == []
    assert stream.resume_token is not None
    await stream.close()
    await mongo.close()
