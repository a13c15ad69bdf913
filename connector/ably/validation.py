"""What makes a message publishable, whatever source it came from (ABLY-CONTRACT.md).

Ably refuses these for good (40010 invalid channel, 40013 invalid extras, 40009 too large), so a source
checks them before publishing and treats a failure as an unpublishable record (dead-letter, skip or fail)
instead of sending a request that can only fail.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

__all__ = ["channel_name_problem", "headers_problem", "message_size"]

#: How much of a bad value a reason quotes: enough to recognise it, never a whole record.
QUOTE_LIMIT = 80


def quote(value: Any) -> str:
    """`repr(value)`, cut to QUOTE_LIMIT characters."""
    text = repr(value)
    return text if len(text) <= QUOTE_LIMIT else text[: QUOTE_LIMIT - 3] + "..."


def channel_name_problem(channel: str, subject: str = "channel name") -> str | None:
    """Why `channel` is not a valid Ably channel name (empty, leading `[` or `:`, a newline), or None.

    `subject` names the value in the reason, as the source's users know it (`_ablyChannel`, ...)."""
    if not channel:
        return f"{subject} is empty"
    if channel[0] in "[:":
        return f"{subject} must not start with '[' or ':' (got {quote(channel)})"
    if "\n" in channel or "\r" in channel:
        return f"{subject} must not contain a newline (got {quote(channel)})"
    return None


def headers_problem(headers: Any, subject: str = "headers") -> str | None:
    """Why `headers` is not a flat string -> string object (Ably's `extras.headers`), or None."""
    if not isinstance(headers, Mapping):
        return f"{subject} must be an object (got {type(headers).__name__})"
    for key, value in headers.items():
        if not isinstance(value, str):
            return f"{subject} must map strings to strings ({key!r} is {type(value).__name__})"
    return None


def message_size(name: str, data: bytes, extras: Mapping[str, Any] | None) -> int:
    """Bytes as Ably counts them: name + data + clientId (none) + JSON of extras."""
    size = len(name.encode("utf-8")) + len(data)
    if extras:
        size += len(orjson.dumps(extras))
    return size
