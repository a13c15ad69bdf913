"""Handshake, monitoring, diagnostics, failpoints and the emulator's test hooks."""

from __future__ import annotations

import datetime
import time
from typing import Any

from bson import Int64, ObjectId

from ..engine import Connection, Engine, command
from ..errors import CommandError

MAX_BSON_OBJECT_SIZE = 16 * 1024 * 1024
MAX_MESSAGE_SIZE_BYTES = 48_000_000
MAX_WRITE_BATCH_SIZE = 100_000
LOGICAL_SESSION_TIMEOUT_MINUTES = 30
# A fixed election id: the set never really elects, and drivers only compare it across replies.
ELECTION_ID = ObjectId("7fffffff0000000000000001")


def _hello_reply(engine: Engine, conn: Connection, legacy: bool) -> dict[str, Any]:
    cfg = engine.config
    reply: dict[str, Any] = {"helloOk": True}
    reply["ismaster" if legacy else "isWritablePrimary"] = True
    reply["topologyVersion"] = engine.topology.version()
    if not cfg.standalone:
        last = engine.clock.last_write
        last_date = datetime.datetime.fromtimestamp(last.time, datetime.UTC)
        reply.update(
            {
                "hosts": [engine.address],
                "setName": cfg.replset,
                "setVersion": 1,
                "secondary": False,
                "primary": engine.address,
                "me": engine.address,
                "electionId": ELECTION_ID,
                "lastWrite": {
                    "opTime": {"ts": last, "t": Int64(1)},
                    "lastWriteDate": last_date,
                    "majorityOpTime": {"ts": last, "t": Int64(1)},
                    "majorityWriteDate": last_date,
                },
            }
        )
    reply.update(
        {
            "maxBsonObjectSize": MAX_BSON_OBJECT_SIZE,
            "maxMessageSizeBytes": MAX_MESSAGE_SIZE_BYTES,
            "maxWriteBatchSize": MAX_WRITE_BATCH_SIZE,
            "localTime": datetime.datetime.now(datetime.UTC),
            "logicalSessionTimeoutMinutes": LOGICAL_SESSION_TIMEOUT_MINUTES,
            "connectionId": conn.conn_id,
            "minWireVersion": 0,
            "maxWireVersion": cfg.max_wire_version,
            "readOnly": False,
            "ok": 1.0,
        }
    )
    return reply


@command("hello", "isMaster", "ismaster")
async def hello(engine: Engine, conn: Connection, db: str, cmd: dict[str, Any]) -> dict[str, Any]:
    client = cmd.get("client")
    if isinstance(client, dict):
        app = client.get("application")
        if isinstance(app, dict) and isinstance(app.get("name"), str):
            conn.app_name = app["name"]
    version = cmd.get("topologyVersion")
    max_await = cmd.get("maxAwaitTimeMS")
    if isinstance(version, dict) and max_await is not None:
        current = engine.topology.version()
        if (
            version.get("processId") == current["processId"]
            and int(version.get("counter", -1)) == current["counter"]
        ):
            await engine.topology.wait_for_change(float(max_await) / 1000.0)
    return _hello_reply(engine, conn, legacy=next(iter(cmd)) != "hello")


@command("ping")
async def ping(engine: Engine, conn: Connection, db: str, cmd: dict[str, Any]) -> dict[str, Any]:
    return {"ok": 1.0}


@command("buildInfo", "buildinfo")
async def build_info(engine: Engine, conn: Connection, db: str, cmd: dict[str, Any]) -> dict[str, Any]:
    version = engine.config.server_version
    parts = [*list(engine.config.version_tuple), 0, 0, 0][:3]
    return {
        "version": version,
        "gitVersion": "emulator",
        "versionArray": [*parts, 0],
        "bits": 64,
        "maxBsonObjectSize": MAX_BSON_OBJECT_SIZE,
        "storageEngines": ["emulator"],
        "modules": [],
        "ok": 1.0,
    }


@command("endSessions", "killSessions", "killAllSessions", "refreshSessions", "startSession")
async def sessions(engine: Engine, conn: Connection, db: str, cmd: dict[str, Any]) -> dict[str, Any]:
    name = next(iter(cmd))
    ids = cmd.get(name)
    if name in ("endSessions", "killSessions") and isinstance(ids, list):
        engine.transactions.end_sessions(ids)  # their open transactions are aborted
    return {"ok": 1.0}


@command("getParameter")
async def get_parameter(engine: Engine, conn: Connection, db: str, cmd: dict[str, Any]) -> dict[str, Any]:
    params = {
        "featureCompatibilityVersion": {"version": ".".join(engine.config.server_version.split(".")[:2])},
        "enableTestCommands": 1,
        "requireApiVersion": False,
        "transactionLifetimeLimitSeconds": 60,
        "changeStreamOptions": {"preAndPostImages": {"expireAfterSeconds": "off"}},
    }
    if cmd.get("getParameter") == "*":
        return {**params, "ok": 1.0}
    wanted = {k: v for k, v in params.items() if k in cmd}
    return {**wanted, "ok": 1.0}


@command("serverStatus")
async def server_status(engine: Engine, conn: Connection, db: str, cmd: dict[str, Any]) -> dict[str, Any]:
    return {
        "host": engine.address,
        "version": engine.config.server_version,
        "process": "mongod",
        "pid": Int64(0),
        "uptime": float(time.monotonic() - engine.started),
        "localTime": datetime.datetime.now(datetime.UTC),
        "connections": {"current": len(engine.connections_snapshot())},
        "repl": {"setName": engine.config.replset, "isWritablePrimary": True}
        if not engine.config.standalone
        else {},
        "storageEngine": {"name": "emulator"},
        "metrics": {
            "ttl": {
                "passes": Int64(engine.ttl_stats.passes),
                "deletedDocuments": Int64(engine.ttl_stats.deleted_documents),
            }
        },
        "ok": 1.0,
    }


@command("replSetGetStatus")
async def repl_status(engine: Engine, conn: Connection, db: str, cmd: dict[str, Any]) -> dict[str, Any]:
    if engine.config.standalone:
        raise CommandError(76, "not running with --replSet")
    return {
        "set": engine.config.replset,
        "myState": 1,
        "members": [
            {
                "_id": 0,
                "name": engine.address,
                "health": 1.0,
                "state": 1,
                "stateStr": "PRIMARY",
                "self": True,
                "optime": {"ts": engine.clock.last_write, "t": Int64(1)},
            }
        ],
        "ok": 1.0,
    }


@command("getCmdLineOpts")
async def cmd_line_opts(engine: Engine, conn: Connection, db: str, cmd: dict[str, Any]) -> dict[str, Any]:
    return {
        "argv": ["mongod-emulator"],
        "parsed": {"replication": {"replSet": engine.config.replset}},
        "ok": 1.0,
    }


@command("connectionStatus")
async def connection_status(engine: Engine, conn: Connection, db: str, cmd: dict[str, Any]) -> dict[str, Any]:
    return {"authInfo": {"authenticatedUsers": [], "authenticatedUserRoles": []}, "ok": 1.0}


@command("whatsmyuri")
async def whats_my_uri(engine: Engine, conn: Connection, db: str, cmd: dict[str, Any]) -> dict[str, Any]:
    return {"you": conn.peer, "ok": 1.0}


@command("hostInfo")
async def host_info(engine: Engine, conn: Connection, db: str, cmd: dict[str, Any]) -> dict[str, Any]:
    return {"system": {"hostname": engine.address}, "os": {"type": "emulator"}, "extra": {}, "ok": 1.0}


@command("configureFailPoint")
async def configure_fail_point(
    engine: Engine, conn: Connection, db: str, cmd: dict[str, Any]
) -> dict[str, Any]:
    if db != "admin":
        raise CommandError(13, "configureFailPoint may only be run against the admin database.")
    return {**engine.failpoints.configure(cmd), "ok": 1.0}


@command("emulatorDropConnections")
async def drop_connections(engine: Engine, conn: Connection, db: str, cmd: dict[str, Any]) -> dict[str, Any]:
    # The requesting connection is closed too, after this reply is written (see server).
    conn.extra["drop_all_after_reply"] = True
    return {"dropped": len(engine.connections_snapshot()), "ok": 1.0}


@command("emulatorStepDown")
async def step_down(engine: Engine, conn: Connection, db: str, cmd: dict[str, Any]) -> dict[str, Any]:
    seconds = cmd.get("emulatorStepDown")
    if not isinstance(seconds, int | float) or isinstance(seconds, bool) or seconds < 0:
        raise CommandError(2, "emulatorStepDown takes a non-negative number of seconds")
    engine.topology.step_down(float(seconds))
    return {"ok": 1.0}


@command("emulatorReset")
async def reset(engine: Engine, conn: Connection, db: str, cmd: dict[str, Any]) -> dict[str, Any]:
    engine.reset()
    return {"ok": 1.0}


@command("commitTransaction")
async def commit_transaction(
    engine: Engine, conn: Connection, db: str, cmd: dict[str, Any]
) -> dict[str, Any]:
    _check_admin(db, "commitTransaction")
    engine.transactions.commit(engine.shared_storage, cmd)
    return {"ok": 1.0}


@command("abortTransaction")
async def abort_transaction(engine: Engine, conn: Connection, db: str, cmd: dict[str, Any]) -> dict[str, Any]:
    _check_admin(db, "abortTransaction")
    engine.transactions.abort(cmd)
    return {"ok": 1.0}


def _check_admin(db: str, name: str) -> None:
    if db != "admin":
        raise CommandError(13, f"{name} may only be run against the admin database.")


@command("getLastError", "getlasterror", "resetError", "logout", "saslStart", "saslContinue")
async def legacy_noop(engine: Engine, conn: Connection, db: str, cmd: dict[str, Any]) -> dict[str, Any]:
    return {"ok": 1.0}


@command("dbStats")
async def db_stats(engine: Engine, conn: Connection, db: str, cmd: dict[str, Any]) -> dict[str, Any]:
    colls = engine.storage.meta.get(db, {})
    objects = sum(
        engine.storage.collection(db, c).count_documents({}) for c, m in colls.items() if not m.is_view
    )
    return {"db": db, "collections": len(colls), "objects": objects, "ok": 1.0}
