"""Server error codes, names and labels, as the real server reports them.

Drivers decide everything from ``code`` and ``errorLabels`` (never the message), so these tables are the
emulator's fidelity surface: a wrong label changes whether PyMongo resumes a change stream.
"""

from __future__ import annotations

from typing import Any

CODE_NAMES: dict[int, str] = {
    1: "InternalError",
    2: "BadValue",
    6: "HostUnreachable",
    7: "HostNotFound",
    9: "FailedToParse",
    11: "UserNotFound",
    13: "Unauthorized",
    14: "TypeMismatch",
    20: "IllegalOperation",
    24: "LockTimeout",
    26: "NamespaceNotFound",
    27: "IndexNotFound",
    28: "PathNotViable",
    40: "ConflictingUpdateOperators",
    43: "CursorNotFound",
    47: "NoMatchingDocument",
    48: "NamespaceExists",
    50: "MaxTimeMSExpired",
    52: "DollarPrefixedFieldName",
    56: "EmptyFieldName",
    59: "CommandNotFound",
    63: "StaleShardVersion",
    66: "ImmutableField",
    72: "InvalidOptions",
    73: "InvalidNamespace",
    76: "NoReplicationEnabled",
    85: "IndexOptionsConflict",
    86: "IndexKeySpecsConflict",
    89: "NetworkTimeout",
    91: "ShutdownInProgress",
    96: "OperationFailed",
    112: "WriteConflict",
    133: "FailedToSatisfyReadPreference",
    150: "StaleEpoch",
    166: "CommandNotSupportedOnView",
    168: "InvalidPipelineOperator",
    189: "PrimarySteppedDown",
    216: "ElectionInProgress",
    234: "RetryChangeStream",
    241: "ConversionFailure",
    225: "TransactionTooOld",
    251: "NoSuchTransaction",
    256: "TransactionCommitted",
    260: "InvalidResumeToken",
    262: "ExceededTimeLimit",
    263: "OperationNotSupportedInTransaction",
    280: "ChangeStreamFatalError",
    286: "ChangeStreamHistoryLost",
    292: "CursorInUse",
    9001: "SocketException",
    10058: "LegacyNotPrimary",
    10107: "NotWritablePrimary",
    10334: "BSONObjectTooLarge",
    11000: "DuplicateKey",
    11600: "InterruptedAtShutdown",
    11601: "Interrupted",
    11602: "InterruptedDueToReplStateChange",
    13297: "DatabaseDifferCase",
    13388: "StaleConfig",
    13435: "NotPrimaryNoSecondaryOk",
    13436: "NotPrimaryOrSecondary",
    40324: "UnrecognizedPipelineStage",
    40573: "ChangeStreamNotEnabled",
}

# Codes the server itself labels ResumableChangeStreamError on a getMore of a change stream
# (EMULATOR-NOTES: PyMongo >= 4 resumes only on the label, network errors and 43).
RESUMABLE_CHANGE_STREAM_CODES = frozenset(
    {6, 7, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436, 63, 150, 13388, 234, 133}
)

# "Not primary" / "node is recovering" codes: drivers mark the server Unknown unless the reply's
# topologyVersion shows the error is stale, so such replies always carry the current one.
STATE_CHANGE_CODES = frozenset({91, 189, 10058, 10107, 11600, 11602, 13435, 13436})

# Codes after which a retryable write may be retried (the server adds RetryableWriteError).
RETRYABLE_WRITE_CODES = frozenset({6, 7, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436})


class CommandError(Exception):
    """Raised by a command handler; becomes an ``ok: 0`` reply with this code, message and labels."""

    def __init__(
        self,
        code: int,
        message: str,
        *,
        labels: list[str] | None = None,
        extra: dict[str, Any] | None = None,
        fixed_labels: bool = False,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.labels = list(labels or [])
        self.extra = dict(extra or {})
        # The labels were dictated (a failpoint's errorLabels): the server adds none of its own.
        self.fixed_labels = fixed_labels

    @property
    def code_name(self) -> str:
        # The server names assertion-site codes "Location<code>".
        return CODE_NAMES.get(self.code, f"Location{self.code}" if self.code >= 10000 else "UnknownError")

    def to_reply(self) -> dict[str, Any]:
        reply: dict[str, Any] = {
            "ok": 0.0,
            "errmsg": self.message,
            "code": self.code,
            "codeName": self.code_name,
        }
        if self.labels:
            reply["errorLabels"] = self.labels
        reply.update(self.extra)
        return reply


class CloseConnection(Exception):
    """Raised to drop the client's socket without replying (failCommand ``closeConnection``)."""


def bad_value(message: str) -> CommandError:
    return CommandError(2, message)


def type_mismatch(message: str) -> CommandError:
    return CommandError(14, message)


def invalid_options(message: str) -> CommandError:
    return CommandError(72, message)
