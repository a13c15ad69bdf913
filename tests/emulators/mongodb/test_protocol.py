"""Wire-protocol and admin-command basics that drivers and tools rely on before any CRUD happens.

Legacy clients (and some monitoring tools) still open with OP_QUERY `isMaster`, answered with OP_REPLY;
drivers read `buildInfo`, `ping`, `serverStatus` and end their sessions with `endSessions`.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any
from urllib.parse import urlparse

import bson
import pytest

#: Needs a MongoDB server: the emulator, or MONGODB_TEST_URI.
pytestmark = pytest.mark.integration

OP_REPLY = 1
OP_QUERY = 2004
HEADER = struct.Struct("<iiii")  # messageLength, requestID, responseTo, opCode
REPLY_FIELDS = struct.Struct("<iqii")  # responseFlags, cursorID, startingFrom, numberReturned
SOCKET_TIMEOUT_S = 10.0


def _op_query(request_id: int, collection: str, query: dict[str, Any]) -> bytes:
    body = (
        struct.pack("<i", 0)  # flags
        + collection.encode()
        + b"\x00"
        + struct.pack("<ii", 0, -1)  # numberToSkip, numberToReturn
        + bson.encode(query)
    )
    return HEADER.pack(HEADER.size + len(body), request_id, 0, OP_QUERY) + body


async def test_legacy_op_query_is_master_gets_an_op_reply(emulator_only: None, emulator_uri: str) -> None:
    address = urlparse(emulator_uri)
    assert address.hostname is not None and address.port is not None
    async with asyncio.timeout(SOCKET_TIMEOUT_S):
        reader, writer = await asyncio.open_connection(address.hostname, address.port)
        try:
            writer.write(_op_query(7, "admin.$cmd", {"isMaster": 1}))
            await writer.drain()
            length, _, response_to, op_code = HEADER.unpack(await reader.readexactly(HEADER.size))
            payload = await reader.readexactly(length - HEADER.size)
        finally:
            writer.close()
            await writer.wait_closed()
    assert (op_code, response_to) == (OP_REPLY, 7)
    _, cursor_id, _, returned = REPLY_FIELDS.unpack_from(payload)
    assert (cursor_id, returned) == (0, 1)
    reply = bson.decode(payload[REPLY_FIELDS.size :])
    assert reply["ok"] == 1
    assert reply["ismaster"] is True
    assert reply["setName"]
    assert reply["maxWireVersion"] >= 21  # 7.0


async def test_admin_commands_drivers_use(async_client: Any) -> None:
    build = await async_client.admin.command("buildInfo")
    assert list(build["versionArray"][:2]) == [int(part) for part in build["version"].split(".")[:2]]
    assert (await async_client.admin.command("ping"))["ok"] == 1
    status = await async_client.admin.command("serverStatus")
    assert status["ok"] == 1
    session = async_client.start_session()
    lsid = session.session_id
    await session.end_session()
    ended = await async_client.admin.command({"endSessions": [lsid]})
    assert ended["ok"] == 1


async def test_replies_carry_cluster_and_operation_time(async_db: Any) -> None:
    reply = await async_db.command({"insert": "c", "documents": [{"_id": 1}]})
    assert isinstance(reply["operationTime"], bson.Timestamp)
    assert isinstance(reply["$clusterTime"]["clusterTime"], bson.Timestamp)
    assert reply["$clusterTime"]["clusterTime"] >= reply["operationTime"]
