"""What the demo prints when it stops: one paragraph a newcomer can check against the guarantees."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class RunSummary:
    """Counts gathered while the demo runs, and the facts collected at its stop."""

    written: int = 0
    delivered: int = 0
    per_channel: Counter[str] = field(default_factory=Counter)
    ids: set[str] = field(default_factory=set)
    duplicates_delivered: int = 0
    duplicates_dropped: int = 0
    caught_up: bool = False
    connector_status: int | None = None
    connector_stop_s: float = 0.0
    token: str | None = None

    def record_delivery(self, channel: str, message_id: str) -> None:
        """One message Ably received (in arrival order)."""
        self.delivered += 1
        self.per_channel[channel] += 1
        if message_id in self.ids:
            self.duplicates_delivered += 1
        self.ids.add(message_id)

    def text(self, namespace: str) -> str:
        """The summary paragraph."""
        channels = ", ".join(f"{name} {count}" for name, count in sorted(self.per_channel.items()))
        if self.connector_status == 0:
            stop = f"the connector drained and stopped cleanly (status 0) in {self.connector_stop_s:.1f}s"
        else:
            stop = f"the connector stopped with status {self.connector_status}"
        missing = ""
        if not self.caught_up:
            missing = f" ({self.written - self.delivered} not delivered before the stop)"
        token = self.token or "none (nothing stored)"
        return (
            f"Summary: {self.written} changes written to {namespace}; {stop}. Ably received "
            f"{self.delivered} messages{missing} ({channels or 'no channels'}); duplicates delivered: "
            f"{self.duplicates_delivered}, replays dropped by idempotent publishing: "
            f"{self.duplicates_dropped}. "
            f"Stored resume token: {token}."
        )
