"""Validation and normalisation of published messages, and Ably's way of measuring their size.

Ably counts a message's size as the bytes of ``name`` + ``data`` + ``clientId`` + the JSON of ``extras``
(for an object payload, the length of its JSON string; for base64 data, the decoded bytes). The connector
pre-checks against the same formula, so it lives here in one place and is tested byte-exactly. Messages
published together (an array, a BatchSpec's ``messages``) are one payload: the limit applies to their sum.

Client-supplied ids follow Ably's rule (error 40031): an id must be a non-empty string, and messages
published together carry ids ``<base>:<index>`` (0-based) sharing one base, or no ids at all.
"""

from __future__ import annotations

import binascii
from typing import Any, Final

import orjson

from emulators.ably.errors import (
    INVALID_CHANNEL,
    INVALID_DATA,
    INVALID_MESSAGE_ID,
    MESSAGE_TOO_LARGE,
    AblyHttpError,
)

DEFAULT_MAX_MESSAGE_SIZE: Final = 65536  # Ably's Free/Standard plan limit (64 KiB)

# Fields a stored message keeps; anything else a client sends (timestamp, connectionId…) is ignored.
MESSAGE_FIELDS: Final = ("id", "name", "data", "encoding", "clientId", "extras")


def validate_channel(channel: str) -> None:
    """Raise 40010 unless ``channel`` is a valid name: non-empty, no leading `[` or `:`, no newline."""
    if not channel or channel[0] in "[:" or "\n" in channel:
        raise AblyHttpError(INVALID_CHANNEL, 400, f"invalid channel name: {channel!r}")


def _utf8_len(value: str) -> int:
    # ASCII strings (the common case: hex ids, names) are measured without encoding them.
    return len(value) if value.isascii() else len(value.encode("utf-8"))


def _extras_json(extras: Any) -> bytes:
    """Validate ``extras`` and return its compact JSON (its length is what the message size counts)."""
    if not isinstance(extras, dict):
        raise AblyHttpError(INVALID_DATA, 400, "message extras must be an object")
    headers = extras.get("headers")
    if headers is not None:
        if not isinstance(headers, dict):
            raise AblyHttpError(INVALID_DATA, 400, "extras.headers must be an object")
        for key, value in headers.items():
            if not isinstance(value, str):
                raise AblyHttpError(
                    INVALID_DATA, 400, f"extras.headers must map strings to strings (header {key!r})"
                )
    return _compact_json(extras, "extras")


def _compact_json(value: Any, what: str) -> bytes:
    # orjson refuses nesting deeper than 254 levels (its loads accepts more): a client's error, not ours.
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError as exc:
        raise AblyHttpError(INVALID_DATA, 400, f"message {what} cannot be stored: {exc}") from exc


def _is_base64(encoding: str) -> bool:
    """Whether the last step of ``encoding`` (``base64`` or ``.../base64``) is base64."""
    return encoding.endswith("base64") and (len(encoding) == 6 or encoding[-7] == "/")


def _data_and_size(data: Any, encoding: str | None) -> tuple[str | None, str | None, int]:
    """Return (stored data, stored encoding, size in bytes) for a message payload."""
    if data is None:
        return None, encoding, 0
    if isinstance(data, str):
        if encoding and _is_base64(encoding):
            try:
                return data, encoding, len(binascii.a2b_base64(data, strict_mode=True))
            except ValueError as exc:  # binascii.Error, or non-ASCII text (a plain ValueError)
                raise AblyHttpError(INVALID_DATA, 400, f"invalid base64 data: {exc}") from exc
        return data, encoding, _utf8_len(data)
    if isinstance(data, dict | list):
        # A raw JSON payload is stored the way SDKs send it: a JSON string with encoding "json".
        text = _compact_json(data, "data").decode()
        return text, f"{encoding}/json" if encoding else "json", _utf8_len(text)
    raise AblyHttpError(INVALID_DATA, 400, f"unsupported data type {type(data).__name__}")


def _not_a_string(field: str) -> AblyHttpError:
    return AblyHttpError(INVALID_DATA, 400, f"message field {field!r} must be a string")


def _bad_id(msg_id: Any) -> AblyHttpError:
    """40031 for a client-supplied id that is empty or not a string (Ably's wording for the first)."""
    if isinstance(msg_id, str):
        return AblyHttpError(INVALID_MESSAGE_ID, 400, "Client-specified message id cannot be empty")
    return AblyHttpError(
        INVALID_MESSAGE_ID, 400, f"Client-specified message id must be a string, not {type(msg_id).__name__}"
    )


def _too_large(size: int, max_size: int) -> AblyHttpError:
    return AblyHttpError(
        MESSAGE_TOO_LARGE,
        413,
        f"Maximum message length exceeded (size was {size} bytes, limit is {max_size} bytes)",
    )


def _measure(raw: Any, extras_as_json: bool) -> tuple[dict[str, Any], int]:
    """measure_message, with ``extras`` in the stored form as its compact JSON text if ``extras_as_json``.

    Runs once per published message, so the common case (string fields and string data) is checked
    inline; anything else takes the general helpers above, which decide the same.
    """
    if not isinstance(raw, dict):
        raise AblyHttpError(INVALID_DATA, 400, "a message must be a JSON object")
    get = raw.get
    msg_id, name, client_id, encoding = get("id"), get("name"), get("clientId"), get("encoding")
    # In this order (id, name, clientId, encoding): the first bad field names the error.
    if msg_id is not None and (type(msg_id) is not str or not msg_id):
        raise _bad_id(msg_id)
    if name is not None and not isinstance(name, str):
        raise _not_a_string("name")
    if client_id is not None and not isinstance(client_id, str):
        raise _not_a_string("clientId")
    if encoding is not None and not isinstance(encoding, str):
        raise _not_a_string("encoding")
    data = get("data")
    if type(data) is str and not (encoding and _is_base64(encoding)):
        size = len(data) if data.isascii() else len(data.encode("utf-8"))
    else:
        data, encoding, size = _data_and_size(data, encoding)
    if name:
        size += len(name) if name.isascii() else len(name.encode("utf-8"))
    if client_id:
        size += _utf8_len(client_id)
    extras = get("extras")
    if extras is not None:
        extras_json = _extras_json(extras)
        size += len(extras_json)
        if extras_as_json:
            # As text: a right-sized copy (keeping orjson's bytes would keep its larger buffer).
            extras = extras_json.decode()
    stored = {
        "id": msg_id,
        "name": name,
        "data": data,
        "encoding": encoding,
        "clientId": client_id,
        "extras": extras,
    }
    return stored, size


def _within_limit(measured: tuple[dict[str, Any], int], max_size: int) -> dict[str, Any]:
    stored, size = measured
    if size > max_size:
        raise _too_large(size, max_size)
    return stored


def measure_message(raw: Any) -> tuple[dict[str, Any], int]:
    """Validate one Message from a request body; return its stored form and its size as Ably counts it.

    The stored form has every MESSAGE_FIELDS key (None where absent). Raises 40013 for malformed fields.
    """
    return _measure(raw, False)


def normalize_message(raw: Any, max_size: int) -> dict[str, Any]:
    """Validate one Message and enforce the size limit: 40013 if malformed, 40009 (HTTP 413) if too big."""
    return _within_limit(_measure(raw, False), max_size)


def normalize_for_store(raw: Any, max_size: int) -> dict[str, Any]:
    """normalize_message, but in the form the store keeps: ``extras`` as its compact JSON text.

    The JSON is what the size check computes anyway; holding no container, the dict is one the garbage
    collector does not track (see store.py).
    """
    return _within_limit(_measure(raw, True), max_size)


def normalize_unit_for_store(
    raw_messages: list[Any], max_size: int
) -> tuple[list[dict[str, Any]], str | None]:
    """Messages published together (atomically): each validated as ``normalize_for_store`` does, then the id
    rule (``unit_id``), then the size limit on their combined size. Returns (stored forms, unit id)."""
    if len(raw_messages) == 1:
        message = normalize_for_store(raw_messages[0], max_size)
        return [message], message["id"]
    messages = []
    total = 0
    for raw in raw_messages:
        stored, size = _measure(raw, True)
        messages.append(stored)
        total += size
    uid = unit_id(messages)
    if total > max_size:
        raise _too_large(total, max_size)
    return messages, uid


# Ably's wording (ably-common errors/codes/40031.md).
MULTI_ID_FORMAT: Final = (
    "Client-specified message ids do not match the required format for multi-message ProtocolMessages"
)


def unit_id(messages: list[dict[str, Any]]) -> str | None:
    """The idempotency key of messages published together, or None when the server assigns ids.

    One message: its id (any non-empty string, ``x:0`` included). Several: either no message has an id,
    or every one has ``<base>:<idx>`` with one non-empty base and idx its 0-based position, and the array
    is deduplicated as one unit under ``<base>``; anything else (a missing id among given ones, another
    base, a wrong or out-of-order index) is 40031, Ably's rule for multi-message publishes.
    """
    first = messages[0]["id"]
    if len(messages) == 1:
        return first
    ids = [m["id"] for m in messages]
    if first is None:
        if all(i is None for i in ids):
            return None
        position = next(idx for idx, i in enumerate(ids) if i is not None)
        raise AblyHttpError(
            INVALID_MESSAGE_ID,
            400,
            f"{MULTI_ID_FORMAT}: message 0 has no id but message {position} has {ids[position]!r} "
            "(give every message an id <base>:<index>, or none)",
        )
    base, sep, _ = first.rpartition(":")
    if not sep or not base:
        raise AblyHttpError(
            INVALID_MESSAGE_ID, 400, f"{MULTI_ID_FORMAT}: id {first!r} of message 0 is not <base>:0"
        )
    for idx, msg_id in enumerate(ids):
        if msg_id != f"{base}:{idx}":
            found = "no id" if msg_id is None else f"id {msg_id!r}"
            raise AblyHttpError(
                INVALID_MESSAGE_ID,
                400,
                f"{MULTI_ID_FORMAT}: message {idx} has {found}, expected {base + ':' + str(idx)!r}",
            )
    return base
