"""Fixtures for the e2e suite: the connector as a subprocess against the emulators.

The MongoDB emulator runs in a process of its own here, as mongod does, so that the timings these suites
assert (takeover, a quiet channel's latency) are the connector's and the database's, not those of one
interpreter lock shared with the Ably emulator and the test's writers.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from benchmarks.procs import mongo_emulator

OPLOG_SIZE = 1_000_000  # events kept for resuming: the emulator's default

CHANNEL_FROM_FIELD = '[{"$set": {"_ablyChannel": "$fullDocument.ch"}}]'


@pytest.fixture(scope="session")
def mongo_uri() -> Iterator[str]:
    """A replica-set emulator subprocess (the benchmarks' own), or the real one of MONGODB_TEST_URI."""
    real = os.environ.get("MONGODB_TEST_URI")
    if real:
        yield real
        return
    with mongo_emulator(OPLOG_SIZE) as emulator:
        yield emulator.address


@pytest.fixture
def e2e_env(connector_env: dict[str, str]) -> dict[str, str]:
    """`connector_env`, watching `events` and routing by each document's `ch` field."""
    return {
        **connector_env,
        "MONGODB_COLLECTION": "events",
        "PIPELINE": CHANNEL_FROM_FIELD,
        "CHECKPOINT_INTERVAL_MS": "200",
        "IDLE_CHECKPOINT_INTERVAL_S": "5",
        # One sidecar restarted in place (same pod name, pid 1): each restart reclaims its own lease at once.
        # The failover suite gives every instance its own id.
        "INSTANCE_ID": "e2e-sidecar",
    }
