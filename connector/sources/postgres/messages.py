"""Outbox row -> Ably message, as Ably's Postgres connector and the Models SDK expect it.

| outbox column | message field |
| --- | --- |
| `sequence_id` | `id` (decimal string: idempotent publishing, and the Models SDK's `sequenceId`) |
| `channel` | the channel |
| `name` | `name` |
| `data` (JSONB) | `data`, sent as its JSON text with `encoding: "json"`; a NULL `data` sends no data |
| `headers` (JSONB) | `extras.headers` + `x-ably-models-event-uuid: <mutation_id>` (+ `x-ably-models-reject` |
| | `"true"` for a `rejected` row) |

The row is read with `data::text` and `headers::text`: the JSON text goes out as it is, never parsed and
re-encoded (only `headers` is parsed, to merge and check it). A row that can never be published (bad
channel name, headers that are not a flat string map, over MAX_MESSAGE_SIZE) raises
`UnpublishableEvent`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from connector.ably.outbound import AblyMessage, OutboundMessage
from connector.ably.validation import channel_name_problem, headers_problem, message_size
from connector.errors import NoChannelError, UnpublishableEvent

__all__ = ["COLUMNS", "EVENT_UUID_HEADER", "REJECT_HEADER", "OutboxRow", "row_to_message"]

EVENT_UUID_HEADER = "x-ably-models-event-uuid"
REJECT_HEADER = "x-ably-models-reject"
#: The SELECT list the reader uses, in OutboxRow's field order.
COLUMNS = "sequence_id, mutation_id, channel, name, rejected, data::text, headers::text, processed"


@dataclass(slots=True)
class OutboxRow:
    """One outbox row as read (`data` and `headers` as JSON text, or None for SQL NULL)."""

    sequence_id: int
    mutation_id: str
    channel: str
    name: str
    rejected: bool
    data: str | None
    headers: str | None
    processed: bool = False


def _headers(row: OutboxRow) -> dict[str, str]:
    headers: Any = {}
    if row.headers is not None:
        headers = orjson.loads(row.headers)
        if headers is None:
            headers = {}
        problem = headers_problem(headers)
        if problem:
            raise UnpublishableEvent(problem)
    headers[EVENT_UUID_HEADER] = row.mutation_id
    if row.rejected:
        headers[REJECT_HEADER] = "true"
    return dict(headers)


def row_to_message(
    seq: int, row: OutboxRow, *, max_message_size: int, token: dict[str, Any]
) -> OutboundMessage:
    """Map one row or raise UnpublishableEvent (NoChannelError for a bad channel name)."""
    problem = channel_name_problem(row.channel)
    if problem:
        raise NoChannelError(problem)
    extras = {"headers": _headers(row)}
    message: AblyMessage = {"id": str(row.sequence_id), "name": row.name, "extras": extras}
    data = b""
    if row.data is not None:
        message["data"] = row.data
        message["encoding"] = "json"
        data = row.data.encode("utf-8")
    size = message_size(row.name, data, extras)
    if size > max_message_size:
        raise UnpublishableEvent(
            f"message is {size} bytes, over MAX_MESSAGE_SIZE of {max_message_size} bytes"
        )
    return OutboundMessage(seq=seq, channel=row.channel, message=message, size=size, token=token)
