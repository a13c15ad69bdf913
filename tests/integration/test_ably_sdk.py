"""The Python Ably SDK (ably 3.x) reads what the connector publishes: `data` decodes to the event object."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from ably import AblyRest

from tests.integration.harness import connector, wait_delivered

pytestmark = pytest.mark.integration

MODELS_SDK = str(Path(__file__).resolve().parents[2] / "pipelines" / "models-sdk.json")
# The SDK refuses Basic (key) auth over plain HTTP, rightly: it authenticates with a token the emulator knows.
TOKEN = "sdk-test-token"


def sdk_options(ably: Any) -> dict[str, Any]:
    ably.configure(tokens=[TOKEN])  # the `ably` fixture's reset() restores the startup settings
    url = urlsplit(ably.url)
    return {
        "token": TOKEN,
        "rest_host": url.hostname,
        "port": url.port,
        "tls": False,
        "use_binary_protocol": False,  # the emulator speaks JSON
        "fallback_hosts": [],
    }


@pytest.fixture
async def rest(ably: Any) -> AsyncIterator[AblyRest]:
    client = AblyRest(**sdk_options(ably))
    yield client
    await client.close()


async def test_rest_history_decodes_data_to_the_event(
    connector_env: dict[str, str], db: Any, ably: Any, rest: AblyRest
) -> None:
    async with connector(connector_env, PIPELINE="", PIPELINE_FILE=MODELS_SDK, FULL_DOCUMENT="updateLookup"):
        await db.orders.insert_one({"_id": "o1", "status": "placed", "mutationId": "m-1"})
        await db.orders.update_one({"_id": "o1"}, {"$set": {"status": "paid", "mutationId": "m-2"}})
        stored = await wait_delivered(ably, 2, channel="orders:o1")
    page = await rest.channels.get("orders:o1").history(direction="forwards")
    inserted, updated = page.items
    assert [m.id for m in page.items] == [m["id"] for m in stored]
    assert (inserted.name, updated.name) == ("insert", "update")
    assert isinstance(inserted.data, dict) and inserted.encoding in (None, "")
    assert inserted.data["operationType"] == "insert"
    assert inserted.data["fullDocument"] == {"_id": "o1", "status": "placed", "mutationId": "m-1"}
    assert inserted.data["_id"] == {"_data": inserted.id}  # the resume token is the message id
    assert updated.data["updateDescription"]["updatedFields"] == {"status": "paid", "mutationId": "m-2"}
    assert [m.extras["headers"]["x-ably-models-event-uuid"] for m in page.items] == ["m-1", "m-2"]
