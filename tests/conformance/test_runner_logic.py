"""The runner's own verdict logic, without a server: error expectations, event lists, event filtering.

A conformance run is only meaningful if a wrong server answer makes a test fail; these cases pin that.
"""

from __future__ import annotations

from typing import Any

import pytest
from pymongo import monitoring
from pymongo.errors import AutoReconnect, InvalidOperation, NotPrimaryError, OperationFailure

from tests.conformance.operations import UnsupportedError
from tests.conformance.unified import EventRecorder, check_error, check_event_list

ADDRESS = ("127.0.0.1", 27017)


def started(command: dict[str, Any], database: str = "database0") -> monitoring.CommandStartedEvent:
    return monitoring.CommandStartedEvent(
        command, database, request_id=1, connection_id=ADDRESS, operation_id=1
    )


def server_error(code: int, labels: list[str] | None = None, code_name: str = "") -> OperationFailure:
    details: dict[str, Any] = {"ok": 0, "code": code, "errmsg": f"error {code}", "codeName": code_name}
    if labels:
        details["errorLabels"] = labels
    return OperationFailure(f"error {code}", code, details)


def test_error_code_and_name_must_match() -> None:
    error = server_error(280, ["NonResumableChangeStreamError"], "ChangeStreamFatalError")
    check_error(
        {
            "errorCode": 280,
            "errorCodeName": "changestreamfatalerror",
            "errorLabelsContain": ["NonResumableChangeStreamError"],
        },
        error,
    )
    with pytest.raises(AssertionError, match="expected error code 281, got 280"):
        check_error({"errorCode": 281}, error)
    with pytest.raises(AssertionError, match="codeName"):
        check_error({"errorCodeName": "Other"}, error)


def test_error_labels_contain_and_omit() -> None:
    error = server_error(50, ["ResumableChangeStreamError"])
    check_error({"errorLabelsContain": ["ResumableChangeStreamError"], "errorLabelsOmit": ["X"]}, error)
    with pytest.raises(AssertionError, match="lacks labels"):
        check_error({"errorLabelsContain": ["NonResumableChangeStreamError"]}, error)
    with pytest.raises(AssertionError, match="should omit"):
        check_error({"errorLabelsOmit": ["ResumableChangeStreamError"]}, error)


def test_is_client_error_separates_server_replies_from_client_and_network_errors() -> None:
    check_error({"isClientError": False}, server_error(2))
    check_error({"isClientError": False}, NotPrimaryError("not primary", {"code": 10107, "ok": 0}))
    check_error({"isClientError": True}, AutoReconnect("connection closed"))
    check_error({"isClientError": True}, InvalidOperation("bad argument"))
    with pytest.raises(AssertionError, match="isClientError=False"):
        check_error({"isClientError": False}, AutoReconnect("connection closed"))
    with pytest.raises(AssertionError, match="isClientError=True"):
        check_error({"isClientError": True}, server_error(2))


def test_state_change_error_code_is_read_from_its_reply() -> None:
    check_error({"errorCode": 10107}, NotPrimaryError("not primary", {"code": 10107, "ok": 0}))


def test_unknown_expect_error_keys_are_unsupported_not_ignored() -> None:
    with pytest.raises(UnsupportedError, match="isTimeoutError"):
        check_error({"isTimeoutError": True}, server_error(50))


def _expectation(events: list[dict[str, Any]], ignore_extra: bool = False) -> dict[str, Any]:
    return {"client": "client0", "events": events, "ignoreExtraEvents": ignore_extra}


AGGREGATE = {"commandStartedEvent": {"command": {"aggregate": "collection0"}, "commandName": "aggregate"}}


def test_event_count_is_exact_unless_extra_events_are_ignored() -> None:
    actual = [
        ("commandStartedEvent", started({"aggregate": "collection0", "pipeline": []})),
        ("commandStartedEvent", started({"getMore": 1, "collection": "collection0"})),
    ]
    with pytest.raises(AssertionError, match="expected 1 events, observed 2"):
        check_event_list("client0", _expectation([AGGREGATE]), actual)
    check_event_list("client0", _expectation([AGGREGATE], ignore_extra=True), actual)
    with pytest.raises(AssertionError, match="expected 3 events or more"):
        check_event_list("client0", _expectation([AGGREGATE] * 3, ignore_extra=True), actual)


def test_event_fields_are_matched() -> None:
    actual = [("commandStartedEvent", started({"aggregate": "collection0", "comment": "c"}, "admin"))]
    with pytest.raises(AssertionError, match="expected databaseName database0, got admin"):
        check_event_list(
            "client0", _expectation([{"commandStartedEvent": {"databaseName": "database0"}}]), actual
        )
    with pytest.raises(AssertionError, match=r"command\.comment"):
        check_event_list(
            "client0", _expectation([{"commandStartedEvent": {"command": {"comment": "other"}}}]), actual
        )
    with pytest.raises(AssertionError, match="expected a commandSucceededEvent"):
        check_event_list("client0", _expectation([{"commandSucceededEvent": {}}]), actual)


def test_recorder_drops_ignored_sensitive_and_fail_point_commands() -> None:
    recorder = EventRecorder(["commandStartedEvent"], ["killCursors"])
    for command in (
        {"killCursors": "c", "cursors": []},
        {"configureFailPoint": "failCommand", "mode": "off"},
        {"saslStart": 1},
        {"aggregate": "c", "pipeline": []},
    ):
        recorder.started(started(command))
    recorder.enabled = False
    recorder.started(started({"find": "c"}))
    assert [event.command_name for _, event in recorder.events] == ["aggregate"]


def test_recorder_rejects_event_types_it_cannot_observe() -> None:
    with pytest.raises(UnsupportedError, match="poolCreatedEvent"):
        EventRecorder(["poolCreatedEvent"], [])
