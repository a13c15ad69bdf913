"""Fixtures for the e2e suite: the connector as a subprocess against the emulators.

The MongoDB emulator runs in a process of its own here, as mongod does: in the test process it would share
one interpreter lock with the Ably emulator and the test's writers, and under the fault suites' load
(hundreds of publish requests a second) answer getMores in seconds instead of milliseconds, which measures
the test rig, not the connector.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 30.0

CHANNEL_FROM_FIELD = '[{"$set": {"_ablyChannel": "$fullDocument.ch"}}]'


@pytest.fixture(scope="session")
def mongo_uri() -> Iterator[str]:
    """A replica-set emulator subprocess (or the real replica set of MONGODB_TEST_URI)."""
    real = os.environ.get("MONGODB_TEST_URI")
    if real:
        yield real
        return
    proc = subprocess.Popen(
        [sys.executable, "-m", "emulators.mongodb", "--port", "0", "--replset", "rs0"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()  # the URI, once listening
        assert line.startswith("mongodb://"), f"the MongoDB emulator did not start: {line!r}"
        yield line
    finally:
        proc.terminate()
        try:
            proc.wait(START_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(START_TIMEOUT_S)
        if proc.stdout is not None:
            proc.stdout.close()


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
