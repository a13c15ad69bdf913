"""Change event -> Ably message (the hot path: one call per event, so kept lean).

Follows the message contract in ARCHITECTURE.md: channel from `_ablyChannel`, name from `_ablyMsgName`
(default: `operationType`), `extras.headers` from `_ablyMsgHeaders`, `id` from the resume token's
`_data`, and `data` = the whole event as MongoDB Extended JSON sent as a JSON string with
`encoding: "json"`. Anything that can never be published raises `UnpublishableEvent` (or its subclass
`NoChannelError`, 72004) with a reason fit for the dead-letter record.

Encoding is pluggable: `ENCODERS[json_mode]` maps a mode to a function event -> UTF-8 bytes. The default
is `encode_fast` (a walk that hands only non-JSON BSON values to `bson.json_util.default`, with exact
shortcuts for ObjectId, Decimal128 and naive datetimes, then orjson), whose output parses to the same
value as `bson.json_util.dumps` (`encode_reference`), the slow but authoritative encoder; a hypothesis
test pins the two together.

With a `ChannelCipher` whose key applies to the channel, `data` goes out encrypted
(`json/utf-8/cipher+aes-256-cbc/base64`, connector/ably/cipher.py) and the size check counts the encrypted
payload as Ably does (IV + padded ciphertext), so truncation is decided on what Ably will measure.
"""

from __future__ import annotations

import datetime
import logging
import math
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson
from bson import Binary, Code, Decimal128, Int64, MaxKey, MinKey, ObjectId, Regex, Timestamp, json_util
from bson.binary import UuidRepresentation
from bson.json_util import CANONICAL_JSON_OPTIONS, RELAXED_JSON_OPTIONS, JSONOptions

from connector.ably.cipher import ChannelCipher, sealed_size
from connector.ably.outbound import AblyMessage, OutboundMessage
from connector.ably.oversize import OnOversize, oversize_error, truncated_headers
from connector.ably.validation import channel_name_problem, headers_problem, message_size, quote
from connector.errors import NoChannelError, UnpublishableEvent
from connector.sources.mongodb.decode import UndecodableEvent

__all__ = [
    "ENCODERS",
    "MISSING",
    "OVERSIZE_FIELD",
    "Encoder",
    "RouteStats",
    "channel_problem",
    "decimal128_str",
    "encode_driver_event",
    "encode_fast",
    "encode_reference",
    "make_router",
    "message_size",
    "to_message",
]

Encoder = Callable[[Mapping[str, Any]], bytes]

log = logging.getLogger(__name__)

_NONE = type(None)


# A native uuid.UUID reaches us only when the client was configured with uuidRepresentation=standard
# (by default the driver decodes subtype 4 as Binary); json_util's defaults refuse to encode it, so
# encode it back as the standard subtype-4 binary it was stored as.
_RELAXED = RELAXED_JSON_OPTIONS.with_options(uuid_representation=UuidRepresentation.STANDARD)
_CANONICAL = CANONICAL_JSON_OPTIONS.with_options(uuid_representation=UuidRepresentation.STANDARD)


def _options(json_mode: str) -> JSONOptions:
    return _CANONICAL if json_mode == "canonical" else _RELAXED


def encode_reference(event: Mapping[str, Any], json_mode: str = "relaxed") -> bytes:
    """The event as Extended JSON via `bson.json_util` (authoritative, about 3x slower than the fast path)."""
    text = json_util.dumps(event, json_options=_options(json_mode), separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8")


#: Decimal128 bit layout (IEEE 754-2008 BID): sign bit, 14-bit biased exponent, 113-bit coefficient.
_D128_EXPONENT_BIAS = 6176
_D128_MAX_COEFFICIENT = 10**34 - 1
_D128_SPECIAL_MASK = 0x3 << 61  # both set: NaN, Infinity or the (never canonical) "11" form


def decimal128_str(value: Decimal128) -> str:
    """`str(value)` in a fifth of the time: libmpdec formats the coefficient and exponent.

    `Decimal128.__str__` builds a digit tuple in Python; parsing `<coef>E<exp>` keeps the exact
    exponent (no context rounding) and prints the same text. Specials take the slow path.
    """
    bid = value.bid
    high = int.from_bytes(bid[8:], "little")
    if high & _D128_SPECIAL_MASK == _D128_SPECIAL_MASK:
        return str(value)
    coefficient = ((high & 0x1FFFFFFFFFFFF) << 64) | int.from_bytes(bid[:8], "little")
    if coefficient > _D128_MAX_COEFFICIENT:
        return str(value)  # non-canonical encoding: the value is zero; let bson say how
    exponent = ((high >> 49) & 0x3FFF) - _D128_EXPONENT_BIAS
    sign = "-" if high >> 63 else ""
    return str(Decimal(f"{sign}{coefficient}E{exponent}"))


_EPOCH_NAIVE = datetime.datetime(1970, 1, 1)
#: Exact types json_util encodes as scalars: straight to `default`, skipping the container checks.
_BSON_SCALARS: frozenset[type] = frozenset(
    {Int64, Timestamp, Binary, Regex, MinKey, MaxKey, Code, datetime.datetime, bytes, float, int, uuid.UUID}
)


def _naive_datetime_iso(value: datetime.datetime) -> dict[str, str]:
    """json_util's relaxed `$date` for a naive (UTC) datetime from 1970 on, without strftime.

    The connector decodes BSON dates as naive UTC datetimes, so this is the shape seen on the hot path;
    aware datetimes and earlier dates go through json_util. Like json_util: milliseconds (truncated)
    when there is at least one, none otherwise.
    """
    return {
        "$date": value.isoformat(timespec="milliseconds" if value.microsecond >= 1000 else "seconds") + "Z"
    }


def _make_walker(json_mode: str) -> Callable[[Any], Any]:
    """A converter that leaves JSON-native values alone and asks json_util only about the rest.

    Relaxed mode keeps str, int, bool, None and finite floats as they are; canonical mode wraps numbers
    (`$numberInt`, `$numberDouble` ...), so only str, bool and None pass. ObjectId, Decimal128 and
    (relaxed) naive datetimes, the commonest BSON values, have exact shortcuts; everything else
    (NaN/Infinity, Int64, other datetimes, binaries, subclasses of dict/list ...) goes through
    `bson.json_util.default`.
    """
    options = _options(json_mode)
    relaxed = json_mode != "canonical"
    plain: frozenset[type] = frozenset({str, bool, _NONE, int}) if relaxed else frozenset({str, bool, _NONE})
    default = json_util.default

    def walk(value: Any) -> Any:
        kind = type(value)
        if kind is dict:
            return {k: v if type(v) in plain else walk(v) for k, v in value.items()}
        if kind is list:
            return [v if type(v) in plain else walk(v) for v in value]
        if kind is ObjectId:
            return {"$oid": str(value)}
        if kind is Decimal128:
            return {"$numberDecimal": decimal128_str(value)}
        if relaxed and kind is datetime.datetime and value.tzinfo is None and value >= _EPOCH_NAIVE:
            return _naive_datetime_iso(value)
        if kind in plain or (relaxed and kind is float and math.isfinite(value)):
            return value
        if kind in _BSON_SCALARS:
            return default(value, options)
        if isinstance(value, Mapping):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [walk(v) for v in value]
        # json_util's encoders return fully converted JSON (DBRef and Code scopes included).
        return default(value, options)

    return walk


_WALKERS = {mode: _make_walker(mode) for mode in ("relaxed", "canonical")}


def encode_fast(event: Mapping[str, Any], json_mode: str = "relaxed") -> bytes:
    """The event as Extended JSON, equal (as parsed JSON) to `encode_reference`, via orjson."""
    try:
        return orjson.dumps(_WALKERS[json_mode](event))
    except (orjson.JSONEncodeError, TypeError):
        # orjson refuses integers beyond 64 bits and lone surrogates; json_util copes (or raises).
        return encode_reference(event, json_mode)


def _relaxed_fast(event: Mapping[str, Any]) -> bytes:
    return encode_fast(event, "relaxed")


def _canonical_fast(event: Mapping[str, Any]) -> bytes:
    return encode_fast(event, "canonical")


_DRIVER_OPTS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_SUBCLASS


def _relaxed_default(value: Any) -> Any:
    """orjson's hook for what it cannot (or must not) write itself, in relaxed Extended JSON.

    Every change event has a `wallTime` datetime and a `clusterTime` Timestamp: those are tested first."""
    kind = type(value)
    if kind is datetime.datetime and value.tzinfo is None and value >= _EPOCH_NAIVE:
        return _naive_datetime_iso(value)
    if kind is Timestamp:
        return {"$timestamp": {"t": value.time, "i": value.inc}}
    if kind is ObjectId:
        return {"$oid": str(value)}
    if kind is Int64:
        return int(value)
    if kind is Decimal128:
        return {"$numberDecimal": decimal128_str(value)}
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, list):
        return list(value)
    return json_util.default(value, _RELAXED)


def encode_driver_event(event: Mapping[str, Any]) -> bytes:
    """Relaxed Extended JSON of an event as the driver decoded it, with no Python walk over the event.

    orjson writes the JSON-native values itself and calls `_relaxed_default` only for BSON types (subclasses
    such as Int64 and Code included, datetimes too). Two things orjson would get wrong are kept off this
    path: native `uuid.UUID` (it writes a plain string; the connector's codec options decode binary
    subtype 4 as `Binary`, never UUID) and NaN/Infinity (it writes `null`): any output containing `null`
    is re-encoded by `encode_fast`, which is exact. Parses equal to `encode_reference` (hypothesis test).
    """
    try:
        out = orjson.dumps(event, default=_relaxed_default, option=_DRIVER_OPTS)
    except (orjson.JSONEncodeError, TypeError):
        return encode_reference(event, "relaxed")
    if b"null" in out:
        return encode_fast(event, "relaxed")
    return out


#: JSON_MODE -> encoder used by `to_message`; swap an entry to try another encoder.
ENCODERS: dict[str, Encoder] = {"relaxed": _relaxed_fast, "canonical": _canonical_fast}


#: Tells "no `_ablyChannel` field" from "`_ablyChannel: null`" (an expression that found nothing).
MISSING: Any = object()


def channel_problem(channel: Any) -> str | None:
    """Why `channel` (MISSING when the event has no such field) is not a usable channel name, or None."""
    if channel is MISSING:
        return "event has no _ablyChannel field (the pipeline must set it)"
    if channel is None:
        return "_ablyChannel is null (the pipeline computed no channel for this event)"
    if not isinstance(channel, str):
        return f"_ablyChannel must be a string (got {type(channel).__name__} {quote(channel)})"
    return channel_name_problem(channel, "_ablyChannel")


def _headers(raw: Any) -> dict[str, str]:
    problem = headers_problem(raw, "_ablyMsgHeaders")
    if problem or not isinstance(raw, dict):
        raise UnpublishableEvent(problem or "_ablyMsgHeaders must be an object")
    return raw


#: Channel names checked once and remembered (a stream reuses few); bounded, then checked afresh.
CHANNEL_CACHE_SIZE = 10_000

#: The document bodies a truncated message leaves out (ON_OVERSIZE=truncate).
BODY_FIELDS = frozenset({"fullDocument", "fullDocumentBeforeChange", "updateDescription"})
#: Set by the stages the connector appends on servers without `$changeStreamSplitLargeEvent`
#: (`pipeline.oversize_stages`) when they dropped an event's bodies server-side: their size in bytes.
OVERSIZE_FIELD = "_livesyncOversize"

Router = Callable[[int, Mapping[str, Any]], OutboundMessage]
NO_TOKEN = "event has no resume token (_id._data); was _id changed by the pipeline?"


@dataclass(slots=True)
class RouteStats:
    truncated: int = 0  # published in compact form (ON_OVERSIZE=truncate)


def make_router(
    *,
    json_mode: str,
    max_message_size: int,
    encoder: Encoder | None = None,
    on_oversize: OnOversize = "truncate",
    stats: RouteStats | None = None,
    cipher: ChannelCipher | None = None,
) -> Router:
    """`to_message` with its settings bound, and each good channel name validated once.

    With `cipher`, a channel it has a key for gets its data encrypted; without one, no per-event work."""
    encode = encoder or ENCODERS[json_mode]
    good_channels: set[str] = set()
    counts = stats if stats is not None else RouteStats()

    def route(seq: int, event: Mapping[str, Any]) -> OutboundMessage:
        channel = event.get("_ablyChannel", MISSING)
        if channel.__class__ is not str or channel not in good_channels:
            if isinstance(event, UndecodableEvent):
                raise UnpublishableEvent(event.reason, kind="undecodable", code=72000)
            problem = channel_problem(channel)
            if problem or not isinstance(channel, str):
                raise NoChannelError(problem or "_ablyChannel must be a string")
            if len(good_channels) >= CHANNEL_CACHE_SIZE:
                good_channels.clear()
            good_channels.add(channel)
        token = event.get("_id")
        # `type(...) is dict` first: an ABC isinstance check per event is measurable on the hot path.
        if token.__class__ is not dict:
            token = dict(token) if isinstance(token, Mapping) else {}
        token_data = token.get("_data")
        if token_data.__class__ is not str:
            raise UnpublishableEvent(NO_TOKEN)
        name = event.get("_ablyMsgName")
        if name is None:
            name = event.get("operationType", "")
        elif not isinstance(name, str):
            raise UnpublishableEvent(f"_ablyMsgName must be a string (got {type(name).__name__})")
        raw_headers = event.get("_ablyMsgHeaders")
        headers = _headers(raw_headers) if raw_headers is not None else None
        extras = {"headers": headers} if headers else None
        key = cipher.key_for(channel) if cipher is not None else None
        if OVERSIZE_FIELD in event:
            data, extras, size = _compact(
                event, name, headers, encode, max_message_size, on_oversize, None, key is not None
            )
            counts.truncated += 1
        else:
            data = encode(event)
            size = message_size(name, data, extras) if key is None else _size(name, data, extras, True)
            if size > max_message_size:
                data, extras, size = _compact(
                    event, name, headers, encode, max_message_size, on_oversize, size, key is not None
                )
                counts.truncated += 1
        message: AblyMessage
        if key is None or cipher is None:
            message = {"id": token_data, "name": name, "data": data.decode(), "encoding": "json"}
        else:
            sealed, encoding = cipher.seal_json(key, data)
            message = {"id": token_data, "name": name, "data": sealed, "encoding": encoding}
        if extras is not None:
            message["extras"] = extras
        wall = event.get("wallTime")
        if wall.__class__ is datetime.datetime:
            committed = wall.replace(tzinfo=datetime.UTC).timestamp()
        else:
            cluster = event.get("clusterTime")
            committed = float(cluster.time) if cluster.__class__ is Timestamp else 0.0
        return OutboundMessage(seq, channel, message, size, token, None, committed)

    return route


def _size(name: str, data: bytes, extras: Mapping[str, Any] | None, sealed: bool) -> int:
    """The message's size as Ably counts it; `sealed`: its data will go out encrypted (IV + ciphertext)."""
    if not sealed:
        return message_size(name, data, extras)
    return message_size(name, b"", extras) + sealed_size(len(data))


def _compact(
    event: Mapping[str, Any],
    name: str,
    headers: Mapping[str, str] | None,
    encode: Encoder,
    max_size: int,
    policy: OnOversize,
    full_size: int | None,
    sealed: bool = False,
) -> tuple[bytes, dict[str, Any], int]:
    """The event without its document bodies, with the truncation headers (ON_OVERSIZE=truncate).

    The size reported is the full message's: `full_size` as the router measured it, or, when the server
    already dropped the bodies, their size (measured by the appended stages) plus the rest. `sealed`: the
    data goes out encrypted, and sizes count it so."""
    if full_size is not None and policy != "truncate":
        raise oversize_error(full_size, max_size, policy)
    compact = {k: v for k, v in event.items() if k not in BODY_FIELDS and k != OVERSIZE_FIELD}
    data = encode(compact)
    size = full_size
    if size is None:
        dropped = event.get(OVERSIZE_FIELD)
        size = _size(name, data, {"headers": headers} if headers else None, sealed)
        size += int(dropped) if isinstance(dropped, int | float) else 0
    if policy != "truncate":
        raise oversize_error(size, max_size, policy)
    extras: dict[str, Any] = {"headers": truncated_headers(headers, size)}
    compact_size = _size(name, data, extras, sealed)
    if compact_size > max_size:
        raise oversize_error(size, max_size, policy, compact_size=compact_size)
    log.warning(
        "event %s (documentKey %s) is %d bytes, over MAX_MESSAGE_SIZE of %d: published truncated "
        "(%d bytes, without its document bodies)",
        event.get("_id", {}).get("_data") if isinstance(event.get("_id"), Mapping) else event.get("_id"),
        quote(event.get("documentKey")),
        size,
        max_size,
        compact_size,
        extra={"code": 72001, "channel": event.get("_ablyChannel")},
    )
    return data, extras, compact_size


def to_message(
    seq: int,
    event: Mapping[str, Any],
    *,
    json_mode: str,
    max_message_size: int,
    encoder: Encoder | None = None,
    on_oversize: OnOversize = "truncate",
    cipher: ChannelCipher | None = None,
) -> OutboundMessage:
    """Map one change event to an OutboundMessage or raise UnpublishableEvent / NoChannelError."""
    route = make_router(
        json_mode=json_mode,
        max_message_size=max_message_size,
        encoder=encoder,
        on_oversize=on_oversize,
        cipher=cipher,
    )
    return route(seq, event)
