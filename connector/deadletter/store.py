"""What a source's dead-letter store offers the core.

A store reads and updates the source's own dead-letter records (`ably_deadletter`, `<outbox>_deadletter`)
and knows how its source turns one into an Ably message; the core does everything else. Every method
maps database errors to the connector's (`StreamError` / `DatabaseUnavailable` / `SchemaError`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from connector.ably.outbound import OutboundMessage
from connector.ably.oversize import OnOversize
from connector.deadletter.model import DeadLetter, ReplayForm, Selection

__all__ = ["DeadLetterStore"]


class DeadLetterStore(Protocol):
    #: Where the records live, for messages (`ably_deadletter`, `public.outbox_deadletter`).
    where: str

    async def open(self) -> None:
        """Connect, and check the records' home exists (raises a ConnectorError with the reason)."""
        ...

    async def find(self, selection: Selection) -> list[DeadLetter]:
        """Matching records in stream order (the order their messages were meant to go out). `route`,
        the marks and `delete` take records of the latest `find` (or `get`) only."""
        ...

    async def get(self, record_id: str) -> DeadLetter | None: ...

    def route(
        self, record: DeadLetter, seq: int, *, compact: bool, max_message_size: int, on_oversize: OnOversize
    ) -> OutboundMessage:
        """The record's message as the running connector would build it (its router, the same id),
        `compact` without the document bodies / data. Raises UnpublishableEvent."""
        ...

    async def mark_published(self, record: DeadLetter, at: datetime, form: ReplayForm) -> None: ...

    async def mark_failed(self, record: DeadLetter, at: datetime, reason: str, code: int, kind: str) -> None:
        """The replay failed for good: the record stays a dead letter, with this reason."""
        ...

    async def delete(self, records: Sequence[DeadLetter]) -> int:
        """Delete these records; returns how many were deleted."""
        ...

    async def close(self) -> None:
        """Idempotent."""
        ...
