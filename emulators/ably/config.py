"""Emulator settings; the mutable ones can be changed at runtime through ``/_emulator/config``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Final

from emulators.ably.messages import DEFAULT_MAX_MESSAGE_SIZE

DEFAULT_DEDUPE_WINDOW_S: Final = 120.0  # Ably detects duplicate message ids for 2 minutes
DEFAULT_KEY: Final = "app.key:secret"
# Ably's defaults (ably-js reads both from CONNECTED's connectionDetails): a disconnected client may resume
# its connection for 2 minutes; the server promises some traffic (a heartbeat at least) every 15 s.
DEFAULT_CONNECTION_STATE_TTL_S: Final = 120.0
DEFAULT_HEARTBEAT_INTERVAL_S: Final = 15.0
# How batch publish answers. "legacy": the protocol-v2 shape for every request (an array of entries, or
# 400/40020 with batchResponse). "by_version": what Ably does, by the request's X-Ably-Version: from 3 on,
# one BatchResult per BatchSpec ({successCount, failureCount, results}), 201 even when entries failed.
BATCH_RESPONSES: Final = ("legacy", "by_version")
BATCH_RESULT_MIN_VERSION: Final = 3

# Settings a running emulator accepts through configure() / POST /_emulator/config.
RUNTIME_FIELDS: Final = frozenset(
    {
        "latency_ms",
        "max_message_size",
        "channel_rate_limit",
        "dedupe_window_s",
        "keys",
        "tokens",
        "connection_state_ttl_s",
        "heartbeat_interval_s",
        "batch_response",
    }
)


@dataclass
class EmulatorConfig:
    """What the emulator enforces. Zero disables latency and the channel rate limit."""

    keys: tuple[str, ...] = (DEFAULT_KEY,)
    tokens: tuple[str, ...] = ()
    latency_ms: float = 0.0
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    channel_rate_limit: float = 0.0
    dedupe_window_s: float = DEFAULT_DEDUPE_WINDOW_S
    connection_state_ttl_s: float = DEFAULT_CONNECTION_STATE_TTL_S
    heartbeat_interval_s: float = DEFAULT_HEARTBEAT_INTERVAL_S
    batch_response: str = "legacy"
    # Derived: keyName → secret, rebuilt whenever keys change.
    secrets_by_key_name: dict[str, str] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.keys = tuple(self.keys)
        self.tokens = tuple(self.tokens)
        self.secrets_by_key_name = {}
        for key in self.keys:
            name, sep, secret = key.partition(":")
            if not sep or "." not in name or not secret:
                raise ValueError(f"an Ably key must look like appId.keyId:secret, got {key!r}")
            self.secrets_by_key_name[name] = secret
        if min(self.latency_ms, self.channel_rate_limit, self.dedupe_window_s) < 0:
            raise ValueError("latency_ms, channel_rate_limit and dedupe_window_s must be >= 0")
        if self.max_message_size <= 0:
            raise ValueError("max_message_size must be > 0")
        if self.connection_state_ttl_s <= 0 or self.heartbeat_interval_s <= 0:
            raise ValueError("connection_state_ttl_s and heartbeat_interval_s must be > 0")
        if self.batch_response not in BATCH_RESPONSES:
            raise ValueError(f"batch_response must be one of {BATCH_RESPONSES}, got {self.batch_response!r}")

    def update(self, changes: dict[str, Any]) -> None:
        """Apply runtime changes after validating every field (all or nothing)."""
        unknown = set(changes) - RUNTIME_FIELDS
        if unknown:
            raise ValueError(f"unknown config fields: {sorted(unknown)}")
        merged = {**self.public(), **changes}
        candidate = EmulatorConfig(
            keys=tuple(merged["keys"]),
            tokens=tuple(merged["tokens"]),
            latency_ms=float(merged["latency_ms"]),
            max_message_size=int(merged["max_message_size"]),
            channel_rate_limit=float(merged["channel_rate_limit"]),
            dedupe_window_s=float(merged["dedupe_window_s"]),
            connection_state_ttl_s=float(merged["connection_state_ttl_s"]),
            heartbeat_interval_s=float(merged["heartbeat_interval_s"]),
            batch_response=merged["batch_response"],
        )
        self.__dict__.update(candidate.__dict__)

    def public(self) -> dict[str, Any]:
        """The settings as JSON-able data (secrets included: this is a test server)."""
        data = asdict(self)
        del data["secrets_by_key_name"]
        data["keys"] = list(self.keys)
        data["tokens"] = list(self.tokens)
        return data
