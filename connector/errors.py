"""The connector's one exception tree.

    ConnectorError
    ├── ConfigError                 bad environment / pipeline (exit 2)
    │   └── PipelineError           72005 invalid pipeline
    ├── UnpublishableEvent          one event can never be published (dead-letter / skip / fail)
    │   └── NoChannelError          72004 event has no usable `_ablyChannel`
    ├── AblyError                   an Ably REST failure, carrying Ably's error code
    │   ├── AblyRetryableError      5xx, timeouts, unreachable host (fallback hosts apply)
    │   ├── AblyRateLimitError      429 / 429xx (back off, never a fallback host)
    │   ├── AblyRejectedError       permanent 4xx for a message (unpublishable)
    │   └── AblyAuthError           72001 with 40101 etc.: fatal
    ├── StreamError                 72003 cannot open / keep the change stream
    │   ├── HistoryLostError        72008 the stored position fell off the oplog
    │   └── DatabaseUnavailable     72003 PostgreSQL unreachable or the connection broke (retry)
    ├── SchemaError                 72003 the outbox/nodes tables are missing or not Ably's shape
    ├── LeadershipLost              this instance is no longer its CONNECTOR_ID's one publisher
    ├── LeaseStoreError             72003 the lease cannot be read or written (retried)
    ├── CheckpointError             72007 cannot store the resume token
    │   └── CorruptCheckpointError  72006 stored token unreadable
    └── FatalError                  stop the connector (exit 1) with one clear line

Each class carries `code`, the managed connector's 7200x code where one applies.
"""

from __future__ import annotations


class ConnectorError(Exception):
    """Root of every error the connector raises on purpose."""

    code: int = 72000

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class ConfigError(ConnectorError):
    """Raised when configuration is invalid; `problems` holds one line per bad variable."""

    code = 2

    def __init__(self, problems: list[str], *, code: int | None = None) -> None:
        super().__init__("; ".join(problems), code=code)
        self.problems = problems


class PipelineError(ConfigError):
    """Raised when PIPELINE / PIPELINE_FILE is not a valid change-stream pipeline."""

    code = 72005


class UnpublishableEvent(ConnectorError):
    """Raised when one event can never be published (routing, headers, size, undecodable, permanent 4xx).

    `kind` names the reason in a bounded vocabulary (metrics label, dead-letter field); `fatal` stops the
    connector whatever ON_UNPUBLISHABLE says (ON_OVERSIZE=fail).
    """

    code = 72001
    kind = "invalid"

    def __init__(
        self, reason: str, *, code: int | None = None, kind: str | None = None, fatal: bool = False
    ) -> None:
        super().__init__(reason, code=code)
        self.reason = reason
        if kind is not None:
            self.kind = kind
        self.fatal = fatal


class NoChannelError(UnpublishableEvent):
    """Raised when an event has no (valid) `_ablyChannel`."""

    code = 72004
    kind = "no_channel"


class AblyError(ConnectorError):
    """Raised for an Ably REST failure; `ably_code` and `status` are Ably's own."""

    code = 72001

    def __init__(self, message: str, *, ably_code: int = 0, status: int = 0) -> None:
        super().__init__(message)
        self.ably_code = ably_code
        self.status = status

    def __str__(self) -> str:
        return f"{self.message} (ably code {self.ably_code}, http {self.status})"


class AblyRetryableError(AblyError):
    """Raised for 5xx, timeouts and unreachable hosts: retry, on a fallback host if any."""


class AblyRateLimitError(AblyError):
    """Raised for 429 / 429xx: back off with a growing delay, same host."""


class AblyRejectedError(AblyError):
    """Raised when Ably permanently rejects a message (40009, 40010, 40013, other 4xx)."""


class AblyAuthError(AblyError):
    """Raised when Ably refuses the credentials (40101, 40160 ...): fatal."""


class StreamError(ConnectorError):
    """Raised when the change stream cannot be opened or kept open."""

    code = 72003


class HistoryLostError(StreamError):
    """Raised when the stored position is no longer in the oplog (server code 286)."""

    code = 72008


class DatabaseUnavailable(StreamError):
    """Raised when PostgreSQL cannot be reached or a connection to it broke (retried)."""


class SchemaError(ConnectorError):
    """Raised when the outbox, nodes or connector tables are missing, misshapen or not accessible."""

    code = 72003


class LeadershipLost(ConnectorError):
    """Raised when this instance stops being the publisher: its lease expired by its own monotonic clock,
    a fenced write matched nothing (another instance took over), or its lock session ended.

    Not fatal: the worker drops its in-flight work without storing anything and becomes a standby.
    """


class LeaseStoreError(ConnectorError):
    """Raised when the lease cannot be read or written (the database is unreachable); retried."""

    code = 72003


class CheckpointError(ConnectorError):
    """Raised when the resume token cannot be stored."""

    code = 72007


class CorruptCheckpointError(CheckpointError):
    """Raised when the stored resume-token document cannot be read back."""

    code = 72006


class FatalError(ConnectorError):
    """Raised to stop the connector with exit status 1 and one clear log line."""
