"""The driver fix: a connection attempt cancelled mid-connect closes its socket (PYTHON-5867)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

import pytest
from pymongo import AsyncMongoClient, pool_shared
from pymongo.pool_options import PoolOptions

from connector.sources.mongodb import driver_fix


async def test_a_client_closed_while_its_monitor_connects_closes_the_socket(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    driver_fix.install()
    loop = asyncio.get_running_loop()
    opened: list[socket.socket] = []
    connecting = asyncio.Event()

    async def never_connects(sock: socket.socket, address: Any) -> None:
        opened.append(sock)
        connecting.set()
        await asyncio.Event().wait()

    monkeypatch.setattr(loop, "sock_connect", never_connects)
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        "mongodb://127.0.0.1:9/?directConnection=true", connectTimeoutMS=60_000
    )
    ping = asyncio.create_task(client.admin.command("ping"))
    try:
        await asyncio.wait_for(connecting.wait(), 5)
        await client.close()  # cancels the monitor while it connects
        ping.cancel()
        with contextlib.suppress(BaseException):
            await ping
        assert opened
        assert [sock.fileno() for sock in opened] == [-1] * len(opened)
    finally:
        for sock in opened:
            sock.close()


async def test_a_failed_connect_still_raises_the_drivers_error() -> None:
    driver_fix.install()
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    options = PoolOptions(connect_timeout=5)
    with pytest.raises(ConnectionRefusedError):
        await pool_shared._async_create_connection(("127.0.0.1", port), options)


def test_install_is_idempotent() -> None:
    driver_fix.install()
    patched = pool_shared._async_create_connection
    driver_fix.install()
    assert pool_shared._async_create_connection is patched
