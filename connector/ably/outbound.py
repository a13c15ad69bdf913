"""Typed shapes passed between the reader, the router and the publisher."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypedDict


class AblyMessage(TypedDict, total=False):
    """One Ably REST message as sent on the wire."""

    id: str
    name: str
    data: str
    encoding: str
    extras: dict[str, Any]


@dataclass(slots=True)
class OutboundMessage:
    """A routed change event, ready to publish.

    `seq` is the event's position in the stream as read by this process (0, 1, 2 ...);
    the in-flight ledger acknowledges by `seq`. `size` is the size as Ably counts it. `spec` caches the
    encoded BatchSpec (the publisher measures it at submit and the client sends the same bytes).
    """

    seq: int
    channel: str
    message: AblyMessage
    size: int
    token: dict[str, Any] = field(repr=False)
    spec: bytes | None = field(default=None, repr=False)
    #: When the change was committed (unix seconds; 0 unknown): the latency histogram's start.
    committed_at: float = field(default=0.0, repr=False)
