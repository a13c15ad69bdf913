"""Change events from raw BSON: every value MongoDB stores decodes, and one bad event never costs a batch.

MongoDB stores values PyMongo's default codec options refuse: dates outside years 1-9999 ("year 10000 is
out of range") and strings with invalid UTF-8 (written by old drivers and tools that do not validate).
A change stream that meets one such document would otherwise fail on every reopen, forever. So:
- dates decode with `DATETIME_AUTO` (out of range: `DatetimeMS`, written as canonical `{"$date":
  {"$numberLong": ...}}`), invalid UTF-8 with U+FFFD through a counting error handler (lossy, counted,
  logged once per event with its `documentKey`, never the value);
- command replies arrive raw (`RawBSONDocument`, no decoding by the driver) and are decoded here in one C
  call, as the driver would; only if that fails, or was lossy, is the batch decoded event by event, so the
  one event that still cannot be decoded becomes an `UndecodableEvent` (its `_id` and raw bytes, for the
  dead-letter collection) and the rest of its batch is published as usual.
"""

from __future__ import annotations

import codecs
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import bson
from bson.binary import UuidRepresentation
from bson.codec_options import CodecOptions, DatetimeConversion
from bson.raw_bson import RawBSONDocument

log = logging.getLogger(__name__)

__all__ = [
    "EVENT_CODEC_OPTIONS",
    "IDENTITY_FIELDS",
    "RAW_CODEC_OPTIONS",
    "DecodeStats",
    "UndecodableEvent",
    "decode_event",
    "decode_reply",
    "plain_token",
]

#: Name of the codec error handler that replaces invalid UTF-8 with U+FFFD and counts each replacement.
LOSSY_UTF8_HANDLER = "livesync_replace"


class _LossyCount:
    """Replacements made by the handler since start (the C decoder calls it; one loop thread, or Motor's
    worker threads, where a rare lost increment only blurs a count: the per-event check re-decodes)."""

    value = 0


def _replace_and_count(exc: UnicodeError) -> tuple[str, int]:
    if not isinstance(exc, UnicodeDecodeError):
        raise exc
    _LossyCount.value += 1
    return "\ufffd", exc.end


codecs.register_error(LOSSY_UTF8_HANDLER, _replace_and_count)

#: How change events decode: naive UTC datetimes, binary subtype 4 left as `Binary` (the shapes
#: `messages.encode_driver_event` writes without a Python walk), any date, any string.
EVENT_CODEC_OPTIONS: CodecOptions[dict[str, Any]] = CodecOptions(
    tz_aware=False,
    uuid_representation=UuidRepresentation.UNSPECIFIED,
    datetime_conversion=DatetimeConversion.DATETIME_AUTO,
    unicode_decode_error_handler=LOSSY_UTF8_HANDLER,
)
#: Replies left undecoded by the driver (decoded by `decode_reply`).
RAW_CODEC_OPTIONS: CodecOptions[RawBSONDocument] = CodecOptions(
    document_class=RawBSONDocument,
    tz_aware=False,
    uuid_representation=UuidRepresentation.UNSPECIFIED,
    datetime_conversion=DatetimeConversion.DATETIME_AUTO,
    unicode_decode_error_handler=LOSSY_UTF8_HANDLER,
)

#: The fields that identify an event (kept of one that cannot be decoded, or stored too large): enough to
#: recognise it and find its document.
IDENTITY_FIELDS = ("_id", "operationType", "ns", "documentKey", "clusterTime", "wallTime", "_ablyChannel")


class UndecodableEvent(dict[str, Any]):
    """Stands in for an event that cannot be decoded: the fields that could be read (`_id` at least),
    plus its raw BSON and the reason, which the router turns into an unpublishable event."""

    def __init__(self, fields: Mapping[str, Any], raw: bytes, reason: str) -> None:
        super().__init__(fields)
        self.raw = raw
        self.reason = reason


@dataclass(slots=True)
class DecodeStats:
    lossy_events: int = 0  # events with at least one invalid UTF-8 sequence replaced by U+FFFD
    undecodable_events: int = 0


#: One per process: the decoders below are called from the reader's stream, whatever term it belongs to.
STATS = DecodeStats()


def decode_event(raw: bytes) -> dict[str, Any]:
    """One event from its BSON: a dict, or an `UndecodableEvent` (never raises for a bad value)."""
    before = _LossyCount.value
    try:
        event: dict[str, Any] = bson.decode(raw, EVENT_CODEC_OPTIONS)
    except Exception as exc:  # a bug or a value nobody foresaw: that one event is dead-lettered
        STATS.undecodable_events += 1
        return _undecodable(raw, exc)
    if _LossyCount.value != before:
        STATS.lossy_events += 1
        log.warning(
            "event %s (documentKey %s) has invalid UTF-8: replaced with U+FFFD",
            _token_text(event.get("_id")),
            _brief(event.get("documentKey")),
        )
    return event


def decode_reply(reply: Mapping[str, Any], batch_key: str) -> dict[str, Any]:
    """A raw `aggregate`/`getMore` reply as a plain dict, events in `cursor[batch_key]`.

    One C decode of the whole reply in the common case; event by event if that fails or was lossy (so
    the bad event is named and the others are kept). A reply that is already decoded is returned as is.
    """
    if not isinstance(reply, RawBSONDocument):
        return dict(reply)
    before = _LossyCount.value
    try:
        decoded: dict[str, Any] = bson.decode(reply.raw, EVENT_CODEC_OPTIONS)
    except Exception:  # decoded again per event below, which names the event at fault
        decoded = {}
    else:
        if _LossyCount.value == before:
            return decoded
    out: dict[str, Any] = {}
    for key, value in reply.items():
        if key != "cursor" or not isinstance(value, RawBSONDocument):
            out[key] = _plain(value)
            continue
        cursor: dict[str, Any] = {}
        for name, field in value.items():
            if name == batch_key and isinstance(field, list):
                cursor[name] = [decode_event(doc.raw) for doc in field]
            else:
                cursor[name] = _plain(field)
        out[key] = cursor
    return out


def plain_token(token: Any) -> Any:
    """A resume token the driver handed out raw, as a plain dict (other values unchanged)."""
    return _plain(token)


def _plain(value: Any) -> Any:
    if isinstance(value, RawBSONDocument):
        return bson.decode(value.raw, EVENT_CODEC_OPTIONS)
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def _undecodable(raw: bytes, exc: Exception) -> UndecodableEvent:
    reason = f"cannot decode the event's BSON: {type(exc).__name__}: {exc}"
    fields: dict[str, Any] = {}
    try:
        top = bson.decode(raw, RAW_CODEC_OPTIONS)
        for name in IDENTITY_FIELDS:
            if name in top:
                fields[name] = _plain(top[name])
    except Exception:  # keep what was read; without `_id` the stream itself reports a missing token
        log.debug("cannot read the identity of an undecodable event", exc_info=True)
    log.warning(
        "event %s (documentKey %s) cannot be decoded: %s",
        _token_text(fields.get("_id")),
        _brief(fields.get("documentKey")),
        reason,
    )
    return UndecodableEvent(fields, raw, reason)


def _token_text(token: Any) -> str:
    if isinstance(token, Mapping) and isinstance(token.get("_data"), str):
        return str(token["_data"])
    return repr(token)


#: How much of a documentKey a log line shows.
_KEY_TEXT_LIMIT = 200


def _brief(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _KEY_TEXT_LIMIT else text[: _KEY_TEXT_LIMIT - 3] + "..."
