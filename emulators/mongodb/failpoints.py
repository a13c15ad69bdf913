"""``configureFailPoint``: failCommand and failGetMoreAfterCursorCheckout, as drivers' tests use them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import RESUMABLE_CHANGE_STREAM_CODES, RETRYABLE_WRITE_CODES, CommandError

SUPPORTED = frozenset({"failCommand", "failGetMoreAfterCursorCheckout"})
RETRYABLE_WRITE_COMMANDS = frozenset({"insert", "update", "delete", "findAndModify"})


@dataclass(slots=True)
class FailPoint:
    name: str
    mode: Any
    data: dict[str, Any] = field(default_factory=dict)
    times: int | None = None  # remaining activations; None = unlimited
    skip: int = 0
    hits: int = 0

    def fire(self) -> bool:
        """Count one matching evaluation; True if the failpoint acts on it."""
        if self.skip > 0:
            self.skip -= 1
            return False
        if self.times is not None:
            if self.times <= 0:
                return False
            self.times -= 1
        self.hits += 1
        return True

    @property
    def spent(self) -> bool:
        return self.times is not None and self.times <= 0


@dataclass(slots=True)
class Action:
    """What failCommand does to one command: block, then fail, drop the socket, or add a WC error."""

    block_s: float = 0.0
    error: CommandError | None = None
    close_connection: bool = False
    write_concern_error: dict[str, Any] | None = None


class FailPoints:
    def __init__(self) -> None:
        self._active: dict[str, FailPoint] = {}

    def clear(self) -> None:
        self._active.clear()

    def configure(self, cmd: dict[str, Any]) -> dict[str, Any]:
        name = cmd.get("configureFailPoint")
        if name not in SUPPORTED:
            raise CommandError(
                2, f"Cannot find failpoint named: {name!r} (the emulator supports {sorted(SUPPORTED)})"
            )
        mode = cmd.get("mode")
        previous = self._active.pop(name, None)
        count = previous.hits if previous else 0
        if mode == "off":
            return {"count": count}
        point = FailPoint(name, mode, dict(cmd.get("data") or {}))
        if mode == "alwaysOn":
            pass
        elif isinstance(mode, dict) and "times" in mode:
            point.times = int(mode["times"])
        elif isinstance(mode, dict) and "skip" in mode:
            point.skip = int(mode["skip"])
        else:
            raise CommandError(2, f"unsupported failpoint mode {mode!r}")
        self._active[name] = point
        return {"count": count}

    def _take(self, name: str) -> FailPoint | None:
        point = self._active.get(name)
        if point is None or not point.fire():
            return None
        if point.spent:
            self._active.pop(name, None)
        return point

    def for_command(self, command: str, app_name: str | None, retryable_write: bool) -> Action | None:
        point = self._active.get("failCommand")
        if point is None:
            return None
        data = point.data
        if command not in (data.get("failCommands") or []):
            return None
        if "appName" in data and data["appName"] != app_name:
            return None
        if self._take("failCommand") is None:
            return None
        action = Action()
        if data.get("blockConnection"):
            action.block_s = float(data.get("blockTimeMS", 0)) / 1000.0
        if data.get("closeConnection"):
            action.close_connection = True
        elif "errorCode" in data:
            code = int(data["errorCode"])
            if "errorLabels" in data:
                labels = list(data["errorLabels"])
            else:
                # The server labels retryable-write errors itself unless the test dictates the labels.
                labels = ["RetryableWriteError"] if retryable_write and code in RETRYABLE_WRITE_CODES else []
            action.error = CommandError(
                code,
                "Failing command via 'failCommand' failpoint",
                labels=labels,
                fixed_labels="errorLabels" in data,
            )
        if "writeConcernError" in data:
            action.write_concern_error = dict(data["writeConcernError"])
        return action

    def get_more_after_checkout(self) -> CommandError | None:
        point = self._take("failGetMoreAfterCursorCheckout")
        if point is None:
            return None
        code = int(point.data.get("errorCode", 1))
        labels = ["ResumableChangeStreamError"] if code in RESUMABLE_CHANGE_STREAM_CODES else []
        return CommandError(
            code, "Failing getMore via 'failGetMoreAfterCursorCheckout' failpoint", labels=labels
        )
