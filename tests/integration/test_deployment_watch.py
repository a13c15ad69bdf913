"""MONGODB_WATCH=deployment: one connector publishing the changes of every database (a database per
tenant), with server-side namespace filters, its own collections never published, drops and renames of one
tenant never ending the stream, a restart resuming without a gap, history lost as for a database watch, and
the missing-privilege error.

Every test works in databases named `<db_name>_*` and includes only those (NAMESPACE_INCLUDE), so it also
runs against a real deployment (MONGODB_TEST_URI) where other databases change at the same time. What was
*not* read is proven by order: a marker is written last, and once it is delivered every earlier change of
the deployment has passed the stream, so `events_read` counts exactly what the server let through.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bson
import pytest
from bson import DatetimeMS
from bson.raw_bson import RawBSONDocument
from pymongo import AsyncMongoClient

from connector.config import load_settings
from connector.sources.mongodb.check import run_checks
from connector.sources.mongodb.namespaces import DEPLOYMENT_LABEL
from tests.integration.harness import RunningConnector, connector, delivered, until, wait_delivered

pytestmark = pytest.mark.integration

TENANT_PIPELINE = Path(__file__).resolve().parents[2] / "pipelines" / "channel-per-tenant.json"
#: Every event, DDL included, on a channel named like its database (message name: the operationType).
EVERY_EVENT_BY_DB = '[{"$addFields": {"_ablyChannel": "$ns.db"}}]'
OWN = ("ably", "ably_deadletter", "ably_overflow")


@dataclass
class Tenants:
    """This test's databases: `<prefix>_home` (the connector's) and `<prefix>_<name>` per tenant."""

    client: AsyncMongoClient[dict[str, Any]]
    prefix: str

    @property
    def home(self) -> str:
        return self.db_name("home")

    def db_name(self, name: str) -> str:
        return f"{self.prefix}_{name}"

    def __getitem__(self, name: str) -> Any:
        return self.client[self.db_name(name)]


@pytest.fixture
async def tenants(mongo_uri: str, db_name: str) -> AsyncIterator[Tenants]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri)
    yield Tenants(client, db_name)
    for name in await client.list_database_names():
        if name.startswith(f"{db_name}_"):
            await client.drop_database(name)
    await client.close()


@pytest.fixture
def env(connector_env: dict[str, str], tenants: Tenants) -> dict[str, str]:
    """A deployment-wide connector homed in `<prefix>_home`, reading only this test's databases."""
    base = {k: v for k, v in connector_env.items() if k not in ("PIPELINE", "MONGODB_COLLECTION")}
    return {
        **base,
        "MONGODB_WATCH": "deployment",
        "MONGODB_DATABASE": tenants.home,
        "NAMESPACE_INCLUDE": f"{tenants.prefix}_*.*",
        "PIPELINE_FILE": str(TENANT_PIPELINE),
    }


def with_pipeline(env: dict[str, str], pipeline: str) -> dict[str, str]:
    """The same connector with an inline PIPELINE instead of channel-per-tenant.json."""
    return {**{k: v for k, v in env.items() if k != "PIPELINE_FILE"}, "PIPELINE": pipeline}


def on_channels(ably: Any) -> dict[str, list[tuple[str, Any]]]:
    """Per channel, in delivery order: (message name, the document's _id)."""
    out: dict[str, list[tuple[str, Any]]] = {}
    for msg in delivered(ably):
        out.setdefault(msg["channel"], []).append(
            (msg["name"], msg["event"].get("documentKey", {}).get("_id"))
        )
    return out


def events_read(running: RunningConnector) -> int:
    return running.term.reader.stats.events_read


@pytest.mark.parametrize("driver", ["pymongo", "motor"])
async def test_changes_of_several_databases_arrive_on_their_tenant_channels(
    driver: str, env: dict[str, str], tenants: Tenants, ably: Any
) -> None:
    """PyMongo reads a batch at a time (`aggregate: 1` on admin with allChangesForCluster); Motor through
    the driver's own `client.watch()`."""
    t1, t2, t3 = (tenants.db_name(n) for n in ("t1", "t2", "t3"))
    async with connector(env, MONGO_DRIVER=driver) as running:
        await tenants["t1"].orders.insert_one({"_id": 1})
        await tenants["t2"].orders.insert_one({"_id": 1})
        await tenants["t2"].users.insert_one({"_id": "u"})
        await tenants["t1"].orders.update_one({"_id": 1}, {"$set": {"v": 2}})
        await tenants["t1"].orders.delete_one({"_id": 1})
        await tenants["t2"].users.drop()  # a DDL event: channel-per-tenant.json leaves it out
        await tenants["t3"].orders.insert_one({"_id": "last"})
        await wait_delivered(ably, 6)
        assert events_read(running) == 6  # the drop was filtered by the pipeline, server-side
    assert on_channels(ably) == {
        t1: [("orders", 1), ("orders", 1), ("orders", 1)],
        t2: [("orders", 1), ("users", "u")],
        t3: [("orders", "last")],
    }
    for msg in delivered(ably):
        assert msg["event"]["ns"]["db"] == msg["channel"]
    assert [m["event"]["operationType"] for m in delivered(ably, t1)] == ["insert", "update", "delete"]


@pytest.mark.parametrize("driver", ["pymongo", "motor"])
async def test_values_pymongos_defaults_refuse_do_not_stop_a_deployment_stream(
    driver: str, env: dict[str, str], tenants: Tenants, ably: Any
) -> None:
    """Invariant 10 on both paths: Motor's `client.watch()` decodes with the client's codec options (any
    date; invalid UTF-8 replaced), PyMongo's batch cursor with the connector's own decoder."""
    year_10000_ms = 253402300800000 + 1000
    bad_utf8 = RawBSONDocument(bson.encode({"_id": "utf8", "name": "abc"}).replace(b"abc", b"a\xffc"))
    async with connector(env, MONGO_DRIVER=driver):
        await tenants["t1"].orders.insert_one({"_id": "late", "at": DatetimeMS(year_10000_ms)})
        await tenants["t1"].orders.insert_one(bad_utf8)
        await tenants["t1"].orders.insert_one({"_id": "after"})
        msgs = await wait_delivered(ably, 3)
    docs = [m["event"]["fullDocument"] for m in msgs]
    assert docs == [
        {"_id": "late", "at": {"$date": {"$numberLong": str(year_10000_ms)}}},
        {"_id": "utf8", "name": "a\ufffdc"},
        {"_id": "after"},
    ]


async def test_include_and_exclude_globs_are_applied_server_side(
    env: dict[str, str], tenants: Tenants, ably: Any
) -> None:
    p = tenants.prefix
    filters = {
        "NAMESPACE_INCLUDE": f"{p}_t*.*,{p}_home.orders",
        "NAMESPACE_EXCLUDE": f"*.audit,{p}_t2.secret",
    }
    async with connector(env, **filters) as running:
        await tenants["t1"].orders.insert_one({"_id": "in"})
        await tenants["t1"].audit.insert_one({"_id": "out"})  # *.audit
        await tenants["t2"].secret.insert_one({"_id": "out"})  # excluded by name
        await tenants["t2"].orders.insert_one({"_id": "in"})
        await tenants["x"].orders.insert_one({"_id": "out"})  # not included
        await tenants["home"].orders.insert_one({"_id": "in"})  # the home database is the user's too
        await tenants["home"].other.insert_one({"_id": "out"})
        await tenants["t3"].audit.insert_one({"_id": "out"})
        await tenants["t3"].orders.insert_one({"_id": "last"})
        await wait_delivered(ably, 4)
        assert events_read(running) == 4
    assert on_channels(ably) == {
        tenants.db_name("t1"): [("orders", "in")],
        tenants.db_name("t2"): [("orders", "in")],
        tenants.home: [("orders", "in")],
        tenants.db_name("t3"): [("orders", "last")],
    }


async def test_own_collections_are_never_published_and_same_names_elsewhere_are(
    env: dict[str, str], tenants: Tenants, ably: Any
) -> None:
    """Tokens (and the lease on them) and dead letters are written in the home database while the stream
    reads the whole deployment: none of those writes comes back (invariant 6)."""
    no_channel_for_nochannel = (
        '[{"$addFields": {"_ablyChannel": {"$cond": [{"$eq": ["$ns.coll", "nochannel"]}, null, "$ns.db"]},'
        ' "_ablyMsgName": "$ns.coll"}}]'
    )
    # Idle checkpoints every 0.2 s: each token write would stream back in if it were not excluded.
    idle = {"IDLE_CHECKPOINT_INTERVAL_S": "0.2"}
    async with connector(with_pipeline(env, no_channel_for_nochannel), **idle) as running:
        await tenants["t1"].nochannel.insert_one({"_id": "dead"})  # dead-lettered into home.ably_deadletter
        await tenants["t1"].ably.insert_one({"_id": "theirs"})  # a tenant's collection named like ours
        await tenants["home"].orders.insert_one({"_id": "home"})
        await until(lambda: running.source.unpublishable.deadlettered == 1, what="the dead letter")
        stored = running.term.checkpointer.stores
        await until(lambda: running.term.checkpointer.stores >= stored + 2, what="two more checkpoints")
        await tenants["t2"].orders.insert_one({"_id": "last"})
        await until(lambda: any(m["channel"] == tenants.db_name("t2") for m in delivered(ably)), what="last")
        assert events_read(running) == 4  # the three above and the marker: no token or dead-letter write
    assert on_channels(ably) == {
        tenants.db_name("t1"): [("ably", "theirs")],
        tenants.home: [("orders", "home")],
        tenants.db_name("t2"): [("orders", "last")],
    }
    assert await tenants["home"].ably_deadletter.count_documents({}) == 1
    token = await tenants["home"].ably.find_one({"_id": DEPLOYMENT_LABEL})
    assert token is not None and token["namespace"] == DEPLOYMENT_LABEL


async def test_drop_rename_and_drop_database_of_one_tenant_do_not_end_the_stream(
    env: dict[str, str], tenants: Tenants, ably: Any
) -> None:
    t1, t2 = tenants.db_name("t1"), tenants.db_name("t2")
    async with connector(with_pipeline(env, EVERY_EVENT_BY_DB)) as running:
        await tenants["t1"].orders.insert_one({"_id": 1})
        await tenants["t1"].users.insert_one({"_id": 2})
        await tenants["t1"].orders.rename("orders2")
        await tenants["t1"].drop_collection("orders2")
        await tenants.client.drop_database(t1)
        await tenants["t2"].orders.insert_one({"_id": "after"})
        await until(lambda: ably.messages(channel=t2), what="the change after the drops")
        reader = running.term.reader
        assert (reader.stats.invalidations, reader.stats.reopens) == (0, 0)
        assert reader.stats.stream_open and not running.task.done()
    events = [m["event"] for m in delivered(ably, t1)]
    assert [(e["operationType"], e["ns"]) for e in events] == [
        ("insert", {"db": t1, "coll": "orders"}),
        ("insert", {"db": t1, "coll": "users"}),
        ("rename", {"db": t1, "coll": "orders"}),
        ("drop", {"db": t1, "coll": "orders2"}),
        ("drop", {"db": t1, "coll": "users"}),
        ("dropDatabase", {"db": t1}),
    ]
    assert events[2]["to"] == {"db": t1, "coll": "orders2"}
    assert [m["event"]["documentKey"] for m in delivered(ably, t2)] == [{"_id": "after"}]


async def test_a_restart_resumes_after_the_stored_position_without_gaps(
    env: dict[str, str], tenants: Tenants, ably: Any
) -> None:
    async with connector(env):
        for n in range(5):
            await tenants["t1"].orders.insert_one({"_id": n})
            await tenants["t2"].orders.insert_one({"_id": n})
        await wait_delivered(ably, 10)
    # Written while no connector runs: the stored position is before them.
    for n in range(5, 10):
        await tenants["t1"].orders.insert_one({"_id": n})
        await tenants["t2"].orders.insert_one({"_id": n})
    await tenants["t3"].orders.insert_one({"_id": 0})
    async with connector(env) as running:
        await wait_delivered(ably, 21)
        assert events_read(running) == 11  # a clean stop stored its position: nothing is read twice
    channels = on_channels(ably)
    for tenant in ("t1", "t2"):
        assert channels[tenants.db_name(tenant)] == [("orders", n) for n in range(10)]
    assert channels[tenants.db_name("t3")] == [("orders", 0)]
    ids = [m["id"] for m in delivered(ably)]
    assert len(ids) == len(set(ids)) == 21


@pytest.fixture
def small_oplog_uri(using_emulator: bool) -> Iterator[str]:
    if not using_emulator:
        pytest.skip("needs an oplog small enough to overflow in a test (the emulator's --oplog-size)")
    from emulators.mongodb import run_in_thread

    with run_in_thread(host="127.0.0.1", port=0, replset="rs0", oplog_size=50) as server:
        yield server.uri


@pytest.mark.parametrize("policy", ["fail", "restart"])
async def test_history_lost_behaves_as_for_a_database_watch(
    policy: str, small_oplog_uri: str, env: dict[str, str], ably: Any, caplog: pytest.LogCaptureFixture
) -> None:
    env = {**env, "MONGODB_URI": small_oplog_uri, "ON_HISTORY_LOST": policy}
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(small_oplog_uri)
    tenant = client[f"{env['MONGODB_DATABASE'].removesuffix('_home')}_t1"]
    try:
        async with connector(env):
            await tenant.orders.insert_one({"_id": "first"})
            await wait_delivered(ably, 1)
        for n in range(120):  # while the connector is down, the oplog rolls over past the stored position
            await tenant.orders.insert_one({"_id": f"lost-{n}"})
        with caplog.at_level(logging.ERROR):
            async with connector(env) as running:
                if policy == "fail":
                    assert await asyncio.wait_for(running.task, 20) == 1
                else:
                    await tenant.orders.insert_one({"_id": "after"})
                    await until(lambda: len(ably.messages()) == 2, what="the change after the gap")
    finally:
        await client.close()
    lost = [r for r in caplog.records if getattr(r, "code", None) == 72008]
    assert lost and "may be missing" in lost[0].getMessage()
    if policy == "restart":
        assert [m["event"]["documentKey"]["_id"] for m in delivered(ably)] == ["first", "after"]


async def test_missing_privileges_are_named_and_healed_without_a_restart(
    env: dict[str, str], tenants: Tenants, ably: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The server refuses the cluster-wide aggregate with Unauthorized (13) once (a failpoint stands in
    for a user without the privileges): the connector logs what it needs, then opens the stream."""
    admin = tenants.client.admin
    refuse_once = {
        "configureFailPoint": "failCommand",
        "mode": {"times": 1},
        "data": {"failCommands": ["aggregate"], "errorCode": 13, "appName": "livesync-connector"},
    }
    lines: list[str] = []
    try:
        await admin.command(refuse_once)
        with caplog.at_level(logging.ERROR):
            async with connector(env) as running:
                await tenants["t1"].orders.insert_one({"_id": 1})
                await wait_delivered(ably, 1)
                assert running.term.reader.stats.reopens == 1
        await admin.command(refuse_once)
        assert await run_checks(load_settings(env, env_file=None), out=lines.append) == 1
        assert await run_checks(load_settings(env, env_file=None), out=lines.append) == 0
    finally:
        await admin.command({"configureFailPoint": "failCommand", "mode": "off"})
    (refused,) = [r.getMessage() for r in caplog.records if "not authorized" in r.getMessage()]
    for needed in ("MONGODB_WATCH=deployment", '{db: "", collection: ""}', "readAnyDatabase", "readWrite"):
        assert needed in refused
    (failed,) = [line for line in lines if line.startswith("FAIL")]
    assert "not authorized to watch the whole deployment" in failed and failed.endswith("(code 72003)")
    watching = (
        "ok    watching the whole deployment (MONGODB_WATCH=deployment; every database but admin, config and "
        f"local); include {tenants.prefix}_*.*; the connector's own collections in {tenants.home} left out"
    )
    assert watching in lines


async def test_check_asks_for_images_only_where_the_filters_let_changes_through(
    connector_env: dict[str, str], tenants: Tenants
) -> None:
    """A database watch with NAMESPACE_EXCLUDE: a collection left out needs no pre-images; nor do the
    connector's own collections (the overflow collection included)."""
    home = tenants["home"]
    await home.create_collection("orders", changeStreamPreAndPostImages={"enabled": True})
    for name in ("logs", "ably_overflow"):
        await home[name].insert_one({"_id": 1})
    env = {
        **{k: v for k, v in connector_env.items() if k != "MONGODB_COLLECTION"},
        "MONGODB_DATABASE": tenants.home,
        "FULL_DOCUMENT_BEFORE_CHANGE": "required",
    }
    lines: list[str] = []
    excluded = {**env, "NAMESPACE_EXCLUDE": f"{tenants.home}.logs"}
    assert await run_checks(load_settings(excluded, env_file=None), out=lines.append) == 0
    assert "ok    pre- and post-images enabled where the options need them" in lines
    lines.clear()
    assert await run_checks(load_settings(env, env_file=None), out=lines.append) == 1
    (failed,) = [line for line in lines if line.startswith("FAIL")]
    assert failed.startswith("FAIL  pre- and post-images are not enabled on logs;")


async def test_a_deployment_watch_splits_into_partitions(
    env: dict[str, str], tenants: Tenants, ably: Any
) -> None:
    """PARTITIONS over a deployment-wide stream: the partition's filter goes after the namespace filters and
    the user's pipeline, so every tenant's change is read by exactly one partition."""
    split = {"PARTITIONS": "2", "CONNECTOR_ID": "tenants"}
    async with (
        connector(env, PARTITION="0", **split) as first,
        connector(env, PARTITION="1", **split) as second,
    ):
        for n in range(20):
            await tenants[f"t{n}"].orders.insert_one({"_id": n})
        await wait_delivered(ably, 20)
        assert events_read(first) + events_read(second) == 20
    channels = on_channels(ably)
    assert channels == {tenants.db_name(f"t{n}"): [("orders", n)] for n in range(20)}
