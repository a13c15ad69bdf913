"""Ably's realtime protocol as ably-js 2.x speaks it (JSON format): actions, flags, channel serials, and
the few frames the emulator builds. Read from ably-js's ``protocolmessagecommon.ts``,
``realtimechannel.ts``, ``transport.ts`` and ``connectionmanager.ts``; see ABLY-CONTRACT.md.
"""

from __future__ import annotations

import enum
import struct
from typing import Any, Final

import orjson


class Action(enum.IntEnum):
    """ProtocolMessage actions (``protocolmessagecommon.ts``)."""

    HEARTBEAT = 0
    ACK = 1
    NACK = 2
    CONNECT = 3
    CONNECTED = 4
    DISCONNECT = 5
    DISCONNECTED = 6
    CLOSE = 7
    CLOSED = 8
    ERROR = 9
    ATTACH = 10
    ATTACHED = 11
    DETACH = 12
    DETACHED = 13
    PRESENCE = 14
    MESSAGE = 15
    SYNC = 16
    AUTH = 17
    ACTIVATE = 18
    OBJECT = 19
    OBJECT_SYNC = 20
    ANNOTATION = 21


# Channel attach-state flags and channel-mode flags (bit 16 and up).
FLAG_HAS_PRESENCE: Final = 1 << 0
FLAG_HAS_BACKLOG: Final = 1 << 1
FLAG_RESUMED: Final = 1 << 2
MODE_PRESENCE: Final = 1 << 16
MODE_PUBLISH: Final = 1 << 17
MODE_SUBSCRIBE: Final = 1 << 18
MODE_PRESENCE_SUBSCRIBE: Final = 1 << 19
MODES_MASK: Final = 0xFFFF_0000
# What Ably grants when the client asks for no modes in particular (a key with every capability).
DEFAULT_MODES: Final = MODE_PRESENCE | MODE_PUBLISH | MODE_SUBSCRIBE | MODE_PRESENCE_SUBSCRIBE

# Ably error codes used by the realtime side (https://github.com/ably/ably-common, errors.json).
CONNECTION_FAILED: Final = 80000
CONNECTION_DISCONNECTED: Final = 80003
CONNECTION_EXPIRED: Final = 80008  # "unable to recover connection": a resume/recover that cannot be honoured
CHANNEL_OPERATION_FAILED: Final = 90000


def encode(frame: dict[str, Any]) -> str:
    """A protocol message as the JSON text frame ably-js expects."""
    return orjson.dumps(frame).decode()


def channel_serial(epoch: str, position: int) -> str:
    """The serial of a channel position: ``<store epoch>:<messages so far>``.

    The epoch changes when the emulator is reset, so a serial from before a reset is recognisably stale.
    """
    return f"{epoch}:{position}"


def parse_channel_serial(serial: object, epoch: str) -> int | None:
    """The position a serial of this epoch names, or None (absent, malformed or from another epoch)."""
    if not isinstance(serial, str):
        return None
    serial_epoch, sep, position = serial.rpartition(":")
    if not sep or serial_epoch != epoch or not position.isdigit():
        return None
    return int(position)


def msgpack_error_frame(code: int, status: int, message: str) -> bytes:
    """An ERROR protocol message in msgpack, for a client that asked for ``format=msgpack``.

    The emulator speaks JSON only; answering in the client's own format lets ably-js read the reason and
    fail the connection with it (instead of retrying forever on a frame it cannot decode). Hand-encoded:
    a msgpack map of strings and small non-negative integers needs a dozen lines, not a dependency.
    """
    error = {"code": code, "statusCode": status, "message": message}
    return _mp_map({"action": int(Action.ERROR), "error": error})


def _mp_str(text: str) -> bytes:
    raw = text.encode("utf-8")
    if len(raw) < 32:
        return bytes([0xA0 | len(raw)]) + raw
    if len(raw) < 256:
        return b"\xd9" + bytes([len(raw)]) + raw
    return b"\xda" + struct.pack(">H", len(raw)) + raw[:65535]


def _mp_uint(value: int) -> bytes:
    if value < 128:
        return bytes([value])
    if value < 65536:
        return b"\xcd" + struct.pack(">H", value)
    return b"\xce" + struct.pack(">I", value)


def _mp_map(items: dict[str, Any]) -> bytes:
    out = bytearray([0x80 | len(items)])
    for key, value in items.items():
        out += _mp_str(key)
        if isinstance(value, dict):
            out += _mp_map(value)
        elif isinstance(value, int):
            out += _mp_uint(value)
        else:
            out += _mp_str(str(value))
    return bytes(out)
