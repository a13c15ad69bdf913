"""Fixtures for the e2e suite: the connector as a subprocess against the shared emulators."""

from __future__ import annotations

import pytest

CHANNEL_FROM_FIELD = '[{"$set": {"_ablyChannel": "$fullDocument.ch"}}]'


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
