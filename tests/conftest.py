"""Shared fixtures: one MongoDB server and one Ably emulator for the integration and e2e suites.

The MongoDB server is the project's emulator by default, or a real replica set when MONGODB_TEST_URI is set
(`docker compose up -d mongo` gives one: MONGODB_TEST_URI="mongodb://localhost:27017/?replicaSet=rs0").
Ably is always the emulator. Both run in their own threads with their own event loops, so sync and async
clients on any test loop can use them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from connector.sources.mongodb import driver_fix

# The tests' own AsyncMongoClients get the connector's fix for the driver's socket leak on a cancelled
# connect too: without it, a client closed while its monitor connects leaves a socket whose
# ResourceWarning fails whichever test is running when it is collected.
driver_fix.install()

ABLY_TEST_KEY = "testapp.key1:s3cr3t-value"
# One key per connector instance in the failover suite: the Ably emulator counts requests per key.
NODE_KEYS = [f"testapp.node{i}:s3cr3t-node{i}" for i in range(1, 4)]
CHANNEL_PER_DOCUMENT = (
    '[{"$set": {"_ablyChannel": {"$concat": ["orders:", {"$toString": "$documentKey._id"}]}}}]'
)


@pytest.fixture(scope="session")
def mongo_uri() -> Iterator[str]:
    real = os.environ.get("MONGODB_TEST_URI")
    if real:
        yield real
        return
    from emulators.mongodb import run_in_thread

    with run_in_thread(host="127.0.0.1", port=0, replset="rs0") as server:
        yield server.uri


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """Undo what `livesync-connector` commands run in-process do to logging (`configure_logging`: a
    handler on the test's captured stderr, the root level, the chatty loggers' levels): a later test
    must not log through a closed stream, nor at DEBUG because an earlier one asked for it."""
    import logging

    from connector.logs import CHATTY_LOGGERS

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    chatty = {name: logging.getLogger(name).level for name in CHATTY_LOGGERS}
    yield
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    for name, each in chatty.items():
        logging.getLogger(name).setLevel(each)


@pytest.fixture(scope="session")
def using_emulator() -> bool:
    return not os.environ.get("MONGODB_TEST_URI")


@pytest.fixture
def db_name() -> str:
    """A fresh database per test, so tests never see each other's data or tokens."""
    return f"t_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def sync_db(mongo_uri: str, db_name: str) -> Iterator[Any]:
    """The test's own database through a blocking client, dropped afterwards."""
    from pymongo import MongoClient

    client: MongoClient[dict[str, Any]] = MongoClient(mongo_uri)
    yield client[db_name]
    client.drop_database(db_name)
    client.close()


@pytest.fixture(scope="session")
def ably_server() -> Iterator[Any]:
    from emulators.ably import run_in_thread

    # Answers batch publish as Ably does at the protocol version the connector sends (6): one BatchResult
    # per spec, 201 even when entries failed (emulators/ably/README.md).
    with run_in_thread(
        host="127.0.0.1", port=0, keys=[ABLY_TEST_KEY, *NODE_KEYS], batch_response="by_version"
    ) as server:
        yield server


@pytest.fixture
def ably(ably_server: Any) -> Iterator[Any]:
    """The Ably emulator, reset (messages, faults, settings) before each test."""
    ably_server.reset()
    yield ably_server
    ably_server.clear_faults()


@pytest.fixture
def connector_env(mongo_uri: str, db_name: str, ably: Any) -> dict[str, str]:
    """Environment for a connector watching `<db_name>.orders` and publishing to the Ably emulator."""
    return {
        "MONGODB_URI": mongo_uri,
        "MONGODB_DATABASE": db_name,
        "MONGODB_COLLECTION": "orders",
        "PIPELINE": CHANNEL_PER_DOCUMENT,
        "ABLY_API_KEY": ABLY_TEST_KEY,
        "ABLY_REST_URL": ably.url,
        "ABLY_FALLBACK_HOSTS": "",
        "HTTP_PORT": "0",
        "CHECKPOINT_INTERVAL_MS": "100",
        # The emulator has no per-channel rate limit unless a test turns it on (tests of pacing set both).
        "CHANNEL_RATE_LIMIT": "0",
        "LOG_FORMAT": "text",
        "LOG_LEVEL": "INFO",
    }
