"""Fixtures for the e2e suite: the connector as a subprocess against the shared emulators."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from pymongo import MongoClient

from tests.conftest import ABLY_TEST_KEY

CHANNEL_FROM_FIELD = '[{"$set": {"_ablyChannel": "$fullDocument.ch"}}]'


@pytest.fixture
def sync_db(mongo_uri: str, db_name: str) -> Iterator[Any]:
    client: MongoClient[dict[str, Any]] = MongoClient(mongo_uri)
    yield client[db_name]
    client.drop_database(db_name)
    client.close()


@pytest.fixture
def e2e_env(mongo_uri: str, db_name: str, ably: Any) -> dict[str, str]:
    return {
        "MONGODB_URI": mongo_uri,
        "MONGODB_DATABASE": db_name,
        "MONGODB_COLLECTION": "events",
        "PIPELINE": CHANNEL_FROM_FIELD,
        "ABLY_API_KEY": ABLY_TEST_KEY,
        "ABLY_REST_URL": ably.url,
        "ABLY_FALLBACK_HOSTS": "",
        "CHECKPOINT_INTERVAL_MS": "200",
        "IDLE_CHECKPOINT_INTERVAL_S": "5",
        "LOG_LEVEL": "INFO",
    }
