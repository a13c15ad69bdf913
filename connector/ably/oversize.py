"""A message over MAX_MESSAGE_SIZE, whatever its source (ON_OVERSIZE).

`truncate` (default) publishes the change in a compact form on the same channel, with the same id and name:
without its document bodies, plus two headers, so that a client knows which record changed and refetches
it (a Models SDK model resyncs) instead of silently keeping stale state:

    x-livesync-truncated: "true"
    x-livesync-original-size: "<bytes of the full message, as Ably counts them>"

Only if even the compact form is over the limit does the change become unpublishable (ON_UNPUBLISHABLE).
`deadletter` makes every oversize change unpublishable; `fail` stops the connector before it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from connector.errors import UnpublishableEvent

__all__ = ["ORIGINAL_SIZE_HEADER", "TRUNCATED_HEADER", "OnOversize", "oversize_error", "truncated_headers"]

OnOversize = Literal["truncate", "deadletter", "fail"]

TRUNCATED_HEADER = "x-livesync-truncated"
ORIGINAL_SIZE_HEADER = "x-livesync-original-size"


def truncated_headers(headers: Mapping[str, str] | None, original_size: int) -> dict[str, str]:
    """The message's own headers plus the two that mark it truncated."""
    out = dict(headers or {})
    out[TRUNCATED_HEADER] = "true"
    out[ORIGINAL_SIZE_HEADER] = str(original_size)
    return out


def oversize_error(
    size: int, max_size: int, policy: OnOversize, *, compact_size: int | None = None
) -> UnpublishableEvent:
    """The unpublishable error for a message that cannot go out (too large, or too large even compact)."""
    reason = f"message is {size} bytes, over MAX_MESSAGE_SIZE of {max_size} bytes"
    if compact_size is not None:
        reason += f"; truncated it is still {compact_size} bytes"
    if policy == "fail":
        reason += " (ON_OVERSIZE=fail)"
    return UnpublishableEvent(reason, kind="too_large", fatal=policy == "fail")
