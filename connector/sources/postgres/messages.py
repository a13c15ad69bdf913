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
re-encoded (only `headers` is parsed, to merge and check it). A row over MAX_MESSAGE_SIZE is published
without its payload by default (ON_OVERSIZE=truncate, `connector.ably.oversize`): same channel, id and
name, its headers plus `x-livesync-truncated` and `x-livesync-original-size`. A row that can never be
published (bad channel name, headers that are not a flat string map, too large even without its
payload) raises `UnpublishableEvent`.

With a `ChannelCipher` whose key applies to the row's channel, `data` goes out encrypted
(`json/utf-8/cipher+aes-256-cbc/base64`, connector/ably/cipher.py); the size check counts the encrypted
payload as Ably does (IV + padded ciphertext). A truncated row has no data, so nothing to encrypt.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import orjson

from connector.ably.cipher import ChannelCipher, sealed_size
from connector.ably.outbound import AblyMessage, OutboundMessage
from connector.ably.oversize import OnOversize, oversize_error, truncated_headers
from connector.ably.validation import channel_name_problem, headers_problem, message_size
from connector.errors import NoChannelError, UnpublishableEvent

__all__ = ["COLUMNS", "EVENT_UUID_HEADER", "REJECT_HEADER", "OutboxRow", "row_to_message"]

log = logging.getLogger(__name__)

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
    seq: int,
    row: OutboxRow,
    *,
    max_message_size: int,
    token: dict[str, Any],
    on_oversize: OnOversize = "truncate",
    cipher: ChannelCipher | None = None,
) -> OutboundMessage:
    """Map one row or raise UnpublishableEvent (NoChannelError for a bad channel name); with `cipher`,
    its data is encrypted when a key applies to the channel."""
    problem = channel_name_problem(row.channel)
    if problem:
        raise NoChannelError(problem)
    extras = {"headers": _headers(row)}
    message: AblyMessage = {"id": str(row.sequence_id), "name": row.name, "extras": extras}
    data = b""
    key = cipher.key_for(row.channel) if cipher is not None and row.data is not None else None
    if row.data is not None:
        message["data"] = row.data
        message["encoding"] = "json"
        data = row.data.encode("utf-8")
    size = message_size(row.name, data, extras)
    if key is not None:
        size += sealed_size(len(data)) - len(data)
    if size > max_message_size:
        if on_oversize != "truncate":
            raise oversize_error(size, max_message_size, on_oversize)
        extras = {"headers": truncated_headers(extras["headers"], size)}
        message = {"id": message["id"], "name": row.name, "extras": extras}
        compact = message_size(row.name, b"", extras)
        if compact > max_message_size:
            raise oversize_error(size, max_message_size, on_oversize, compact_size=compact)
        log.warning(
            "outbox row %d is %d bytes, over MAX_MESSAGE_SIZE of %d: published truncated (without its data)",
            row.sequence_id,
            size,
            max_message_size,
            extra={"code": 72001, "channel": row.channel},
        )
        size = compact
    elif key is not None and cipher is not None:
        message["data"], message["encoding"] = cipher.seal_json(key, data)
    # The outbox holds no commit time: latency is measured from the read of the row.
    return OutboundMessage(
        seq=seq, channel=row.channel, message=message, size=size, token=token, committed_at=time.time()
    )
