"""MongoDB wire-protocol framing: OP_MSG, legacy OP_QUERY and OP_REPLY.

Only what drivers send to a single-node replica set: OP_MSG with a body section and document-sequence
sections (insert/update/delete payloads), and the legacy OP_QUERY handshake that old drivers and tools
still use. Compression is never advertised, so OP_COMPRESSED never arrives.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

from bson.errors import BSONError

from .bsonvalues import DECODE_OPTIONS, ENCODE_OPTIONS, decode_documents, encode
from .errors import CommandError

OP_REPLY = 1
OP_QUERY = 2004
OP_MSG = 2013

HEADER = struct.Struct("<iiii")
HEADER_SIZE = HEADER.size

# OP_MSG flag bits (wire spec).
FLAG_CHECKSUM_PRESENT = 1 << 0
FLAG_MORE_TO_COME = 1 << 1
FLAG_EXHAUST_ALLOWED = 1 << 16

# 48 MB is the server's maxMessageSizeBytes; anything bigger is a broken or hostile peer.
MAX_MESSAGE_SIZE = 48_000_000

__all__ = [
    "DECODE_OPTIONS",
    "ENCODE_OPTIONS",
    "HEADER_SIZE",
    "ProtocolError",
    "Request",
    "decode_request",
    "encode_document",
    "encode_op_msg",
    "encode_op_reply",
    "parse_header",
]


class ProtocolError(Exception):
    """Raised when a peer sends bytes that are not a valid message; the connection is closed."""


@dataclass(slots=True)
class Request:
    """One decoded client message."""

    request_id: int
    op_code: int
    command: dict[str, Any]
    flags: int = 0
    # OP_QUERY only: the namespace the query was sent to (``admin.$cmd``).
    collection: str = ""
    raw_size: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    # A well-framed message whose BSON mongod would refuse (InvalidBSON 22, Overflow 45, ...): answered
    # with this error, as mongod answers it, instead of closing the connection.
    error: CommandError | None = None

    @property
    def more_to_come(self) -> bool:
        """Unacknowledged write (w:0): the client does not read a reply."""
        return self.op_code == OP_MSG and bool(self.flags & FLAG_MORE_TO_COME)


def parse_header(data: bytes) -> tuple[int, int, int, int]:
    """Return (message length, request id, response to, op code)."""
    length, request_id, response_to, op_code = HEADER.unpack(data)
    if length < HEADER_SIZE or length > MAX_MESSAGE_SIZE:
        raise ProtocolError(f"invalid message length {length}")
    return length, request_id, response_to, op_code


def _cstring(data: bytes, pos: int) -> tuple[str, int]:
    end = data.index(b"\x00", pos)
    return data[pos:end].decode(), end + 1


def _decode_op_msg(request_id: int, body: bytes) -> Request:
    (flags,) = struct.unpack_from("<I", body, 0)
    end = len(body) - (4 if flags & FLAG_CHECKSUM_PRESENT else 0)
    pos = 4
    command: dict[str, Any] | None = None
    sections: list[tuple[str, int, int]] = []
    error: CommandError | None = None
    while pos < end:
        kind = body[pos]
        pos += 1
        (size,) = struct.unpack_from("<i", body, pos)
        if kind == 0:
            try:
                command = decode_documents(body, pos, min(pos + size, end))[0]
            except CommandError as exc:
                error, command = exc, {}
            pos += size
        elif kind == 1:
            section_end = pos + size
            ident, doc_pos = _cstring(body, pos + 4)
            sections.append((ident, doc_pos, section_end))
            pos = section_end
        else:
            raise ProtocolError(f"unknown OP_MSG section kind {kind}")
    if command is None:
        raise ProtocolError("OP_MSG without a body section")
    inserting = bool(command) and next(iter(command)) == "insert"
    for ident, start, stop in sections:
        try:
            # An insert's documents get the wire's depth and column checks with their stored form.
            docs = decode_documents(body, start, stop, wire_checks=not (inserting and ident == "documents"))
        except CommandError as exc:
            error = error or exc
            continue
        command.setdefault(ident, []).extend(docs)
    return Request(request_id, OP_MSG, command, flags=flags, raw_size=len(body) + HEADER_SIZE, error=error)


def _decode_op_query(request_id: int, body: bytes) -> Request:
    (flags,) = struct.unpack_from("<i", body, 0)
    collection, pos = _cstring(body, 4)
    pos += 8  # numberToSkip, numberToReturn: irrelevant for commands
    (size,) = struct.unpack_from("<i", body, pos)
    try:
        query = decode_documents(body, pos, min(pos + size, len(body)))[0]
    except CommandError as exc:
        return Request(request_id, OP_QUERY, {}, flags=flags, collection=collection, error=exc)
    # Old drivers wrap the command as {$query: {...}, $readPreference: ...}.
    if "$query" in query:
        query = query["$query"]
    return Request(request_id, OP_QUERY, query, flags=flags, collection=collection)


def decode_request(request_id: int, op_code: int, body: bytes) -> Request:
    """Decode the message body (everything after the 16-byte header)."""
    try:
        if op_code == OP_MSG:
            return _decode_op_msg(request_id, body)
        if op_code == OP_QUERY:
            return _decode_op_query(request_id, body)
    except (struct.error, ValueError, IndexError, BSONError) as exc:
        raise ProtocolError(f"malformed message: {exc}") from exc
    raise ProtocolError(f"unsupported op code {op_code}")


def encode_op_msg(request_id: int, response_to: int, payload: bytes, flags: int = 0) -> bytes:
    """Frame an already BSON-encoded reply document as an OP_MSG."""
    length = HEADER_SIZE + 4 + 1 + len(payload)
    return b"".join(
        (HEADER.pack(length, request_id, response_to, OP_MSG), struct.pack("<IB", flags, 0), payload)
    )


def encode_op_reply(request_id: int, response_to: int, payload: bytes) -> bytes:
    """Frame a reply to a legacy OP_QUERY command (one document, no cursor)."""
    length = HEADER_SIZE + 20 + len(payload)
    return b"".join(
        (
            HEADER.pack(length, request_id, response_to, OP_REPLY),
            struct.pack("<iqii", 0, 0, 0, 1),
            payload,
        )
    )


def encode_document(doc: Any) -> bytes:
    """BSON-encode a reply; RawBSONDocument values are copied as bytes (pre-encoded events); values the
    C encoder refuses (invalid UTF-8, deprecated types) are written back exactly as they came."""
    return encode(doc)
