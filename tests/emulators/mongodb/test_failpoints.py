"""`configureFailPoint` as the connector's fault tests use it, plus the emulator's reset hook.

Modes (`times`, `skip`, `alwaysOn`, `off`), `errorCode` with and without `errorLabels`, the `appName`
filter and `blockConnection` must behave as on a real mongod started with test commands enabled.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import pytest
from pymongo import MongoClient
from pymongo.errors import AutoReconnect, OperationFailure

#: Needs a MongoDB server: the emulator, or MONGODB_TEST_URI.
pytestmark = pytest.mark.integration

SERVER_SELECTION_TIMEOUT_MS = 10_000

#: An arbitrary non-retryable, non-state-change code (InternalError) so PyMongo surfaces it unchanged.
INJECTED_CODE = 1
BLOCK_MS = 300


@contextlib.contextmanager
def fail_point(client: MongoClient[Any], command: dict[str, Any]) -> Iterator[None]:
    """Configure a fail point for the block's duration; always turn it off afterwards."""
    client.admin.command(command)
    try:
        yield
    finally:
        client.admin.command({"configureFailPoint": command["configureFailPoint"], "mode": "off"})


def fail_find(mode: Any, **data: Any) -> dict[str, Any]:
    return {
        "configureFailPoint": "failCommand",
        "mode": mode,
        "data": {"failCommands": ["find"], "errorCode": INJECTED_CODE, **data},
    }


def outcomes(coll: Any, attempts: int) -> list[int | None]:
    """Run `attempts` finds; record the error code of each (None for success)."""
    codes: list[int | None] = []
    for _ in range(attempts):
        try:
            coll.find_one({})
            codes.append(None)
        except OperationFailure as exc:
            codes.append(exc.code)
    return codes


@pytest.fixture
def probe(sync_db: Any) -> Any:
    sync_db["c"].insert_one({"_id": 1})
    return sync_db["c"]


def test_times_fails_exactly_n_commands(sync_client: Any, probe: Any) -> None:
    with fail_point(sync_client, fail_find({"times": 2})):
        assert outcomes(probe, 4) == [INJECTED_CODE, INJECTED_CODE, None, None]


def test_skip_lets_n_commands_through_first(sync_client: Any, probe: Any) -> None:
    with fail_point(sync_client, fail_find({"skip": 2})):
        assert outcomes(probe, 4) == [None, None, INJECTED_CODE, INJECTED_CODE]


def test_always_on_until_turned_off(sync_client: Any, probe: Any) -> None:
    with fail_point(sync_client, fail_find("alwaysOn")):
        assert outcomes(probe, 3) == [INJECTED_CODE] * 3
    assert outcomes(probe, 1) == [None]


def test_only_listed_commands_fail(sync_client: Any, probe: Any) -> None:
    with fail_point(sync_client, fail_find("alwaysOn")):
        probe.insert_one({"_id": 2})
        assert probe.count_documents({}) == 2  # aggregate, not find


def test_error_labels_are_exactly_those_given(emulator_uri: str, sync_client: Any, probe: Any) -> None:
    # retryReads off: HostUnreachable (6) is a retryable-read code and would otherwise be retried away.
    client: MongoClient[Any] = MongoClient(
        emulator_uri, retryReads=False, serverSelectionTimeoutMS=SERVER_SELECTION_TIMEOUT_MS
    )
    coll = client[probe.database.name]["c"]
    labelled_fp = fail_find({"times": 1}, errorLabels=["ResumableChangeStreamError"])
    unlabelled_fp = fail_find({"times": 1}, errorCode=6)
    try:
        with fail_point(sync_client, labelled_fp), pytest.raises(OperationFailure) as labelled:
            coll.find_one({})
        with fail_point(sync_client, unlabelled_fp), pytest.raises(OperationFailure) as unlabelled:
            coll.find_one({})
    finally:
        client.close()
    assert labelled.value.has_error_label("ResumableChangeStreamError")
    # failCommand errors carry only the labels given to the fail point, never server-side ones.
    assert unlabelled.value.code == 6
    assert not unlabelled.value.has_error_label("ResumableChangeStreamError")


def test_app_name_filter_targets_one_client(emulator_uri: str, sync_client: Any, probe: Any) -> None:
    target: MongoClient[Any] = MongoClient(
        emulator_uri, appName="victim", serverSelectionTimeoutMS=SERVER_SELECTION_TIMEOUT_MS
    )
    try:
        victim = target[probe.database.name]["c"]
        with fail_point(sync_client, fail_find("alwaysOn", appName="victim")):
            assert outcomes(probe, 2) == [None, None]
            assert outcomes(victim, 2) == [INJECTED_CODE, INJECTED_CODE]
    finally:
        target.close()


def test_close_connection_surfaces_as_network_error(emulator_uri: str, sync_client: Any, probe: Any) -> None:
    client: MongoClient[Any] = MongoClient(
        emulator_uri, retryReads=False, serverSelectionTimeoutMS=SERVER_SELECTION_TIMEOUT_MS
    )
    try:
        coll = client[probe.database.name]["c"]
        command = {
            "configureFailPoint": "failCommand",
            "mode": {"times": 1},
            "data": {"failCommands": ["find"], "closeConnection": True},
        }
        with fail_point(sync_client, command):
            with pytest.raises(AutoReconnect):
                coll.find_one({})
            assert coll.find_one({}) == {"_id": 1}
    finally:
        client.close()


def test_block_connection_delays_the_reply(sync_client: Any, probe: Any) -> None:
    command = {
        "configureFailPoint": "failCommand",
        "mode": {"times": 1},
        "data": {"failCommands": ["find"], "blockConnection": True, "blockTimeMS": BLOCK_MS},
    }
    with fail_point(sync_client, command):
        started = time.monotonic()
        assert probe.find_one({}) == {"_id": 1}
        blocked_s = time.monotonic() - started
    # Lower bound only (a behaviour check): the reply waited for (most of) blockTimeMS.
    assert blocked_s >= BLOCK_MS / 1000 / 2


def test_emulator_reset_drops_data_and_fail_points(emulator_only: None, sync_client: Any, probe: Any) -> None:
    sync_client.admin.command(fail_find("alwaysOn"))
    sync_client.admin.command({"emulatorReset": 1})
    assert probe.database.name not in sync_client.list_database_names()
    assert probe.find_one({}) is None  # the fail point is gone too
