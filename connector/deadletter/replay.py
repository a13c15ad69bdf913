"""Replay: dead letters republished through the connector's own publisher, then marked.

Why it is safe beside a running connector, without the lease: a replay publishes each record with its
ORIGINAL message id, so a record the connector (or an earlier replay) already delivered within Ably's
2-minute idempotency window is dropped by Ably, and is recognisable by id beyond it; each record's mark
is a write to that record alone, and the connector only ever inserts dead letters (a duplicate insert of
the same token / sequence_id is ignored), so the two never write the same thing.

Why the compact form by default: a replayed change is older than what its channel carried since. ably-js
hands it to subscribers like any other message, and a Models SDK model merges it as it arrives (its
sliding window, when enabled, orders only within `bufferMs`), so a client applying it as-is goes back in
time. The compact form (ON_OVERSIZE's `x-livesync-truncated` contract: the event without its document
bodies, the outbox row without `data`) tells the client which record changed and to refetch it, which is
right whatever happened since; `x-livesync-replayed: "true"` says why it came late. `--as-original` sends
the stored message whole, for channels whose clients can apply an old change (e.g. they compare versions).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

from connector.ably.client import CAPABILITY_DENIED_CODE
from connector.ably.ledger import InFlightLedger
from connector.ably.outbound import OutboundMessage
from connector.ably.oversize import TRUNCATED_HEADER, oversize_error, truncated_headers
from connector.ably.publisher import BatchClient, build_publisher
from connector.ably.validation import message_size
from connector.deadletter.model import DeadLetter, ReplayForm
from connector.deadletter.store import DeadLetterStore
from connector.errors import AblyAuthError, AblyError, UnpublishableEvent

if TYPE_CHECKING:
    from connector.config import Settings

__all__ = ["REPLAYED_HEADER", "Planned", "Sent", "plan", "publish", "refusal_hint"]

log = logging.getLogger(__name__)

#: Marks a message a replay sent (its id is the original one, so it is older than its channel's latest).
REPLAYED_HEADER: Final = "x-livesync-replayed"
#: A size no message reaches: routes a record whole, to measure it for `x-livesync-original-size`.
_UNLIMITED: Final = 1 << 62


@dataclass(slots=True)
class Planned:
    """One selected record and what a replay sends for it (`message`), or why it cannot (`error`)."""

    record: DeadLetter
    form: ReplayForm
    message: OutboundMessage | None = None
    error: UnpublishableEvent | None = None


@dataclass(slots=True)
class Sent:
    """What became of one planned message: `error` None = Ably accepted it; `done` False = never
    settled (the run timed out or stopped on a fatal error)."""

    planned: Planned
    done: bool
    error: AblyError | None = None


def plan(
    store: DeadLetterStore, records: Sequence[DeadLetter], settings: Settings, *, as_original: bool
) -> list[Planned]:
    """Build each record's message in stream order (`seq` -1, -2, ...: outside any ledger)."""
    out = []
    for index, record in enumerate(records):
        form: ReplayForm = "original" if as_original and record.whole else "compact"
        planned = Planned(record, form)
        try:
            planned.message = _message(store, record, -(index + 1), form, settings)
            if TRUNCATED_HEADER in _headers(planned.message):
                planned.form = "compact"  # too large whole, and ON_OVERSIZE=truncate: the size rules apply
        except UnpublishableEvent as exc:
            planned.error = exc
        out.append(planned)
    return out


def _message(
    store: DeadLetterStore, record: DeadLetter, seq: int, form: ReplayForm, settings: Settings
) -> OutboundMessage:
    limit = settings.max_message_size
    if form == "original":
        msg = store.route(
            record, seq, compact=False, max_message_size=limit, on_oversize=settings.on_oversize
        )
        headers = dict(_headers(msg))
    else:
        msg = store.route(record, seq, compact=True, max_message_size=limit, on_oversize="deadletter")
        original_size = msg.size
        if record.whole:
            # The whole message's size, for x-livesync-original-size (a raw event that still cannot be
            # decoded has none: its compact form is built from the identity fields read at the time).
            with contextlib.suppress(UnpublishableEvent):
                whole = store.route(
                    record, seq, compact=False, max_message_size=_UNLIMITED, on_oversize="deadletter"
                )
                original_size = whole.size
        headers = truncated_headers(_headers(msg), original_size)
    headers[REPLAYED_HEADER] = "true"
    message: dict[str, Any] = dict(msg.message)
    old_extras = message.get("extras")
    extras: dict[str, Any] = dict(old_extras or {})
    extras["headers"] = headers
    message["extras"] = extras
    # The router measured the data as Ably counts it (encrypted: IV + ciphertext, not its base64 text);
    # only the extras changed.
    size = msg.size - (message_size("", b"", old_extras) if old_extras else 0) + message_size("", b"", extras)
    if size > limit:
        raise oversize_error(size, limit, "deadletter")
    msg.message = message  # type: ignore[assignment]  # the same keys, headers added
    msg.size = size
    msg.spec = None
    return msg


def _headers(msg: OutboundMessage) -> dict[str, str]:
    extras: Any = msg.message.get("extras") or {}
    headers = extras.get("headers") if isinstance(extras, dict) else None
    return dict(headers) if isinstance(headers, dict) else {}


async def publish(
    messages: Sequence[Planned], settings: Settings, client: BatchClient, *, timeout: float
) -> tuple[list[Sent], AblyError | None]:
    """Publish the planned messages through the connector's publisher; each one's outcome, and the
    fatal error that stopped the run (Ably refusing the key), if any."""
    sendable = [p for p in messages if p.message is not None]
    by_seq = {p.message.seq: p for p in sendable if p.message is not None}
    rejected: dict[int, AblyError] = {}
    settled: dict[int, AblyError | None] = {}

    async def on_rejected(msg: OutboundMessage, error: AblyError) -> None:
        rejected[msg.seq] = error

    def on_done(msg: OutboundMessage) -> None:
        settled[msg.seq] = rejected.get(msg.seq)

    publisher = build_publisher(settings, client, InFlightLedger(max(1, len(sendable))), on_rejected)
    publisher.on_outside_done = on_done  # every seq is negative: none is in the ledger
    runner = asyncio.create_task(publisher.run(), name="deadletter-replay-publisher")
    try:
        publisher.submit_many([p.message for p in sendable if p.message is not None])
        await publisher.drain(timeout)
    finally:
        await publisher.aclose()
        await asyncio.gather(runner, return_exceptions=True)
    fatal: AblyError | None = None
    if not runner.cancelled() and isinstance(runner.exception(), AblyError):
        fatal = runner.exception()  # type: ignore[assignment]
    elif not runner.cancelled() and runner.exception() is not None:
        raise runner.exception()  # type: ignore[misc]
    sent = [Sent(p, seq in settled, settled.get(seq)) for seq, p in by_seq.items()]
    return sent, fatal


def refusal_hint(error: AblyError, channel: str | None) -> str:
    """What the operator should do about Ably's refusal."""
    if error.ably_code == CAPABILITY_DENIED_CODE:
        return f"the key may not publish on {channel!r}: widen its capability, then replay again"
    if isinstance(error, AblyAuthError):
        return "Ably refused the key: check ABLY_API_KEY (and that the key is enabled)"
    return "still refused by Ably: fix the cause, then replay again"


def now() -> datetime:
    return datetime.now(UTC)
