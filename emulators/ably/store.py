"""In-memory message store: delivery, idempotent-publish deduplication, channel rate limits, counters.

Thread-safe (one lock) because the threaded emulator is inspected from the test's thread while its
loop publishes. Per-message work is kept to a few dict operations: benchmarks push 100k+ messages.

A stored message is a flat dict: the MESSAGE_FIELDS, ``channel`` and ``received_at``, with ``extras`` kept
as its compact JSON text. Holding no container, it is never tracked by the garbage collector, which
would otherwise walk every message kept at each collection (with 100k messages stored, more CPU than
the publishing itself). ``messages()`` and listeners get the public form (``extras`` an object again);
``history()`` and delivery listeners get the stored dicts, rendered through ``rest.history_view``.
"""

from __future__ import annotations

import itertools
import secrets
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from emulators.ably.config import EmulatorConfig
from emulators.ably.errors import CHANNEL_RATE_LIMIT, AblyHttpError

Listener = Callable[[dict[str, Any]], None]
# (channel, position of the first message (1-based), the messages, origin): one call per published unit.
DeliveryListener = Callable[[str, int, list[dict[str, Any]], str | None], None]
# A unit of a batch publish: (channel, normalised messages, unit id, owned: the store may keep the dicts,
# which must then come from messages.normalize_for_store).
BatchUnit = tuple[str, list[dict[str, Any]], str | None, bool]


@dataclass(frozen=True)
class PublishResult:
    """Outcome of publishing one unit (a message or an id-linked array) to one channel."""

    message_id: str
    duplicate: bool


class Store:
    """Messages delivered so far, the dedupe window and the counters behind ``stats()``."""

    def __init__(
        self,
        config: EmulatorConfig,
        clock: Callable[[], float] = time.monotonic,
        wall_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
    ) -> None:
        self._config = config
        self._clock = clock
        self._wall_ms = wall_ms
        self._lock = threading.Lock()
        self._listeners: list[Listener] = []
        self._delivery_listeners: list[DeliveryListener] = []
        self._id_prefix = secrets.token_hex(4)
        self._clear()

    def _clear(self) -> None:
        # Names this generation of the store in channel serials: a serial from before a reset is stale.
        self.epoch = secrets.token_hex(4)
        self._messages: list[dict[str, Any]] = []
        self._by_channel: dict[str, list[dict[str, Any]]] = {}
        # (channel, unit id) → monotonic time first seen; the deque expires them in arrival order.
        self._seen: dict[tuple[str, str], float] = {}
        self._seen_order: deque[tuple[float, tuple[str, str]]] = deque()
        # channel → [tokens, last refill time] of a token bucket holding at most one second of rate.
        self._buckets: dict[str, list[float]] = {}
        # channel → publishes it refused with 42913 (a test measures a client's pacing per channel).
        self._rate_limited_by_channel: Counter[str] = Counter()
        self._counters: Counter[str] = Counter()
        self._status_counts: Counter[str] = Counter()
        # API key name → authenticated requests: which client did what (e.g. which of several connectors).
        self._key_requests: Counter[str] = Counter()
        self._ids = itertools.count()

    def reset(self) -> None:
        """Forget messages, dedupe state, rate buckets and counters."""
        with self._lock:
            self._clear()

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(message)`` for every delivered message (from the publishing thread)."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        """Stop calling ``listener``; unknown listeners are ignored."""
        if listener in self._listeners:
            self._listeners.remove(listener)

    def add_delivery_listener(self, listener: DeliveryListener) -> None:
        """Call ``listener(channel, first_position, messages, origin)`` once per delivered unit."""
        self._delivery_listeners.append(listener)

    def _expire_seen(self, now: float) -> None:
        horizon = now - self._config.dedupe_window_s
        order, seen = self._seen_order, self._seen
        while order and order[0][0] <= horizon:
            first_seen, key = order.popleft()
            if seen.get(key) == first_seen:
                del seen[key]

    def _take_token(self, channel: str, rate: float, now: float) -> AblyHttpError | None:
        """Take one publish's token from the channel's bucket (rate > 0); the 42913 error if it is empty.

        One bucket per channel, whoever publishes (every key, REST and realtime): Ably's limit is on the
        channel. A publish counts one, however many messages it carries (an array, a BatchSpec).
        """
        bucket = self._buckets.get(channel)
        if bucket is None:
            bucket = self._buckets[channel] = [rate, now]
        tokens = min(rate, bucket[0] + (now - bucket[1]) * rate)
        bucket[1] = now
        # Under 1/s the bucket never holds a whole token: a publish then passes on a full bucket.
        if tokens < 1 and tokens < rate:
            bucket[0] = tokens
            self._counters["rate_limited"] += 1
            self._rate_limited_by_channel[channel] += 1
            return AblyHttpError(
                CHANNEL_RATE_LIMIT,
                429,
                f"Rate limit exceeded; request rejected (nonfatal); metric = channel.maxRate; "
                f"channel {channel!r}, {rate:g} messages/s",
            )
        bucket[0] = tokens - 1
        return None

    def publish(
        self,
        channel: str,
        messages: list[dict[str, Any]],
        unit_id: str | None,
        origin: str | None = None,
    ) -> PublishResult:
        """Deliver ``messages`` (normalised: messages.normalize_message or normalize_for_store) to ``channel``
        as one unit.

        A unit whose id was seen on this channel within the dedupe window is accepted but not stored.
        The publish counts one toward the channel rate limit, however many messages it has (Ably: an array
        is published atomically and counts as a single message). ``origin`` is the realtime connection
        that published it (None for REST), for delivery listeners. Raises 42913 when the channel rate
        limit is exceeded.
        """
        [outcome], deliveries = self._publish_units([(channel, messages, unit_id, False)])
        if isinstance(outcome, AblyHttpError):
            raise outcome
        self._notify(deliveries, origin)
        return PublishResult(outcome, not deliveries)

    def publish_batch(self, units: list[BatchUnit]) -> list[str | AblyHttpError]:
        """Publish the units of a REST batch in order, each ``(channel, messages, unit_id, owned)``; return
        per unit its message id (a duplicate's too) or its 42913 error.

        The same rules as ``publish`` (a BatchSpec counts as one message toward each of its channels' rate
        limits), but one lock, one clock reading and one counter update for the whole request: units are
        decided in request order, so when a channel's budget runs out mid-request its earlier units are
        accepted and its later ones refused, never the reverse. With ``owned`` the caller hands the
        message dicts over, so they are completed in place rather than copied (for a unit published to a
        single channel). Listeners are called once every unit is stored, unit by unit in order, exactly as
        ``publish`` calls them.
        """
        outcomes, deliveries = self._publish_units(units)
        self._notify(deliveries, None)
        return outcomes

    def _publish_units(
        self, units: list[BatchUnit]
    ) -> tuple[list[str | AblyHttpError], list[tuple[str, int, list[dict[str, Any]]]]]:
        """Store units under the lock, in order: per unit its message id or error, and per delivered (not
        duplicate) unit (channel, position of its first message, the stored messages). One call is one
        publish request (REST request or realtime MESSAGE) for ``rate_limited_requests``."""
        now = self._clock()
        received_at = self._wall_ms()
        outcomes: list[str | AblyHttpError] = []
        deliveries: list[tuple[str, int, list[dict[str, Any]]]] = []
        delivered_count = 0
        with self._lock:
            seen, seen_order, by_channel = self._seen, self._seen_order, self._by_channel
            rate = self._config.channel_rate_limit
            limited_before = self._counters["rate_limited"]
            horizon = now - self._config.dedupe_window_s
            for channel, messages, unit_id, owned in units:
                if rate > 0:
                    refused = self._take_token(channel, rate, now)
                    if refused is not None:
                        outcomes.append(refused)
                        continue
                if unit_id is not None:
                    if seen_order and seen_order[0][0] <= horizon:
                        self._expire_seen(now)
                    key = (channel, unit_id)
                    if key in seen:
                        self._counters["duplicates_dropped"] += len(messages)
                        outcomes.append(unit_id)
                        continue
                    seen[key] = now
                    seen_order.append((now, key))
                    base = unit_id
                else:
                    base = f"{self._id_prefix}-{next(self._ids)}"
                history = by_channel.get(channel)
                if history is None:
                    history = by_channel[channel] = []
                if owned:
                    # The dicts are ours, already in stored form: completed in place.
                    for idx, stored in enumerate(messages):
                        stored["channel"] = channel
                        stored["received_at"] = received_at
                        if stored["id"] is None:
                            stored["id"] = f"{base}:{idx}"
                    delivered = messages
                else:
                    delivered = [
                        _stored(msg, idx, base, channel, received_at) for idx, msg in enumerate(messages)
                    ]
                deliveries.append((channel, len(history) + 1, delivered))
                history.extend(delivered)
                self._messages.extend(delivered)
                delivered_count += len(delivered)
                outcomes.append(base)
            self._counters["messages_delivered"] += delivered_count
            if rate > 0 and self._counters["rate_limited"] != limited_before:
                self._counters["rate_limited_requests"] += 1
        return outcomes, deliveries

    def _notify(self, deliveries: list[tuple[str, int, list[dict[str, Any]]]], origin: str | None) -> None:
        """Call the listeners for each delivered unit in order (outside the lock)."""
        listeners, delivery_listeners = self._listeners, self._delivery_listeners
        for channel, first_position, delivered in deliveries:
            if listeners:
                messages = [public_message(stored) for stored in delivered]
                for listener in listeners:
                    for message in messages:
                        listener(message)
            for delivery_listener in delivery_listeners:
                delivery_listener(channel, first_position, delivered, origin)

    def count(self, name: str, amount: int = 1) -> None:
        """Add to a named counter (requests, faults_served, messages_rejected, …)."""
        with self._lock:
            self._counters[name] += amount

    def count_key(self, key_name: str) -> None:
        """Count one request authenticated with the API key ``key_name``."""
        with self._lock:
            self._key_requests[key_name] += 1

    def record_response(self, status: int | str) -> None:
        """Count one answered (or dropped) non-admin request by its status."""
        with self._lock:
            self._counters["requests"] += 1
            self._status_counts[str(status)] += 1

    def messages(self, channel: str | None = None, since: int = 0) -> list[dict[str, Any]]:
        """Delivered messages in arrival order (copies), optionally of one channel; ``since`` skips the
        first ones (a slice start: negative counts from the end)."""
        with self._lock:
            source = self._messages if channel is None else self._by_channel.get(channel, [])
            return [public_message(m) for m in source[since:]]

    def messages_for_json(self, channel: str | None = None, since: int = 0) -> list[dict[str, Any]]:
        """``messages()`` for JSON encoding only: ``extras`` stays its JSON (an orjson.Fragment)."""
        with self._lock:
            source = self._messages if channel is None else self._by_channel.get(channel, [])
            return [_for_json(m) for m in source[since:]]

    def history(self, channel: str) -> list[dict[str, Any]]:
        """A snapshot of the channel's messages, oldest first (the stored dicts, ``extras`` as JSON text:
        do not mutate; render them with ``rest.history_view``)."""
        with self._lock:
            return list(self._by_channel.get(channel, ()))

    def channel_length(self, channel: str) -> int:
        """How many messages ``channel`` has received: its current position."""
        with self._lock:
            return len(self._by_channel.get(channel, ()))

    def stats(self) -> dict[str, Any]:
        """Counters as JSON-able data."""
        with self._lock:
            counters = self._counters
            return {
                "requests": counters["requests"],
                "publish_requests": counters["publish_requests"],
                "messages_delivered": counters["messages_delivered"],
                "duplicates_dropped": counters["duplicates_dropped"],
                "messages_rejected": counters["messages_rejected"],
                "rate_limited": counters["rate_limited"],
                "rate_limited_by_channel": dict(self._rate_limited_by_channel),
                "rate_limited_requests": counters["rate_limited_requests"],
                "faults_served": counters["faults_served"],
                "status_counts": dict(self._status_counts),
                "requests_by_key": dict(self._key_requests),
                "channels": {name: len(msgs) for name, msgs in self._by_channel.items()},
            }


def _stored(msg: dict[str, Any], idx: int, base: str, channel: str, received_at: int) -> dict[str, Any]:
    """The stored form of a normalised message published as ``<base>:<idx>`` unless it has an id."""
    extras = msg["extras"]
    return {
        "id": f"{base}:{idx}" if msg["id"] is None else msg["id"],
        "name": msg["name"],
        "data": msg["data"],
        "encoding": msg["encoding"],
        "clientId": msg["clientId"],
        "extras": orjson.dumps(extras).decode() if isinstance(extras, dict) else extras,
        "channel": channel,
        "received_at": received_at,
    }


def public_message(stored: dict[str, Any]) -> dict[str, Any]:
    """A stored message as ``messages()`` returns it: a copy with ``extras`` an object again."""
    return _with_extras(stored, orjson.loads)


def _for_json(stored: dict[str, Any]) -> dict[str, Any]:
    return _with_extras(stored, orjson.Fragment)


def _with_extras(stored: dict[str, Any], convert: Any) -> dict[str, Any]:
    """A copy of a stored message with its ``extras`` JSON text passed through ``convert``."""
    message = dict(stored)
    extras = message["extras"]
    if extras is not None:
        message["extras"] = convert(extras)
    return message
